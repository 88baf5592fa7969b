//! What one knock is: a TCP SYN or a UDP datagram to a port, or an ICMP echo request;
//! written `tcp/7000`, `udp/8000` or `icmp`, and also in the `knock` client's and
//! knockd's shorthand (`7000`, `8000:udp`). The one definition for policies, the agent's
//! packet parser and matchers, the controller and the clients.

use std::fmt;
use std::str::FromStr;

use crate::access::{Access, Proto};

/// One knock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KnockStep {
    /// A TCP SYN or a UDP datagram to this port.
    Port { proto: Proto, port: u16 },
    /// An ICMP (IPv4) or ICMPv6 (IPv6) echo request.
    Icmp,
}

impl KnockStep {
    /// A TCP SYN to `port`.
    #[must_use]
    pub const fn tcp(port: u16) -> Self {
        KnockStep::Port {
            proto: Proto::Tcp,
            port,
        }
    }

    /// A UDP datagram to `port`.
    #[must_use]
    pub const fn udp(port: u16) -> Self {
        KnockStep::Port {
            proto: Proto::Udp,
            port,
        }
    }

    /// The protocol name as it is written: `tcp`, `udp` or `icmp`.
    #[must_use]
    pub const fn protocol(&self) -> &'static str {
        match self {
            KnockStep::Port { proto, .. } => proto.as_str(),
            KnockStep::Icmp => "icmp",
        }
    }

    /// The destination port, or `None` for ICMP.
    #[must_use]
    pub const fn port(&self) -> Option<u16> {
        match self {
            KnockStep::Port { port, .. } => Some(*port),
            KnockStep::Icmp => None,
        }
    }

    /// The `proto/port` it knocks on, or `None` for ICMP.
    #[must_use]
    pub const fn access(&self) -> Option<Access> {
        match *self {
            KnockStep::Port { proto, port } => Some(Access { proto, port }),
            KnockStep::Icmp => None,
        }
    }
}

impl From<Access> for KnockStep {
    fn from(a: Access) -> Self {
        KnockStep::Port {
            proto: a.proto,
            port: a.port,
        }
    }
}

/// The canonical form: `tcp/7000`, `udp/8000`, `icmp`.
impl fmt::Display for KnockStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port() {
            Some(port) => write!(f, "{}/{port}", self.protocol()),
            None => f.write_str(self.protocol()),
        }
    }
}

/// Why a string is not a knock. The messages do not repeat the text itself: callers
/// (clap, config loaders) name the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseKnockError {
    /// The empty string.
    #[error("empty knock (expected tcp/PORT, udp/PORT or icmp)")]
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

/// Accepted forms (protocol names are case-insensitive): `tcp/PORT`, `udp/PORT`,
/// `icmp`, and the `knock` client's and knockd's shorthand `PORT` (TCP), `PORT:tcp`,
/// `PORT:udp`. Ports are decimal, 1-65535.
impl FromStr for KnockStep {
    type Err = ParseKnockError;

    fn from_str(spec: &str) -> Result<Self, ParseKnockError> {
        if spec.is_empty() {
            return Err(ParseKnockError::Empty);
        }
        if let Some((proto, port)) = spec.split_once('/') {
            return with_port(proto, port);
        }
        if let Some((port, proto)) = spec.split_once(':') {
            return with_port(proto, port);
        }
        if spec.eq_ignore_ascii_case("icmp") {
            return Ok(KnockStep::Icmp);
        }
        if spec.eq_ignore_ascii_case("tcp") || spec.eq_ignore_ascii_case("udp") {
            return with_port(spec, "");
        }
        if spec.bytes().all(|b| b.is_ascii_digit()) {
            return parse_port(spec).map(KnockStep::tcp);
        }
        // `icmp6`, `sctp`: a word is a protocol; `80x`, `+80`: a bad port.
        if spec.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) {
            return Err(ParseKnockError::UnknownProtocol(spec.to_owned()));
        }
        Err(ParseKnockError::InvalidPort(spec.to_owned()))
    }
}

