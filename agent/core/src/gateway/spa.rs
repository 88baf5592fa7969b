//! The SPA path: verify a datagram, have its replay entry made durable, open what it
//! asks, and tell refusals with their reason and source. Refusals of unauthenticated
//! junk are DEBUG notices plus a periodic summary; authenticated refusals are told one by
//! one only a few times per reason and source per interval, the rest counted in the
//! summary. So neither a flood of junk nor a sniffed packet replayed forever floods the
//! journal, the spool or the audit trail.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use knockgate_proto::event::{Event, Reason, Subject};

use super::{Gateway, Level, Persist, Then, Time};
use crate::detect::spa::{Rejection, SpaDetector, SpaGrant};
use crate::limit::PerKey;

/// How often counts of refused packets are summarized.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Authenticated refusals of one reason from one source told on their own per
/// `SUMMARY_EVERY`; sources tracked per interval.
const TOLD_PER_SOURCE: u32 = 3;
const TOLD_SOURCES: usize = 1024;
/// Unauthenticated refusals reported individually: this many per second on average, in
/// bursts of up to `JUNK_BURST`; beyond that only the periodic summary counts them, so a
/// flood of junk can neither flood the audit trail nor hide a single stray packet.
const JUNK_PER_SEC: f64 = 20.0;
const JUNK_BURST: f64 = 100.0;

/// The SPA detector with its refusal counters.
pub(super) struct SpaState {
    pub(super) detector: SpaDetector,
    port: u16,
    /// Whether any policy uses SPA now; the state outlives configs without SPA so the
    /// replay cache is still there when SPA comes back.
    enabled: bool,
    refused: [u64; Reason::ALL.len()],
    last_summary: Instant,
    /// Token bucket for reporting unauthenticated refusals one by one.
    junk_tokens: f64,
    junk_refilled: Instant,
    /// Authenticated refusals told one by one, per reason and source, per interval.
    told: PerKey<(Reason, IpAddr)>,
}

/// An accepted packet whose replay entry is being made durable.
pub(super) struct Accepted {
    src: IpAddr,
    grant: SpaGrant,
    at: Instant,
}

impl SpaState {
    pub(super) fn new(detector: SpaDetector, port: u16, enabled: bool, now: Time) -> Self {
        SpaState {
            detector,
            port,
            enabled,
            refused: [0; Reason::ALL.len()],
            last_summary: now.mono,
            junk_tokens: JUNK_BURST,
            junk_refilled: now.mono,
            told: PerKey::new(TOLD_PER_SOURCE, TOLD_SOURCES),
        }
    }

    /// Use `detector` from now on, with the replay cache of the one it replaces.
    pub(super) fn replace(&mut self, mut detector: SpaDetector, enabled: bool) {
        std::mem::swap(detector.replay_cache(), self.detector.replay_cache());
        self.detector = detector;
        self.enabled = enabled;
    }

