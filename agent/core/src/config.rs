//! The agent's configuration file: parsed strictly (unknown keys are errors), validated as
//! a whole, and turned into the typed values the pipeline uses. Every error names its key.

mod raw;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use knockgate_proto::fwknop::{FwknopKeys, HmacType};
use knockgate_proto::spa::SpaKey;
use serde::Deserialize;

use crate::detect::sequence::{Door, FlagFilter};
use crate::packet::{KnockKind, tcp_flags};
use crate::ruleset::{Access, Proto, Ruleset};
use raw::{RawConfig, RawPolicy, RawUser, locate};

/// Default cap on tracked knock sources.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;
/// fwknop's port, and ours.
pub const DEFAULT_SPA_PORT: u16 = 62201;
/// Default oldest (or most future-dated) SPA packet accepted.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);
/// Default cap on remembered SPA packets (valid ones only; junk never enters).
pub const DEFAULT_REPLAY_CACHE_MAX: usize = 1_000_000;
/// Knocks on TCP ports must be a bare SYN unless a policy says otherwise: stray ACKs and
/// RSTs are not knocks.
pub const DEFAULT_TCP_FLAGS: FlagFilter = FlagFilter {
    set: tcp_flags::SYN,
    clear: tcp_flags::ACK,
};

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSection,
    pub firewall: FirewallSection,
    pub spa: SpaSection,
    pub users: Vec<User>,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The gateway's name (what SPA packets and the controller call it).
    pub name: String,
    /// Interfaces to capture knocks on.
    pub interfaces: Vec<String>,
    /// Where state that must survive a restart lives.
    pub state_dir: PathBuf,
    /// Cap on source addresses with knock progress held (oldest evicted).
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
}

fn default_max_sources() -> usize {
    DEFAULT_MAX_SOURCES
}

/// Which firewall backend enforces grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Nftables,
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    #[serde(default)]
    pub backend: Backend,
    /// `command` backend: run to open a grant (`%IP%`, `%PROTO%`, `%PORT%`, `%TIMEOUT%`).
    pub open_command: Option<String>,
    /// `command` backend: run to close a grant.
    pub close_command: Option<String>,
}

/// Where SPA packets arrive and how old they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaSection {
    pub port: u16,
    pub max_age: Duration,
    pub replay_cache_max: usize,
}

/// A user and the credentials that identify them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub spa_key: Option<SpaKey>,
    pub fwknop: Option<FwknopKeys>,
}

/// One policy: what it protects, for how long, and which knocks open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub open: Vec<Access>,
    pub timeout: Duration,
    /// The most a client may ask for (SPA); defaults to `timeout`.
    pub max_timeout: Duration,
    /// A knock sequence, if the policy has one.
    pub door: Option<Door>,
    /// Indexes into [`Config::users`] of the users SPA may open this for.
    pub users: BTreeSet<usize>,
    /// Native SPA opens it.
    pub spa: bool,
    /// fwknop SPA opens it.
    pub fwknop: bool,
}

/// A config that cannot be used. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax, an unknown key, or a value of the wrong shape (toml gives line/column).
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but makes no sense with the rest.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.to_string(),
    }
}

