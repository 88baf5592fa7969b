//! Policies as the controller understands them: the validated [`PolicyDef`],
//! its stored JSON form ([`RawPolicy`]), agent label selectors and knock
//! steps. Pure: no store, no gRPC; the edges convert to and from these.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use knockgate_proto::Access;
use serde::{Deserialize, Serialize};

use crate::name::{PolicyName, UserName, is_valid_name};
use crate::store::User;

/// Longest label key or value.
const MAX_LABEL_LEN: usize = 63;

/// A policy field that does not validate. Displays as `field: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPolicy {
    /// The offending field, e.g. `open[1]` or `max_timeout_secs`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidPolicy {
    InvalidPolicy {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The stored (JSON) and wire-neutral form of a policy's body: plain strings
/// and numbers, validated by [`PolicyDef::validate`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawPolicy {
    /// Protected ports, `tcp/22`.
    pub open: Vec<String>,
    /// Users admitted by name.
    pub users: Vec<String>,
    /// Users admitted by group.
    pub groups: Vec<String>,
    /// Agent label selector, `k=v[,k=v]`; empty selects every agent.
    pub agents: String,
    /// Default grant lifetime.
    pub timeout_secs: u32,
    /// Longest grant a client may ask for (0 = `timeout_secs`).
    pub max_timeout_secs: u32,
    /// Native SPA opens it.
    pub spa: bool,
    /// fwknop SPA opens it.
    pub fwknop: bool,
    /// Knock sequence, `tcp/7000`, `udp/8000`, `icmp`.
    pub sequence: Vec<String>,
    /// Whole sequence within this (0 = the agent's default).
    pub sequence_timeout_secs: u32,
}

/// One step of a knock sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KnockStep {
    /// A TCP or UDP packet to a port.
    Port(Access),
    /// An ICMP echo request.
    Icmp,
}

impl FromStr for KnockStep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "icmp" {
            return Ok(Self::Icmp);
        }
        s.parse()
            .map(Self::Port)
            .map_err(|e| format!("{s:?}: {e} (write tcp/PORT, udp/PORT or icmp)"))
    }
}

impl fmt::Display for KnockStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(a) => a.fmt(f),
            Self::Icmp => f.write_str("icmp"),
        }
    }
}

/// An agent label selector: every `key=value` must match; empty matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// Whether an agent with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut terms = BTreeMap::new();
        if s.is_empty() {
            return Ok(Self(terms));
        }
        for term in s.split(',') {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("{term:?} is not key=value"))?;
            validate_label(k, v)?;
            if terms.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(format!("key {k:?} appears twice"));
            }
        }
        Ok(Self(terms))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Checks an agent label: key and value are 1 to 63 characters from
/// `A-Z a-z 0-9 . _ / -`, so `k=v,k=v` selectors stay unambiguous.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_LABEL_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    };
    if !ok(key) {
        return Err(format!(
            "label key {key:?} must be 1 to 63 characters from A-Z a-z 0-9 . _ / -"
        ));
    }
    if !ok(value) {
        return Err(format!(
            "label value {value:?} must be 1 to 63 characters from A-Z a-z 0-9 . _ / -"
        ));
    }
    Ok(())
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDef {
    /// Unique name.
    pub name: PolicyName,
    /// Protected ports.
    pub open: BTreeSet<Access>,
    /// Users admitted by name.
    pub users: BTreeSet<UserName>,
    /// Users admitted by group.
    pub groups: BTreeSet<String>,
    /// Which agents enforce it.
    pub agents: Selector,
    /// Default grant lifetime (> 0).
    pub timeout_secs: u32,
    /// Longest grant a client may ask for (>= `timeout_secs`).
    pub max_timeout_secs: u32,
    /// Native SPA opens it.
    pub spa: bool,
    /// fwknop SPA opens it.
    pub fwknop: bool,
    /// Knock sequence (may be empty when SPA or fwknop opens it).
    pub sequence: Vec<KnockStep>,
    /// Whole sequence within this (0 = the agent's default).
    pub sequence_timeout_secs: u32,
}

