//! Knock specifications: what one knock is (`tcp/7000`, `udp/8000`, `icmp`) and
//! the parser for the strings users type, including the `knock` client's
//! shorthand (`7000`, `8000:udp`).

use std::fmt;
use std::str::FromStr;

/// One knock: a TCP SYN or a UDP datagram to a port, or an ICMP echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KnockSpec {
    /// A single TCP SYN to this port.
    Tcp(u16),
    /// A single UDP datagram to this port.
    Udp(u16),
    /// A single ICMP (IPv4) or ICMPv6 (IPv6) echo request.
    Icmp,
}

impl KnockSpec {
    /// The protocol name as it appears in a spec: `tcp`, `udp` or `icmp`.
    pub fn protocol(&self) -> &'static str {
        match self {
            KnockSpec::Tcp(_) => "tcp",
            KnockSpec::Udp(_) => "udp",
            KnockSpec::Icmp => "icmp",
        }
    }

    /// The destination port, or `None` for ICMP.
    pub fn port(&self) -> Option<u16> {
        match self {
            KnockSpec::Tcp(port) | KnockSpec::Udp(port) => Some(*port),
            KnockSpec::Icmp => None,
        }
    }
}

/// Formats in the canonical form accepted by [`parse_spec`]: `tcp/7000`, `udp/8000`, `icmp`.
impl fmt::Display for KnockSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port() {
            Some(port) => write!(f, "{}/{port}", self.protocol()),
            None => f.write_str(self.protocol()),
        }
    }
}

/// Why a string is not a knock spec. The messages do not repeat the spec
/// itself: callers (clap, config loaders) name the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec was the empty string.
    #[error("empty knock spec (expected tcp/PORT, udp/PORT or icmp)")]
    Empty,
    /// The protocol is not one of tcp, udp, icmp.
    #[error("unknown protocol '{0}' (expected tcp/PORT, udp/PORT or icmp)")]
    UnknownProtocol(String),
    /// `tcp`, `tcp/` or `udp/` with no port.
    #[error("missing port (expected {0}/PORT)")]
    MissingPort(&'static str),
    /// The port is not a decimal number in 1-65535.
    #[error("invalid port '{0}' (expected a number from 1 to 65535)")]
    InvalidPort(String),
    /// `icmp/…` or `…:icmp`: ICMP has no ports.
    #[error("icmp takes no port (write just 'icmp')")]
    IcmpPort,
}

/// Parses one knock spec.
///
/// Accepted forms (protocol names are case-insensitive):
/// - `tcp/PORT`, `udp/PORT`, `icmp`
/// - the `knock` client's shorthand: `PORT` (TCP), `PORT:tcp`, `PORT:udp`
///
/// Ports are decimal, 1-65535.
pub fn parse_spec(spec: &str) -> Result<KnockSpec, SpecError> {
    if spec.is_empty() {
        return Err(SpecError::Empty);
    }
    if let Some((proto, port)) = spec.split_once('/') {
        return with_port(proto, port);
    }
    if let Some((port, proto)) = spec.split_once(':') {
        return with_port(proto, port);
    }
    if spec.eq_ignore_ascii_case("icmp") {
        return Ok(KnockSpec::Icmp);
    }
    if spec.eq_ignore_ascii_case("tcp") || spec.eq_ignore_ascii_case("udp") {
        return with_port(spec, "");
    }
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        return parse_port(spec).map(KnockSpec::Tcp);
    }
    if spec.bytes().any(|b| b.is_ascii_digit()) {
        return Err(SpecError::InvalidPort(spec.to_owned()));
    }
    Err(SpecError::UnknownProtocol(spec.to_owned()))
}

impl FromStr for KnockSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spec(s)
    }
}

fn with_port(proto: &str, port: &str) -> Result<KnockSpec, SpecError> {
    let make: fn(u16) -> KnockSpec = if proto.eq_ignore_ascii_case("tcp") {
        KnockSpec::Tcp
    } else if proto.eq_ignore_ascii_case("udp") {
        KnockSpec::Udp
    } else if proto.eq_ignore_ascii_case("icmp") {
        return Err(SpecError::IcmpPort);
    } else {
        return Err(SpecError::UnknownProtocol(proto.to_owned()));
    };
    if port.is_empty() {
        return Err(SpecError::MissingPort(make(0).protocol()));
    }
    parse_port(port).map(make)
}

