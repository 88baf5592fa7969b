//! Policy vocabulary the agent, the controller and the CLIs share: one definition each.

use std::fmt;
use std::str::FromStr;

/// The UDP port SPA packets go to when nothing else is said (fwknop's).
pub const DEFAULT_SPA_PORT: u16 = 62201;

/// The length of a rotating-sequence window when nothing else is said, in seconds.
pub const DEFAULT_WINDOW_SECS: u32 = 30;

/// What a one-time-key policy does when the controller cannot be reached to claim a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum OtkOffline {
    /// Refuse the packet: no claim, no grant (the default).
    #[default]
    Deny,
    /// Grant, burn the key here, and report the claim when the controller is back.
    Local,
}

impl OtkOffline {
    /// The spelling in configs, on the wire and in the store.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OtkOffline::Deny => "deny",
            OtkOffline::Local => "local",
        }
    }
}

impl fmt::Display for OtkOffline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An offline rule that is neither `deny` nor `local`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an offline rule: use \"deny\" or \"local\"")]
pub struct ParseOtkOfflineError(pub String);

impl FromStr for OtkOffline {
    type Err = ParseOtkOfflineError;

    /// `deny` or `local` (the empty string is not accepted here: callers that treat
    /// "unset" as the default say so themselves).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(OtkOffline::Deny),
            "local" => Ok(OtkOffline::Local),
            other => Err(ParseOtkOfflineError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_rules_round_trip_and_others_are_refused() {
        for o in [OtkOffline::Deny, OtkOffline::Local] {
            assert_eq!(o.as_str().parse::<OtkOffline>(), Ok(o));
            assert_eq!(o.to_string(), o.as_str());
        }
        assert!("maybe".parse::<OtkOffline>().is_err());
        assert!("".parse::<OtkOffline>().is_err());
        assert_eq!(OtkOffline::default(), OtkOffline::Deny);
    }
}
