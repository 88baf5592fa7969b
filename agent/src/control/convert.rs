//! The controller's `AgentConfig` into the core's users and policy definitions. Every
//! field of the wire types is destructured, so a field added to the proto does not
//! compile until it is handled here; errors name the field (`policies["ssh"].open[1].port`)
//! and never echo key material. What the wire form cannot get wrong by itself (a policy
//! naming a missing user, a knock port that is also protected) is left to the core's
//! validation, shared with the config file; so is whether the derived material fits the
//! policies and users it came with.

use std::time::Duration;

use knockgate_agent_core::config::{MaterialDef, OtkDef, OtkOffline, PolicyDef, SequenceDef, User};
use knockgate_agent_core::packet::KnockStep;
use knockgate_agent_core::ruleset::{Access, Proto};
use knockgate_proto::api;
use knockgate_proto::fwknop::{FwknopKeyError, FwknopKeys, HmacType};
use knockgate_proto::knock::FlagFilter;
use knockgate_proto::spa::SpaKey;

/// A field of the controller's config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidConfig {
    pub field: String,
    pub message: String,
}

/// The users, policies and derived material of one full `AgentConfig`, ready for the
/// core's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub version: u64,
    pub users: Vec<User>,
    pub policies: Vec<PolicyDef>,
    pub material: MaterialDef,
}

impl TryFrom<&api::AgentConfig> for PolicySet {
    type Error = InvalidConfig;

    /// Only for a full config (deltas are merged into one first, see `delta`).
    fn try_from(c: &api::AgentConfig) -> Result<Self, Self::Error> {
        let api::AgentConfig {
            version,
            full,
            base_version: _,
            policies,
            users,
            removed_policies,
            removed_users,
            rotating,
            one_time_keys,
            // Merged already: a full config carries the complete lists.
            material_changed: _,
        } = c;
        if !full || !removed_policies.is_empty() || !removed_users.is_empty() {
            return Err(invalid("full", "expected a full config, not a delta"));
        }
        let users = users
            .iter()
            .enumerate()
            .map(|(i, u)| user(&item("users", i, &u.name), u))
            .collect::<Result<_, _>>()?;
        let policies = policies
            .iter()
            .enumerate()
            .map(|(i, p)| policy(&item("policies", i, &p.name), p))
            .collect::<Result<_, _>>()?;
        let rotating = rotating
            .iter()
            .enumerate()
            .map(|(i, s)| sequence(&format!("rotating[{i}]"), s))
            .collect::<Result<_, _>>()?;
        let otks = one_time_keys
            .iter()
            .enumerate()
            .map(|(i, k)| one_time_key(&format!("one_time_keys[{i}]"), k))
            .collect::<Result<_, _>>()?;
        Ok(PolicySet {
            version: *version,
            users,
            policies,
            material: MaterialDef { rotating, otks },
        })
    }
}

fn sequence(at: &str, s: &api::RotatingSequence) -> Result<SequenceDef, InvalidConfig> {
    let api::RotatingSequence {
        user,
        policy,
        window,
        knocks,
    } = s;
    let knocks = knocks
        .iter()
        .enumerate()
        .map(|(i, a)| {
            access(&format!("{at}.knocks[{i}]"), a)
                .map(|Access { proto, port }| KnockStep::Port { proto, port })
        })
        .collect::<Result<_, _>>()?;
    Ok(SequenceDef {
        user: user.clone(),
        policy: policy.clone(),
        window: *window,
        knocks,
    })
}

fn one_time_key(at: &str, k: &api::OneTimeKey) -> Result<OtkDef, InvalidConfig> {
    let api::OneTimeKey { user, counter, key } = k;
    Ok(OtkDef {
        user: user.clone(),
        counter: *counter,
        key: secret_key(&format!("{at}.key"), key)?,
    })
}

/// A 32-byte native SPA secret; the error never shows the bytes.
fn secret_key(at: &str, bytes: &[u8]) -> Result<SpaKey, InvalidConfig> {
    let mut secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid(at, format!("must be 32 bytes, not {}", bytes.len())))?;
    let key = SpaKey::from_secret(secret);
    zeroize::Zeroize::zeroize(&mut secret);
    Ok(key)
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

