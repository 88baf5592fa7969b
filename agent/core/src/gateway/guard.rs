//! Keeping protection in place. The firewall's base (table, chain, port sets) and the live
//! grants are checked when a notification says something else changed the table, and
//! every [`CHECK_EVERY`] as a backstop; whatever is missing is put back at once and told
//! as `firewall.repaired`.
//!
//! The protected set only shrinks by an explicit change: every set installed is recorded
//! ([`Persist::Protected`]), and a managed agent that starts without a usable controller
//! config keeps enforcing the recorded ports (the "floor") until the controller sends a
//! config.
//!
//! A check is a short conversation with the shell: [`Action::Check`], then if the base is
//! gone [`Action::Install`], then if grants are live [`Action::List`] and one
//! [`Action::Open`] per grant the firewall lost.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use knockgate_proto::event::Event;

use super::{Action, Gateway, Level, Opening, Persist, Time};
use crate::ruleset::{Access, GrantKey, Ruleset};

/// The backstop: how often the firewall is checked when no notification came.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a change notification, wait this long for the rest of the burst (one `nft -f`
/// is many messages) before checking.
const SETTLE: Duration = Duration::from_millis(20);
/// After a failed repair, try again this soon.
const RETRY: Duration = Duration::from_millis(200);
/// A grant about to expire is not put back: the kernel's expiry is a little coarser than
/// the gateway's.
const MIN_RESTORE: Duration = Duration::from_millis(100);

/// When to check next, what to keep protected beyond the config, and the check under way.
#[derive(Debug)]
pub(super) struct Guard {
    next_check: Instant,
    /// Protected ports kept from an earlier run until an explicit config arrives.
    floor: BTreeSet<Access>,
    /// The protected set recorded last.
    recorded: Option<BTreeSet<Access>>,
    /// A check under way.
    repair: Option<Repair>,
}

#[derive(Debug, Default)]
struct Repair {
    /// The base had to be installed again.
    base: bool,
    /// Grants put back, and restores not yet answered.
    restored: u64,
    outstanding: usize,
}

impl Guard {
    pub(super) fn new(now: Instant) -> Self {
        Guard {
            next_check: now + CHECK_EVERY,
            floor: BTreeSet::new(),
            recorded: None,
            repair: None,
        }
    }

    pub(super) fn next_check(&self) -> Instant {
        self.next_check
    }
}

impl Gateway {
    /// Keep `floor` protected too, until a config from the controller replaces it.
    pub fn keep_floor(&mut self, floor: BTreeSet<Access>) {
        self.guard.floor = floor;
    }

    /// The base ruleset to enforce: the config's, plus the floor.
    pub fn ruleset(&self) -> Ruleset {
        let mut rs = self.config.ruleset();
        rs.keep_protected(&self.guard.floor);
        rs
    }

    /// The shell installed `ruleset`: record its protected set if it changed.
    pub fn installed(&mut self, ruleset: &Ruleset) {
        if self.guard.recorded.as_ref() == Some(&ruleset.protected) {
            return;
        }
        self.guard.recorded = Some(ruleset.protected.clone());
        self.actions.push_back(Action::Persist(
            None,
            Persist::Protected(ruleset.protected.clone()),
        ));
    }

    pub(super) fn has_floor(&self) -> bool {
        !self.guard.floor.is_empty()
    }

    pub(super) fn clear_floor(&mut self) {
        self.guard.floor.clear();
    }

    /// Something else changed the firewall: check soon.
    pub fn handle_firewall_changed(&mut self, now: Time) {
        self.guard.next_check = self.guard.next_check.min(now.mono + SETTLE);
    }

    pub(super) fn poll_guard(&mut self, now: Time) {
        if now.mono < self.guard.next_check || self.guard.repair.is_some() {
            return;
        }
        self.guard.next_check = now.mono + CHECK_EVERY;
        self.guard.repair = Some(Repair::default());
        self.actions.push_back(Action::Check(self.ruleset()));
    }

    /// Whether the firewall still holds the base (an error counts as no).
    pub fn handle_checked(&mut self, intact: Result<bool, String>, now: Time) {
        match intact {
            Ok(true) => self.list_grants(now),
            Ok(false) => self.reinstall(),
            Err(error) => {
                self.repair_failed(error, false, now);
                self.reinstall();
            }
        }
    }

    fn reinstall(&mut self) {
        if let Some(r) = &mut self.guard.repair {
            r.base = true;
        }
        self.actions.push_back(Action::Install(self.ruleset()));
    }

    /// How installing the base again went.
    pub fn handle_installed(&mut self, result: Result<(), String>, now: Time) {
        match result {
            Ok(()) => {
                self.installed(&self.ruleset());
                self.list_grants(now);
            }
            Err(error) => {
                self.guard.repair = None;
                self.guard.next_check = now.mono + RETRY;
                self.repair_failed(error, true, now);
            }
        }
    }

    /// No live grant to lose: the check costs no dump of the grant sets.
    fn list_grants(&mut self, now: Time) {
        if self.grants.is_empty() {
            self.finish_repair(now);
        } else {
            self.actions.push_back(Action::List);
        }
    }

    /// The grants the firewall holds: put back the live ones it lost.
    pub fn handle_listed(&mut self, held: Result<Vec<GrantKey>, String>, now: Time) {
        let held: HashSet<GrantKey> = match held {
            Ok(h) => h.into_iter().collect(),
            Err(error) => {
                self.repair_failed(error, false, now);
                self.finish_repair(now);
                return;
            }
        };
        let missing: Vec<(GrantKey, Duration)> = self
            .grants
            .iter()
            .filter(|(k, _)| !held.contains(k))
            .map(|(k, g)| (*k, g.expires_at.saturating_duration_since(now.mono)))
            .filter(|(_, left)| *left >= MIN_RESTORE)
            .collect();
        if let Some(r) = &mut self.guard.repair {
            r.outstanding = missing.len();
        }
        if missing.is_empty() {
            self.finish_repair(now);
        }
        for (key, timeout) in missing {
            let label = self.grants.label(&key);
            self.actions.push_back(Action::Open(Opening {
                key,
                timeout,
                label,
                restore: true,
                knocked_at: None,
            }));
        }
    }

    /// How putting one lost grant back went.
    pub(super) fn handle_restored(&mut self, result: Result<(), String>, now: Time) {
        let Some(r) = &mut self.guard.repair else {
            return;
        };
        r.outstanding = r.outstanding.saturating_sub(1);
        match result {
            Ok(()) => r.restored += 1,
            Err(error) => {
                self.repair_failed(error, false, now);
            }
        }
        if self
            .guard
            .repair
            .as_ref()
            .is_some_and(|r| r.outstanding == 0)
        {
            self.finish_repair(now);
        }
    }

    /// Tell that part of a check or repair failed (reported when the base is at stake).
    fn repair_failed(&mut self, error: String, report: bool, now: Time) {
        self.tell(
            Level::Warn,
            report,
            now,
            Event::FirewallRepairFailed { error },
        );
    }

    fn finish_repair(&mut self, now: Time) {
        let Some(r) = self.guard.repair.take() else {
            return;
        };
        if r.base || r.restored > 0 {
            let event = Event::FirewallRepaired {
                base: r.base,
                grants: r.restored,
            };
            self.tell(Level::Warn, true, now, event);
        }
    }
}
