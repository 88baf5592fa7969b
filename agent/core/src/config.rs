//! The agent's configuration: the file, parsed strictly (unknown keys are errors), and the
//! policies and users, which come from the file or from the controller. Either way they go
//! through the same validation as a whole and become the typed values the pipeline uses.
//! Every error names its key. The controller's derived material (rotating sequences,
//! one-time keys) is checked against a validated config in `material`.

mod forward;
mod material;
mod raw;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::ops::RangeInclusive;

use knockgate_proto::fwknop::FwknopKeys;
use knockgate_proto::sealed;
use knockgate_proto::spa::SpaKey;
use serde::Deserialize;

use crate::detect::rotating::RotatingPolicy;
use crate::detect::sequence::{Door, FlagFilter};
use crate::packet::KnockStep;
use crate::ruleset::{Access, Forward, KernelDoor, Proto, Ruleset};
use raw::{RawConfig, locate};

pub use material::{Material, MaterialDef, Otk, OtkDef, Sequence, SequenceDef};

/// Where the agent keeps its state when the config does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/knockgate";
/// Default cap on tracked knock sources.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;
/// No duration of a config (a grant, a window, a gap) may be longer: a typo such as
/// `3000000h`, or a controller bug, is refused instead of opening a port for centuries.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
pub use knockgate_proto::policy::DEFAULT_SPA_PORT;
pub use knockgate_proto::sealed::DEFAULT_BASE_PORT as DEFAULT_SEALED_BASE_PORT;
/// Default oldest (or most future-dated) SPA packet accepted.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);
/// Default cap on remembered SPA packets (valid ones only; junk never enters).
pub const DEFAULT_REPLAY_CACHE_MAX: usize = 1_000_000;
/// Default cap on the delay between attempts to reach the controller.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default time a knock sequence must be completed in.
pub const DEFAULT_SEQUENCE_TIMEOUT: Duration = Duration::from_secs(10);
pub use knockgate_proto::policy::DEFAULT_WINDOW_SECS;
/// Knocks on TCP ports must be a bare SYN unless a policy says otherwise: stray ACKs and
/// RSTs are not knocks.
pub const DEFAULT_TCP_FLAGS: FlagFilter = FlagFilter::DEFAULT;

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSection,
    pub firewall: FirewallSection,
    pub spa: SpaSection,
    /// Where policies and users come from when they are not (only) in the file.
    pub controller: Option<ControllerSection>,
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
    /// Where state that must survive a restart lives (default [`DEFAULT_STATE_DIR`], the
    /// systemd unit's `StateDirectory=`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Cap on source addresses with knock progress held (oldest evicted).
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// The p0f v3 signature database `require_os` is judged by (read only when a policy
    /// requires an OS).
    #[serde(default = "default_p0f_db")]
    pub p0f_db: PathBuf,
    /// Where fixed knock sequences are matched (docs/KERNEL_SEQUENCES.md).
    #[serde(default)]
    pub sequence_matching: SequenceMatching,
    /// The nflog group kernel-matched sequences report their completions on.
    #[serde(default = "default_nflog_group")]
    pub nflog_group: u16,
}

/// Where fixed knock sequences are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SequenceMatching {
    /// In nftables, for every policy it can express; the agent's matcher for the rest.
    #[default]
    Kernel,
    /// Always the agent's matcher (every knock is captured).
    Userspace,
}

/// The nflog group when the config names none.
pub const DEFAULT_NFLOG_GROUP: u16 = 4747;

fn default_nflog_group() -> u16 {
    DEFAULT_NFLOG_GROUP
}

/// The most steps a kernel-matched sequence has: each step is three rules per family.
pub const MAX_KERNEL_STEPS: usize = 32;

/// Where a policy's fixed sequence is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequencePath {
    /// In nftables: the agent sees only completions.
    Kernel,
    /// By the agent, from captured knocks, for this reason.
    Userspace(&'static str),
}

/// Debian's p0f package puts its signatures here.
pub const DEFAULT_P0F_DB: &str = "/etc/p0f/p0f.fp";

fn default_p0f_db() -> PathBuf {
    PathBuf::from(DEFAULT_P0F_DB)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
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

/// Where SPA packets arrive and how old they may be (sealed knock sequences are judged
/// by the same age and replay rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaSection {
    pub port: u16,
    pub max_age: Duration,
    pub replay_cache_max: usize,
    /// The first port of the sealed knock range (`sealed::RANGE` ports from here).
    pub sealed_base_port: u16,
}

