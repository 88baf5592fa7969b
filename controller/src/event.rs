//! Events agents report: the wire `Event` validated into an audit row and,
//! for `grant.opened` / `grant.closed`, the grant-table change it implies.

use std::net::IpAddr;

use knockgate_proto::event::Kind;
use knockgate_proto::{Access, api};
use serde_json::{Map, Value};

use crate::convert::{access_from_api, ip_field, policy_name};
use crate::error::ServiceError;
use crate::name::{AgentName, PolicyName, UserName};
use crate::store::{NewAuditEvent, NewGrant, Timestamp};

/// Longest free-text field accepted (user, src, reason, grant ref).
const MAX_TEXT: usize = 256;

/// What a grant event changes in the grants table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantChange {
    /// A grant opened.
    Opened {
        /// The agent's id for it.
        grant_ref: String,
        /// Who knocked.
        user: Option<UserName>,
        /// The address let in.
        src: IpAddr,
        /// What was opened.
        access: Access,
        /// The policy that allowed it.
        policy: PolicyName,
        /// When it closes at the latest.
        expires_at: Timestamp,
    },
    /// A grant closed.
    Closed {
        /// The agent's id for it.
        grant_ref: String,
        /// Why ("expired", "revoked", ...).
        reason: String,
    },
}

/// One validated reported event, not yet tied to its agent.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportedEvent {
    /// The agent's sequence number.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Dotted kind.
    pub kind: String,
    /// User as claimed.
    pub user: Option<String>,
    /// Source address as text.
    pub src: Option<String>,
    /// Everything else, as one JSON object.
    pub detail: Value,
    /// The grant change, for grant events whose grant is usable.
    pub grant: Option<GrantChange>,
}

impl ReportedEvent {
    /// Why a grant event's grant could not be recorded, if it could not.
    pub fn grant_error(&self) -> Option<&str> {
        self.detail.get("grant_error").and_then(Value::as_str)
    }
}

impl ReportedEvent {
    /// The audit row for `agent`.
    pub fn audit_row(&self, agent: &AgentName) -> NewAuditEvent {
        NewAuditEvent {
            at: self.at,
            agent: Some(agent.clone()),
            agent_seq: Some(self.seq),
            kind: self.kind.clone(),
            user: self.user.clone(),
            src: self.src.clone(),
            detail: self.detail.clone(),
        }
    }

    /// The grant to record for `agent`, for `grant.opened`.
    pub fn new_grant(&self, agent: &AgentName) -> Option<NewGrant> {
        match &self.grant {
            Some(GrantChange::Opened {
                grant_ref,
                user,
                src,
                access,
                policy,
                expires_at,
            }) => Some(NewGrant {
                agent: agent.clone(),
                agent_ref: grant_ref.clone(),
                user: user.clone(),
                src: *src,
                proto: access.proto.as_str().to_owned(),
                port: access.port,
                policy: policy.clone(),
                opened_at: self.at,
                expires_at: *expires_at,
            }),
            _ => None,
        }
    }
}

fn text(field: String, name: &str, seq: u64) -> Result<Option<String>, ServiceError> {
    if field.len() > MAX_TEXT {
        return Err(ServiceError::invalid(format!(
            "event {seq}: {name} is longer than {MAX_TEXT} bytes"
        )));
    }
    Ok((!field.is_empty()).then_some(field))
}

fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl TryFrom<api::Event> for ReportedEvent {
    type Error = ServiceError;
    fn try_from(e: api::Event) -> Result<Self, Self::Error> {
        let api::Event {
            seq,
            at_unix_ms,
            kind,
            user,
            src,
            policy,
            reason,
            grant,
            detail_json,
        } = e;
        if !valid_kind(&kind) {
            return Err(ServiceError::invalid(format!(
                "event {seq}: kind {kind:?} must be 1 to 64 characters from a-z 0-9 . _ -"
            )));
        }
        let mut detail = detail_object(seq, &detail_json)?;
        let user = text(user, "user", seq)?;
        let src = text(src, "src", seq)?;
        let policy = text(policy, "policy", seq)?;
        let reason = text(reason, "reason", seq)?;
        if let Some(p) = &policy {
            detail.insert("policy".into(), Value::from(p.as_str()));
        }
        if let Some(r) = &reason {
            detail.insert("reason".into(), Value::from(r.as_str()));
        }
        if let Some(g) = &grant {
            detail.insert("grant".into(), grant_detail(g));
        }
        let change = match kind.parse::<Kind>() {
            Ok(grant_kind @ (Kind::GrantOpened | Kind::GrantClosed)) => {
                let change = grant
                    .ok_or_else(|| {
                        ServiceError::invalid(format!("event {seq}: {kind} without grant"))
                    })
                    .and_then(|g| {
                        grant_change(
                            seq,
                            grant_kind,
                            &g,
                            user.as_deref(),
                            src.as_deref(),
                            policy.as_deref(),
                            reason.as_deref(),
                        )
                    });
                usable(change, &mut detail)
            }
            _ => None,
        };
        Ok(Self {
            seq,
            at: Timestamp::from_unix_millis(at_unix_ms),
            kind,
            user,
            src,
            detail: Value::Object(detail),
            grant: change,
        })
    }
}

