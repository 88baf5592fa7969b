//! Parsers for `knockadm` flag values: labels (`k=v`), agent selectors
//! (`k=v,k=v`), durations, `--since`, names, access and knock-sequence
//! lists, and their conversion to the wire types. Every error here is the
//! user's (exit 64, reported by clap with the offending value).

use std::time::{Duration, SystemTime};

use knockgate_proto::api;
use knockgate_proto::{Access, Proto};

use crate::cmd::spa::{TimeoutError, parse_timeout};

/// Longest label key or value.
const MAX_LABEL_LEN: usize = 63;

/// Why a label or selector is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No `=`.
    #[error("expected KEY=VALUE")]
    MissingEquals,
    /// `=value`.
    #[error("empty key (expected KEY=VALUE)")]
    EmptyKey,
    /// `key=`.
    #[error("empty value (expected KEY=VALUE)")]
    EmptyValue,
    /// Over 63 characters.
    #[error("key and value must be at most {MAX_LABEL_LEN} characters")]
    TooLong,
    /// A character outside `A-Z a-z 0-9 . _ - /` (and `:` in values).
    #[error("invalid character {0:?} (use letters, digits and . _ - /)")]
    BadChar(char),
    /// The same key twice.
    #[error("key '{0}' given twice")]
    Duplicate(String),
}

fn check_part(part: &str, extra: &[char]) -> Result<(), LabelError> {
    if part.len() > MAX_LABEL_LEN {
        return Err(LabelError::TooLong);
    }
    match part
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ".-_/".contains(c) || extra.contains(&c)))
    {
        Some(c) => Err(LabelError::BadChar(c)),
        None => Ok(()),
    }
}

/// Parses `--label KEY=VALUE`.
///
/// # Errors
/// [`LabelError`] when either side is empty, too long, or has a character
/// other than letters, digits, `.`, `_`, `-`, `/` (and `:` in the value).
pub fn parse_label(s: &str) -> Result<(String, String), LabelError> {
    let (key, value) = s.split_once('=').ok_or(LabelError::MissingEquals)?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() {
        return Err(LabelError::EmptyKey);
    }
    if value.is_empty() {
        return Err(LabelError::EmptyValue);
    }
    check_part(key, &[])?;
    check_part(value, &[':'])?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses `--agents KEY=VALUE[,KEY=VALUE…]` into the canonical selector the
/// controller takes (`role=edge,site=par`); the empty string selects every
/// agent.
///
/// # Errors
/// [`LabelError`] for a malformed entry or a key given twice.
pub fn parse_selector(s: &str) -> Result<String, LabelError> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for entry in s.split(',') {
        let (key, value) = parse_label(entry)?;
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(LabelError::Duplicate(key));
        }
        seen.push((key, value));
    }
    let parts: Vec<String> = seen.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(parts.join(","))
}

/// Why a duration flag is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    /// Not a duration, fractional, or too long.
    #[error(transparent)]
    Parse(#[from] TimeoutError),
    /// Zero.
    #[error("must be more than 0 seconds")]
    Zero,
}

/// Parses a duration flag (`30s`, `5m`, `1h`, or bare seconds) to whole
/// seconds, at least 1.
///
/// # Errors
/// [`DurationError`].
pub fn parse_secs(s: &str) -> Result<u32, DurationError> {
    match parse_timeout(s)? {
        0 => Err(DurationError::Zero),
        secs => Ok(secs),
    }
}

/// `--since`: how far back, or from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// A duration before now (`1h`, `30m`).
    Ago(Duration),
    /// A point in time (RFC 3339, e.g. `2025-06-01T12:00:00Z`).
    At(SystemTime),
}

impl Since {
    /// Unix milliseconds of the start, as `AuditQuery.since_unix_ms` takes it.
    #[must_use]
    pub fn unix_ms(self, now: SystemTime) -> i64 {
        let at = match self {
            Since::Ago(ago) => now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
            Since::At(at) => at,
        };
        at.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            // 0 means "from the start" on the wire; the epoch itself is the same.
            .max(0)
    }
}

/// Why a `--since` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("expected a duration (1h, 30m) or an RFC 3339 time (2025-06-01T12:00:00Z)")]
pub struct SinceError;

/// Parses `--since`: a humantime duration ago, or an RFC 3339 timestamp.
///
/// # Errors
/// [`SinceError`].
pub fn parse_since(s: &str) -> Result<Since, SinceError> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(Since::Ago(ago));
    }
    humantime::parse_rfc3339_weak(s)
        .map(Since::At)
        .map_err(|_| SinceError)
}

/// Why a name in a list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// `a,,b` or an empty flag.
    #[error("empty name")]
    Empty,
    /// Spaces or control characters.
    #[error("names cannot contain spaces or control characters")]
    BadChar,
}

/// Parses one user, group or agent name of a flag (`--users a,b`).
///
/// # Errors
/// [`NameError`] for an empty name or whitespace in it.
pub fn parse_name(s: &str) -> Result<String, NameError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::BadChar);
    }
    Ok(s.to_owned())
}