fn with_port(proto: &str, port: &str) -> Result<KnockStep, ParseKnockError> {
    let proto = if proto.eq_ignore_ascii_case("tcp") {
        Proto::Tcp
    } else if proto.eq_ignore_ascii_case("udp") {
        Proto::Udp
    } else if proto.eq_ignore_ascii_case("icmp") {
        return Err(ParseKnockError::IcmpPort);
    } else {
        return Err(ParseKnockError::UnknownProtocol(proto.to_owned()));
    };
    if port.is_empty() {
        return Err(ParseKnockError::MissingPort(proto.as_str()));
    }
    parse_port(port).map(|port| KnockStep::Port { proto, port })
}

/// Digits only: `u16::from_str` would also take `+80`.
fn parse_port(port: &str) -> Result<u16, ParseKnockError> {
    let invalid = || ParseKnockError::InvalidPort(port.to_owned());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(n) => Ok(n),
    }
}

/// TCP flag bits as they sit in the header's flag byte (FIN = 0x01 … CWR = 0x80).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// Every flag with its name, lowest bit first.
    pub const NAMES: [(&str, u8); 8] = [
        ("fin", FIN),
        ("syn", SYN),
        ("rst", RST),
        ("psh", PSH),
        ("ack", ACK),
        ("urg", URG),
        ("ece", ECE),
        ("cwr", CWR),
    ];
}

/// Which TCP flags a TCP knock must have set and must have clear, written `syn,!ack`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagFilter {
    pub set: u8,
    pub clear: u8,
}

impl FlagFilter {
    /// What a knock is unless a policy says otherwise: a SYN that is not a SYN-ACK.
    pub const DEFAULT: FlagFilter = FlagFilter {
        set: tcp_flags::SYN,
        clear: tcp_flags::ACK,
    };

    /// Whether a packet with `flags` passes.
    #[must_use]
    pub fn accepts(self, flags: u8) -> bool {
        flags & self.set == self.set && flags & self.clear == 0
    }
}

/// `syn,!ack`: the flags required, then the flags forbidden, each lowest bit first.
impl fmt::Display for FlagFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = tcp_flags::NAMES.iter().filter(|(_, b)| self.set & b != 0);
        let clear = tcp_flags::NAMES.iter().filter(|(_, b)| self.clear & b != 0);
        let words: Vec<String> = set
            .map(|(n, _)| (*n).to_string())
            .chain(clear.map(|(n, _)| format!("!{n}")))
            .collect();
        f.write_str(&words.join(","))
    }
}

/// Why a flag filter did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFlagsError {
    #[error("unknown tcp flag {0:?} (fin, syn, rst, psh, ack, urg, ece, cwr)")]
    Unknown(String),
    #[error("both requires and forbids a flag")]
    Contradiction,
}

impl FromStr for FlagFilter {
    type Err = ParseFlagsError;