    /// Whether one more unauthenticated refusal may be reported on its own now.
    fn take_junk_token(&mut self, now: Instant) -> bool {
        let earned = now
            .saturating_duration_since(self.junk_refilled)
            .as_secs_f64()
            * JUNK_PER_SEC;
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
        if now.saturating_duration_since(self.last_summary) < SUMMARY_EVERY {
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

impl Gateway {
    /// Every `SUMMARY_EVERY`, one notice with the refusals counted since the last.
    pub(super) fn summarize_spa(&mut self, now: Time) {
        let Some(spa) = &mut self.spa else { return };
        let port = spa.port;
        if let Some(counts) = spa.take_summary(now.mono) {
            self.tell(
                Level::Info,
                true,
                now,
                Event::SpaRefusedSummary { port, counts },
            );
        }
    }

    /// One datagram that arrived on the SPA port.
    pub(super) fn handle_spa(&mut self, src: IpAddr, payload: &[u8], at: Instant, now: Time) {
        let Some(spa) = self.spa.as_mut().filter(|s| s.enabled) else {
            return;
        };
        match spa.detector.handle_datagram(src, payload, now.unix_secs()) {
            Ok(grant) => {
                // Burn the packet on disk before opening anything: a crash in between
                // costs this grant, never lets the same packet in twice.
                let (key, expires) = grant.replay;
                let accepted = Accepted { src, grant, at };
                self.persist_then(Persist::Replay { key, expires }, Then::Spa(accepted));
            }
            Err(r) => {
                spa.refused[r.reason as usize] += 1;
                self.refused(src, r, now);
            }
        }
    }

    /// The bytes of a whole sealed knock sequence from `src`, judged like a datagram. When
    /// its body says it is longer, its knocks stay collected for the rest (or until they
    /// expire); anything else refused is told, and the knocks are forgotten.
    pub(super) fn handle_sealed(&mut self, src: IpAddr, bytes: &[u8], at: Instant, now: Time) {
        let Some(spa) = self.spa.as_mut() else {
            return;
        };
        match spa.detector.handle_sealed(src, bytes, now.unix_secs()) {
            Ok(None) => {}
            Ok(Some(grant)) => {
                if let Some(asm) = &mut self.sealed {
                    asm.forget(&src);
                }
                let (key, expires) = grant.replay;
                let accepted = Accepted { src, grant, at };
                self.persist_then(Persist::Replay { key, expires }, Then::Spa(accepted));
            }
            Err(r) => {
                if let Some(asm) = &mut self.sealed {
                    asm.forget(&src);
                }
                spa.refused[r.reason as usize] += 1;
                self.refused(src, r, now);
            }
        }
    }

    /// The replay entry of an accepted packet is durable (or not: then it is refused).
    pub(super) fn spa_recorded(&mut self, a: Accepted, result: Result<(), String>, now: Time) {
        let Accepted { src, grant, at } = a;
        let user = self.user_name(grant.user).map(str::to_string);
        let policy = self
            .config
            .policies
            .get(grant.policy)
            .map(|p| p.name.clone());
        if let Err(error) = result {
            let event = Event::SpaRejected {
                subject: Subject {
                    src: Some(src),
                    user,
                    policy: None,
                },
                method: Some(grant.method.into()),
                reason: Reason::ReplayStore,
                counter: None,
                controller_reason: None,
                error: Some(error),
            };
            self.tell(Level::Warn, true, now, event);
            return;
        }
        if let Some(counter) = grant.otk {
            self.handle_otk(src, grant, counter, at, now);
            return;
        }
        let (Some(user), Some(policy)) = (user, policy) else {
            return;
        };
        let event = Event::SpaAccepted {
            subject: Subject {
                src: Some(src),
                user: Some(user.clone()),
                policy: Some(policy.clone()),
            },
            method: grant.method.into(),
            allow_ip: grant.addr,
            access: grant.access.clone(),
            timeout_s: grant.timeout.as_secs(),
            capped: grant.capped,
            otk: None,
            latency_us: micros(now.mono.saturating_duration_since(at)),
        };
        self.tell(Level::Info, true, now, event);
        self.open_grants(
            &policy,
            Some(&user),
            grant.addr,
            &grant.access,
            grant.timeout,
            at,
        );
    }

    /// Tell a refusal, as loudly as its kind deserves.
    fn refused(&mut self, src: IpAddr, r: Rejection, now: Time) {
        let user = r.user.and_then(|u| self.user_name(u)).map(str::to_string);
        let authenticated = r.reason.authenticated();
        let Some(spa) = self.spa.as_mut() else { return };
        let (level, report) = if !authenticated {
            (Level::Debug, spa.take_junk_token(now.mono))
        } else if spa.told.admit((r.reason, src)) {
            (Level::Info, true)
        } else {
            (Level::Debug, false)
        };
        let event = Event::SpaRejected {
            subject: Subject {
                src: Some(src),
                user: user.filter(|_| authenticated),
                policy: None,
            },
            method: r.method.map(Into::into),
            reason: r.reason,
            counter: None,
            controller_reason: None,
            error: None,
        };
        self.tell(level, report, now, event);
    }
}

/// Microseconds, saturating.
pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
