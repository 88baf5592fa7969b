//! The audit events the controller writes about itself (refusals, enrolment,
//! admin writes, refused configs, one-time key claims). Writing one never fails the request it
//! describes: a store error is logged instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::ErrorChain;
use crate::name::AgentName;
use crate::store::{NewAuditEvent, Store, Timestamp};

/// A refused handshake or call.
pub const AUTH_REFUSED: &str = "auth.refused";
/// An enrolment that succeeded.
pub const ENROL_OK: &str = "enrol.ok";
/// An agent certificate renewed (the new one is pinned, the old one refused).
pub const AGENT_RENEWED: &str = "agent.renewed";
/// An enrolment that was refused.
pub const ENROL_REFUSED: &str = "enrol.refused";
/// A config an agent could not apply.
pub const CONFIG_REFUSED: &str = "config.refused";
/// A one-time key claimed: who used which key where.
pub const OTK_CLAIMED: &str = "otk.claimed";
/// A one-time key claim refused (used, unknown, or a user the agent may not serve).
pub const OTK_REFUSED: &str = "otk.refused";
/// A one-time key granted twice: an offline report of a key already claimed.
pub const OTK_REUSE: &str = "otk.reuse";

/// An event of the controller itself, about to be written.
#[derive(Debug)]
pub struct Entry(NewAuditEvent);

impl Entry {
    /// An event of `kind` with `detail` (a JSON object), happening now.
    pub fn new(kind: impl Into<String>, detail: Value) -> Self {
        Self(NewAuditEvent {
            at: Timestamp::now(),
            agent: None,
            agent_seq: None,
            kind: kind.into(),
            user: None,
            src: None,
            detail,
        })
    }

    /// The agent it concerns.
    pub fn agent(mut self, agent: Option<&AgentName>) -> Self {
        self.0.agent = agent.cloned();
        self
    }

    /// The user it concerns.
    pub fn user(mut self, user: Option<&str>) -> Self {
        self.0.user = user.map(str::to_owned);
        self
    }

    /// The source address it concerns, as text.
    pub fn src(mut self, src: Option<&str>) -> Self {
        self.0.src = src.map(str::to_owned);
        self
    }

    /// The peer address (only the IP is kept).
    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.0.src = peer.map(|p| p.ip().to_string());
        self
    }

    /// Appends it to the trail; failures are logged, not returned.
    pub async fn write(self, store: &Store) {
        if let Err(e) = store.append_audit(&self.0).await {
            tracing::error!(kind = %self.0.kind, error = %ErrorChain(&e), "failed to write an audit event");
        }
    }
}

/// Aggregates refusals nobody authenticated: the first of a kind, source and reason is
/// written, then at most one per [`Throttle::WINDOW`], carrying how many were left out.
/// A flood of bad handshakes or tokens costs a bounded number of rows.
#[derive(Debug, Default)]
pub struct Throttle {
    seen: Mutex<HashMap<RefusalKey, (Instant, u64)>>,
}

/// What makes two refusals the same: kind, source address, reason.
type RefusalKey = (&'static str, IpAddr, String);

impl Throttle {
    /// How often the same refusal is written at most.
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Keys remembered; past this, stale ones are forgotten (and, in a flood of many
    /// sources, everything: then a row per source per window is the bound).
    const MAX_KEYS: usize = 4096;

    /// `Some(left out since the last row)` if this refusal should be written now.
    pub fn admit(&self, kind: &'static str, source: IpAddr, reason: &str) -> Option<u64> {
        self.admit_at(kind, source, reason, Instant::now())
    }

    fn admit_at(
        &self,
        kind: &'static str,
        source: IpAddr,
        reason: &str,
        now: Instant,
    ) -> Option<u64> {
        let Ok(mut seen) = self.seen.lock() else {
            return Some(0);
        };
        if seen.len() >= Self::MAX_KEYS {
            seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < Self::WINDOW);
            if seen.len() >= Self::MAX_KEYS {
                seen.clear();
            }
        }
        let key = (kind, source, reason.to_owned());
        let Some((start, left_out)) = seen.get_mut(&key) else {
            seen.insert(key, (now, 0));
            return Some(0);
        };
        if now.saturating_duration_since(*start) < Self::WINDOW {
            *left_out += 1;
            return None;
        }
        let n = std::mem::take(left_out);
        *start = now;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_refusal_is_written_once_a_window_with_a_count() {
        let t = Throttle::default();
        let a: IpAddr = [10, 240, 0, 9].into();
        let t0 = Instant::now();
        assert_eq!(t.admit_at(AUTH_REFUSED, a, "bad cert", t0), Some(0));
        for i in 1..=5 {
            let at = t0 + Duration::from_secs(i);
            assert_eq!(t.admit_at(AUTH_REFUSED, a, "bad cert", at), None);
        }
        assert_eq!(
            t.admit_at(AUTH_REFUSED, a, "other reason", t0),
            Some(0),
            "another reason is another row"
        );
        let later = t0 + Throttle::WINDOW + Duration::from_secs(1);
        assert_eq!(t.admit_at(AUTH_REFUSED, a, "bad cert", later), Some(5));
        assert_eq!(t.admit_at(AUTH_REFUSED, a, "bad cert", later), None);
    }
}
