//! knockgate-agent: the IO shell around the pure pipeline in `knockgate-agent-core`.
//!
//! `capture` turns frames into knocks on one thread per interface, `engine` owns all
//! decision state on one thread, `firewall` applies what the engine decides. With a
//! controller, `control` keeps the engine's config in sync with it and `report` delivers
//! the engine's decisions to it, and `control::claim` claims one-time keys for it.
//! [`agent::Agent`] starts them all with their IO; `main.rs` builds that IO.

pub mod agent;
pub mod capture;
pub mod cli;
pub mod control;
pub mod engine;
pub mod fingerprint;
pub mod firewall;
pub mod metrics;
pub mod otk_store;
pub mod privilege;
pub mod replay_store;
pub mod report;
pub mod state;
