//! Validated names: users, agents, policies and admins are all named with
//! `[a-z0-9._-]{1,64}`, so a name is safe in a SAN URI, a log line and a path.

use std::fmt;
use std::str::FromStr;

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A string that is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {name:?}: expected 1 to 64 characters from a-z 0-9 . _ - (not only dots)"
)]
pub struct InvalidName {
    /// What kind of name was expected ("user", "agent", ...).
    pub what: &'static str,
    /// The rejected input.
    pub name: String,
}

/// Whether `s` matches `[a-z0-9._-]{1,64}` and is not made of dots only
/// (`.` and `..` would read as path segments inside a SAN URI).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && !s.bytes().all(|b| b == b'.')
}

macro_rules! name_type {
    ($(#[$meta:meta])* $ty:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` against `[a-z0-9._-]{1,64}`.
            pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
                let name = name.into();
                if is_valid_name(&name) {
                    Ok(Self(name))
                } else {
                    Err(InvalidName { what: $what, name })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A user's name (the identity behind knocks and SPA packets).
    UserName,
    "user"
);
name_type!(
    /// An agent's name (its identity in `spiffe://knockgate/agent/<name>`).
    AgentName,
    "agent"
);
name_type!(
    /// A policy's name.
    PolicyName,
    "policy"
);
name_type!(
    /// An administrator's name (its identity in `spiffe://knockgate/admin/<name>`).
    AdminName,
    "admin"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "alice", "web-01.eu_west", "0", &"x".repeat(64), "a..b"] {
            assert!(is_valid_name(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            "Alice",
            "a b",
            "a/b",
            "é",
            &"x".repeat(65),
            "a:b",
        ] {
            assert!(UserName::new(bad).is_err(), "{bad}");
        }
        let err = AgentName::new("A").unwrap_err();
        assert_eq!(err.what, "agent");
    }
}
