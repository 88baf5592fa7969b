//! Checks shared by every source of users and policies: each user and policy on its own,
//! and each policy against the users it names. What is specific to how a source writes
//! things (TOML keys, protobuf fields) is checked where it is read.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    ConfigError, DEFAULT_SEQUENCE_TIMEOUT, DEFAULT_TCP_FLAGS, DEFAULT_WINDOW_SECS, Origin, Policy,
    PolicyDef, User, invalid,
};
use crate::detect::rotating::RotatingPolicy;
use crate::detect::sequence::Door;
use crate::packet::KnockStep;

/// Users are named 1-64 characters, uniquely, and no two share a native SPA key (its
/// key id is how a packet finds its user).
pub(super) fn users(users: Vec<User>) -> Result<Vec<User>, ConfigError> {
    for (i, u) in users.iter().enumerate() {
        if u.name.is_empty() || u.name.len() > 64 {
            return Err(invalid(
                format!("user[{i}].name"),
                "must be 1-64 characters",
            ));
        }
        if users[..i].iter().any(|o| o.name == u.name) {
            return Err(invalid(
                format!("user[{i}].name"),
                format!("duplicate user {:?}", u.name),
            ));
        }
        if let Some(k) = &u.spa_key
            && let Some(o) = users[..i]
                .iter()
                .find(|o| o.spa_key.as_ref().is_some_and(|ok| ok.id() == k.id()))
        {
            return Err(invalid(
                format!("user[{i}].spa_key"),
                format!("same key as user {:?}", o.name),
            ));
        }
    }
    Ok(users)
}

/// One policy, checked on its own and against `users`.
pub(super) fn policy(
    i: usize,
    p: PolicyDef,
    users: &[User],
    origin: Origin,
) -> Result<Policy, ConfigError> {
    let key = |k: &str| format!("policy[{i}].{k}");
    let max_timeout = basics(&p, &key)?;
    let rotating = rotating(&p, &key)?;
    let door = door(&p, &key)?;
    require_os(&p, &key)?;
    let members = members(i, &p, users, origin)?;
    // Forwards (config/forward.rs): their outer ports join `open`.
    let (open, forward) = super::forward::policy(&p, &key)?;
    Ok(Policy {
        name: p.name,
        open,
        timeout: p.timeout,
        max_timeout,
        door,
        users: members,
        spa: p.spa,
        fwknop: p.fwknop,
        rotating,
        otk: p.otk,
        sealed: p.sealed,
        require_os: p.require_os,
        forward,
    })
}

/// Why `require_os` needs a fixed sequence with a TCP knock.
pub(super) const NEEDS_TCP_KNOCK: &str =
    "needs a TCP knock in the sequence: the OS is read from the knocks' TCP SYNs";

/// Whether `sequence` has a TCP knock, whose SYN can be fingerprinted.
pub(super) fn has_tcp_knock(sequence: &[KnockStep]) -> bool {
    sequence.iter().any(|s| {
        matches!(
            s,
            KnockStep::Port {
                proto: crate::ruleset::Proto::Tcp,
                ..
            }
        )
    })
}

/// `require_os` names OSes, and only where a TCP SYN of a fixed sequence shows one.
fn require_os(p: &PolicyDef, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if p.require_os.is_empty() {
        return Ok(());
    }
    if !has_tcp_knock(&p.sequence) {
        return Err(invalid(key("require_os"), NEEDS_TCP_KNOCK));
    }
    for (j, name) in p.require_os.iter().enumerate() {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(invalid(
                key(&format!("require_os[{j}]")),
                "expected an OS name as p0f labels it, such as \"Linux\" or \"Windows\"",
            ));
        }
    }
    Ok(())
}

/// Name, ports, timeouts and that some method opens it; the effective `max_timeout`.
fn basics(p: &PolicyDef, key: &dyn Fn(&str) -> String) -> Result<Duration, ConfigError> {
    if p.name.is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    if p.open.is_empty() && p.forward.is_empty() {
        return Err(invalid(
            key("open"),
            "name at least one protected port (or a forward)",
        ));
    }
    if let Some(a) = p.open.iter().find(|a| a.port == 0) {
        return Err(invalid(key("open"), format!("{a}: port must be 1-65535")));
    }
    if p.timeout.is_zero() {
        return Err(invalid(key("timeout"), "must be longer than zero"));
    }
    let max_timeout = p.max_timeout.unwrap_or(p.timeout);
    if max_timeout > super::MAX_DURATION {
        return Err(invalid(
            key("max_timeout"),
            "is longer than the limit of 30 days",
        ));
    }
    if max_timeout < p.timeout {
        return Err(invalid(key("max_timeout"), "is shorter than timeout"));
    }
    if p.sequence.is_empty() && !p.spa && !p.fwknop && !p.sealed && !p.rotating && p.otk.is_none() {
        return Err(invalid(
            key("sequence"),
            "give a knock sequence, or set spa, fwknop or sealed = true",
        ));
    }
    Ok(max_timeout)
}

