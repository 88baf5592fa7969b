//! The engine's SPA path: verify a datagram, persist its replay entry, open what it asks,
//! and report every refusal with its reason and source. Refusals of unauthenticated junk
//! are DEBUG events plus a periodic INFO summary, so a flood cannot flood the journal.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use knockgate_agent_core::detect::spa::{Reason, Rejection, SpaDetector};
use knockgate_proto::unix_secs;
use tracing::{debug, info, warn};

use super::Engine;
use crate::replay_store::ReplayStore;

/// How often counts of refused junk are summarized.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The SPA detector with its replay file and refusal counters.
pub(super) struct SpaState {
    detector: SpaDetector,
    store: ReplayStore,
    port: u16,
    refused: [u64; Reason::ALL.len()],
    last_summary: Instant,
}

impl SpaState {
    pub(super) fn new(detector: SpaDetector, store: ReplayStore, port: u16) -> Self {
        SpaState {
            detector,
            store,
            port,
            refused: [0; Reason::ALL.len()],
            last_summary: Instant::now(),
        }
    }

    /// Every `SUMMARY_EVERY`, one INFO line with the refusals counted since the last.
    pub(super) fn summarize(&mut self, now: Instant) {
        if now.duration_since(self.last_summary) < SUMMARY_EVERY {
            return;
        }
        self.last_summary = now;
        if self.refused.iter().all(|&n| n == 0) {
            return;
        }
        let counts: Vec<String> = Reason::ALL
            .iter()
            .zip(self.refused)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        info!(target: "knockgate::event", event = "spa.refused_summary", port = self.port,
            counts = %counts.join(" "), "SPA packets refused in the last interval");
        self.refused = [0; Reason::ALL.len()];
    }
}

impl Engine {
    /// One datagram that arrived on the SPA port.
    pub(super) fn handle_spa(&mut self, src: IpAddr, payload: &[u8], at: Instant) {
        let Some(spa) = &mut self.spa else { return };
        let now = unix_secs(SystemTime::now());
        let grant = match spa.detector.handle_datagram(src, payload, now) {
            Ok(g) => g,
            Err(r) => {
                spa.refused[Reason::ALL.iter().position(|x| *x == r.reason).unwrap_or(0)] += 1;
                self.report_rejection(src, r);
                return;
            }
        };
        // Burn the packet on disk before opening anything: a crash in between costs this
        // grant, never lets the same packet in twice.
        let (rkey, expires) = grant.replay;
        if let Err(e) = spa
            .store
            .append(&rkey, expires, spa.detector.replay_cache())
        {
            warn!(target: "knockgate::event", event = "spa.rejected", src = %src, reason = "replay_store",
                error = %e, "cannot persist the replay cache; refusing (fail closed)");
            return;
        }
        let user = self.users.get(grant.user).cloned().unwrap_or_default();
        let policy = self.policies[grant.policy].name.clone();
        let access: Vec<String> = grant.access.iter().map(|a| a.to_string()).collect();
        info!(target: "knockgate::event", event = "spa.accepted", src = %src, user = %user,
            method = grant.method.as_str(), policy = %policy, allow_ip = %grant.addr,
            access = %access.join(","), timeout_s = grant.timeout.as_secs(), capped = grant.capped,
            latency_us = at.elapsed().as_micros() as u64, "SPA packet accepted");
        self.open_grants(
            &policy,
            grant.addr,
            &grant.access,
            grant.timeout,
            Instant::now(),
        );
    }

    fn report_rejection(&self, src: IpAddr, r: Rejection) {
        let user = r
            .user
            .and_then(|u| self.users.get(u))
            .map_or("", String::as_str);
        let method = r.method.map_or("unknown", |m| m.as_str());
        if r.reason.authenticated() {
            info!(target: "knockgate::event", event = "spa.rejected", src = %src, user, method,
                reason = r.reason.as_str(), "SPA packet refused");
        } else {
            debug!(target: "knockgate::event", event = "spa.rejected", src = %src, method,
                reason = r.reason.as_str(), "SPA packet refused");
        }
    }
}
