//! Policies as the controller understands them: the validated [`PolicyDef`],
//! its stored JSON form ([`RawPolicy`]); agent label selectors live in
//! `selector`, the knock methods' own settings in `methods`. Pure: no store, no gRPC; the
//! edges convert to and from these.

mod forward;
mod methods;
mod selector;

use std::collections::BTreeSet;

use knockgate_proto::knock::FlagFilter;
use knockgate_proto::{Access, Forward};
use serde::{Deserialize, Serialize};

pub use methods::{
    DEFAULT_LENGTH, DEFAULT_PORT_HI, DEFAULT_PORT_LO, DEFAULT_WINDOW_SECS, KnockStep,
    MIN_WINDOW_SECS, OtkOffline, Rotation,
};
pub use selector::{Selector, validate_label};

use crate::name::{PolicyName, UserName, is_valid_name};
use crate::store::User;

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
    /// Sealed knock sequences (`proto/sealed.md`) open it.
    pub sealed: bool,
    /// The sequence's TCP SYNs must fingerprint (p0f) as one of these OS names.
    pub require_os: Vec<String>,
    /// Knock sequence, `tcp/7000`, `udp/8000`, `icmp`.
    pub sequence: Vec<String>,
    /// Whole sequence within this (0 = the agent's default).
    pub sequence_timeout_secs: u32,
    /// Rotating sequences open it.
    pub rotating: bool,
    /// Knocks per rotating sequence (0 = 4).
    pub rotating_length: u32,
    /// `tcp`, `udp`, or empty for both.
    pub rotating_protos: String,
    /// Lowest rotating knock port (0 = 20000).
    pub rotating_port_lo: u32,
    /// Highest rotating knock port (0 = 60000).
    pub rotating_port_hi: u32,
    /// Rotating window length (0 = 30).
    pub window_secs: u32,
    /// One-time SPA keys open it.
    pub otk: bool,
    /// `deny` (or empty) or `local`.
    pub otk_offline: String,
    /// Sequence: least time between two knocks, ms (0 = none).
    pub min_gap_ms: u32,
    /// Sequence: most time between two knocks, ms (0 = no limit).
    pub max_gap_ms: u32,
    /// Sequence (fixed or rotating): TCP knock flags, `syn,!ack`; empty = the default.
    pub tcp_flags: String,
    /// Forwards, `tcp/2222 -> 10.0.0.5:22`: the outer port is opened and a grant on it
    /// reaches the inner host (`forward`).
    pub forward: Vec<String>,
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
    /// Sealed knock sequences open it (under the users' SPA keys).
    pub sealed: bool,
    /// OS names (p0f labels) the sequence's TCP SYNs must be fingerprinted as; empty: any.
    pub require_os: Vec<String>,
    /// Knock sequence (may be empty when SPA or fwknop opens it).
    pub sequence: Vec<KnockStep>,
    /// Whole sequence within this (0 = the agent's default).
    pub sequence_timeout_secs: u32,
    /// Rotating sequences open it, with these settings.
    pub rotating: Option<Rotation>,
    /// One-time SPA keys open it, with this offline rule.
    pub otk: Option<OtkOffline>,
    /// Least time between two knocks of the sequence, ms (0 = none).
    pub min_gap_ms: u32,
    /// Most time between two knocks of the sequence, ms (0 = no limit).
    pub max_gap_ms: u32,
    /// The TCP flags a sequence knock must carry (None = the agent's default).
    pub tcp_flags: Option<FlagFilter>,
    /// Where grants on some of `open` lead instead of the gateway itself.
    pub forward: Vec<Forward>,
}