impl Config {
    /// Parse and validate a whole config file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(locate(text, &e)))?;
        let agent = raw.agent;
        if agent.name.is_empty() {
            return Err(invalid("agent.name", "must not be empty"));
        }
        if agent.interfaces.is_empty() {
            return Err(invalid(
                "agent.interfaces",
                "name at least one interface to capture on",
            ));
        }
        if agent.max_sources == 0 {
            return Err(invalid("agent.max_sources", "must be at least 1"));
        }
        let firewall = raw.firewall;
        if firewall.backend == Backend::Command && firewall.open_command.is_none() {
            return Err(invalid(
                "firewall.open_command",
                "required when backend = \"command\"",
            ));
        }
        let spa = match raw.spa {
            None => SpaSection {
                port: DEFAULT_SPA_PORT,
                max_age: DEFAULT_MAX_AGE,
                replay_cache_max: DEFAULT_REPLAY_CACHE_MAX,
            },
            Some(s) => SpaSection {
                port: s.port.unwrap_or(DEFAULT_SPA_PORT),
                max_age: s.max_age.map_or(DEFAULT_MAX_AGE, |h| h.0),
                replay_cache_max: s.replay_cache_max.unwrap_or(DEFAULT_REPLAY_CACHE_MAX),
            },
        };
        if spa.port == 0 {
            return Err(invalid("spa.port", "must be 1-65535"));
        }
        if spa.max_age.is_zero() {
            return Err(invalid("spa.max_age", "must be longer than zero"));
        }
        let users = raw
            .user
            .into_iter()
            .enumerate()
            .map(|(i, u)| user(i, u))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, u) in users.iter().enumerate() {
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
        let mut names = BTreeSet::new();
        let mut policies = Vec::with_capacity(raw.policy.len());
        for (i, p) in raw.policy.into_iter().enumerate() {
            let policy = policy(i, p, &users)?;
            if !names.insert(policy.name.clone()) {
                return Err(invalid(
                    format!("policy[{i}].name"),
                    format!("duplicate policy name {:?}", policy.name),
                ));
            }
            policies.push(policy);
        }
        let config = Config {
            agent,
            firewall,
            spa,
            users,
            policies,
        };
        config.check_ports()?;
        Ok(config)
    }

    /// Knock ports are always dropped and protected ports opened by grants: a port cannot
    /// be both, and the SPA port cannot also be a sequence knock.
    fn check_ports(&self) -> Result<(), ConfigError> {
        let spa_port = Access {
            proto: Proto::Udp,
            port: self.spa.port,
        };
        for (i, p) in self.policies.iter().enumerate() {
            let steps = p.door.as_ref().map_or(&[][..], |d| &d.steps[..]);
            for step in steps {
                let KnockKind::Port { proto, port } = *step else {
                    continue;
                };
                let knock = Access { proto, port };
                if self.policies.iter().any(|q| q.open.contains(&knock)) {
                    return Err(invalid(
                        format!("policy[{i}].sequence"),
                        format!("{knock} is also a protected port"),
                    ));
                }
                if self.uses_spa() && knock == spa_port {
                    return Err(invalid(
                        format!("policy[{i}].sequence"),
                        format!("{knock} is the SPA port"),
                    ));
                }
            }
            if self.uses_spa() && p.open.contains(&spa_port) {
                return Err(invalid(
                    format!("policy[{i}].open"),
                    format!("{spa_port} is the SPA port"),
                ));
            }
        }
        Ok(())
    }

    /// Whether any policy is opened by SPA (native or fwknop).
    pub fn uses_spa(&self) -> bool {
        self.policies.iter().any(|p| p.spa || p.fwknop)
    }

    /// The static firewall state these policies need. The SPA port is a knock port too:
    /// dropped, so the agent never answers a probe.
    pub fn ruleset(&self) -> Ruleset {
        let mut rs = Ruleset::default();
        for p in &self.policies {
            rs.protected.extend(p.open.iter().copied());
        }
        for kind in self.capture_kinds() {
            if let KnockKind::Port { proto, port } = kind {
                rs.knock_ports.insert(Access { proto, port });
            }
        }
        rs
    }

    /// Everything the capture filter must let through: every sequence step and the SPA port.
    pub fn capture_kinds(&self) -> Vec<KnockKind> {
        let mut kinds: Vec<KnockKind> = self
            .doors()
            .into_iter()
            .flat_map(|(_, d)| d.steps)
            .collect();
        if self.uses_spa() {
            kinds.push(KnockKind::Port {
                proto: Proto::Udp,
                port: self.spa.port,
            });
        }
        kinds
    }

    /// The knock doors and the policy index each belongs to.
    pub fn doors(&self) -> Vec<(usize, Door)> {
        self.policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.door.clone().map(|d| (i, d)))
            .collect()
    }
}

