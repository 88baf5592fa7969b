//! The engine's SPA path: verify a datagram, persist its replay entry, open what it asks,
//! and report refusals with their reason and source. Refusals of unauthenticated junk are
//! DEBUG events plus a periodic INFO summary; authenticated refusals are told one by one
//! only a few times per reason and source per interval, the rest counted in the summary.
//! So neither a flood of junk nor a sniffed packet replayed forever floods the journal,
//! the spool or the audit trail.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use knockgate_agent_core::config::Otk;
use knockgate_agent_core::detect::spa::{Reason, Rejection, SpaDetector};
use knockgate_agent_core::limit::PerKey;
use knockgate_proto::unix_secs;
use tracing::{debug, info, warn};

use super::Engine;
use crate::replay_store::ReplayStore;
use crate::report::ReportEvent;

/// How often counts of refused junk are summarized.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The SPA detector with its replay file and refusal counters.
pub(super) struct SpaState {
    detector: SpaDetector,
    store: ReplayStore,
    port: u16,
    /// Whether any policy uses SPA now; the state outlives configs without SPA so the
    /// replay cache is still there when SPA comes back.
    enabled: bool,
    refused: [u64; Reason::ALL.len()],
    last_summary: Instant,
    /// Token bucket for reporting unauthenticated refusals one by one.
    junk_tokens: f64,
    junk_refilled: Instant,
    /// Authenticated refusals told one by one, per reason and source, per interval: a
    /// sniffed packet replayed forever costs a few lines and the summary's count.
    told: PerKey<(Reason, IpAddr)>,
}

/// Authenticated refusals of one reason from one source told on their own per
/// `SUMMARY_EVERY`; sources tracked per interval.
const TOLD_PER_SOURCE: u32 = 3;
const TOLD_SOURCES: usize = 1024;

/// Unauthenticated refusals reported individually: this many per second on average, in
/// bursts of up to `JUNK_BURST`; beyond that only the periodic summary counts them, so a
/// flood of junk can neither flood the audit trail nor hide a single stray packet.
const JUNK_PER_SEC: f64 = 20.0;
const JUNK_BURST: f64 = 100.0;

impl SpaState {
    pub(super) fn new(detector: SpaDetector, store: ReplayStore, port: u16, enabled: bool) -> Self {
        SpaState {
            detector,
            store,
            port,
            enabled,
            refused: [0; Reason::ALL.len()],
            last_summary: Instant::now(),
            junk_tokens: JUNK_BURST,
            junk_refilled: Instant::now(),
            told: PerKey::new(TOLD_PER_SOURCE, TOLD_SOURCES),
        }
    }

    /// Use `detector` from now on, with the replay cache of the one it replaces.
    pub(super) fn replace(&mut self, mut detector: SpaDetector, enabled: bool) {
        std::mem::swap(detector.replay_cache(), self.detector.replay_cache());
        self.detector = detector;
        self.enabled = enabled;
    }

    /// Stock the detector with these one-time keys.
    pub(super) fn set_otks(&mut self, otks: Vec<Otk>) {
        self.detector.set_otks(otks);
    }

