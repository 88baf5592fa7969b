//! Rotating knock sequences: per-user sequences the controller derives for each time
//! window (`proto/rotation.md`) and pushes here. A sequence counts in the previous,
//! current and next window of its policy (one window of clock skew either way), and is
//! consumed when completed: the same knocks again, from any source, open nothing.
//!
//! Progress is keyed by (user, policy, window), not by position, so replacing the set of
//! sequences when the controller pushes new windows keeps every knock in flight.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::detect::progress::{Outcome, Progress, Timing, advance, begin};
use crate::detect::sequence::FlagFilter;
use crate::lru::BoundedLru;
use crate::packet::KnockStep;
use crate::ruleset::Proto;

/// Which sequence: a user's, for a policy, in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DoorKey {
    pub user: usize,
    pub policy: usize,
    pub window: u64,
}

/// One derived sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatingDoor {
    pub key: DoorKey,
    pub steps: Vec<KnockStep>,
}

/// Per-policy timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotatingPolicy {
    pub window_secs: u32,
    pub sequence_timeout: Duration,
    pub tcp_flags: FlagFilter,
}

impl RotatingPolicy {
    /// Its timing rules (rotating sequences have no gap limits).
    pub fn timing(&self) -> Timing {
        Timing {
            sequence_timeout: self.sequence_timeout,
            min_gap: Duration::ZERO,
            max_gap: None,
        }
    }
}

/// The rotating sequences a gateway accepts now.
pub struct RotatingDetector {
    policies: HashMap<usize, RotatingPolicy>,
    doors: HashMap<DoorKey, Vec<KnockStep>>,
    index: HashMap<KnockStep, Vec<DoorKey>>,
    consumed: HashSet<DoorKey>,
    sources: BoundedLru<IpAddr, Vec<Progress<DoorKey>>>,
}

impl RotatingDetector {
    pub fn new(max_sources: usize) -> Self {
        RotatingDetector {
            policies: HashMap::new(),
            doors: HashMap::new(),
            index: HashMap::new(),
            consumed: HashSet::new(),
            sources: BoundedLru::new(max_sources),
        }
    }

    /// Replace the sequences and policy timings (a push from the controller). Consumed
    /// sequences stay consumed.
    pub fn set(&mut self, policies: HashMap<usize, RotatingPolicy>, doors: Vec<RotatingDoor>) {
        self.policies = policies;
        self.doors = doors
            .into_iter()
            .filter(|d| !d.steps.is_empty() && self.policies.contains_key(&d.key.policy))
            .map(|d| (d.key, d.steps))
            .collect();
        self.reindex();
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (key, steps) in &self.doors {
            if self.consumed.contains(key) {
                continue;
            }
            for s in steps {
                let list = self.index.entry(*s).or_default();
                if !list.contains(key) {
                    list.push(*key);
                }
            }
        }
    }

    /// Every knock any held, unconsumed sequence uses, whether or not its window is
    /// accepted now.
    pub fn knocks(&self) -> impl Iterator<Item = &KnockStep> {
        self.index.keys()
    }

    /// Every knock of a sequence accepted at `now_unix`: live window, not consumed (what
    /// the capture filter must pass).
    pub fn live_knocks(&self, now_unix: u64) -> BTreeSet<KnockStep> {
        self.doors
            .iter()
            .filter(|(key, _)| self.live(key, now_unix))
            .flat_map(|(_, steps)| steps.iter().copied())
            .collect()
    }

    /// Sequences held (any window, consumed or not).
    pub fn len(&self) -> usize {
        self.doors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doors.is_empty()
    }

    fn live(&self, key: &DoorKey, now_unix: u64) -> bool {
        let Some(p) = self.policies.get(&key.policy) else {
            return false;
        };
        let current = now_unix / u64::from(p.window_secs.max(1));
        key.window + 1 >= current && key.window <= current + 1 && !self.consumed.contains(key)
    }

    /// Mark a sequence used (restored from disk after a restart), whether or not it is
    /// held right now; a later push of it stays consumed.
    pub fn mark_consumed(&mut self, key: DoorKey) {
        self.consumed.insert(key);
        self.reindex();
    }

    /// Forget consumed marks of windows no longer accepted (keeps the set bounded).
    pub fn prune(&mut self, now_unix: u64) {
        let policies = &self.policies;
        self.consumed.retain(|k| {
            policies
                .get(&k.policy)
                .is_some_and(|p| k.window + 1 >= now_unix / u64::from(p.window_secs.max(1)))
        });
    }

    /// Feed one knock; decisions for each sequence it touched are appended to `out`.
    pub fn handle_knock(
        &mut self,
        src: IpAddr,
        kind: KnockStep,
        tcp_flags: u8,
        now: Instant,
        now_unix: u64,
        out: &mut Vec<(DoorKey, Outcome)>,
    ) {
        let Some(keys) = self.index.get(&kind) else {
            return;
        };
        let is_tcp = matches!(
            kind,
            KnockStep::Port {
                proto: Proto::Tcp,
                ..
            }
        );
        let keys: Vec<DoorKey> = keys
            .iter()
            .copied()
            .filter(|k| self.live(k, now_unix))
            .collect();
        let mut completed = Vec::new();
        for key in keys {
            let Some(policy) = self.policies.get(&key.policy).copied() else {
                continue;
            };
            if is_tcp && !policy.tcp_flags.accepts(tcp_flags) {
                continue;
            }
            let Some(steps) = self.doors.get(&key) else {
                continue;
            };
            let (list, _) = self.sources.get_or_insert_with(src, Vec::new);
            let outcome = match list.iter().position(|p| p.key == key) {
                Some(i) => {
                    let outcome = advance(steps, &policy.timing(), &mut list[i], kind, now);
                    if !outcome.keeps_progress() {
                        list.swap_remove(i);
                        if outcome.restarts() && steps.first() == Some(&kind) {
                            list.extend(begin(key, steps, now).0);
                        }
                    }
                    Some(outcome)
                }
                None if steps.first() == Some(&kind) => {
                    let (progress, outcome) = begin(key, steps, now);
                    list.extend(progress);
                    Some(outcome)
                }
                None => None,
            };
            if let Some(o) = outcome {
                if o == Outcome::Completed {
                    completed.push(key);
                }
                out.push((key, o));
            }
        }
        if !completed.is_empty() {
            self.consumed.extend(completed);
            self.reindex();
        }
    }
}

#[cfg(test)]
mod tests;
