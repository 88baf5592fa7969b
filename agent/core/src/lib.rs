//! knockgate-agent-core: the agent's pure pipeline.
//!
//! Everything here is synchronous and free of IO: packets come in as bytes, time comes in
//! as `now`, and what the IO shell must do comes out as values. The manifest has no tokio,
//! pcap, netlink, tonic or sqlx, so the compiler keeps it that way.
#![forbid(unsafe_code)]

pub mod config;
pub mod detect;
pub mod filter;
pub mod gateway;
pub mod grants;
pub mod limit;
pub mod lru;
pub mod packet;
pub mod replay;
pub mod ruleset;
