//! The audit events the controller writes about itself (refusals, enrolment,
//! admin writes, refused configs, one-time key claims). Writing one never fails the request it
//! describes: a store error is logged instead.

use std::net::SocketAddr;

use serde_json::Value;

use crate::error::ErrorChain;
use crate::name::AgentName;
use crate::store::{NewAuditEvent, Store, Timestamp};

/// A refused handshake or call.
pub const AUTH_REFUSED: &str = "auth.refused";
/// An enrolment that succeeded.
pub const ENROL_OK: &str = "enrol.ok";
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
