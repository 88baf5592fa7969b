//! The firewall state the agent wants, as a value: which ports are protected, which are
//! knock ports, and what a grant is. The firewall backends turn this into rules.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A transport protocol a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IANA protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The lowercase name used in configs and `%PROTO%`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The protocol for an IANA number, if it is one we handle.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `proto/port` pair such as `tcp/22`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

/// Why a `proto/port` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("expected proto/port such as tcp/22, got {0:?}")]
    Shape(String),
    #[error("unknown protocol {0:?} (expected tcp or udp)")]
    Proto(String),
    #[error("bad port {0:?} (expected 1-65535)")]
    Port(String),
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, port) = s
            .split_once('/')
            .ok_or_else(|| PortSpecError::Shape(s.to_string()))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(PortSpecError::Proto(other.to_string())),
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(PortSpecError::Port(port.to_string())),
        };
        Ok(PortSpec { proto, port })
    }
}

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
    pub protected: BTreeSet<PortSpec>,
    pub knock_ports: BTreeSet<PortSpec>,
}