/// Why a `LO-HI` port range is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// Not `LO-HI` with two ports in 1..=65535.
    #[error("expected LO-HI with ports from 1 to 65535")]
    Syntax,
    /// `LO` above `HI`.
    #[error("the low port is above the high port")]
    Reversed,
}

/// Parses a port range `LO-HI` (e.g. `20000-60000`), both ends included.
///
/// # Errors
/// [`PortRangeError`].
pub fn parse_port_range(s: &str) -> Result<(u16, u16), PortRangeError> {
    let (lo, hi) = s.split_once('-').ok_or(PortRangeError::Syntax)?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(PortRangeError::Syntax)
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(PortRangeError::Reversed);
    }
    Ok((lo, hi))
}

/// An access entry on the wire.
#[must_use]
pub fn access_to_api(access: Access) -> api::Access {
    let proto = match access.proto {
        Proto::Tcp => api::Proto::Tcp,
        Proto::Udp => api::Proto::Udp,
    };
    api::Access {
        proto: proto as i32,
        port: u32::from(access.port),
    }
}

/// An access entry from the wire, as `tcp/22` (`?/22` for an unknown protocol).
#[must_use]
pub fn access_text(access: &api::Access) -> String {
    let proto = match api::Proto::try_from(access.proto) {
        Ok(api::Proto::Tcp) => "tcp",
        Ok(api::Proto::Udp) => "udp",
        _ => "?",
    };
    format!("{proto}/{}", access.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("role=edge").unwrap(),
            ("role".into(), "edge".into())
        );
        assert_eq!(
            parse_label(" site = par-1 ").unwrap(),
            ("site".into(), "par-1".into())
        );
        assert_eq!(
            parse_label("k8s.io/zone=eu:west").unwrap(),
            ("k8s.io/zone".into(), "eu:west".into())
        );
        assert_eq!(parse_label("role"), Err(LabelError::MissingEquals));
        assert_eq!(parse_label("=edge"), Err(LabelError::EmptyKey));
        assert_eq!(parse_label("role="), Err(LabelError::EmptyValue));
        assert_eq!(parse_label("ro le=x"), Err(LabelError::BadChar(' ')));
        assert_eq!(parse_label("role=a,b"), Err(LabelError::BadChar(',')));
        assert_eq!(parse_label("role=a=b"), Err(LabelError::BadChar('=')));
        assert_eq!(parse_label("a:b=c"), Err(LabelError::BadChar(':')));
        assert_eq!(
            parse_label(&format!("{}=x", "k".repeat(64))),
            Err(LabelError::TooLong)
        );
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector("role=edge").unwrap(), "role=edge");
        assert_eq!(
            parse_selector("role=edge, site=par").unwrap(),
            "role=edge,site=par"
        );
        assert_eq!(parse_selector("").unwrap(), "");
        assert_eq!(parse_selector("role"), Err(LabelError::MissingEquals));
        assert_eq!(parse_selector("role=edge,"), Err(LabelError::MissingEquals));
        assert_eq!(
            parse_selector("role=edge,role=core"),
            Err(LabelError::Duplicate("role".into()))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_secs("30s").unwrap(), 30);
        assert_eq!(parse_secs("5m").unwrap(), 300);
        assert_eq!(parse_secs("1h").unwrap(), 3600);
        assert_eq!(parse_secs("90").unwrap(), 90);
        assert!(matches!(parse_secs("0"), Err(DurationError::Zero)));
        assert!(matches!(parse_secs("0s"), Err(DurationError::Zero)));
        for bad in ["", "soon", "1.5s", "-1s", "200y"] {
            assert!(
                matches!(parse_secs(bad), Err(DurationError::Parse(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn since() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("1h").unwrap().unix_ms(now), 6_400_000);
        assert_eq!(parse_since("5h").unwrap().unix_ms(now), 0);
        let at = parse_since("2025-06-01T12:00:00Z").unwrap();
        assert_eq!(at.unix_ms(now), 1_748_779_200_000);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(parse_name(" alice ").unwrap(), "alice");
        assert_eq!(parse_name(""), Err(NameError::Empty));
        assert_eq!(parse_name("a b"), Err(NameError::BadChar));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("20000-60000"), Ok((20000, 60000)));
        assert_eq!(parse_port_range("7-7"), Ok((7, 7)));
        assert_eq!(parse_port_range("9-8"), Err(PortRangeError::Reversed));
        for bad in ["", "1", "0-10", "1-65536", "a-b", "1-2-3"] {
            assert_eq!(parse_port_range(bad), Err(PortRangeError::Syntax), "{bad}");
        }
    }

    #[test]
    fn access_round_trip() {
        for access in [Access::tcp(22), Access::udp(53), Access::tcp(65535)] {
            let wire = access_to_api(access);
            assert_eq!(access_text(&wire), access.to_string());
        }
        assert_eq!(access_text(&api::Access { proto: 0, port: 1 }), "?/1");
        assert_eq!(access_to_api(Access::udp(53)).proto, 2);
    }
}
