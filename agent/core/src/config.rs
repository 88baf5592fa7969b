//! The agent's configuration file: parsed strictly (unknown keys are errors), validated as
//! a whole, and turned into the typed values the pipeline uses. Every error names its key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::detect::sequence::{Door, FlagFilter};
use crate::packet::{KnockKind, tcp_flags};
use crate::ruleset::{Access, Ruleset};

/// Default cap on tracked knock sources.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSection,
    pub firewall: FirewallSection,
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

/// One policy: what it protects, for how long a grant lasts, and how to knock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub open: Vec<Access>,
    pub timeout: Duration,
    pub door: Door,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: AgentSection,
    #[serde(default)]
    firewall: FirewallSection,
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    open: Vec<Spec<Access>>,
    timeout: Human,
    sequence: Vec<Spec<KnockKind>>,
    #[serde(default = "default_sequence_timeout")]
    sequence_timeout: Human,
    min_gap: Option<Human>,
    max_gap: Option<Human>,
    tcp_flags: Option<Spec<FlagFilter>>,
}

fn default_sequence_timeout() -> Human {
    Human(Duration::from_secs(10))
}

/// A duration written as humantime (`30s`, `5m`).
#[derive(Debug, Clone, Copy)]
struct Human(Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Human).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?}: {e} (use e.g. \"30s\", \"5m\")"
            ))
        })
    }
}

/// A value written as a string and parsed with [`ParseSpec`].
struct Spec<T>(T);

trait ParseSpec: Sized {
    fn parse_spec(s: &str) -> Result<Self, String>;
}

impl<'de, T: ParseSpec> Deserialize<'de> for Spec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        T::parse_spec(&s)
            .map(Spec)
            .map_err(serde::de::Error::custom)
    }
}

impl ParseSpec for Access {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("bad proto/port {s:?}: {e}"))
    }
}

impl ParseSpec for KnockKind {
    fn parse_spec(s: &str) -> Result<Self, String> {
        if s == "icmp" {
            return Ok(KnockKind::Icmp);
        }
        let p: Access = s
            .parse()
            .map_err(|e| format!("bad knock {s:?}: {e} (write tcp/PORT, udp/PORT or icmp)"))?;
        Ok(KnockKind::Port {
            proto: p.proto,
            port: p.port,
        })
    }
}

impl ParseSpec for FlagFilter {
    fn parse_spec(s: &str) -> Result<Self, String> {
        let mut f = FlagFilter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (neg, name) = match part.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, part),
            };
            let bit = match name.to_ascii_lowercase().as_str() {
                "fin" => tcp_flags::FIN,
                "syn" => tcp_flags::SYN,
                "rst" => tcp_flags::RST,
                "psh" => tcp_flags::PSH,
                "ack" => tcp_flags::ACK,
                "urg" => tcp_flags::URG,
                "ece" => tcp_flags::ECE,
                "cwr" => tcp_flags::CWR,
                _ => {
                    return Err(format!(
                        "unknown tcp flag {name:?} (fin, syn, rst, psh, ack, urg, ece, cwr)"
                    ));
                }
            };
            if neg { f.clear |= bit } else { f.set |= bit }
        }
        if f.set & f.clear != 0 {
            return Err(format!("tcp_flags {s:?} both requires and forbids a flag"));
        }
        Ok(f)
    }
}

/// Knocks on TCP ports must be a bare SYN unless a policy says otherwise: stray ACKs and
/// RSTs are not knocks.
pub const DEFAULT_TCP_FLAGS: FlagFilter = FlagFilter {
    set: tcp_flags::SYN,
    clear: tcp_flags::ACK,
};

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
        let mut names = BTreeSet::new();
        let mut policies = Vec::with_capacity(raw.policy.len());
        for (i, p) in raw.policy.into_iter().enumerate() {
            let key = |k: &str| format!("policy[{i}].{k}");
            if p.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate policy name {:?}", p.name),
                ));
            }
            if p.open.is_empty() {
                return Err(invalid(key("open"), "name at least one protected port"));
            }
            if p.timeout.0.is_zero() {
                return Err(invalid(key("timeout"), "must be longer than zero"));
            }
            if p.sequence.is_empty() {
                return Err(invalid(key("sequence"), "name at least one knock"));
            }
            if p.sequence.len() > 255 {
                return Err(invalid(key("sequence"), "at most 255 knocks"));
            }
            if p.sequence_timeout.0.is_zero() {
                return Err(invalid(key("sequence_timeout"), "must be longer than zero"));
            }
            let min_gap = p.min_gap.map_or(Duration::ZERO, |h| h.0);
            let max_gap = p.max_gap.map(|h| h.0);
            if max_gap.is_some_and(|m| m < min_gap) {
                return Err(invalid(key("max_gap"), "is shorter than min_gap"));
            }
            let open: Vec<Access> = p.open.into_iter().map(|s| s.0).collect();
            let steps: Vec<KnockKind> = p.sequence.into_iter().map(|s| s.0).collect();
            let door = Door {
                steps,
                sequence_timeout: p.sequence_timeout.0,
                min_gap,
                max_gap,
                tcp_flags: p.tcp_flags.map_or(DEFAULT_TCP_FLAGS, |s| s.0),
            };
            policies.push(Policy {
                name: p.name,
                open,
                timeout: p.timeout.0,
                door,
            });
        }
        let config = Config {
            agent,
            firewall,
            policies,
        };
        // A port cannot be both knocked on (always dropped) and protected (opened by grants).
        let rs = config.ruleset();
        if let Some(clash) = rs.protected.intersection(&rs.knock_ports).next() {
            let i = config
                .policies
                .iter()
                .position(|p| {
                    p.door.steps.contains(&KnockKind::Port {
                        proto: clash.proto,
                        port: clash.port,
                    })
                })
                .unwrap_or(0);
            return Err(invalid(
                format!("policy[{i}].sequence"),
                format!("{clash} is also a protected port"),
            ));
        }
        Ok(config)
    }

    /// The static firewall state these policies need.
    pub fn ruleset(&self) -> Ruleset {
        let mut rs = Ruleset::default();
        for p in &self.policies {
            rs.protected.extend(p.open.iter().copied());
            for step in &p.door.steps {
                if let KnockKind::Port { proto, port } = *step {
                    rs.knock_ports.insert(Access { proto, port });
                }
            }
        }
        rs
    }

    /// The knock doors, in policy order (door id = policy index).
    pub fn doors(&self) -> Vec<Door> {
        self.policies.iter().map(|p| p.door.clone()).collect()
    }
}

/// toml's own rendering spans several lines with a caret drawing; say the same in one
/// line: where, the offending line itself (which names the key), and what is wrong.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let column = text[line_start..start].chars().count() + 1;
    format!("line {line_no}, column {column} ({line}): {message}")
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