/// The controller this agent takes its policies and users from. With it, the file's own
/// `[[policy]]` and `[[user]]` (usually absent) are enforced only until a config from the
/// controller, live or cached from an earlier run, replaces them as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSection {
    /// `https://host:port` of the controller's gRPC API: one, or several replicas sharing
    /// one database, tried in turn (the agent moves to the next when one cannot be reached).
    pub urls: Vec<String>,
    /// Longest wait between two attempts to reach it.
    pub reconnect_max: Duration,
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
    /// The users' rotating sequences (pushed by the controller) open it, with these
    /// timings.
    pub rotating: Option<RotatingPolicy>,
    /// One-time SPA keys (pushed by the controller) open it; what to do when the
    /// controller cannot be asked whether a key is still unused.
    pub otk: Option<OtkOffline>,
    /// Sealed knock sequences under the users' SPA keys open it (`proto/sealed.md`).
    pub sealed: bool,
    /// The sequence's TCP SYNs must come from one of these operating systems (p0f label
    /// names, compared ignoring ASCII case); empty: any.
    pub require_os: Vec<String>,
    /// Grants on these outer ports (each also in `open`) reach a host behind the gateway
    /// (`config/forward.rs`).
    pub forward: Vec<Forward>,
}

pub use knockgate_proto::policy::OtkOffline;

/// A policy as its source states it (the file or the controller), before it is checked
/// against the users and the other policies. `None` means "the default".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDef {
    pub name: String,
    pub open: Vec<Access>,
    pub timeout: Duration,
    pub max_timeout: Option<Duration>,
    pub sequence: Vec<KnockStep>,
    pub sequence_timeout: Option<Duration>,
    pub min_gap: Option<Duration>,
    pub max_gap: Option<Duration>,
    pub tcp_flags: Option<FlagFilter>,
    /// Names of the users SPA (or rotating sequences, or one-time keys) may open it for.
    pub users: Vec<String>,
    pub spa: bool,
    pub fwknop: bool,
    /// Rotating sequences open it (only the controller can say so: it holds the secrets).
    pub rotating: bool,
    /// Rotating window length; `None` is [`DEFAULT_WINDOW_SECS`].
    pub window_secs: Option<u32>,
    /// One-time keys open it, with this rule for an unreachable controller.
    pub otk: Option<OtkOffline>,
    /// Sealed knock sequences open it.
    pub sealed: bool,
    /// OS names the sequence's SYNs must be fingerprinted as (p0f labels).
    pub require_os: Vec<String>,
    /// `tcp/2222 -> 10.0.0.5:22`: the outer port is opened (as if in `open`) and forwarded.
    pub forward: Vec<Forward>,
}

