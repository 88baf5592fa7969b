//! A forward: a grant on an outer port of the gateway that reaches a service on a host
//! behind it (DNAT), written `tcp/2222 -> 10.0.0.5:22`, or `tcp/2222 -> [fd00::5]:22`
//! for an IPv6 host. This is the one parser of that text: the agent's config file, the
//! controller's policies and `knockadm policy add --forward` all read it here.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::access::{Access, ParseAccessError};

/// Where a grant on `outer` leads: connections from the granted source to the gateway's
/// `outer` port go to `to` (same protocol) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Forward {
    /// The port on the gateway a client is granted, protected like any `open` port.
    pub outer: Access,
    /// The inner host and port its connections reach.
    pub to: SocketAddr,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.outer, self.to)
    }
}

/// Why a forward did not parse. Each message fits on one line after the key that held it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseForwardError {
    /// No `->` between the outer port and the target.
    #[error("expected PROTO/PORT -> ADDR:PORT, e.g. \"tcp/2222 -> 10.0.0.5:22\"")]
    MissingArrow,
    /// The outer port is not `tcp/PORT` or `udp/PORT`.
    #[error("outer port: {0}")]
    Outer(#[source] ParseAccessError),
    /// The target is not `ADDR:PORT`.
    #[error("target: expected ADDR:PORT after \"->\" (an IPv6 address in brackets: [fd00::5]:22)")]
    Target,
    /// The target port is 0.
    #[error("target: port must be 1-65535")]
    TargetPort,
    /// The target address cannot be forwarded to.
    #[error("target: {0}")]
    TargetAddr(&'static str),
}

impl FromStr for Forward {
    type Err = ParseForwardError;

    /// Parses `PROTO/PORT -> ADDR:PORT`; spaces around the arrow are optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (outer, to) = s.split_once("->").ok_or(ParseForwardError::MissingArrow)?;
        let outer = outer
            .trim()
            .parse::<Access>()
            .map_err(ParseForwardError::Outer)?;
        let to = to
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| ParseForwardError::Target)?;
        if to.port() == 0 {
            return Err(ParseForwardError::TargetPort);
        }
        if let Some(why) = unusable(&to) {
            return Err(ParseForwardError::TargetAddr(why));
        }
        Ok(Forward { outer, to })
    }
}

/// Why packets cannot be forwarded to `to`, if they cannot.
fn unusable(to: &SocketAddr) -> Option<&'static str> {
    if let SocketAddr::V6(v6) = to
        && (v6.scope_id() != 0 || v6.flowinfo() != 0)
    {
        return Some("an IPv6 scope id or flow label cannot be forwarded to");
    }
    let ip = to.ip();
    if ip.is_unspecified() {
        return Some("the unspecified address names no host");
    }
    if ip.is_loopback() {
        return Some("a loopback address is the gateway's own, not a host behind it");
    }
    if ip.is_multicast() {
        return Some("a multicast address names no single host");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address names no single host"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("write an IPv4-mapped address as plain IPv4")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fwd(s: &str) -> Result<Forward, ParseForwardError> {
        s.parse()
    }

    #[test]
    fn parses_ipv4_and_ipv6_targets_and_prints_them_back() {
        let f = fwd("tcp/2222 -> 10.0.0.5:22").expect("parses");
        assert_eq!(f.outer, Access::tcp(2222));
        assert_eq!(f.to, "10.0.0.5:22".parse().expect("addr"));
        assert_eq!(f.to_string(), "tcp/2222 -> 10.0.0.5:22");
        let f = fwd("udp/51820->[fd00::5]:51820").expect("no spaces needed");
        assert_eq!(f.outer, Access::udp(51820));
        assert_eq!(f.to_string(), "udp/51820 -> [fd00::5]:51820");
        assert_eq!(fwd(&f.to_string()), Ok(f));
        assert!(fwd("  tcp/80  ->  192.0.2.1:8080 ").is_ok());
    }

    #[test]
    fn says_what_is_wrong() {
        use ParseForwardError as E;
        for (text, want) in [
            ("tcp/2222 10.0.0.5:22", E::MissingArrow),
            ("tcp/2222 => 10.0.0.5:22", E::MissingArrow),
            (
                "icmp/1 -> 10.0.0.5:22",
                E::Outer(ParseAccessError::UnknownProto),
            ),
            ("tcp/0 -> 10.0.0.5:22", E::Outer(ParseAccessError::BadPort)),
            (
                "tcp2222 -> 10.0.0.5:22",
                E::Outer(ParseAccessError::MissingSlash),
            ),
            ("tcp/2222 -> 10.0.0.5", E::Target),
            ("tcp/2222 -> fd00::5:22", E::Target),
            ("tcp/2222 -> host.example:22", E::Target),
            ("tcp/2222 -> 10.0.0.5:65536", E::Target),
            ("tcp/2222 -> 10.0.0.5:22 -> 10.0.0.6:22", E::Target),
            ("tcp/2222 -> 10.0.0.5:0", E::TargetPort),
        ] {
            assert_eq!(fwd(text), Err(want), "{text}");
        }
        for bad in [
            "tcp/2222 -> 0.0.0.0:22",
            "tcp/2222 -> 127.0.0.1:22",
            "tcp/2222 -> 224.0.0.1:22",
            "tcp/2222 -> 255.255.255.255:22",
            "tcp/2222 -> [::]:22",
            "tcp/2222 -> [::1]:22",
            "tcp/2222 -> [ff02::1]:22",
            "tcp/2222 -> [::ffff:10.0.0.5]:22",
            "tcp/2222 -> [fe80::1%2]:22",
        ] {
            assert!(
                matches!(fwd(bad), Err(ParseForwardError::TargetAddr(_))),
                "{bad}: {:?}",
                fwd(bad)
            );
        }
        let e = fwd("tcp/2222 -> fd00::5:22").expect_err("ambiguous");
        assert!(e.to_string().contains("[fd00::5]:22"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = fwd(&s);
        }

        #[test]
        fn what_it_prints_parses_back(
            tcp in any::<bool>(),
            outer in 1u16..,
            a in any::<[u8; 4]>(),
            port in 1u16..,
        ) {
            let text = format!(
                "{}/{outer} -> {}:{port}",
                if tcp { "tcp" } else { "udp" },
                std::net::Ipv4Addr::from(a)
            );
            if let Ok(f) = fwd(&text) {
                prop_assert_eq!(f.to_string(), text);
            }
        }
    }
}
