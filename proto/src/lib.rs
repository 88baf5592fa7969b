//! knockgate-proto: the wire formats both sides of a knock must agree on.
//!
//! Pure code: no sockets, no clocks, no files. Time is always an argument
//! (unix seconds or a `SystemTime` handed in), and randomness for encoding
//! comes in as an argument too, so every encoder is deterministic in tests.
//!
//! - [`spa`]: the native knockgate SPA packet (XChaCha20-Poly1305, key id in
//!   clear), specified in `proto/spa.md`.
//! - [`fwknop`]: the stock fwknop 2.6 client's Rijndael + HMAC packet,
//!   byte-exact with Debian's fwknop 2.6.10.
//! - [`access`]: the `proto/port` pairs both formats request.
//! - [`forward`]: `tcp/2222 -> 10.0.0.5:22`, a grant that reaches a host behind the
//!   gateway.
#![forbid(unsafe_code)]

pub mod access;
#[cfg(feature = "grpc")]
pub mod api;
#[cfg(feature = "grpc")]
pub mod codec;
pub mod event;
pub mod exit;
pub mod forward;
pub mod fwknop;
pub mod knock;
pub mod policy;
pub mod rotation;
pub mod scope;
pub mod sealed;
pub mod spa;

pub use access::{Access, ParseAccessError, Proto};
pub use forward::{Forward, ParseForwardError};
pub use knock::{KnockStep, ParseKnockError};

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch of `now`, clamped to 0 for times before 1970.
///
/// A helper for callers that build a request from the time they were handed;
/// this crate never reads the clock itself.
#[must_use]
pub fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