/// Where users and policies come from. The file is held to rules that catch an
/// operator's slips; the controller computes each agent's share from its own validated
/// policies, where a policy may legitimately admit nobody here (its users were disabled
/// or removed) and may list users that only its SPA methods would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[[policy]]` and `[[user]]` in the file: an SPA policy must name its users, and a
    /// policy without SPA must name none.
    File,
    /// The controller: an SPA policy without users admits nobody, and the users of a
    /// policy without SPA are ignored (sequence knocks are anonymous).
    Controller,
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
                sealed_base_port: DEFAULT_SEALED_BASE_PORT,
            },
            Some(s) => SpaSection {
                port: s.port.unwrap_or(DEFAULT_SPA_PORT),
                max_age: s.max_age.map_or(DEFAULT_MAX_AGE, |h| h.0),
                replay_cache_max: s.replay_cache_max.unwrap_or(DEFAULT_REPLAY_CACHE_MAX),
                sealed_base_port: s.sealed_base_port.unwrap_or(DEFAULT_SEALED_BASE_PORT),
            },
        };
        if spa.port == 0 {
            return Err(invalid("spa.port", "must be 1-65535"));
        }
        if sealed::range(spa.sealed_base_port).is_none() {
            return Err(invalid(
                "spa.sealed_base_port",
                format!(
                    "must be 1-{}: the range is {} ports",
                    u16::MAX - sealed::RANGE + 1,
                    sealed::RANGE
                ),
            ));
        }
        if spa.max_age.is_zero() {
            return Err(invalid("spa.max_age", "must be longer than zero"));
        }
        let controller = raw
            .controller
            .map(raw::RawController::validate)
            .transpose()?;
        let users = raw
            .user
            .into_iter()
            .enumerate()
            .map(|(i, u)| u.into_user(i))
            .collect::<Result<Vec<_>, _>>()?;
        let policies = raw
            .policy
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_def(i, text))
            .collect::<Result<_, _>>()?;
        let base = Config {
            agent,
            firewall,
            spa,
            controller,
            users: Vec::new(),
            policies: Vec::new(),
        };
        base.with_policies(Origin::File, users, policies)
    }

    /// This config with its users and policies replaced by `users` and `policies`,
    /// validated as a whole by the same rules whatever their source (see [`Origin`] for
    /// the two that differ). Keys in errors index the lists given (`user[2].name`,
    /// `policy[0].timeout`).
    pub fn with_policies(
        &self,
        origin: Origin,
        users: Vec<User>,
        policies: Vec<PolicyDef>,
    ) -> Result<Config, ConfigError> {
        let users = validate::users(users)?;
        let mut names = BTreeSet::new();
        let mut checked = Vec::with_capacity(policies.len());
        for (i, p) in policies.into_iter().enumerate() {
            let policy = validate::policy(i, p, &users, origin)?;
            if !names.insert(policy.name.clone()) {
                return Err(invalid(
                    format!("policy[{i}].name"),
                    format!("duplicate policy name {:?}", policy.name),
                ));
            }
            checked.push(policy);
        }
        let config = Config {
            agent: self.agent.clone(),
            firewall: self.firewall.clone(),
            spa: self.spa.clone(),
            controller: self.controller.clone(),
            users,
            policies: checked,
        };
        config.check_ports()?;
        config.check_forwards()?;
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
                let KnockStep::Port { proto, port } = *step else {
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
            if let Some(range) = self.sealed_ports() {
                let inside = |port: u16| range.contains(&port);
                if let Some(a) = p.open.iter().find(|a| inside(a.port)) {
                    return Err(invalid(
                        format!("policy[{i}].open"),
                        format!(
                            "{a} is in the sealed knock range {}-{}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                if let Some(s) = steps
                    .iter()
                    .find(|s| matches!(s, KnockStep::Port { port, .. } if inside(*port)))
                {
                    return Err(invalid(
                        format!("policy[{i}].sequence"),
                        format!(
                            "{s} is in the sealed knock range {}-{}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                if self.uses_spa() && inside(self.spa.port) {
                    return Err(invalid(
                        "spa.port",
                        format!(
                            "{} is in the sealed knock range {}-{}",
                            self.spa.port,
                            range.start(),
                            range.end()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The sealed knock range, when any policy is opened by sealed sequences.
    pub fn sealed_ports(&self) -> Option<RangeInclusive<u16>> {
        self.policies
            .iter()
            .any(|p| p.sealed)
            .then(|| sealed::range(self.spa.sealed_base_port))
            .flatten()
    }

    /// Whether any policy is opened by SPA (native, fwknop or one-time keys).
    pub fn uses_spa(&self) -> bool {
        self.policies
            .iter()
            .any(|p| p.spa || p.fwknop || p.otk.is_some())
    }

    /// Whether any policy requires an OS: then TCP knocks are fingerprinted.
    pub fn fingerprints(&self) -> bool {
        self.policies.iter().any(|p| !p.require_os.is_empty())
    }

    /// Whether the SPA detector is needed: SPA, or sealed sequences (judged by it).
    pub fn uses_spa_detector(&self) -> bool {
        self.uses_spa() || self.policies.iter().any(|p| p.sealed)
    }

    /// The timings of each policy rotating sequences open, by policy index.
    pub fn rotating_policies(&self) -> HashMap<usize, RotatingPolicy> {
        self.policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.rotating.map(|r| (i, r)))
            .collect()
    }

    /// The UDP port SPA datagrams are read from, when any policy uses SPA.
    pub fn spa_port(&self) -> Option<u16> {
        self.uses_spa().then_some(self.spa.port)
    }

    /// The static firewall state these policies need. The SPA port is a knock port too:
    /// dropped, so the agent never answers a probe.
    ///
    /// Rotating knock ports are deliberately not here. They are drawn from a wide range
    /// (20000-60000 by default) that overlaps the host's own ephemeral ports, and the drop
    /// rule sits before the established/related accept: dropping a rotating port would
    /// break the host's own outgoing connections whose local port happens to collide.
    /// Capture sees the knocks whether or not they are dropped.
    pub fn ruleset(&self) -> Ruleset {
        let mut rs = Ruleset {
            doors: self.kernel_doors(),
            nflog_group: self.agent.nflog_group,
            ..Ruleset::default()
        };
        for p in &self.policies {
            rs.protected.extend(p.open.iter().copied());
            rs.forwards
                .extend(p.forward.iter().map(|f| (f.outer, f.to)));
        }
        for kind in self.capture_kinds() {
            if let KnockStep::Port { proto, port } = kind {
                rs.knock_ports.insert(Access { proto, port });
            }
        }
        let door_ports = rs.door_ports();
        rs.knock_ports.extend(door_ports);
        rs
    }

    /// Everything the capture filter must let through for the static policies: every
    /// step of a sequence matched in user space, and the SPA port (rotating knocks are added by whoever holds the
    /// material, see [`crate::filter`]).
    pub fn capture_kinds(&self) -> Vec<KnockStep> {
        let mut kinds: Vec<KnockStep> = self
            .doors()
            .into_iter()
            .flat_map(|(_, d)| d.steps)
            .collect();
        if self.uses_spa() {
            kinds.push(KnockStep::Port {
                proto: Proto::Udp,
                port: self.spa.port,
            });
        }
        kinds
    }

    /// The capture filter for the static policies, the sealed range and `extra` knocks
    /// (the rotating ones of the current windows).
    pub fn capture_filter(&self, extra: &[KnockStep]) -> String {
        let kinds = self.capture_kinds();
        crate::filter::capture_filter(kinds.iter().chain(extra), self.sealed_ports())
    }

    /// The knock doors the agent's matcher handles (those not matched in the kernel) and
    /// the policy index each belongs to.
    pub fn doors(&self) -> Vec<(usize, Door)> {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(self.sequence_path(p), Some(SequencePath::Userspace(_))))
            .filter_map(|(i, p)| p.door.clone().map(|d| (i, d)))
            .collect()
    }

    /// Where `policy`'s fixed sequence is matched; `None` without one. The kernel takes
    /// every sequence it can express: the knocks' times are only known as set timeouts,
    /// so `min_gap` stays in user space, and so does `require_os`, which needs each
    /// SYN's fingerprint.
    pub fn sequence_path(&self, policy: &Policy) -> Option<SequencePath> {
        let door = policy.door.as_ref()?;
        Some(
            if self.agent.sequence_matching == SequenceMatching::Userspace {
                SequencePath::Userspace("agent.sequence_matching is \"userspace\"")
            } else if self.firewall.backend != Backend::Nftables {
                SequencePath::Userspace("the command backend has no kernel sets")
            } else if !door.min_gap.is_zero() {
                SequencePath::Userspace("min_gap needs the time of each knock")
            } else if !policy.require_os.is_empty() {
                SequencePath::Userspace("require_os needs each SYN's fingerprint")
            } else if door.steps.len() > MAX_KERNEL_STEPS {
                SequencePath::Userspace("more steps than the kernel path takes (32)")
            } else {
                SequencePath::Kernel
            },
        )
    }

    /// This config with every fixed sequence matched in user space: for a firewall that
    /// cannot match them itself.
    #[must_use]
    pub fn userspace_sequences(mut self) -> Config {
        self.agent.sequence_matching = SequenceMatching::Userspace;
        self
    }

    /// The fixed sequences matched in the kernel.
    pub fn kernel_doors(&self) -> Vec<KernelDoor> {
        let max_sources = u32::try_from(self.agent.max_sources).unwrap_or(u32::MAX);
        self.policies
            .iter()
            .filter(|p| self.sequence_path(p) == Some(SequencePath::Kernel))
            .filter_map(|p| {
                let d = p.door.as_ref()?;
                Some(KernelDoor {
                    policy: p.name.clone(),
                    steps: d.steps.clone(),
                    sequence_timeout: d.sequence_timeout,
                    stage_timeout: d.max_gap.unwrap_or(d.sequence_timeout),
                    tcp_flags: d.tcp_flags,
                    open: p.open.clone(),
                    timeout: p.timeout,
                    max_sources,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
