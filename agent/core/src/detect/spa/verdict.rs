//! What the SPA detector decides about one datagram: a grant, or a rejection with its
//! reason, and which method the packet used.

use std::net::IpAddr;
use std::time::Duration;

use crate::replay::ReplayKey;
use crate::ruleset::Access;

/// Which SPA format a packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Native,
    Fwknop,
    /// A native packet sealed with a one-time key.
    Otk,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Native => "spa",
            Method::Fwknop => "fwknop",
            Method::Otk => "otk",
        }
    }
}

/// Why a datagram opened nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a packet of either format (size, magic, base64, version, body).
    Malformed,
    /// Native: no user has this key id.
    UnknownKey,
    /// Native: the key id is known but the AEAD tag does not verify.
    BadTag,
    /// fwknop: no user's HMAC key verifies the packet.
    NoMatchingKey,
    /// fwknop: the HMAC verified but the packet does not decrypt (wrong Rijndael key).
    BadEncryptionKey,
    /// Native: sealed for another gateway.
    WrongGateway,
    /// Timestamp older than `max_age`.
    Stale,
    /// Timestamp further ahead than `max_age`.
    Future,
    /// The same packet was accepted before.
    Replay,
    /// The replay cache is full of live entries; refused rather than forgetting.
    ReplayCacheFull,
    /// fwknop: a command or NAT message, which knockgate does not run.
    NotAccessRequest,
    /// No policy admits this user for this access by this method.
    AccessDenied,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownKey => "unknown_key",
            Reason::BadTag => "bad_tag",
            Reason::NoMatchingKey => "no_matching_key",
            Reason::BadEncryptionKey => "bad_encryption_key",
            Reason::WrongGateway => "wrong_gateway",
            Reason::Stale => "stale",
            Reason::Future => "future",
            Reason::Replay => "replay",
            Reason::ReplayCacheFull => "replay_cache_full",
            Reason::NotAccessRequest => "not_access_request",
            Reason::AccessDenied => "access_denied",
        }
    }

    /// Whether the sender proved it holds a user's key (what follows is worth an INFO).
    pub fn authenticated(self) -> bool {
        !matches!(
            self,
            Reason::Malformed | Reason::UnknownKey | Reason::BadTag | Reason::NoMatchingKey
        )
    }

    /// Every reason, for counters.
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::UnknownKey,
        Reason::BadTag,
        Reason::NoMatchingKey,
        Reason::BadEncryptionKey,
        Reason::WrongGateway,
        Reason::Stale,
        Reason::Future,
        Reason::Replay,
        Reason::ReplayCacheFull,
        Reason::NotAccessRequest,
        Reason::AccessDenied,
    ];
}

/// A refused datagram: why, and what is known about who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub method: Option<Method>,
    pub user: Option<usize>,
}

/// An accepted datagram: what to open, for whom, and the replay entry to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaGrant {
    pub method: Method,
    pub user: usize,
    pub policy: usize,
    pub addr: IpAddr,
    pub access: Vec<Access>,
    pub timeout: Duration,
    /// The client asked for more than `max_timeout`.
    pub capped: bool,
    pub replay: (ReplayKey, u64),
    /// The one-time key's counter when the packet used one (`method` is then
    /// [`Method::Otk`]). The key is gone from the detector's stock already; the grant
    /// still needs the controller's claim (or the policy's offline rule).
    pub otk: Option<u64>,
}
