//! A source's progress through one knock sequence, with knockd's semantics: the one
//! step function both the fixed-sequence matcher (`sequence`) and the rotating detector
//! (`rotating`) use; they differ only in where their sequences come from.
//!
//! The next expected knock advances the progress; any other knock on one of the
//! sequence's ports resets it (the caller starts over if that knock is the first step, see
//! [`Outcome::restarts`]); a repeat of the knock just accepted is a retransmission and
//! changes nothing. The whole sequence must finish within its timeout, with optional
//! minimum and maximum gaps between knocks.

use std::time::{Duration, Instant};

use crate::packet::KnockStep;

/// How a sequence is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub sequence_timeout: Duration,
    pub min_gap: Duration,
    pub max_gap: Option<Duration>,
}

/// How far a source is into one sequence (`key` names the sequence).
#[derive(Debug, Clone, Copy)]
pub struct Progress<K> {
    pub key: K,
    pub stage: u8,
    pub started: Instant,
    pub last_at: Instant,
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

impl Outcome {
    /// Whether a knock that ended progress this way starts the sequence over when it is
    /// the sequence's first step (a knock that came too soon does not).
    pub fn restarts(self) -> bool {
        matches!(
            self,
            Outcome::Reset(
                ResetReason::WrongKnock | ResetReason::SequenceTimeout | ResetReason::GapTooLong
            )
        )
    }

    /// Whether the progress it was about goes on.
    pub fn keeps_progress(self) -> bool {
        matches!(
            self,
            Outcome::Progressed { .. } | Outcome::Retransmit { .. }
        )
    }
}

/// The first step of `steps` from a source: progress at stage 1 (`None` when that
/// completes the sequence), and the outcome.
pub fn begin<K>(key: K, steps: &[KnockStep], now: Instant) -> (Option<Progress<K>>, Outcome) {
    if steps.len() <= 1 {
        return (None, Outcome::Completed);
    }
    let p = Progress {
        key,
        stage: 1,
        started: now,
        last_at: now,
    };
    (
        Some(p),
        Outcome::Progressed {
            stage: 1,
            of: len(steps),
        },
    )
}

/// Advance, reset or ignore `p` with `knock`; the caller drops `p` unless the outcome
/// [keeps progress](Outcome::keeps_progress). A sequence replaced by a shorter one than
/// the progress made resets.
pub fn advance<K>(
    steps: &[KnockStep],
    timing: &Timing,
    p: &mut Progress<K>,
    knock: KnockStep,
    now: Instant,
) -> Outcome {
    let stage = usize::from(p.stage);
    let (Some(&expected), Some(&last)) = (
        steps.get(stage),
        stage.checked_sub(1).and_then(|l| steps.get(l)),
    ) else {
        return Outcome::Reset(ResetReason::WrongKnock);
    };
    if now.saturating_duration_since(p.started) > timing.sequence_timeout {
        return Outcome::Reset(ResetReason::SequenceTimeout);
    }
    let gap = now.saturating_duration_since(p.last_at);
    if knock == expected {
        if gap < timing.min_gap {
            return Outcome::Reset(ResetReason::GapTooShort);
        }
        if timing.max_gap.is_some_and(|max| gap > max) {
            return Outcome::Reset(ResetReason::GapTooLong);
        }
        p.stage += 1;
        p.last_at = now;
        if usize::from(p.stage) == steps.len() {
            return Outcome::Completed;
        }
        return Outcome::Progressed {
            stage: p.stage,
            of: len(steps),
        };
    }
    if knock == last {
        return Outcome::Retransmit { stage: p.stage };
    }
    if timing.max_gap.is_some_and(|max| gap > max) {
        return Outcome::Reset(ResetReason::GapTooLong);
    }
    Outcome::Reset(ResetReason::WrongKnock)
}

/// A sequence's length as a stage number (sequences hold at most 255 steps).
fn len(steps: &[KnockStep]) -> u8 {
    u8::try_from(steps.len()).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        sequence_timeout: Duration::from_secs(10),
        min_gap: Duration::from_millis(100),
        max_gap: Some(Duration::from_secs(2)),
    };

    #[test]
    fn one_step_function_for_every_rule() {
        let steps = [KnockStep::tcp(1), KnockStep::udp(2), KnockStep::tcp(3)];
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (p, o) = begin("door", &steps, t0);
        assert_eq!(o, Outcome::Progressed { stage: 1, of: 3 });
        let mut p = p.expect("progress");
        let retransmit = advance(&steps, &T, &mut p, steps[0], ms(50));
        assert_eq!(retransmit, Outcome::Retransmit { stage: 1 });
        assert!(retransmit.keeps_progress());
        let soon = advance(&steps, &T, &mut p.clone(), steps[1], ms(50));
        assert_eq!(soon, Outcome::Reset(ResetReason::GapTooShort));
        assert!(!soon.restarts(), "a knock too soon does not start over");
        let late = advance(&steps, &T, &mut p.clone(), steps[1], ms(2_500));
        assert_eq!(late, Outcome::Reset(ResetReason::GapTooLong));
        assert_eq!(
            advance(&steps, &T, &mut p, steps[1], ms(200)),
            Outcome::Progressed { stage: 2, of: 3 }
        );
        let wrong = advance(&steps, &T, &mut p.clone(), KnockStep::udp(9), ms(300));
        assert!(wrong.restarts() && !wrong.keeps_progress());
        let slow = advance(&steps, &T, &mut p.clone(), steps[2], ms(10_001));
        assert_eq!(slow, Outcome::Reset(ResetReason::SequenceTimeout));
        // The sequence was replaced by a shorter one than the progress made.
        assert_eq!(
            advance(&steps[..2], &T, &mut p.clone(), steps[2], ms(300)),
            Outcome::Reset(ResetReason::WrongKnock)
        );
        assert_eq!(
            advance(&steps, &T, &mut p, steps[2], ms(400)),
            Outcome::Completed
        );
        let (none, done) = begin("one", &steps[..1], t0);
        assert!(none.is_none() && done == Outcome::Completed);
    }
}