    fn from_str(s: &str) -> Result<Self, ParseFlagsError> {
        let mut f = FlagFilter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (neg, name) = match part.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, part),
            };
            let bit = tcp_flags::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, b)| *b)
                .ok_or_else(|| ParseFlagsError::Unknown(name.chars().take(16).collect()))?;
            if neg {
                f.clear |= bit;
            } else {
                f.set |= bit;
            }
        }
        if f.set & f.clear != 0 {
            return Err(ParseFlagsError::Contradiction);
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_spec(s: &str) -> Result<KnockStep, ParseKnockError> {
        s.parse()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(parse_spec("tcp/7000"), Ok(KnockStep::tcp(7000)));
        assert_eq!(parse_spec("udp/8000"), Ok(KnockStep::udp(8000)));
        assert_eq!(parse_spec("icmp"), Ok(KnockStep::Icmp));
        assert_eq!(parse_spec("TCP/1"), Ok(KnockStep::tcp(1)));
        assert_eq!(parse_spec("Udp/65535"), Ok(KnockStep::udp(65535)));
        assert_eq!(parse_spec("ICMP"), Ok(KnockStep::Icmp));
    }

    #[test]
    fn knock_client_shorthand() {
        assert_eq!(parse_spec("7000"), Ok(KnockStep::tcp(7000)));
        assert_eq!(parse_spec("8000:udp"), Ok(KnockStep::udp(8000)));
        assert_eq!(parse_spec("9000:tcp"), Ok(KnockStep::tcp(9000)));
        assert_eq!(parse_spec("9000:UDP"), Ok(KnockStep::udp(9000)));
        assert_eq!(parse_spec("007"), Ok(KnockStep::tcp(7)));
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
                matches!(parse_spec(bad), Err(ParseKnockError::InvalidPort(_))),
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
                matches!(parse_spec(bad), Err(ParseKnockError::InvalidPort(_))),
                "{bad}: {:?}",
                parse_spec(bad)
            );
        }
    }

    #[test]
    fn missing_port() {
        assert_eq!(parse_spec("tcp/"), Err(ParseKnockError::MissingPort("tcp")));
        assert_eq!(parse_spec("udp/"), Err(ParseKnockError::MissingPort("udp")));
        assert_eq!(parse_spec("tcp"), Err(ParseKnockError::MissingPort("tcp")));
        assert_eq!(parse_spec(":udp"), Err(ParseKnockError::MissingPort("udp")));
        assert_eq!(parse_spec("UDP"), Err(ParseKnockError::MissingPort("udp")));
        assert_eq!(
            parse_spec("80:"),
            Err(ParseKnockError::UnknownProtocol(String::new()))
        );
    }

    #[test]
    fn unknown_protocol() {
        assert_eq!(
            parse_spec("sctp/1"),
            Err(ParseKnockError::UnknownProtocol("sctp".into()))
        );
        assert_eq!(
            parse_spec("1:sctp"),
            Err(ParseKnockError::UnknownProtocol("sctp".into()))
        );
        assert_eq!(
            parse_spec("/80"),
            Err(ParseKnockError::UnknownProtocol(String::new()))
        );
        assert_eq!(parse_spec(""), Err(ParseKnockError::Empty));
    }

    #[test]
    fn flag_filters_read_back() {
        let f: FlagFilter = "SYN, !ack".parse().unwrap();
        assert_eq!(f, FlagFilter::DEFAULT);
        assert_eq!(f.to_string(), "syn,!ack");
        assert_eq!("".parse::<FlagFilter>(), Ok(FlagFilter::default()));
        assert_eq!(
            "syn,!syn".parse::<FlagFilter>(),
            Err(ParseFlagsError::Contradiction)
        );
        assert!(matches!(
            "bogus".parse::<FlagFilter>(),
            Err(ParseFlagsError::Unknown(_))
        ));
        assert!(f.accepts(tcp_flags::SYN) && !f.accepts(tcp_flags::SYN | tcp_flags::ACK));
    }

    #[test]
    fn a_word_is_an_unknown_protocol() {
        assert_eq!(
            parse_spec("icmp6"),
            Err(ParseKnockError::UnknownProtocol("icmp6".into()))
        );
        assert_eq!(
            parse_spec("ssh"),
            Err(ParseKnockError::UnknownProtocol("ssh".into()))
        );
    }

    #[test]
    fn icmp_takes_no_port() {
        assert_eq!(parse_spec("icmp/5"), Err(ParseKnockError::IcmpPort));
        assert_eq!(parse_spec("icmp/"), Err(ParseKnockError::IcmpPort));
        assert_eq!(parse_spec("5:icmp"), Err(ParseKnockError::IcmpPort));
    }

    #[test]
    fn display_round_trips() {
        for spec in [KnockStep::tcp(1), KnockStep::udp(65535), KnockStep::Icmp] {
            assert_eq!(parse_spec(&spec.to_string()), Ok(spec));
        }
        assert_eq!(KnockStep::tcp(7000).to_string(), "tcp/7000");
        assert_eq!(KnockStep::Icmp.to_string(), "icmp");
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
