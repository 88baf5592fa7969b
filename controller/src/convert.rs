//! The edge between the gRPC API and the controller's domain: `TryFrom` for
//! what comes in (every field looked at, errors naming the field) and plain
//! functions for what goes out. Proto types stop here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use knockgate_proto::rotation::Protos;
use knockgate_proto::spa::SpaKey;
use knockgate_proto::{Access, Proto, api};

use crate::desired;
use crate::error::ServiceError;
use crate::name::{AgentName, PolicyName, UserName};
use crate::policy::{InvalidPolicy, PolicyDef, RawPolicy, Rotation, validate_label};
use crate::store::{
    Agent, AuditEvent, AuditFilter, AuditId, Grant, GrantFilter, NewOtkClaim, RevokeTarget,
    Timestamp, User,
};

/// Enrolment token lifetime when the request leaves it at 0.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest enrolment token lifetime accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Audit page size when the query leaves it at 0.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;

/// `Access` → wire.
pub fn access_to_api(a: Access) -> api::Access {
    let proto = match a.proto {
        Proto::Tcp => api::Proto::Tcp,
        Proto::Udp => api::Proto::Udp,
    };
    api::Access {
        proto: proto as i32,
        port: u32::from(a.port),
    }
}

/// Wire → `Access`; the error says what is wrong (the caller names the field).
pub fn access_from_api(a: &api::Access) -> Result<Access, String> {
    let proto = match api::Proto::try_from(a.proto) {
        Ok(api::Proto::Tcp) => Proto::Tcp,
        Ok(api::Proto::Udp) => Proto::Udp,
        _ => return Err("protocol must be tcp or udp".into()),
    };
    let port = u16::try_from(a.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is not in 1..=65535", a.port))?;
    Ok(Access { proto, port })
}

impl TryFrom<api::PolicySpec> for PolicyDef {
    type Error = InvalidPolicy;
    fn try_from(spec: api::PolicySpec) -> Result<Self, Self::Error> {
        let api::PolicySpec {
            name,
            open,
            users,
            groups,
            agents,
            timeout_secs,
            max_timeout_secs,
            spa,
            fwknop,
            sequence,
            sequence_timeout_secs,
            rotating,
            rotating_length,
            rotating_protos,
            rotating_port_lo,
            rotating_port_hi,
            window_secs,
            otk,
            otk_offline,
            min_gap_ms,
            max_gap_ms,
            tcp_flags,
            sealed,
            require_os,
            forward,
        } = spec;
        let open = open
            .iter()
            .enumerate()
            .map(|(i, a)| {
                access_from_api(a)
                    .map(|a| a.to_string())
                    .map_err(|reason| InvalidPolicy {
                        field: format!("open[{i}]"),
                        reason,
                    })
            })
            .collect::<Result<_, _>>()?;
        let raw = RawPolicy {
            open,
            users,
            groups,
            agents,
            timeout_secs,
            max_timeout_secs,
            spa,
            fwknop,
            sequence,
            sequence_timeout_secs,
            rotating,
            rotating_length,
            rotating_protos,
            rotating_port_lo,
            rotating_port_hi,
            window_secs,
            otk,
            otk_offline,
            min_gap_ms,
            max_gap_ms,
            tcp_flags,
            sealed,
            require_os,
            forward,
        };
        PolicyDef::validate(&name, raw)
    }
}

impl From<InvalidPolicy> for ServiceError {
    fn from(e: InvalidPolicy) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}

/// `PolicyDef` → wire spec.
pub fn policy_to_api(p: &PolicyDef) -> api::PolicySpec {
    let raw = p.to_raw();
    api::PolicySpec {
        name: p.name.to_string(),
        open: p.open.iter().copied().map(access_to_api).collect(),
        users: raw.users,
        groups: raw.groups,
        agents: raw.agents,
        timeout_secs: raw.timeout_secs,
        max_timeout_secs: raw.max_timeout_secs,
        spa: raw.spa,
        fwknop: raw.fwknop,
        sequence: raw.sequence,
        sequence_timeout_secs: raw.sequence_timeout_secs,
        rotating: raw.rotating,
        rotating_length: raw.rotating_length,
        rotating_protos: raw.rotating_protos,
        rotating_port_lo: raw.rotating_port_lo,
        rotating_port_hi: raw.rotating_port_hi,
        window_secs: raw.window_secs,
        otk: raw.otk,
        otk_offline: raw.otk_offline,
        min_gap_ms: raw.min_gap_ms,
        max_gap_ms: raw.max_gap_ms,
        tcp_flags: raw.tcp_flags,
        sealed: raw.sealed,
        require_os: raw.require_os,
        forward: raw.forward,
    }
}

/// A validated `AddAgent` request.
#[derive(Clone, Debug)]
pub struct AgentRequest {
    /// The agent's name.
    pub name: AgentName,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The address users knock on, when the admin sets it.
    pub address: Option<String>,
    /// How long the enrolment token is valid.
    pub token_ttl: Duration,
}

impl TryFrom<api::AddAgentRequest> for AgentRequest {
    type Error = ServiceError;
    fn try_from(r: api::AddAgentRequest) -> Result<Self, Self::Error> {
        let api::AddAgentRequest {
            name,
            labels,
            address,
            token_ttl_secs,
        } = r;
        let name = AgentName::new(name)?;
        for (k, v) in &labels {
            validate_label(k, v).map_err(|e| ServiceError::invalid(format!("labels: {e}")))?;
        }
        let address = match address.as_str() {
            "" => None,
            a if a.len() <= 253 && a.bytes().all(|b| b.is_ascii_graphic()) => Some(address),
            _ => {
                return Err(ServiceError::invalid(
                    "address: expected a host name or IP address",
                ));
            }
        };
        let token_ttl = match token_ttl_secs {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        if token_ttl > MAX_TOKEN_TTL {
            return Err(ServiceError::invalid("token_ttl_secs: at most 30 days"));
        }
        Ok(Self {
            name,
            labels: labels.into_iter().collect(),
            address,
            token_ttl,
        })
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `Agent` → wire, with the controller's version and its open grant count,
/// as of `now` (for the connection lease).
pub fn agent_to_api(
    a: &Agent,
    current_version: i64,
    active_grants: u32,
    now: Timestamp,
) -> api::AgentInfo {
    api::AgentInfo {
        name: a.name.to_string(),
        labels: a.labels.clone().into_iter().collect(),
        address: a.address.clone().unwrap_or_default(),
        enrolled: a.enrolled_at.is_some(),
        connected: a.is_connected(now),
        last_seen_unix_ms: a.last_seen.map_or(0, Timestamp::unix_millis),
        applied_version: to_u64(a.applied_version.0),
        current_version: to_u64(current_version),
        active_grants,
        revoked: a.revoked_at.is_some(),
    }
}

/// `User` → wire, never with key material.
pub fn user_to_api(u: &User) -> api::UserInfo {
    api::UserInfo {
        name: u.name.to_string(),
        groups: u.groups.iter().cloned().collect(),
        disabled: u.disabled,
        key_version: u32::try_from(u.key_version).unwrap_or(u32::MAX),
        created_at_unix_ms: u.created_at.unix_millis(),
        spa_key_id: SpaKey::from_secret(u.keys.spa_key).id().to_string(),
    }
}

/// A user's credentials, for AddUser and RotateUserKeys only.
pub fn credentials_to_api(u: &User, gateways: Vec<desired::Gateway<'_>>) -> api::UserCredentials {
    api::UserCredentials {
        user: Some(user_to_api(u)),
        spa_key: u.keys.spa_key.to_vec(),
        fwknop_key: u.keys.fwknop_key.to_vec(),
        fwknop_hmac_key: u.keys.fwknop_hmac_key.to_vec(),
        fwknop_hmac: u.keys.fwknop_hmac.clone(),
        rotating_secret: u.keys.rotating_secret.to_vec(),
        gateways: gateways.iter().map(gateway_to_api).collect(),
    }
}

/// A user's gateways without their keys, for UserGateways.
pub fn user_gateways_to_api(
    u: &User,
    gateways: Vec<desired::Gateway<'_>>,
) -> api::UserGatewaysResponse {
    api::UserGatewaysResponse {
        user: Some(user_to_api(u)),
        gateways: gateways.iter().map(gateway_to_api).collect(),
    }
}

/// A gateway of a profile → wire.
fn gateway_to_api(g: &desired::Gateway<'_>) -> api::GatewayAddress {
    api::GatewayAddress {
        name: g.name.to_string(),
        address: g.address.to_owned(),
        rotating: g
            .rotating
            .iter()
            .map(|r| gateway_rotation_to_api(r.policy, r.rotation, &r.exclude))
            .collect(),
        policies: g
            .policies
            .iter()
            .map(|p| gateway_policy_to_api(p))
            .collect(),
    }
}

/// A policy admitting the user at a gateway → wire: what it opens and the methods
/// (`knocker open --method` words, and `sequence` for a fixed sequence) that open it.
fn gateway_policy_to_api(p: &PolicyDef) -> api::GatewayPolicy {
    let methods = [
        (p.spa, "spa"),
        (p.fwknop, "fwknop"),
        (p.sealed, "sealed"),
        (!p.sequence.is_empty(), "sequence"),
        (p.rotating.is_some(), "rotating"),
        (p.otk.is_some(), "otk"),
    ];
    api::GatewayPolicy {
        name: p.name.to_string(),
        open: p.open.iter().copied().map(access_to_api).collect(),
        methods: methods
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_owned())
            .collect(),
    }
}

/// A rotating policy's effective settings at a gateway protecting `exclude`
/// → wire, for the user's profile.
pub fn gateway_rotation_to_api(
    policy: &PolicyName,
    r: &Rotation,
    exclude: &[u16],
) -> api::GatewayRotation {
    api::GatewayRotation {
        policy: policy.to_string(),
        length: u32::from(r.length),
        protos: match r.protos {
            Protos::Tcp => "tcp",
            Protos::Udp => "udp",
            Protos::Both => "both",
        }
        .to_owned(),
        port_lo: u32::from(r.port_lo),
        port_hi: u32::from(r.port_hi),
        window_secs: r.window_secs,
        exclude: exclude.iter().copied().map(u32::from).collect(),
    }
}

/// `Grant` → wire.
pub fn grant_to_api(g: &Grant) -> api::GrantRecord {
    let proto = match g.proto.as_str() {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    };
    let access = proto.map(|proto| {
        access_to_api(Access {
            proto,
            port: g.port,
        })
    });
    api::GrantRecord {
        id: g.id.0,
        agent: g.agent.to_string(),
        user: g.user.as_ref().map(ToString::to_string).unwrap_or_default(),
        src: g.src.to_string(),
        access,
        policy: g.policy.to_string(),
        opened_at_unix_ms: g.opened_at.unix_millis(),
        expires_at_unix_ms: g.expires_at.unix_millis(),
        closed_at_unix_ms: g.closed_at.map_or(0, Timestamp::unix_millis),
        close_reason: g.close_reason.clone().unwrap_or_default(),
    }
}

/// `AuditEvent` → wire.
pub fn audit_to_api(e: &AuditEvent) -> api::AuditEvent {
    api::AuditEvent {
        id: e.id.0,
        at_unix_ms: e.event.at.unix_millis(),
        agent: e
            .event
            .agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        kind: e.event.kind.clone(),
        user: e.event.user.clone().unwrap_or_default(),
        src: e.event.src.clone().unwrap_or_default(),
        detail_json: e.event.detail.to_string(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TryFrom<api::AuditQuery> for AuditFilter {
    type Error = ServiceError;
    fn try_from(q: api::AuditQuery) -> Result<Self, Self::Error> {
        let api::AuditQuery {
            since_unix_ms,
            kind,
            user,
            agent,
            after_id,
            limit,
        } = q;
        Ok(AuditFilter {
            since: (since_unix_ms != 0).then(|| Timestamp::from_unix_millis(since_unix_ms)),
            kind: non_empty(kind),
            user: non_empty(user),
            agent: non_empty(agent).map(AgentName::new).transpose()?,
            after_id: (after_id != 0).then_some(AuditId(after_id)),
            limit: Some(if limit == 0 {
                DEFAULT_AUDIT_LIMIT
            } else {
                limit
            }),
            newest_first: false,
        })
    }
}

/// `ListGrants` → a store filter (open grants at `now` unless closed ones are asked for).
pub fn grant_filter(
    r: api::ListGrantsRequest,
    now: Timestamp,
) -> Result<GrantFilter, ServiceError> {
    let api::ListGrantsRequest {
        agent,
        user,
        include_closed,
    } = r;
    Ok(GrantFilter {
        agent: non_empty(agent).map(AgentName::new).transpose()?,
        user: non_empty(user).map(UserName::new).transpose()?,
        active_at: (!include_closed).then_some(now),
    })
}

impl TryFrom<api::RevokeGrantsRequest> for RevokeTarget {
    type Error = ServiceError;
    fn try_from(r: api::RevokeGrantsRequest) -> Result<Self, Self::Error> {
        match (r.id, r.user.as_str()) {
            (0, "") => Err(ServiceError::invalid("id or user: one is required")),
            (id, "") if id > 0 => Ok(RevokeTarget::Grant(crate::store::GrantId(id))),
            (0, _) => Ok(RevokeTarget::User(UserName::new(r.user)?)),
            (id, "") => Err(ServiceError::invalid(format!("id: {id} is not a grant id"))),
            _ => Err(ServiceError::invalid("id or user: give one, not both")),
        }
    }
}

/// Parses an optional policy name (used in reported events).
pub fn policy_name(field: &str, value: &str) -> Result<PolicyName, ServiceError> {
    PolicyName::new(value).map_err(|e| ServiceError::invalid(format!("{field}: {e}")))
}

/// Parses an IP address field.
pub fn ip_field(field: &str, value: &str) -> Result<IpAddr, ServiceError> {
    value
        .parse()
        .map_err(|_| ServiceError::invalid(format!("{field}: {value:?} is not an IP address")))
}

/// A `Claim` from `agent` → the claim to decide. `at_unix_ms = 0` means now.
pub fn claim_from_api(
    r: api::ClaimRequest,
    agent: &AgentName,
    now: Timestamp,
) -> Result<NewOtkClaim, ServiceError> {
    let api::ClaimRequest {
        user,
        counter,
        src,
        at_unix_ms,
        offline,
    } = r;
    let user = UserName::new(user).map_err(|e| ServiceError::invalid(format!("user: {e}")))?;
    if i64::try_from(counter).is_err() {
        return Err(ServiceError::invalid(format!(
            "counter: {counter} is out of range"
        )));
    }
    let src = ip_field("src", &src)?;
    let at = match at_unix_ms {
        0 => now,
        ms if ms > 0 => Timestamp::from_unix_millis(ms),
        ms => {
            return Err(ServiceError::invalid(format!(
                "at_unix_ms: {ms} is before 1970"
            )));
        }
    };
    Ok(NewOtkClaim {
        user,
        counter,
        agent: agent.clone(),
        src: src.to_string(),
        at,
        offline,
    })
}

/// A policy as the agent is sent it.
impl From<&desired::AgentPolicy> for api::Policy {
    fn from(p: &desired::AgentPolicy) -> Self {
        api::Policy {
            name: p.name.clone(),
            open: p.open.iter().copied().map(access_to_api).collect(),
            timeout_secs: p.timeout_secs,
            max_timeout_secs: p.max_timeout_secs,
            users: p.users.clone(),
            spa: p.spa,
            fwknop: p.fwknop,
            sequence: p.sequence.iter().map(ToString::to_string).collect(),
            sequence_timeout_secs: p.sequence_timeout_secs,
            rotating: p.rotating_window_secs.is_some(),
            window_secs: p.rotating_window_secs.unwrap_or(0),
            otk: p.otk.is_some(),
            otk_offline: p.otk.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            min_gap_ms: p.min_gap_ms,
            max_gap_ms: p.max_gap_ms,
            tcp_flags: p.tcp_flags.map(|f| f.to_string()).unwrap_or_default(),
            sealed: p.sealed,
            require_os: p.require_os.clone(),
            forward: p.forward.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A user's credentials as the agent is sent them (empty fields for the methods that do
/// not reach the user there).
impl From<&desired::AgentUser> for api::User {
    fn from(u: &desired::AgentUser) -> Self {
        let mut out = api::User {
            name: u.name.clone(),
            ..api::User::default()
        };
        if let Some(k) = &u.spa_key {
            out.spa_key = k.to_vec();
        }
        if let Some(f) = &u.fwknop {
            out.fwknop_key = f.enc_key.to_vec();
            out.fwknop_hmac_key = f.hmac_key.to_vec();
            out.fwknop_hmac = f.hmac.name().to_owned();
        }
        out
    }
}

/// What an agent is sent, on the wire.
impl From<desired::Change<'_>> for api::AgentConfig {
    fn from(c: desired::Change<'_>) -> Self {
        let desired::Change {
            version,
            full,
            base_version,
            policies,
            users,
            removed_policies,
            removed_users,
            material,
        } = c;
        api::AgentConfig {
            version,
            full,
            base_version,
            policies: policies.into_iter().map(Into::into).collect(),
            users: users.into_iter().map(Into::into).collect(),
            removed_policies,
            removed_users,
            rotating: material.map(rotating_to_api).unwrap_or_default(),
            one_time_keys: material.map(otks_to_api).unwrap_or_default(),
            material_changed: material.is_some(),
        }
    }
}

/// The rotating sequences as sent, ordered by user, policy, window.
fn rotating_to_api(m: &desired::Material) -> Vec<api::RotatingSequence> {
    m.rotating
        .iter()
        .map(|((user, policy, window), knocks)| api::RotatingSequence {
            user: user.clone(),
            policy: policy.clone(),
            window: *window,
            knocks: knocks.iter().copied().map(access_to_api).collect(),
        })
        .collect()
}

/// The one-time keys as sent, ordered by user, counter.
fn otks_to_api(m: &desired::Material) -> Vec<api::OneTimeKey> {
    m.otks
        .iter()
        .map(|((user, counter), key)| api::OneTimeKey {
            user: user.clone(),
            counter: *counter,
            key: key.to_vec(),
        })
        .collect()
}

/// A revocation as the agent is sent it.
impl From<crate::fanout::Revocation> for api::RevokeGrants {
    fn from(r: crate::fanout::Revocation) -> Self {
        let crate::fanout::Revocation { grant_refs, users } = r;
        api::RevokeGrants { grant_refs, users }
    }
}
