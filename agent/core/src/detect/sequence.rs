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

/// Why a source's progress on a door was thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// A knock on one of the door's ports that was not the expected one.
    WrongKnock,
    /// The sequence did not finish within `sequence_timeout`.
    SequenceTimeout,
    /// Two knocks came closer together than `min_gap`.
    GapTooShort,
    /// Two knocks came further apart than `max_gap`.
    GapTooLong,
}

impl ResetReason {
    /// Its word in the event vocabulary.
    pub fn reason(self) -> knockgate_proto::event::Reason {
        use knockgate_proto::event::Reason;
        match self {
            ResetReason::WrongKnock => Reason::WrongKnock,
            ResetReason::SequenceTimeout => Reason::SequenceTimeout,
            ResetReason::GapTooShort => Reason::GapTooShort,
            ResetReason::GapTooLong => Reason::GapTooLong,
        }
    }
}

/// What one knock did to one door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The source is now `stage` knocks into a sequence of `of`.
    Progressed { stage: u8, of: u8 },
    /// The sequence is complete: open the door for this source.
    Completed,
    /// Progress was thrown away.
    Reset(ResetReason),
    /// A repeat of the knock just accepted (a retransmitted SYN): ignored.
    Retransmit { stage: u8 },
    /// A TCP knock whose flags fail the door's filter: ignored.
    FlagsIgnored,
}

/// One decision: which door, and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub door: DoorId,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    door: DoorId,
    stage: u8,
    started: Instant,
    last_at: Instant,
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
                && let Some(p) = l.iter().position(|a| a.door == id)
            {
                had_attempt = true;
                let outcome = step_attempt(door, &mut l[p], kind, now);
                if !matches!(
                    outcome,
                    Outcome::Progressed { .. } | Outcome::Retransmit { .. }
                ) {
                    l.swap_remove(p);
                    ended_any = true;
                }
                out.push(Decision { door: id, outcome });
                // A knock that broke an attempt but is this door's first step starts over.
                let restarts = matches!(
                    outcome,
                    Outcome::Reset(
                        ResetReason::WrongKnock
                            | ResetReason::SequenceTimeout
                            | ResetReason::GapTooLong
                    )
                );
                if restarts && door.steps[0] == kind {
                    starts.push(id);
                }
            }
            if !had_attempt && door.steps[0] == kind {
                starts.push(id);
            }
        }
        for &id in &starts {
            let door = &self.doors[id as usize];
            out.push(Decision {
                door: id,
                outcome: begin(door),
            });
            if door.steps.len() > 1 {
                let (l, _evicted) = self
                    .sources
                    .get_or_insert_with(src, || Vec::with_capacity(1));
                l.push(Attempt {
                    door: id,
                    stage: 1,
                    started: now,
                    last_at: now,
                });
            }
        }
        if ended_any && self.sources.get_mut(&src).is_some_and(|l| l.is_empty()) {
            self.sources.remove(&src);
        }
        self.starts = starts;
    }
}

/// The outcome of a first step.
fn begin(door: &Door) -> Outcome {
    if door.steps.len() == 1 {
        Outcome::Completed
    } else {
        Outcome::Progressed {
            stage: 1,
            of: door.steps.len() as u8,
        }
    }
}

/// Advance, reset or ignore one attempt; the caller removes it unless it progressed.
fn step_attempt(door: &Door, a: &mut Attempt, kind: KnockStep, now: Instant) -> Outcome {
    if now.saturating_duration_since(a.started) > door.sequence_timeout {
        return Outcome::Reset(ResetReason::SequenceTimeout);
    }
    let gap = now.saturating_duration_since(a.last_at);
    let expected = door.steps[a.stage as usize];
    let last = door.steps[a.stage as usize - 1];
    if kind == expected {
        if gap < door.min_gap {
            return Outcome::Reset(ResetReason::GapTooShort);
        }
        if door.max_gap.is_some_and(|max| gap > max) {
            return Outcome::Reset(ResetReason::GapTooLong);
        }
        a.stage += 1;
        a.last_at = now;
        if a.stage as usize == door.steps.len() {
            return Outcome::Completed;
        }
        return Outcome::Progressed {
            stage: a.stage,
            of: door.steps.len() as u8,
        };
    }
    if kind == last {
        return Outcome::Retransmit { stage: a.stage };
    }
    if door.max_gap.is_some_and(|max| gap > max) {
        return Outcome::Reset(ResetReason::GapTooLong);
    }
    Outcome::Reset(ResetReason::WrongKnock)
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
