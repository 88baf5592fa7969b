//! Config messages from the controller merged into the full config the agent holds. A
//! full message replaces it; a delta applies on top of `base_version` only: upserts by
//! name (a changed entry keeps its place, a new one goes last), then removals; its derived
//! material (rotating sequences, one-time keys) replaces the held lists only when marked
//! changed. The result is always a full config, which is what gets validated, applied and
//! cached.
//!
//! The merge works on the wire message on purpose, as part of the conversion layer: it
//! moves whole entries by name and never reads a field's meaning, and its result is what
//! the cache keeps (`controller-config.pb`, the controller's own message), so a restarted
//! agent converts exactly what it converted before. Domain types begin at `convert.rs`,
//! which destructures every field of the merged message.

use knockgate_proto::api::AgentConfig;

/// Why a config message cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A delta on another version than the one enforced: ask for a full config.
    #[error("delta on version {base} but version {have} is enforced")]
    BaseMismatch { base: u64, have: u64 },
    /// A delta with nothing to apply it on.
    #[error("delta on version {base} but no config from the controller is enforced")]
    NoBase { base: u64 },
    /// The same name twice in one message.
    #[error("delta names {what} {name:?} twice")]
    Duplicate { what: &'static str, name: String },
}

impl DeltaError {
    /// Whether a full config (a new stream) would fix it.
    pub fn needs_full(&self) -> bool {
        matches!(
            self,
            DeltaError::BaseMismatch { .. } | DeltaError::NoBase { .. }
        )
    }
}

/// The full config that results from `msg` arriving while `current` is enforced.
pub fn merge(current: Option<&AgentConfig>, msg: AgentConfig) -> Result<AgentConfig, DeltaError> {
    let AgentConfig {
        version,
        full,
        base_version,
        policies,
        users,
        removed_policies,
        removed_users,
        rotating,
        one_time_keys,
        material_changed,
    } = msg;
    if full {
        return Ok(AgentConfig {
            version,
            full: true,
            base_version: 0,
            policies,
            users,
            removed_policies: Vec::new(),
            removed_users: Vec::new(),
            rotating,
            one_time_keys,
            material_changed: false,
        });
    }
    let cur = current.ok_or(DeltaError::NoBase { base: base_version })?;
    if cur.version != base_version {
        return Err(DeltaError::BaseMismatch {
            base: base_version,
            have: cur.version,
        });
    }
    let mut out = cur.clone();
    out.version = version;
    upsert(&mut out.policies, policies, "policy", |p| &p.name)?;
    upsert(&mut out.users, users, "user", |u| &u.name)?;
    out.policies.retain(|p| !removed_policies.contains(&p.name));
    out.users.retain(|u| !removed_users.contains(&u.name));
    if material_changed {
        out.rotating = rotating;
        out.one_time_keys = one_time_keys;
    }
    Ok(out)
}

fn upsert<T>(
    list: &mut Vec<T>,
    changes: Vec<T>,
    what: &'static str,
    name: impl Fn(&T) -> &String,
) -> Result<(), DeltaError> {
    for (i, c) in changes.iter().enumerate() {
        if changes[..i].iter().any(|o| name(o) == name(c)) {
            return Err(DeltaError::Duplicate {
                what,
                name: name(c).clone(),
            });
        }
    }
    for c in changes {
        match list.iter_mut().find(|o| name(o) == name(&c)) {
            Some(slot) => *slot = c,
            None => list.push(c),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::convert::tests::{alice, full, ssh, web};
    use knockgate_proto::api;

    fn delta(version: u64, base: u64) -> AgentConfig {
        AgentConfig {
            version,
            full: false,
            base_version: base,
            ..Default::default()
        }
    }

    fn names(c: &AgentConfig) -> (Vec<&str>, Vec<&str>) {
        (
            c.policies.iter().map(|p| p.name.as_str()).collect(),
            c.users.iter().map(|u| u.name.as_str()).collect(),
        )
    }

    #[test]
    fn a_full_config_replaces_everything() {
        let cur = full(3, vec![ssh(), web()], vec![alice()]);
        let mut msg = full(4, vec![web()], vec![]);
        msg.base_version = 99;
        let out = merge(Some(&cur), msg).expect("full");
        assert_eq!(out.version, 4);
        assert_eq!(out.base_version, 0);
        assert_eq!(names(&out), (vec!["web"], vec![]));
        assert!(merge(None, full(1, vec![], vec![])).is_ok());
    }

    #[test]
    fn a_delta_upserts_in_place_then_removes() {
        let cur = full(3, vec![ssh(), web()], vec![alice()]);
        let mut d = delta(4, 3);
        let mut changed = ssh();
        changed.timeout_secs = 99;
        let mut vpn = web();
        vpn.name = "vpn".into();
        d.policies = vec![vpn, changed];
        let bob = api::User {
            name: "bob".into(),
            ..alice()
        };
        d.users = vec![bob];
        d.removed_policies = vec!["web".into(), "never-there".into()];
        d.removed_users = vec!["alice".into()];
        let out = merge(Some(&cur), d).expect("delta");
        assert_eq!(out.version, 4);
        assert!(out.full);
        assert_eq!(names(&out), (vec!["ssh", "vpn"], vec!["bob"]));
        assert_eq!(out.policies[0].timeout_secs, 99, "changed in place");
        assert_eq!(cur.version, 3, "the current config is untouched");
    }

    #[test]
    fn derived_material_is_replaced_only_when_marked_changed() {
        let otk = |counter| api::OneTimeKey {
            user: "alice".into(),
            counter,
            key: vec![1; 32],
        };
        let mut cur = full(3, vec![], vec![]);
        cur.one_time_keys = vec![otk(1)];
        let mut d = delta(4, 3);
        let out = merge(Some(&cur), d.clone()).expect("delta");
        assert_eq!(out.one_time_keys, [otk(1)], "kept when not marked changed");
        d.material_changed = true;
        d.one_time_keys = vec![otk(2)];
        let out = merge(Some(&cur), d).expect("delta");
        assert_eq!(out.one_time_keys, [otk(2)]);
        assert!(!out.material_changed);
    }

    #[test]
    fn a_delta_on_another_version_is_refused() {
        let cur = full(3, vec![ssh()], vec![]);
        let e = merge(Some(&cur), delta(5, 4)).expect_err("mismatch");
        assert_eq!(e, DeltaError::BaseMismatch { base: 4, have: 3 });
        assert!(e.needs_full());
        let e = merge(None, delta(5, 4)).expect_err("no base");
        assert!(e.needs_full());
        let mut d = delta(4, 3);
        d.policies = vec![ssh(), ssh()];
        let e = merge(Some(&cur), d).expect_err("dup");
        assert_eq!(e.to_string(), "delta names policy \"ssh\" twice");
        assert!(!e.needs_full());
    }
}
