//! Test-only crate: `tests/controller_loopback.rs` runs the agent's controller client
//! (enrolment, sync, reports, revocation) against the real controller in process.
#![forbid(unsafe_code)]