/// `policies["ssh"]`, or `policies[3]` for an unnamed one.
fn item(list: &str, i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{list}[{i}]")
    } else {
        format!("{list}[{name:?}]")
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

fn policy(at: &str, p: &api::Policy) -> Result<PolicyDef, InvalidConfig> {
    let api::Policy {
        name,
        open,
        timeout_secs,
        max_timeout_secs,
        users,
        spa,
        fwknop,
        sequence,
        sequence_timeout_secs,
        rotating,
        window_secs,
        otk,
        otk_offline,
        min_gap_ms,
        max_gap_ms,
        tcp_flags,
        sealed,
        require_os,
        forward,
    } = p;
    let field = |f: &str| format!("{at}.{f}");
    let ms = |n: u32| (n != 0).then(|| Duration::from_millis(u64::from(n)));
    let tcp_flags = flags(&field("tcp_flags"), tcp_flags)?;
    let otk = otk_rule(&field("otk_offline"), *otk, otk_offline)?;
    if *timeout_secs == 0 {
        return Err(invalid(field("timeout_secs"), "must be more than 0"));
    }
    if *max_timeout_secs != 0 && max_timeout_secs < timeout_secs {
        return Err(invalid(
            field("max_timeout_secs"),
            "is less than timeout_secs",
        ));
    }
    let open = open
        .iter()
        .enumerate()
        .map(|(i, a)| access(&field(&format!("open[{i}]")), a))
        .collect::<Result<_, _>>()?;
    let sequence = knocks(&field("sequence"), sequence)?;
    Ok(PolicyDef {
        name: name.clone(),
        open,
        timeout: secs(*timeout_secs),
        // 0: the client may ask for no more than the default.
        max_timeout: (*max_timeout_secs != 0).then(|| secs(*max_timeout_secs)),
        // 0: the default (10 s); only meaningful with a sequence, fixed or rotating.
        sequence_timeout: (*sequence_timeout_secs != 0 && (!sequence.is_empty() || *rotating))
            .then(|| secs(*sequence_timeout_secs)),
        sequence,
        min_gap: ms(*min_gap_ms),
        max_gap: ms(*max_gap_ms),
        tcp_flags,
        users: users.clone(),
        spa: *spa,
        fwknop: *fwknop,
        rotating: *rotating,
        // 0: the default (30 s); only meaningful with rotating.
        window_secs: (*window_secs != 0 && *rotating).then_some(*window_secs),
        otk,
        sealed: *sealed,
        require_os: require_os.clone(),
        forward: forwards(&field("forward"), forward)?,
    })
}

/// `tcp/2222 -> 10.0.0.5:22`, each parsed by the one parser ([`knockgate_proto::Forward`]).
fn forwards(at: &str, text: &[String]) -> Result<Vec<knockgate_proto::Forward>, InvalidConfig> {
    text.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| invalid(format!("{at}[{i}]"), format!("bad forward {s:?}: {e}")))
        })
        .collect()
}

/// A TCP flag filter; empty is the default.
fn flags(at: &str, text: &str) -> Result<Option<FlagFilter>, InvalidConfig> {
    match text {
        "" => Ok(None),
        text => text
            .parse::<FlagFilter>()
            .map(Some)
            .map_err(|e| invalid(at, e.to_string())),
    }
}

/// The one-time-key offline rule, set only with `otk`; empty is the default.
fn otk_rule(at: &str, otk: bool, rule: &str) -> Result<Option<OtkOffline>, InvalidConfig> {
    match (otk, rule) {
        (false, "") => Ok(None),
        (false, _) => Err(invalid(at, "set without otk")),
        (true, "") => Ok(Some(OtkOffline::default())),
        (true, rule) => rule
            .parse::<OtkOffline>()
            .map(Some)
            .map_err(|e| invalid(at, e.to_string())),
    }
}

/// A knock sequence, each step `tcp/PORT`, `udp/PORT` or `icmp`.
fn knocks(at: &str, steps: &[String]) -> Result<Vec<KnockStep>, InvalidConfig> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<KnockStep>()
                .map_err(|e| invalid(format!("{at}[{i}]"), format!("bad knock {s:?}: {e}")))
        })
        .collect()
}

fn access(at: &str, a: &api::Access) -> Result<Access, InvalidConfig> {
    let api::Access { proto, port } = a;
    let proto = match api::Proto::try_from(*proto) {
        Ok(api::Proto::Tcp) => Proto::Tcp,
        Ok(api::Proto::Udp) => Proto::Udp,
        Ok(api::Proto::Unspecified) => {
            return Err(invalid(format!("{at}.proto"), "unspecified"));
        }
        Err(_) => {
            return Err(invalid(
                format!("{at}.proto"),
                format!("unknown value {proto}"),
            ));
        }
    };
    let port = u16::try_from(*port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid(format!("{at}.port"), format!("{port} is not 1-65535")))?;
    Ok(Access { proto, port })
}

fn user(at: &str, u: &api::User) -> Result<User, InvalidConfig> {
    let api::User {
        name,
        spa_key,
        fwknop_key,
        fwknop_hmac_key,
        fwknop_hmac,
    } = u;
    let field = |f: &str| format!("{at}.{f}");
    let spa_key = if spa_key.is_empty() {
        None
    } else {
        Some(secret_key(&field("spa_key"), spa_key)?)
    };
    let fwknop = match (fwknop_key.is_empty(), fwknop_hmac_key.is_empty()) {
        (true, true) => {
            if !fwknop_hmac.is_empty() {
                return Err(invalid(field("fwknop_hmac"), "set without fwknop_key"));
            }
            None
        }
        (false, true) => {
            return Err(invalid(
                field("fwknop_hmac_key"),
                "required with fwknop_key",
            ));
        }
        (true, false) => {
            return Err(invalid(
                field("fwknop_key"),
                "required with fwknop_hmac_key",
            ));
        }
        (false, false) => {
            let kind = if fwknop_hmac.is_empty() {
                HmacType::Sha256
            } else {
                fwknop_hmac.parse().map_err(|_| {
                    invalid(
                        field("fwknop_hmac"),
                        format!("unknown {fwknop_hmac:?} (sha1, sha256, sha384, sha512)"),
                    )
                })?
            };
            let keys = FwknopKeys::new(fwknop_key.clone(), fwknop_hmac_key.clone(), kind).map_err(
                |e| {
                    let f = match e {
                        FwknopKeyError::HmacKeyLength(_) => "fwknop_hmac_key",
                        _ => "fwknop_key",
                    };
                    invalid(field(f), e.to_string())
                },
            )?;
            Some(keys)
        }
    };
    Ok(User {
        name: name.clone(),
        spa_key,
        fwknop,
    })
}

#[cfg(test)]
pub(crate) mod tests;