/// Digits only: `u16::from_str` would also take `+80`.
fn parse_port(port: &str) -> Result<u16, SpecError> {
    let invalid = || SpecError::InvalidPort(port.to_owned());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(parse_spec("tcp/7000"), Ok(KnockSpec::Tcp(7000)));
        assert_eq!(parse_spec("udp/8000"), Ok(KnockSpec::Udp(8000)));
        assert_eq!(parse_spec("icmp"), Ok(KnockSpec::Icmp));
        assert_eq!(parse_spec("TCP/1"), Ok(KnockSpec::Tcp(1)));
        assert_eq!(parse_spec("Udp/65535"), Ok(KnockSpec::Udp(65535)));
        assert_eq!(parse_spec("ICMP"), Ok(KnockSpec::Icmp));
    }

    #[test]
    fn knock_client_shorthand() {
        assert_eq!(parse_spec("7000"), Ok(KnockSpec::Tcp(7000)));
        assert_eq!(parse_spec("8000:udp"), Ok(KnockSpec::Udp(8000)));
        assert_eq!(parse_spec("9000:tcp"), Ok(KnockSpec::Tcp(9000)));
        assert_eq!(parse_spec("9000:UDP"), Ok(KnockSpec::Udp(9000)));
        assert_eq!(parse_spec("007"), Ok(KnockSpec::Tcp(7)));
    }

    #[test]
    fn port_out_of_range() {
        for bad in [
            "0",
            "65536",
            "tcp/0",
            "udp/65536",
            "0:udp",
            "99999999999999999999",
        ] {
            assert!(
                matches!(parse_spec(bad), Err(SpecError::InvalidPort(_))),
                "{bad}: {:?}",
                parse_spec(bad)
            );
        }
    }

    #[test]
    fn malformed_ports() {
        for bad in [
            "tcp/+80", "tcp/-1", "tcp/80 ", "tcp/8o", "udp/1/2", "80x", "+80",
        ] {
            assert!(
                matches!(parse_spec(bad), Err(SpecError::InvalidPort(_))),
                "{bad}: {:?}",
                parse_spec(bad)
            );
        }
    }

    #[test]
    fn missing_port() {
        assert_eq!(parse_spec("tcp/"), Err(SpecError::MissingPort("tcp")));
        assert_eq!(parse_spec("udp/"), Err(SpecError::MissingPort("udp")));
        assert_eq!(parse_spec("tcp"), Err(SpecError::MissingPort("tcp")));
        assert_eq!(parse_spec(":udp"), Err(SpecError::MissingPort("udp")));
        assert_eq!(parse_spec("UDP"), Err(SpecError::MissingPort("udp")));
        assert_eq!(
            parse_spec("80:"),
            Err(SpecError::UnknownProtocol(String::new()))
        );
    }

    #[test]
    fn unknown_protocol() {
        assert_eq!(
            parse_spec("sctp/1"),
            Err(SpecError::UnknownProtocol("sctp".into()))
        );
        assert_eq!(
            parse_spec("1:sctp"),
            Err(SpecError::UnknownProtocol("sctp".into()))
        );
        assert_eq!(
            parse_spec("/80"),
            Err(SpecError::UnknownProtocol(String::new()))
        );
        assert_eq!(parse_spec(""), Err(SpecError::Empty));
    }

    #[test]
    fn icmp_takes_no_port() {
        assert_eq!(parse_spec("icmp/5"), Err(SpecError::IcmpPort));
        assert_eq!(parse_spec("icmp/"), Err(SpecError::IcmpPort));
        assert_eq!(parse_spec("5:icmp"), Err(SpecError::IcmpPort));
    }

    #[test]
    fn display_round_trips() {
        for spec in [KnockSpec::Tcp(1), KnockSpec::Udp(65535), KnockSpec::Icmp] {
            assert_eq!(parse_spec(&spec.to_string()), Ok(spec));
        }
        assert_eq!(KnockSpec::Tcp(7000).to_string(), "tcp/7000");
        assert_eq!(KnockSpec::Icmp.to_string(), "icmp");
    }

    #[test]
    fn errors_are_one_line() {
        for bad in ["", "sctp/1", "tcp/", "icmp/5", "65536"] {
            let Err(err) = parse_spec(bad) else {
                panic!("{bad} parsed");
            };
            assert!(!err.to_string().contains('\n'));
        }
    }
}
