//! Enforcement: the `Firewall` trait and its backends. The event loop decides; a backend
//! only applies. Every backend must fail closed: an error leaves the port shut.

pub mod command;
#[cfg(test)]
pub mod fake;
pub mod nft;

use std::time::Duration;

use knockgate_agent_core::ruleset::{GrantKey, Ruleset};

/// What went wrong talking to the firewall.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("the kernel refused {op}: {errno}")]
    Kernel {
        op: &'static str,
        errno: std::io::Error,
    },
    #[error("permission denied: {0} (run as root or with CAP_NET_ADMIN)")]
    Permission(String),
    #[error("command {command:?} failed: {reason}")]
    Command { command: String, reason: String },
}

/// A grant the firewall currently holds, with the time it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub key: GrantKey,
    pub remaining: Duration,
}

/// The one seam between the agent and the packet filter.
pub trait Firewall: Send {
    /// Install (or replace) the static ruleset: protected ports, knock ports, grant sets.
    /// Grants already held are kept so a restarted agent can adopt them.
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError>;
    /// Let `key` open new connections for `timeout`; if it is already open, its timeout
    /// restarts from now. The firewall itself expires the grant, so it closes on time even
    /// if the agent dies.
    fn open(&mut self, key: &GrantKey, timeout: Duration) -> Result<(), FirewallError>;
    /// Withdraw a grant now. Closing a grant that is not held is not an error.
    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError>;
    /// The grants the firewall holds now.
    fn list(&mut self) -> Result<Vec<Held>, FirewallError>;
    /// Whether what [`Firewall::ensure_base`] installed is still whole (something else may
    /// flush or delete it). A backend with nothing to check says yes.
    fn intact(&mut self, _ruleset: &Ruleset) -> Result<bool, FirewallError> {
        Ok(true)
    }
    /// What a clean stop leaves behind. By default everything stays: protection outlives
    /// the agent and the firewall expires grants by itself. A backend that cannot expire
    /// grants closes them here, so nothing stays open with nobody to close it.
    fn stop(&mut self) -> Result<(), FirewallError> {
        Ok(())
    }
}
