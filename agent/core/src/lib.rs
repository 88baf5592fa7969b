//! knockgate-agent-core: the agent's pure pipeline.
//!
//! Everything here is synchronous and free of IO: packets come in as bytes, time comes in
//! as `now`, and what the IO shell must do comes out as values. The manifest has no tokio,
//! pcap, netlink, tonic or sqlx, so the compiler keeps it that way.
//!
//! The modules, in the order a knock meets them:
//!
//! - [`packet`]: a captured frame becomes a knock (total, zero-copy);
//! - [`detect`]: sequence, rotating and SPA detectors decide what it completes;
//!   [`replay`] keeps SPA packets single-use;
//! - [`gateway`]: the sans-IO state machine that owns all decision state and turns
//!   decisions into actions and events;
//! - [`grants`]: who is open until when; [`ruleset`]: the firewall as a value;
//!   [`filter`]: what capture must pass;
//! - [`config`]: the validated policies all of it runs on; [`limit`] and [`lru`]: bounded
//!   per-key state.
#![forbid(unsafe_code)]

pub mod p0f;
pub mod packet;

pub mod detect;
pub mod replay;

pub mod gateway;

pub mod filter;
pub mod grants;
pub mod ruleset;

pub mod config;
pub mod limit;
pub mod lru;
