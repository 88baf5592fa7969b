//! knockgate-agent: the IO shell around the pure pipeline in `knockgate-agent-core`.
//!
//! `capture` turns frames into knocks on one thread per interface, `engine` owns all
//! decision state on one thread, `firewall` applies what the engine decides. `main.rs`
//! wires them together.

pub mod capture;
pub mod engine;
pub mod firewall;
pub mod logging;
pub mod privilege;
pub mod replay_store;
