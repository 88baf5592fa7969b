//! Turning the HOST argument into the one address every knock goes to:
//! IP literals as they are, hostnames through the system resolver (once, before
//! the first knock, so no knock waits on DNS).

use std::fmt;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};

/// Which address family to knock over (`-4` / `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// The first address the resolver returns, whatever its family.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Family {
    /// Whether `addr` belongs to this family.
    pub fn matches(self, addr: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Any => "IP",
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why HOST does not name an address to knock on. All are user input errors.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// HOST was empty.
    #[error("empty host")]
    Empty,
    /// An IP literal of the other family than `-4`/`-6` asked for.
    #[error("host '{host}' is not an {family} address")]
    WrongFamily {
        /// The literal as given.
        host: String,
        /// The family asked for.
        family: Family,
    },
    /// The resolver failed (unknown name, no DNS server, …).
    #[error("cannot resolve host '{host}'")]
    Lookup {
        /// The name as given.
        host: String,
        /// The resolver error.
        #[source]
        source: io::Error,
    },
    /// The name resolved, but to no address of the requested family.
    #[error("host '{host}' has no {family} address")]
    NoAddress {
        /// The name as given.
        host: String,
        /// The family asked for.
        family: Family,
    },
}

/// Resolves HOST to one address of `family`: an IPv4 literal, an IPv6 literal
/// (optionally in brackets, `[::1]`), or a hostname looked up with the system
/// resolver, of which the first address of `family` is taken.
pub fn resolve_host(host: &str, family: Family) -> Result<IpAddr, ResolveError> {
    if host.is_empty() {
        return Err(ResolveError::Empty);
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(addr) = literal.parse::<IpAddr>() {
        return if family.matches(&addr) {
            Ok(addr)
        } else {
            Err(ResolveError::WrongFamily {
                host: host.to_owned(),
                family,
            })
        };
    }
    let addrs = (host, 0)
        .to_socket_addrs()
        .map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source,
        })?;
    addrs
        .map(|sa| sa.ip())
        .find(|ip| family.matches(ip))
        .ok_or_else(|| ResolveError::NoAddress {
            host: host.to_owned(),
            family,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn literals() {
        assert_eq!(
            resolve_host("10.240.0.1", Family::Any).ok(),
            Some(IpAddr::V4(Ipv4Addr::new(10, 240, 0, 1)))
        );
        assert_eq!(
            resolve_host("::1", Family::V6).ok(),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            resolve_host("[::1]", Family::Any).ok(),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }

    #[test]
    fn literal_of_wrong_family() {
        assert!(matches!(
            resolve_host("127.0.0.1", Family::V6),
            Err(ResolveError::WrongFamily {
                family: Family::V6,
                ..
            })
        ));
        let err = resolve_host("::1", Family::V4).map_or_else(|e| e.to_string(), |a| a.to_string());
        assert_eq!(err, "host '::1' is not an IPv4 address");
    }

    #[test]
    fn localhost_from_hosts_file() {
        assert_eq!(
            resolve_host("localhost", Family::V4).ok(),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn empty() {
        assert!(matches!(
            resolve_host("", Family::Any),
            Err(ResolveError::Empty)
        ));
    }
}
