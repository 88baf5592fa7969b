//! Enforcement: the `Firewall` trait and its backends. The event loop decides; a backend
//! only applies. Every backend must fail closed: an error leaves the port shut.

pub mod command;
#[cfg(test)]
pub mod fake;
pub mod nft;

use std::time::Duration;

use knockgate_agent_core::grants::GrantLabel;
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

pub use knockgate_agent_core::grants::Held;

/// The one seam between the agent and the packet filter.
pub trait Firewall: Send {
    /// Install (or replace) the static ruleset: protected ports, knock ports, grant sets.
    /// Grants already held are kept so a restarted agent can adopt them.
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError>;
    /// Let `key` open new connections for `timeout`, stored with `label`; if it is already
    /// open, its timeout restarts from now. The firewall itself expires the grant, so it
    /// closes on time even if the agent dies.
    fn open(
        &mut self,
        key: &GrantKey,
        timeout: Duration,
        label: &GrantLabel,
    ) -> Result<(), FirewallError>;
    /// Withdraw a grant now. Closing a grant that is not held is not an error.
    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError>;
    /// The grants the firewall holds now.
    fn list(&mut self) -> Result<Vec<Held>, FirewallError>;
    /// Whether what [`Firewall::ensure_base`] installed is still whole (something else may
    /// flush or delete it). A backend with nothing to check says yes.
    fn intact(&mut self, _ruleset: &Ruleset) -> Result<bool, FirewallError> {
        Ok(true)
    }
    /// Whether the firewall expires grants by itself (nftables: the kernel does). A
    /// backend that cannot has its grants closed when the agent stops, so nothing stays
    /// open with nobody to close it; the others keep them, and protection, in place.
    fn expires_grants(&self) -> bool {
        true
    }
    /// Whether the firewall matches fixed knock sequences itself (kernel doors); a
    /// config's doors are matched in user space by a firewall that does not.
    fn matches_sequences(&self) -> bool {
        false
    }
    /// Let the firewall's own sequence matching (kernel doors) open grants for `ttl`
    /// more; `Duration::ZERO` stops it now. A backend without it has nothing to do.
    fn keep_doors_alive(&mut self, _ttl: Duration) -> Result<(), FirewallError> {
        Ok(())
    }
}
