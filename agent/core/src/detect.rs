//! Knock detection: synchronous state machines fed one knock at a time, with `now` passed in.

pub mod progress;
pub mod rotating;
pub mod sealed;
pub mod sequence;
pub mod spa;