/// The event's `detail_json`: empty, or a JSON object.
fn detail_object(seq: u64, detail_json: &str) -> Result<Map<String, Value>, ServiceError> {
    match detail_json {
        "" => Ok(Map::new()),
        s => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(ServiceError::invalid(format!(
                "event {seq}: detail_json is not a JSON object"
            ))),
        },
    }
}

/// The grant change of a grant event, or `None` with the reason recorded in
/// `detail` as `grant_error`. An unusable grant still leaves its audit row:
/// refusing the batch would stall the agent's at-least-once delivery for good.
fn usable(
    change: Result<GrantChange, ServiceError>,
    detail: &mut Map<String, Value>,
) -> Option<GrantChange> {
    match change {
        Ok(c) => Some(c),
        Err(e) => {
            detail.insert("grant_error".into(), Value::from(e.to_string()));
            None
        }
    }
}

fn grant_detail(g: &api::GrantInfo) -> Value {
    let access = access_from_api(g.access.as_ref().unwrap_or(&api::Access::default()))
        .map(|a| a.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "grant_ref": g.grant_ref,
        "addr": g.addr,
        "access": access,
        "expires_at_unix_ms": g.expires_at_unix_ms,
    })
}

fn grant_change(
    seq: u64,
    kind: Kind,
    g: &api::GrantInfo,
    user: Option<&str>,
    src: Option<&str>,
    policy: Option<&str>,
    reason: Option<&str>,
) -> Result<GrantChange, ServiceError> {
    let field = |f: &str| format!("event {seq}: grant.{f}");
    if g.grant_ref.is_empty() || g.grant_ref.len() > MAX_TEXT {
        return Err(ServiceError::invalid(format!(
            "{}: must be 1 to {MAX_TEXT} bytes",
            field("grant_ref")
        )));
    }
    if kind == Kind::GrantClosed {
        return Ok(GrantChange::Closed {
            grant_ref: g.grant_ref.clone(),
            reason: reason.unwrap_or("closed").to_owned(),
        });
    }
    let addr = if g.addr.is_empty() {
        src.unwrap_or_default()
    } else {
        g.addr.as_str()
    };
    let access = g
        .access
        .as_ref()
        .ok_or_else(|| ServiceError::invalid(format!("{}: missing", field("access"))))
        .and_then(|a| {
            access_from_api(a)
                .map_err(|e| ServiceError::invalid(format!("{}: {e}", field("access"))))
        })?;
    let user = user
        .map(|u| {
            UserName::new(u).map_err(|e| ServiceError::invalid(format!("event {seq}: user: {e}")))
        })
        .transpose()?;
    Ok(GrantChange::Opened {
        grant_ref: g.grant_ref.clone(),
        user,
        src: ip_field(&field("addr"), addr)?,
        access,
        policy: policy_name(&format!("event {seq}: policy"), policy.unwrap_or_default())?,
        expires_at: Timestamp::from_unix_millis(g.expires_at_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::access_to_api;

    fn opened() -> api::Event {
        api::Event {
            seq: 7,
            at_unix_ms: 1000,
            kind: Kind::GrantOpened.as_str().into(),
            user: "alice".into(),
            src: "192.0.2.7".into(),
            policy: "ssh".into(),
            grant: Some(api::GrantInfo {
                grant_ref: "g1".into(),
                addr: String::new(),
                access: Some(access_to_api(Access::tcp(22))),
                expires_at_unix_ms: 31_000,
            }),
            detail_json: r#"{"method":"spa"}"#.into(),
            ..api::Event::default()
        }
    }

    #[test]
    fn grant_opened_becomes_a_grant_and_a_row() {
        let e = ReportedEvent::try_from(opened()).unwrap();
        let agent = AgentName::new("gw1").unwrap();
        let g = e.new_grant(&agent).unwrap();
        assert_eq!(
            (g.agent_ref.as_str(), g.port, g.proto.as_str()),
            ("g1", 22, "tcp")
        );
        assert_eq!(g.src.to_string(), "192.0.2.7");
        let row = e.audit_row(&agent);
        assert_eq!(row.agent_seq, Some(7));
        assert_eq!(row.detail["method"], "spa");
        assert_eq!(row.detail["grant"]["access"], "tcp/22");
    }

    #[test]
    fn malformed_events_name_the_problem() {
        let err = |e: api::Event| ReportedEvent::try_from(e).unwrap_err().to_string();
        assert!(
            err(api::Event {
                kind: "Bad Kind".into(),
                ..opened()
            })
            .contains("kind")
        );
        assert!(
            err(api::Event {
                detail_json: "[1]".into(),
                ..opened()
            })
            .contains("detail_json")
        );
        let plain = api::Event {
            kind: "spa.rejected".into(),
            grant: None,
            ..opened()
        };
        assert_eq!(ReportedEvent::try_from(plain).unwrap().grant, None);
    }

    #[test]
    fn unusable_grants_keep_their_audit_row() {
        let grant_error = |e: api::Event| {
            let e = ReportedEvent::try_from(e).unwrap();
            assert!(e.grant.is_none());
            e.grant_error().unwrap().to_owned()
        };
        assert!(
            grant_error(api::Event {
                grant: None,
                ..opened()
            })
            .contains("without grant")
        );
        assert!(
            grant_error(api::Event {
                src: "nope".into(),
                ..opened()
            })
            .contains("grant.addr")
        );
        assert!(
            grant_error(api::Event {
                policy: String::new(),
                ..opened()
            })
            .contains("policy")
        );
    }
}
