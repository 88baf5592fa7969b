//! What the SPA detector decides about one datagram: a grant, or a rejection with its
//! reason, and which method the packet used.

use std::net::IpAddr;
use std::time::Duration;

use knockgate_proto::event;

use crate::replay::ReplayKey;
use crate::ruleset::Access;

/// Which SPA format a packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Native,
    Fwknop,
    /// A native packet sealed with a one-time key.
    Otk,
    /// A sealed knock sequence (judged like a packet once its knocks are together).
    Sealed,
}

impl Method {
    /// Its word in events.
    pub fn as_str(self) -> &'static str {
        event::Method::from(self).as_str()
    }
}

impl From<Method> for event::Method {
    fn from(m: Method) -> Self {
        match m {
            Method::Native => event::Method::Spa,
            Method::Fwknop => event::Method::Fwknop,
            Method::Otk => event::Method::Otk,
            Method::Sealed => event::Method::Sealed,
        }
    }
}

/// Why a datagram opened nothing: the SPA words of the one event vocabulary
/// (`Malformed` … `AccessDenied`).
pub use knockgate_proto::event::Reason;

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
