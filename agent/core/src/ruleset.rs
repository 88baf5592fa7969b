//! The firewall state the agent wants, as a value: which ports are protected, which are
//! knock ports, and what a grant is. The firewall backends turn this into rules.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

pub use knockgate_proto::{Access, Proto};

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

/// The static part of the firewall: what is protected and what is a knock port.
///
/// Protected ports drop new connections from sources without a grant; knock ports drop
/// everything, so a scan sees them filtered while capture still sees the knocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub protected: BTreeSet<Access>,
    pub knock_ports: BTreeSet<Access>,
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
}