    /// Whether one more unauthenticated refusal may be reported on its own now.
    fn take_junk_token(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.junk_refilled).as_secs_f64() * JUNK_PER_SEC;
        self.junk_tokens = (self.junk_tokens + earned).min(JUNK_BURST);
        self.junk_refilled = now;
        if self.junk_tokens >= 1.0 {
            self.junk_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The refusals counted since the last summary, every `SUMMARY_EVERY`.
    fn take_summary(&mut self, now: Instant) -> Option<Vec<(Reason, u64)>> {
        if now.duration_since(self.last_summary) < SUMMARY_EVERY {
            return None;
        }
        self.last_summary = now;
        self.told.reset();
        let counts: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .copied()
            .zip(self.refused)
            .filter(|(_, n)| *n > 0)
            .collect();
        self.refused = [0; Reason::ALL.len()];
        (!counts.is_empty()).then_some(counts)
    }
}

impl Engine {
    /// Every `SUMMARY_EVERY`, one INFO line (and report) with the refusals counted since
    /// the last.
    pub(super) fn summarize_spa(&mut self, now: Instant) {
        let Some(spa) = &mut self.spa else { return };
        let port = spa.port;
        let Some(counts) = spa.take_summary(now) else {
            return;
        };
        let text: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        info!(target: "knockgate::event", event = "spa.refused_summary", port,
            counts = %text.join(" "), "SPA packets refused in the last interval");
        self.report(|| {
            let map: serde_json::Map<String, serde_json::Value> = counts
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), (*n).into()))
                .collect();
            ReportEvent::new("spa.refused_summary")
                .detail("port", port)
                .detail("counts", map)
        });
    }

    /// One datagram that arrived on the SPA port.
    pub(super) fn handle_spa(&mut self, src: IpAddr, payload: &[u8], at: Instant) {
        let Some(spa) = self.spa.as_mut().filter(|s| s.enabled) else {
            return;
        };
        let now = unix_secs(self.clock.wall());
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
            let user = self.users.get(grant.user).cloned().unwrap_or_default();
            self.report(|| {
                ReportEvent::new("spa.rejected")
                    .src(src)
                    .user(Some(&user))
                    .reason("replay_store")
                    .detail("method", grant.method.as_str())
                    .detail("error", e.to_string())
            });
            return;
        }
        if let Some(counter) = grant.otk {
            self.handle_otk(src, grant, counter, at);
            return;
        }
        let user = self.users.get(grant.user).cloned().unwrap_or_default();
        let policy = self.policies[grant.policy].name.clone();
        let access: Vec<String> = grant.access.iter().map(|a| a.to_string()).collect();
        info!(target: "knockgate::event", event = "spa.accepted", src = %src, user = %user,
            method = grant.method.as_str(), policy = %policy, allow_ip = %grant.addr,
            access = %access.join(","), timeout_s = grant.timeout.as_secs(), capped = grant.capped,
            latency_us = at.elapsed().as_micros() as u64, "SPA packet accepted");
        self.report(|| {
            ReportEvent::new("spa.accepted")
                .src(src)
                .user(Some(&user))
                .policy(&policy)
                .detail("method", grant.method.as_str())
                .detail("allow_ip", grant.addr.to_string())
                .detail("access", access.join(","))
                .detail("timeout_s", grant.timeout.as_secs())
                .detail("capped", grant.capped)
        });
        self.open_grants(
            &policy,
            Some(&user),
            grant.addr,
            &grant.access,
            grant.timeout,
            Instant::now(),
        );
    }

    fn report_rejection(&mut self, src: IpAddr, r: Rejection) {
        let user = r
            .user
            .and_then(|u| self.users.get(u))
            .map_or("", String::as_str);
        let method = r.method.map_or("unknown", |m| m.as_str());
        let told = r.reason.authenticated()
            && self
                .spa
                .as_mut()
                .is_some_and(|s| s.told.admit((r.reason, src)));
        if told {
            info!(target: "knockgate::event", event = "spa.rejected", src = %src, user, method,
                reason = r.reason.as_str(), "SPA packet refused");
            let user = user.to_string();
            self.report(|| {
                ReportEvent::new("spa.rejected")
                    .src(src)
                    .user(Some(&user))
                    .reason(r.reason.as_str())
                    .detail("method", method)
            });
        } else if r.reason.authenticated() {
            debug!(target: "knockgate::event", event = "spa.rejected", src = %src, user, method,
                reason = r.reason.as_str(), "SPA packet refused (counted in the next summary)");
        } else {
            debug!(target: "knockgate::event", event = "spa.rejected", src = %src, method,
                reason = r.reason.as_str(), "SPA packet refused");
            if self
                .spa
                .as_mut()
                .is_some_and(|s| s.take_junk_token(Instant::now()))
            {
                self.report(|| {
                    ReportEvent::new("spa.rejected")
                        .src(src)
                        .reason(r.reason.as_str())
                        .detail("method", method)
                });
            }
        }
    }
}
