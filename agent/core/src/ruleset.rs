//! The firewall state the agent wants, as a value: which ports are protected, which are
//! knock ports, which are forwarded to hosts behind the gateway, and what a grant is. The
//! firewall backends turn this into rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use knockgate_proto::{Access, Forward, Proto};

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

    /// The inner services forwarded to, as `(addr, proto, port)`, each once.
    pub fn forward_targets(&self) -> BTreeSet<(IpAddr, Proto, u16)> {
        self.forwards
            .iter()
            .map(|(outer, to)| (to.ip(), outer.proto, to.port()))
            .collect()
    }
}
