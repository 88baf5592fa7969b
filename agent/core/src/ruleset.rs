//! The firewall state the agent wants, as a value: which ports are protected, which are
//! knock ports, which are forwarded to hosts behind the gateway, and what a grant is. The
//! firewall backends turn this into rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use knockgate_proto::knock::FlagFilter;
pub use knockgate_proto::{Access, Forward, KnockStep, Proto};

/// One grant as the firewall holds it: this source may open new connections to this port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.addr, self.proto, self.port)
    }
}

/// The static part of the firewall: what is protected, what is a knock port, and what is
/// forwarded.
///
/// Protected ports drop new connections from sources without a grant; knock ports drop
/// everything, so a scan sees them filtered while capture still sees the knocks. A
/// forwarded port (also protected) takes a granted source's new connections to the inner
/// host and port it maps to; the gateway itself never serves it, and new connections to
/// that inner service that were not forwarded for a grant are not routed through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub protected: BTreeSet<Access>,
    pub knock_ports: BTreeSet<Access>,
    /// Outer port on the gateway -> inner host and port (same protocol).
    pub forwards: BTreeMap<Access, SocketAddr>,
    /// Fixed sequences the firewall matches itself (docs/KERNEL_SEQUENCES.md).
    pub doors: Vec<KernelDoor>,
    /// The nflog group the firewall reports kernel-matched sequences on.
    pub nflog_group: u16,
}

/// A fixed knock sequence matched in the kernel: per stage, a set of the sources that
/// have made it that far. The last knock adds the grants to the grant sets itself, with
/// their timeout, and reports the completion on the nflog group with the door's id as
/// the prefix. knockd's rules, as the user-space matcher has them: a wrong knock on one
/// of the door's ports drops a source back, a repeat of the knock just made changes
/// nothing, the whole sequence must finish within `sequence_timeout` and each knock
/// within `stage_timeout` of the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDoor {
    pub policy: String,
    pub steps: Vec<KnockStep>,
    pub sequence_timeout: Duration,
    /// `max_gap`, or the sequence timeout when there is none.
    pub stage_timeout: Duration,
    pub tcp_flags: FlagFilter,
    pub open: Vec<Access>,
    pub timeout: Duration,
    /// The most sources each stage holds; when a stage is full, new sources are refused.
    pub max_sources: u32,
}

impl KernelDoor {
    /// `kd_` and a digest (FNV-1a, a name, not a secret) of the whole door: it names the
    /// door's chain and sets and its completions, so a door a new config leaves unchanged
    /// keeps them (and the progress in them).
    pub fn id(&self) -> String {
        let text = format!(
            "{}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{}",
            self.policy,
            self.steps,
            self.sequence_timeout,
            self.stage_timeout,
            self.tcp_flags,
            self.open,
            self.timeout,
            self.max_sources
        );
        let digest = text.bytes().fold(0x811c_9dc5, |h: u32, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("kd_{digest:08x}")
    }

    /// Whether a step is an ICMP echo request.
    pub fn uses_icmp(&self) -> bool {
        self.steps.contains(&KnockStep::Icmp)
    }

    /// Whether a step is a TCP knock (then the flag filter applies).
    pub fn uses_tcp(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s,
                KnockStep::Port {
                    proto: Proto::Tcp,
                    ..
                }
            )
        })
    }

    /// The door's TCP and UDP knock ports, each once.
    pub fn ports(&self) -> BTreeSet<Access> {
        self.steps
            .iter()
            .filter_map(|s| match *s {
                KnockStep::Port { proto, port } => Some(Access { proto, port }),
                KnockStep::Icmp => None,
            })
            .collect()
    }
}

impl Ruleset {
    /// Protect `ports` too (ports kept from an earlier run). One that is a knock port
    /// here stays a knock port, which drops everything anyway.
    pub fn keep_protected<'a>(&mut self, ports: impl IntoIterator<Item = &'a Access>) {
        let extra: Vec<Access> = ports
            .into_iter()
            .filter(|a| !self.knock_ports.contains(a))
            .copied()
            .collect();
        self.protected.extend(extra);
    }

    /// The TCP and UDP ports of every kernel door, each once.
    pub fn door_ports(&self) -> BTreeSet<Access> {
        self.doors.iter().flat_map(KernelDoor::ports).collect()
    }

    /// The inner services forwarded to, as `(addr, proto, port)`, each once.
    pub fn forward_targets(&self) -> BTreeSet<(IpAddr, Proto, u16)> {
        self.forwards
            .iter()
            .map(|(outer, to)| (to.ip(), outer.proto, to.port()))
            .collect()
    }
}