/// The rotating-sequence timing, when rotating sequences open it.
fn rotating(
    p: &PolicyDef,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<RotatingPolicy>, ConfigError> {
    if !p.rotating {
        if p.window_secs.is_some() {
            return Err(invalid(key("window_secs"), "set without rotating"));
        }
        return Ok(None);
    }
    if p.sequence_timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid(key("sequence_timeout"), "must be longer than zero"));
    }
    let window_secs = p.window_secs.unwrap_or(DEFAULT_WINDOW_SECS);
    if window_secs == 0 {
        return Err(invalid(key("window_secs"), "must be longer than zero"));
    }
    Ok(Some(RotatingPolicy {
        window_secs,
        sequence_timeout: p.sequence_timeout.unwrap_or(DEFAULT_SEQUENCE_TIMEOUT),
        tcp_flags: p.tcp_flags.unwrap_or(DEFAULT_TCP_FLAGS),
    }))
}

/// The fixed knock sequence and its timing, when it has one.
fn door(p: &PolicyDef, key: &dyn Fn(&str) -> String) -> Result<Option<Door>, ConfigError> {
    if p.sequence.is_empty() {
        // A rotating sequence is timed and filtered like a fixed one.
        let set = [
            (
                "sequence_timeout",
                p.sequence_timeout.is_some() && !p.rotating,
            ),
            ("min_gap", p.min_gap.is_some()),
            ("max_gap", p.max_gap.is_some()),
            ("tcp_flags", p.tcp_flags.is_some() && !p.rotating),
        ];
        if let Some((k, _)) = set.iter().find(|(_, set)| *set) {
            return Err(invalid(key(k), "set without a sequence"));
        }
        return Ok(None);
    }
    if p.sequence.len() > 255 {
        return Err(invalid(key("sequence"), "at most 255 knocks"));
    }
    if let Some(k) = p
        .sequence
        .iter()
        .find(|k| matches!(k, crate::packet::KnockStep::Port { port: 0, .. }))
    {
        return Err(invalid(
            key("sequence"),
            format!("{k:?}: port must be 1-65535"),
        ));
    }
    let sequence_timeout = p.sequence_timeout.unwrap_or(DEFAULT_SEQUENCE_TIMEOUT);
    if sequence_timeout.is_zero() {
        return Err(invalid(key("sequence_timeout"), "must be longer than zero"));
    }
    let min_gap = p.min_gap.unwrap_or(Duration::ZERO);
    if p.max_gap.is_some_and(|m| m < min_gap) {
        return Err(invalid(key("max_gap"), "is shorter than min_gap"));
    }
    Ok(Some(Door {
        steps: p.sequence.clone(),
        sequence_timeout,
        min_gap,
        max_gap: p.max_gap,
        tcp_flags: p.tcp_flags.unwrap_or(DEFAULT_TCP_FLAGS),
    }))
}

/// The indexes of the users it admits. Every method that identifies a user admits only
/// the users named.
fn members(
    i: usize,
    p: &PolicyDef,
    users: &[User],
    origin: Origin,
) -> Result<BTreeSet<usize>, ConfigError> {
    let uses_spa = p.spa || p.fwknop || p.sealed || p.rotating || p.otk.is_some();
    if origin == Origin::File && !uses_spa && !p.users.is_empty() {
        return Err(invalid(
            format!("policy[{i}].users"),
            "users only apply with spa, fwknop or sealed = true",
        ));
    }
    let named = if uses_spa { &p.users[..] } else { &[][..] };
    let mut members = BTreeSet::new();
    for (j, name) in named.iter().enumerate() {
        let Some(idx) = users.iter().position(|u| &u.name == name) else {
            return Err(invalid(
                format!("policy[{i}].users[{j}]"),
                format!("no [[user]] named {name:?}"),
            ));
        };
        let u = &users[idx];
        // Rotating sequences and one-time keys come as material, not as user keys.
        let usable = ((p.spa || p.sealed) && u.spa_key.is_some())
            || (p.fwknop && u.fwknop.is_some())
            || p.rotating
            || p.otk.is_some();
        if !usable {
            return Err(invalid(
                format!("policy[{i}].users[{j}]"),
                format!(
                    "user {name:?} has no key for this policy's methods (spa_key for spa and sealed, fwknop_key for fwknop)"
                ),
            ));
        }
        members.insert(idx);
    }
    if origin == Origin::File && uses_spa && members.is_empty() {
        return Err(invalid(
            format!("policy[{i}].users"),
            "spa, fwknop and sealed policies must name the users they admit",
        ));
    }
    Ok(members)
}
