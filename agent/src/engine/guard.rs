//! Keeping protection in place. The firewall's base (table, chain, port sets) and the live
//! grants are checked when a notification says something else changed the table, and
//! every [`CHECK_EVERY`] as a backstop; whatever is missing is put back at once and
//! reported as `firewall.repaired`.
//!
//! The protected set only shrinks by an explicit change: every set installed is recorded
//! in `state_dir`, and a managed agent that starts without a usable controller config
//! keeps enforcing the recorded ports (the "floor") until the controller sends a config.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use knockgate_agent_core::ruleset::{Access, GrantKey, Ruleset};
use tracing::warn;

use super::Engine;
use crate::firewall::FirewallError;
use crate::report::ReportEvent;

/// The backstop: how often the firewall is checked when no notification came.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a change notification, wait this long for the rest of the burst (one `nft -f`
/// is many messages) before checking.
const SETTLE: Duration = Duration::from_millis(20);
/// A grant about to expire is not put back: the kernel's expiry is a little coarser than
/// the engine's.
const MIN_RESTORE: Duration = Duration::from_millis(100);

/// When to check next, what to keep protected beyond the config, and where to record it.
#[derive(Debug)]
pub(super) struct Guard {
    next_check: Instant,
    /// Protected ports kept from an earlier run until an explicit config arrives.
    floor: BTreeSet<Access>,
    /// Where the installed protected set is recorded (`None`: not recorded).
    state_dir: Option<PathBuf>,
    /// The protected set recorded last.
    recorded: Option<BTreeSet<Access>>,
}

impl Guard {
    pub(super) fn new(now: Instant) -> Self {
        Guard {
            next_check: now + CHECK_EVERY,
            floor: BTreeSet::new(),
            state_dir: None,
            recorded: None,
        }
    }

    pub(super) fn next_check(&self) -> Instant {
        self.next_check
    }
}

impl Engine {
    /// Record every protected set installed in `state_dir`.
    pub fn with_protected_record(mut self, state_dir: PathBuf) -> Self {
        self.guard.state_dir = Some(state_dir);
        self
    }

    /// Keep `floor` protected too, until a config from the controller replaces it.
    pub fn with_protected_floor(mut self, floor: BTreeSet<Access>) -> Self {
        self.guard.floor = floor;
        self
    }

    /// The ruleset to enforce: the config's, plus the floor.
    pub(super) fn ruleset(&self) -> Ruleset {
        let mut rs = self.config.ruleset();
        rs.keep_protected(&self.guard.floor);
        rs
    }

    /// Whether ports beyond the config are kept protected.
    pub(super) fn has_floor(&self) -> bool {
        !self.guard.floor.is_empty()
    }

    /// Drop the floor: an explicit config has arrived.
    pub(super) fn clear_floor(&mut self) {
        self.guard.floor.clear();
    }

    /// Install `ruleset` and record its protected set.
    pub(super) fn install_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        self.firewall.ensure_base(ruleset)?;
        self.record_protected(&ruleset.protected);
        Ok(())
    }

    fn record_protected(&mut self, protected: &BTreeSet<Access>) {
        let Some(dir) = &self.guard.state_dir else {
            return;
        };
        if self.guard.recorded.as_ref() == Some(protected) {
            return;
        }
        match crate::state::save_protected(dir, protected) {
            Ok(()) => self.guard.recorded = Some(protected.clone()),
            Err(e) => warn!(error = %e, "could not record the protected ports in state_dir"),
        }
    }

    /// Something else changed the table: check soon.
    pub(super) fn handle_firewall_changed(&mut self, now: Instant) {
        self.guard.next_check = self.guard.next_check.min(now + SETTLE);
    }

    /// Check (and repair) the firewall if a check is due.
    pub(super) fn poll_guard(&mut self, now: Instant) {
        if now < self.guard.next_check {
            return;
        }
        self.guard.next_check = now + CHECK_EVERY;
        self.repair(now);
    }

    /// Put back whatever of the base and the live grants the firewall lost.
    fn repair(&mut self, now: Instant) {
        let ruleset = self.ruleset();
        let base = match self.firewall.intact(&ruleset) {
            Ok(intact) => !intact,
            Err(e) => {
                warn!(error = %e, "could not check the firewall; reinstalling its base");
                true
            }
        };
        if base && let Err(e) = self.install_base(&ruleset) {
            warn!(target: "knockgate::event", event = "firewall.repair_failed", error = %e,
                "could not restore the firewall; retrying");
            self.guard.next_check = now + SETTLE.max(Duration::from_millis(200));
            return;
        }
        // No live grant to lose: the check costs no dump of the grant sets.
        if self.grants.is_empty() && !base {
            return;
        }
        let held: HashSet<GrantKey> = match self.firewall.list() {
            Ok(held) => held.into_iter().map(|h| h.key).collect(),
            Err(e) => {
                warn!(error = %e, "could not list the grants to check them");
                return;
            }
        };
        let missing: Vec<(GrantKey, Duration)> = self
            .grants
            .iter()
            .filter(|(k, _)| !held.contains(k))
            .map(|(k, g)| (*k, g.expires_at.saturating_duration_since(now)))
            .filter(|(_, left)| *left >= MIN_RESTORE)
            .collect();
        let mut grants = 0usize;
        for (key, left) in &missing {
            let label = self.grants.label(key);
            match self.firewall.open(key, *left, &label) {
                Ok(()) => grants += 1,
                Err(e) => warn!(error = %e, %key, "could not restore a grant"),
            }
        }
        if !base && grants == 0 {
            return;
        }
        warn!(target: "knockgate::event", event = "firewall.repaired", base, grants,
            "the firewall was changed by something else; knockgate's table is restored");
        self.report(|| {
            ReportEvent::new("firewall.repaired")
                .detail("base", base)
                .detail("grants", grants as u64)
        });
    }
}