fn user(i: usize, u: RawUser) -> Result<User, ConfigError> {
    let key = |k: &str| format!("user[{i}].{k}");
    if u.name.is_empty() || u.name.len() > 64 {
        return Err(invalid(key("name"), "must be 1-64 characters"));
    }
    let fwknop = match (u.fwknop_key, u.fwknop_hmac_key) {
        (None, None) => {
            if u.fwknop_hmac.is_some() {
                return Err(invalid(key("fwknop_hmac"), "set without fwknop_key"));
            }
            None
        }
        (Some(_), None) => {
            return Err(invalid(
                key("fwknop_hmac_key"),
                "required with fwknop_key (knockgate requires fwknop's HMAC)",
            ));
        }
        (None, Some(_)) => return Err(invalid(key("fwknop_key"), "required with fwknop_hmac_key")),
        (Some(enc), Some(hmac)) => {
            let kind = u.fwknop_hmac.map_or(HmacType::Sha256, |s| s.0);
            Some(raw::fwknop_keys(&enc, &hmac, kind).map_err(|e| invalid(key("fwknop_key"), e))?)
        }
    };
    Ok(User {
        name: u.name,
        spa_key: u.spa_key.map(|s| s.0),
        fwknop,
    })
}

fn policy(i: usize, p: RawPolicy, users: &[User]) -> Result<Policy, ConfigError> {
    let key = |k: &str| format!("policy[{i}].{k}");
    if p.name.is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    if p.open.is_empty() {
        return Err(invalid(key("open"), "name at least one protected port"));
    }
    if p.timeout.0.is_zero() {
        return Err(invalid(key("timeout"), "must be longer than zero"));
    }
    let max_timeout = p.max_timeout.map_or(p.timeout.0, |h| h.0);
    if max_timeout < p.timeout.0 {
        return Err(invalid(key("max_timeout"), "is shorter than timeout"));
    }
    if p.sequence.is_empty() && !p.spa && !p.fwknop {
        return Err(invalid(
            key("sequence"),
            "give a knock sequence, or set spa = true or fwknop = true",
        ));
    }
    let door = if p.sequence.is_empty() {
        for k in ["sequence_timeout", "min_gap", "max_gap", "tcp_flags"] {
            let set = match k {
                "sequence_timeout" => p.sequence_timeout.is_some(),
                "min_gap" => p.min_gap.is_some(),
                "max_gap" => p.max_gap.is_some(),
                _ => p.tcp_flags.is_some(),
            };
            if set {
                return Err(invalid(key(k), "set without a sequence"));
            }
        }
        None
    } else {
        if p.sequence.len() > 255 {
            return Err(invalid(key("sequence"), "at most 255 knocks"));
        }
        let sequence_timeout = p.sequence_timeout.map_or(Duration::from_secs(10), |h| h.0);
        if sequence_timeout.is_zero() {
            return Err(invalid(key("sequence_timeout"), "must be longer than zero"));
        }
        let min_gap = p.min_gap.map_or(Duration::ZERO, |h| h.0);
        let max_gap = p.max_gap.map(|h| h.0);
        if max_gap.is_some_and(|m| m < min_gap) {
            return Err(invalid(key("max_gap"), "is shorter than min_gap"));
        }
        Some(Door {
            steps: p.sequence.into_iter().map(|s| s.0).collect(),
            sequence_timeout,
            min_gap,
            max_gap,
            tcp_flags: p.tcp_flags.map_or(DEFAULT_TCP_FLAGS, |s| s.0),
        })
    };
    let mut members = BTreeSet::new();
    for (j, name) in p.users.iter().enumerate() {
        let Some(idx) = users.iter().position(|u| &u.name == name) else {
            return Err(invalid(
                format!("policy[{i}].users[{j}]"),
                format!("no [[user]] named {name:?}"),
            ));
        };
        let u = &users[idx];
        let usable = (p.spa && u.spa_key.is_some()) || (p.fwknop && u.fwknop.is_some());
        if !usable {
            return Err(invalid(
                format!("policy[{i}].users[{j}]"),
                format!(
                    "user {name:?} has no key for this policy's methods (spa_key for spa, fwknop_key for fwknop)"
                ),
            ));
        }
        members.insert(idx);
    }
    if (p.spa || p.fwknop) && members.is_empty() {
        return Err(invalid(
            key("users"),
            "spa and fwknop policies must name the users they admit",
        ));
    }
    if !p.spa && !p.fwknop && !members.is_empty() {
        return Err(invalid(
            key("users"),
            "users only apply with spa = true or fwknop = true",
        ));
    }
    Ok(Policy {
        name: p.name,
        open: p.open.into_iter().map(|s| s.0).collect(),
        timeout: p.timeout.0,
        max_timeout,
        door,
        users: members,
        spa: p.spa,
        fwknop: p.fwknop,
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
