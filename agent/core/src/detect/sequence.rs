//! Port-knock sequences with knockd semantics, per source address.
//!
//! Each source has, for each door (policy) it has started, a position in that door's
//! sequence. The next expected knock advances it; any other knock on one of the door's
//! ports resets it (and starts over if that knock is the door's first step); a repeat of
//! the knock just accepted is a retransmission and changes nothing. The whole sequence must
//! finish within the door's timeout, with optional minimum and maximum gaps between knocks.
//! TCP knocks that fail the door's flag filter are ignored, as in knockd 0.8.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::lru::BoundedLru;
use crate::packet::KnockStep;
use crate::ruleset::Proto;

/// Index of a door in the matcher (the order the doors were given in).
pub type DoorId = u16;

pub use knockgate_proto::knock::FlagFilter;

/// One knock sequence and its timing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    pub steps: Vec<KnockStep>,
    pub sequence_timeout: Duration,
    pub min_gap: Duration,
    pub max_gap: Option<Duration>,
    pub tcp_flags: FlagFilter,
}

pub use super::progress::{Outcome, ResetReason};
use super::progress::{Progress, Timing, advance, begin};

/// One decision: which door, and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub door: DoorId,
    pub outcome: Outcome,
}

type Attempt = Progress<DoorId>;

impl Door {
    /// Its timing rules.
    pub fn timing(&self) -> Timing {
        Timing {
            sequence_timeout: self.sequence_timeout,
            min_gap: self.min_gap,
            max_gap: self.max_gap,
        }
    }
}

/// The matcher: doors, an index from knock to the doors that use it, and bounded
/// per-source progress.
pub struct SequenceMatcher {
    doors: Vec<Door>,
    by_kind: HashMap<KnockStep, Vec<DoorId>>,
    sources: BoundedLru<IpAddr, Vec<Attempt>>,
    /// Scratch list of doors a knock starts, kept to avoid an allocation per knock.
    starts: Vec<DoorId>,
}

/// A door the matcher cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoorError {
    #[error("door {0} has no steps")]
    Empty(usize),
    #[error("door {0} has {1} steps (at most 255)")]
    TooLong(usize, usize),
    #[error("too many doors ({0}, at most 65535)")]
    TooMany(usize),
}

impl SequenceMatcher {
    /// A matcher for `doors` that tracks at most `max_sources` source addresses.
    pub fn new(doors: Vec<Door>, max_sources: usize) -> Result<Self, DoorError> {
        if doors.len() > DoorId::MAX as usize {
            return Err(DoorError::TooMany(doors.len()));
        }
        let mut by_kind: HashMap<KnockStep, Vec<DoorId>> = HashMap::new();
        for (i, door) in doors.iter().enumerate() {
            if door.steps.is_empty() {
                return Err(DoorError::Empty(i));
            }
            if door.steps.len() > u8::MAX as usize {
                return Err(DoorError::TooLong(i, door.steps.len()));
            }
            for step in &door.steps {
                let list = by_kind.entry(*step).or_default();
                if !list.contains(&(i as DoorId)) {
                    list.push(i as DoorId);
                }
            }
        }
        Ok(SequenceMatcher {
            doors,
            by_kind,
            sources: BoundedLru::new(max_sources),
            starts: Vec::new(),
        })
    }

    /// Whether any door listens for this knock (cheap pre-check for the hot path).
    pub fn is_knock(&self, kind: KnockStep) -> bool {
        self.by_kind.contains_key(&kind)
    }

    /// How many sources have progress held.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Feed one knock; decisions for every door it touched are appended to `out`.
    pub fn handle_knock(
        &mut self,
        src: IpAddr,
        kind: KnockStep,
        tcp_flags: u8,
        now: Instant,
        out: &mut Vec<Decision>,
    ) {
        let Some(door_ids) = self.by_kind.get(&kind) else {
            return;
        };
        let is_tcp = matches!(
            kind,
            KnockStep::Port {
                proto: Proto::Tcp,
                ..
            }
        );
        let mut starts = std::mem::take(&mut self.starts);
        starts.clear();
        let mut ended_any = false;
        let mut list = self.sources.get_mut(&src);
        for &id in door_ids {
            let door = &self.doors[id as usize];
            if is_tcp && !door.tcp_flags.accepts(tcp_flags) {
                out.push(Decision {
                    door: id,
                    outcome: Outcome::FlagsIgnored,
                });
                continue;
            }
            let mut had_attempt = false;
            if let Some(l) = list.as_deref_mut()
                && let Some(p) = l.iter().position(|a| a.key == id)
            {
                had_attempt = true;
                let outcome = advance(&door.steps, &door.timing(), &mut l[p], kind, now);
                if !outcome.keeps_progress() {
                    l.swap_remove(p);
                    ended_any = true;
                }
                out.push(Decision { door: id, outcome });
                if outcome.restarts() && door.steps[0] == kind {
                    starts.push(id);
                }
            }
            if !had_attempt && door.steps[0] == kind {
                starts.push(id);
            }
        }
        for &id in &starts {
            let (progress, outcome) = begin(id, &self.doors[id as usize].steps, now);
            out.push(Decision { door: id, outcome });
            if let Some(p) = progress {
                let (l, _evicted) = self
                    .sources
                    .get_or_insert_with(src, || Vec::with_capacity(1));
                l.push(p);
            }
        }
        if ended_any && self.sources.get_mut(&src).is_some_and(|l| l.is_empty()) {
            self.sources.remove(&src);
        }
        self.starts = starts;
    }
}

#[cfg(test)]
mod tests;