impl PolicyDef {
    /// Validates a policy body under `name`. `max_timeout_secs = 0` becomes
    /// `timeout_secs`.
    pub fn validate(name: &str, raw: RawPolicy) -> Result<Self, InvalidPolicy> {
        let name = PolicyName::new(name).map_err(|e| invalid("name", e.to_string()))?;
        // Forwards (`forward`): their outer ports join `open`.
        let forward = forward::parse(&raw.forward)?;
        let open = protected_ports(&raw.open, !forward.is_empty())?;
        let open = forward::with_outer_ports(open, &forward);
        let users = user_names(&raw.users)?;
        let groups = group_names(&raw.groups)?;
        let agents = raw.agents.parse().map_err(|e| invalid("agents", e))?;
        let max_timeout_secs = grant_timeouts(&raw)?;
        let sequence = knock_steps(&raw.sequence)?;
        let rotating = methods::rotation(&raw, &open)?;
        let otk = methods::otk(&raw)?;
        let (min_gap_ms, max_gap_ms, tcp_flags) = methods::timing(&raw, &sequence, &rotating)?;
        let require_os = methods::require_os(&raw.require_os, &sequence)?;
        if !raw.spa
            && !raw.fwknop
            && !raw.sealed
            && sequence.is_empty()
            && rotating.is_none()
            && otk.is_none()
        {
            return Err(invalid(
                "spa/fwknop/sealed/sequence/rotating/otk",
                "at least one knock method is required (spa, fwknop, sealed, a sequence, rotating or otk)",
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
            sealed: raw.sealed,
            require_os,
            sequence,
            sequence_timeout_secs: raw.sequence_timeout_secs,
            rotating,
            otk,
            min_gap_ms,
            max_gap_ms,
            tcp_flags,
            forward,
        })
    }

    /// Reads a stored policy back.
    pub fn from_json(name: &str, spec: &serde_json::Value) -> Result<Self, InvalidPolicy> {
        let raw = RawPolicy::deserialize(spec).map_err(|e| invalid("spec", e.to_string()))?;
        Self::validate(name, raw)
    }

    /// The body in its stored and wire-neutral form.
    pub fn to_raw(&self) -> RawPolicy {
        let mut raw = RawPolicy {
            open: self.open.iter().map(ToString::to_string).collect(),
            users: self.users.iter().map(ToString::to_string).collect(),
            groups: self.groups.iter().cloned().collect(),
            agents: self.agents.to_string(),
            timeout_secs: self.timeout_secs,
            max_timeout_secs: self.max_timeout_secs,
            spa: self.spa,
            fwknop: self.fwknop,
            sealed: self.sealed,
            require_os: self.require_os.clone(),
            sequence: self.sequence.iter().map(ToString::to_string).collect(),
            sequence_timeout_secs: self.sequence_timeout_secs,
            min_gap_ms: self.min_gap_ms,
            max_gap_ms: self.max_gap_ms,
            tcp_flags: self.tcp_flags.map(|f| f.to_string()).unwrap_or_default(),
            forward: self.forward.iter().map(ToString::to_string).collect(),
            ..RawPolicy::default()
        };
        methods::fill_raw(&mut raw, self.rotating.as_ref(), self.otk);
        raw
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

/// The `open` field: at least one port (none needed when the policy forwards), each
/// `tcp/PORT` or `udp/PORT`.
fn protected_ports(open: &[String], forwarding: bool) -> Result<BTreeSet<Access>, InvalidPolicy> {
    if open.is_empty() && !forwarding {
        return Err(invalid(
            "open",
            "at least one tcp/PORT or udp/PORT is required (or a forward)",
        ));
    }
    let mut out = BTreeSet::new();
    for (i, a) in open.iter().enumerate() {
        let access = a
            .parse::<Access>()
            .map_err(|e| invalid(format!("open[{i}]"), format!("{a:?}: {e}")))?;
        out.insert(access);
    }
    Ok(out)
}

/// The `users` field, each a valid user name.
fn user_names(users: &[String]) -> Result<BTreeSet<UserName>, InvalidPolicy> {
    users
        .iter()
        .enumerate()
        .map(|(i, u)| UserName::new(u).map_err(|e| invalid(format!("users[{i}]"), e.to_string())))
        .collect()
}

/// The `groups` field, each a valid name.
fn group_names(groups: &[String]) -> Result<BTreeSet<String>, InvalidPolicy> {
    let mut out = BTreeSet::new();
    for (i, g) in groups.iter().enumerate() {
        if !is_valid_name(g) {
            return Err(invalid(
                format!("groups[{i}]"),
                format!("invalid group name {g:?}: expected 1 to 64 characters from a-z 0-9 . _ -"),
            ));
        }
        out.insert(g.clone());
    }
    Ok(out)
}

/// Checks `timeout_secs` and returns the longest grant a client may ask for:
/// `max_timeout_secs`, or `timeout_secs` when that is 0.
fn grant_timeouts(raw: &RawPolicy) -> Result<u32, InvalidPolicy> {
    if raw.timeout_secs == 0 {
        return Err(invalid("timeout_secs", "must be greater than 0"));
    }
    match raw.max_timeout_secs {
        0 => Ok(raw.timeout_secs),
        m if m < raw.timeout_secs => Err(invalid(
            "max_timeout_secs",
            format!("{m} is less than timeout_secs {}", raw.timeout_secs),
        )),
        m => Ok(m),
    }
}

/// The fixed knock `sequence`, each step parsed.
fn knock_steps(sequence: &[String]) -> Result<Vec<KnockStep>, InvalidPolicy> {
    sequence
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| invalid(format!("sequence[{i}]"), format!("{s:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
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
    fn sequence_timing_and_flags_are_checked_and_kept() {
        let mut r = raw();
        r.sequence = vec!["7000".into(), "8000:udp".into()];
        r.min_gap_ms = 100;
        r.max_gap_ms = 2000;
        r.tcp_flags = "SYN,!ack".into();
        let p = PolicyDef::validate("ssh", r.clone()).unwrap();
        assert_eq!(
            p.tcp_flags,
            Some(knockgate_proto::knock::FlagFilter::DEFAULT)
        );
        let back = PolicyDef::from_json("ssh", &p.to_json()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.to_raw().sequence, ["tcp/7000", "udp/8000"]);
        assert_eq!(back.to_raw().tcp_flags, "syn,!ack");
        for (edit, want) in [
            (
                RawPolicy {
                    max_gap_ms: 50,
                    ..r.clone()
                },
                "max_gap_ms: is shorter than min_gap_ms",
            ),
            (
                RawPolicy {
                    tcp_flags: "syn,!syn".into(),
                    ..r.clone()
                },
                "tcp_flags:",
            ),
            (
                RawPolicy {
                    sequence: vec![],
                    ..r.clone()
                },
                "min_gap_ms: set without a sequence",
            ),
            (
                RawPolicy {
                    sequence: vec![],
                    min_gap_ms: 0,
                    max_gap_ms: 0,
                    ..r.clone()
                },
                "tcp_flags: set without a sequence",
            ),
        ] {
            let e = err(edit);
            assert!(e.starts_with(want), "{e}");
        }
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
                require_os: vec!["Linux".into()],
                sequence: vec!["udp/7000".into()],
                ..raw()
            })
            .starts_with("require_os: needs a TCP knock")
        );
        assert!(
            err(RawPolicy {
                require_os: vec![String::new()],
                sequence: vec!["tcp/7000".into()],
                ..raw()
            })
            .starts_with("require_os[0]:")
        );
        assert!(
            err(RawPolicy {
                spa: false,
                ..raw()
            })
            .starts_with("spa/fwknop/sealed/sequence/rotating/otk:")
        );
        assert!(
            PolicyDef::validate("Bad", raw())
                .unwrap_err()
                .to_string()
                .starts_with("name:")
        );
    }
}
