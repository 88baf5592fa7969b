//! The requested access both SPA formats carry: a transport protocol and a
//! port, written `tcp/22` in text (the form fwknop's `-A` flag and message use).

use std::fmt;
use std::str::FromStr;

/// A transport protocol a grant can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IANA IP protocol number (6 or 17), as used on the native wire.
    #[must_use]
    pub const fn ip_number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The protocol for an IANA IP protocol number, if it is TCP or UDP.
    #[must_use]
    pub const fn from_ip_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// Lower-case name: `tcp` or `udp`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `proto/port` pair a client asks to have opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    /// Transport protocol.
    pub proto: Proto,
    /// Destination port, never 0 once decoded.
    pub port: u16,
}

impl Access {
    /// `tcp/<port>`.
    #[must_use]
    pub const fn tcp(port: u16) -> Self {
        Access {
            proto: Proto::Tcp,
            port,
        }
    }

    /// `udp/<port>`.
    #[must_use]
    pub const fn udp(port: u16) -> Self {
        Access {
            proto: Proto::Udp,
            port,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

/// Why a `proto/port` string did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseAccessError {
    /// No `/` between protocol and port.
    #[error("missing '/' between protocol and port")]
    MissingSlash,
    /// The protocol is neither `tcp` nor `udp`.
    #[error("unknown protocol (expected tcp or udp)")]
    UnknownProto,
    /// The port is not a decimal number in 1..=65535.
    #[error("port is not a number in 1..=65535")]
    BadPort,
}

impl FromStr for Access {
    type Err = ParseAccessError;

    /// Parses `tcp/22` or `udp/53` (protocol case-sensitive, as fwknop
    /// writes it; port 1..=65535 in plain decimal, at most five digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, port) = s.split_once('/').ok_or(ParseAccessError::MissingSlash)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(ParseAccessError::UnknownProto),
        };
        let port = parse_port(port.as_bytes()).ok_or(ParseAccessError::BadPort)?;
        Ok(Access { proto, port })
    }
}

/// A port in 1..=65535 written as 1 to 5 ASCII digits.
pub(crate) fn parse_port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let a: Access = "tcp/22".parse().unwrap();
        assert_eq!(a, Access::tcp(22));
        assert_eq!(a.to_string(), "tcp/22");
        assert_eq!("udp/65535".parse::<Access>(), Ok(Access::udp(65535)));
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!(
            "tcp22".parse::<Access>(),
            Err(ParseAccessError::MissingSlash)
        );
        assert_eq!(
            "icmp/0".parse::<Access>(),
            Err(ParseAccessError::UnknownProto)
        );
        for bad in [
            "tcp/0",
            "tcp/65536",
            "tcp/",
            "tcp/+1",
            "tcp/000022",
            "tcp/2a",
        ] {
            assert_eq!(
                bad.parse::<Access>(),
                Err(ParseAccessError::BadPort),
                "{bad}"
            );
        }
    }
}