impl PolicyDef {
    /// Validates a policy body under `name`. `max_timeout_secs = 0` becomes
    /// `timeout_secs`.
    pub fn validate(name: &str, raw: RawPolicy) -> Result<Self, InvalidPolicy> {
        let name = PolicyName::new(name).map_err(|e| invalid("name", e.to_string()))?;
        if raw.open.is_empty() {
            return Err(invalid(
                "open",
                "at least one tcp/PORT or udp/PORT is required",
            ));
        }
        let mut open = BTreeSet::new();
        for (i, a) in raw.open.iter().enumerate() {
            let access = a
                .parse::<Access>()
                .map_err(|e| invalid(format!("open[{i}]"), format!("{a:?}: {e}")))?;
            open.insert(access);
        }
        let users = raw
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                UserName::new(u).map_err(|e| invalid(format!("users[{i}]"), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let mut groups = BTreeSet::new();
        for (i, g) in raw.groups.iter().enumerate() {
            if !is_valid_name(g) {
                return Err(invalid(
                    format!("groups[{i}]"),
                    format!(
                        "invalid group name {g:?}: expected 1 to 64 characters from a-z 0-9 . _ -"
                    ),
                ));
            }
            groups.insert(g.clone());
        }
        let agents = raw.agents.parse().map_err(|e| invalid("agents", e))?;
        if raw.timeout_secs == 0 {
            return Err(invalid("timeout_secs", "must be greater than 0"));
        }
        let max_timeout_secs = match raw.max_timeout_secs {
            0 => raw.timeout_secs,
            m if m < raw.timeout_secs => {
                return Err(invalid(
                    "max_timeout_secs",
                    format!("{m} is less than timeout_secs {}", raw.timeout_secs),
                ));
            }
            m => m,
        };
        let sequence = raw
            .sequence
            .iter()
            .enumerate()
            .map(|(i, s)| s.parse().map_err(|e| invalid(format!("sequence[{i}]"), e)))
            .collect::<Result<Vec<KnockStep>, _>>()?;
        if !raw.spa && !raw.fwknop && sequence.is_empty() {
            return Err(invalid(
                "spa/fwknop/sequence",
                "at least one knock method is required (spa, fwknop or a sequence)",
            ));
        }
        Ok(Self {
            name,
            open,
            users,
            groups,
            agents,
            timeout_secs: raw.timeout_secs,
            max_timeout_secs,
            spa: raw.spa,
            fwknop: raw.fwknop,
            sequence,
            sequence_timeout_secs: raw.sequence_timeout_secs,
        })
    }

    /// Reads a stored policy back.
    pub fn from_json(name: &str, spec: &serde_json::Value) -> Result<Self, InvalidPolicy> {
        let raw = RawPolicy::deserialize(spec).map_err(|e| invalid("spec", e.to_string()))?;
        Self::validate(name, raw)
    }

    /// The body in its stored and wire-neutral form.
    pub fn to_raw(&self) -> RawPolicy {
        RawPolicy {
            open: self.open.iter().map(ToString::to_string).collect(),
            users: self.users.iter().map(ToString::to_string).collect(),
            groups: self.groups.iter().cloned().collect(),
            agents: self.agents.to_string(),
            timeout_secs: self.timeout_secs,
            max_timeout_secs: self.max_timeout_secs,
            spa: self.spa,
            fwknop: self.fwknop,
            sequence: self.sequence.iter().map(ToString::to_string).collect(),
            sequence_timeout_secs: self.sequence_timeout_secs,
        }
    }

    /// The body as stored JSON.
    pub fn to_json(&self) -> serde_json::Value {
        // A struct of strings, numbers and bools always serialises.
        serde_json::to_value(self.to_raw()).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the policy admits `user`: named, or in one of its groups, and
    /// not disabled.
    pub fn admits(&self, user: &User) -> bool {
        !user.disabled
            && (self.users.contains(&user.name) || !self.groups.is_disjoint(&user.groups))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw() -> RawPolicy {
        RawPolicy {
            open: vec!["tcp/22".into()],
            users: vec!["alice".into()],
            agents: "role=edge".into(),
            timeout_secs: 30,
            spa: true,
            ..RawPolicy::default()
        }
    }

    fn err(r: RawPolicy) -> String {
        PolicyDef::validate("ssh", r).unwrap_err().to_string()
    }

    #[test]
    fn validates_and_round_trips() {
        let mut r = raw();
        r.sequence = vec!["tcp/7000".into(), "icmp".into(), "udp/8000".into()];
        let p = PolicyDef::validate("ssh", r).unwrap();
        assert_eq!(p.max_timeout_secs, 30);
        assert_eq!(p.sequence[1], KnockStep::Icmp);
        let back = PolicyDef::from_json("ssh", &p.to_json()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.to_raw().sequence, ["tcp/7000", "icmp", "udp/8000"]);
    }

    #[test]
    fn names_the_bad_field() {
        assert!(
            err(RawPolicy {
                open: vec![],
                ..raw()
            })
            .starts_with("open:")
        );
        assert!(
            err(RawPolicy {
                open: vec!["tcp/22".into(), "sctp/1".into()],
                ..raw()
            })
            .starts_with("open[1]:")
        );
        assert!(
            err(RawPolicy {
                timeout_secs: 0,
                ..raw()
            })
            .starts_with("timeout_secs:")
        );
        assert!(
            err(RawPolicy {
                max_timeout_secs: 10,
                ..raw()
            })
            .starts_with("max_timeout_secs:")
        );
        assert!(
            err(RawPolicy {
                users: vec!["Bob".into()],
                ..raw()
            })
            .starts_with("users[0]:")
        );
        assert!(
            err(RawPolicy {
                agents: "role".into(),
                ..raw()
            })
            .starts_with("agents:")
        );
        assert!(
            err(RawPolicy {
                sequence: vec!["icmp6".into()],
                ..raw()
            })
            .starts_with("sequence[0]:")
        );
        assert!(
            err(RawPolicy {
                spa: false,
                ..raw()
            })
            .starts_with("spa/fwknop/sequence:")
        );
        assert!(
            PolicyDef::validate("Bad", raw())
                .unwrap_err()
                .to_string()
                .starts_with("name:")
        );
    }

    #[test]
    fn selectors_match_every_term() {
        let s: Selector = "role=edge,site=par".parse().unwrap();
        let labels = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        assert!(s.matches(&labels(&[("role", "edge"), ("site", "par"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("role", "edge")])));
        assert!(Selector::default().matches(&labels(&[])));
        assert_eq!(s.to_string(), "role=edge,site=par");
        for bad in ["role", "=x", "role=", "a=b,a=c", "a=b,", "a b=c"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }
}
