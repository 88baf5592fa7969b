//! The engine's one-time-key path. A native SPA packet sealed with a key from the stock
//! has passed every check of the SPA path (gateway, age, replay cache, a one-time-key
//! policy admitting the user, duration cap) and its key has left the stock; before
//! anything opens, the controller must grant the claim, because a key is single-use
//! across the whole fleet.
//!
//! The engine never waits for it: the claim goes to the claim task (`control::claim`) as
//! a [`ClaimJob`], the packet's grant waits here, and the answer comes back as
//! [`Input::Claimed`](super::Input::Claimed). No answer by the deadline, no live sync
//! stream, or no room in the queue all mean the controller is out of reach, and the
//! policy's `otk_offline` rule decides: deny, or grant locally and queue an offline claim
//! that is delivered when the controller is back.
//!
//! The key is burned here whatever happens (on disk, `otk_store`), so a resend is refused
//! without a round trip, and a restart from a stale stock does not bring it back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knockgate_agent_core::config::{Otk, OtkOffline};
use knockgate_agent_core::detect::spa::SpaGrant;
use knockgate_agent_core::ruleset::Access;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::Engine;
use crate::otk_store::{BurnedKeys, Claim, OfflineClaims};
use crate::report::{ReportEvent, unix_ms};

/// How long a grant waits for the controller's answer before the offline rule applies.
/// Longer than the claim task's own RPC deadline, so this only catches a lost answer.
pub const CLAIM_WAIT: Duration = Duration::from_secs(3);

/// A claim for the claim task to make; its answer comes back with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimJob {
    pub id: u64,
    pub claim: Claim,
}

/// The controller's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This agent won the key.
    Granted,
    /// The key was used (or is unknown to the controller); its reason.
    Refused(String),
    /// The controller could not be asked; why.
    Unreachable(String),
}

/// The engine's line to the controller's `Claim` RPC.
pub struct ClaimLink {
    pub jobs: mpsc::Sender<ClaimJob>,
    /// A sync stream is up: without one the controller counts as out of reach at once.
    pub live: Arc<AtomicBool>,
    /// Offline claims waiting for delivery, and the delivery task's wake-up.
    pub offline: Arc<Mutex<OfflineClaims>>,
    pub offline_added: Arc<Notify>,
}

/// A packet's grant, waiting for its claim.
#[derive(Debug, Clone)]
struct Pending {
    deadline: Instant,
    claim: Claim,
    policy: String,
    rule: OtkOffline,
    addr: IpAddr,
    access: Vec<Access>,
    timeout: Duration,
    capped: bool,
    at: Instant,
}

/// Burned keys, claims in flight, and the way to the controller.
#[derive(Default)]
pub(super) struct OtkState {
    link: Option<ClaimLink>,
    burned: BurnedKeys,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
}

impl OtkState {
    /// When the oldest claim in flight runs out of time.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Hand `claim` to the claim task; its id, or why the controller is out of reach.
    fn send(&mut self, claim: &Claim) -> Result<u64, &'static str> {
        let Some(link) = &self.link else {
            return Err("no controller");
        };
        if !link.live.load(Ordering::Acquire) {
            return Err("no sync stream");
        }
        let id = self.next_id;
        self.next_id += 1;
        link.jobs
            .try_send(ClaimJob {
                id,
                claim: claim.clone(),
            })
            .map_err(|_| "claim queue full")?;
        Ok(id)
    }
}

impl Engine {
    /// Claim one-time keys through `link`, and remember burned keys in `burned`.
    pub fn with_claims(mut self, link: Option<ClaimLink>, burned: BurnedKeys) -> Self {
        self.otk.link = link;
        self.otk.burned = burned;
        self
    }

    /// Stock the SPA detector with `otks`, less the keys burned here; forget burns the
    /// controller no longer stocks. Returns how many keys are in stock.
    pub(super) fn stock_otks(&mut self, otks: Vec<Otk>) -> usize {
        let name = |o: &Otk| self.users.get(o.user).cloned().unwrap_or_default();
        let stocked: BTreeSet<(String, u64)> = otks.iter().map(|o| (name(o), o.counter)).collect();
        let fresh: Vec<Otk> = otks
            .into_iter()
            .filter(|o| !self.otk.burned.contains(&name(o), o.counter))
            .collect();
        if let Err(e) = self.otk.burned.retain_stocked(&stocked) {
            warn!(error = %e, "cannot rewrite the burned one-time keys file");
        }
        let n = fresh.len();
        if let Some(spa) = &mut self.spa {
            spa.set_otks(fresh);
        }
        n
    }

    /// An accepted one-time-key packet: burn the key, then claim it (or apply the
    /// offline rule at once).
    pub(super) fn handle_otk(&mut self, src: IpAddr, grant: SpaGrant, counter: u64, at: Instant) {
        let policy = &self.policies[grant.policy];
        let p = Pending {
            deadline: Instant::now() + CLAIM_WAIT,
            claim: Claim {
                user: self.users.get(grant.user).cloned().unwrap_or_default(),
                counter,
                src,
                at_unix_ms: unix_ms(self.clock.wall()),
                offline: false,
            },
            policy: policy.name.clone(),
            rule: policy.otk.unwrap_or_default(),
            addr: grant.addr,
            access: grant.access,
            timeout: grant.timeout,
            capped: grant.capped,
            at,
        };
        if let Err(e) = self.otk.burned.insert(&p.claim.user, counter) {
            warn!(target: "knockgate::event", event = "spa.rejected", src = %src,
                user = %p.claim.user, method = "otk", counter, reason = "otk_store", error = %e,
                "cannot persist the burned one-time key; refusing (fail closed)");
            self.otk_rejected(&p, "otk_store", None);
            return;
        }
        match self.otk.send(&p.claim) {
            Ok(id) => {
                debug!(src = %src, user = %p.claim.user, counter, id, "claiming one-time key");
                self.otk.pending.insert(id, p);
            }
            Err(why) => self.claim_unreachable(p, why),
        }
    }

    /// The claim task's answer.
    pub(super) fn handle_claimed(&mut self, id: u64, outcome: ClaimOutcome) {
        let Some(p) = self.otk.pending.remove(&id) else {
            debug!(id, ?outcome, "claim answer after its deadline; ignored");
            return;
        };
        match outcome {
            ClaimOutcome::Granted => self.otk_granted(p, false),
            ClaimOutcome::Refused(reason) => self.otk_rejected(&p, "otk_used", Some(&reason)),
            ClaimOutcome::Unreachable(why) => self.claim_unreachable(p, &why),
        }
    }

    /// Claims whose answer did not come in time.
    pub(super) fn poll_claims(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .otk
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.otk.pending.remove(&id) {
                self.claim_unreachable(p, "no answer in time");
            }
        }
    }

    /// The controller cannot be asked: the policy's offline rule decides.
    fn claim_unreachable(&mut self, mut p: Pending, why: &str) {
        if p.rule == OtkOffline::Deny {
            info!(src = %p.claim.src, user = %p.claim.user, counter = p.claim.counter, why,
                "controller out of reach for a one-time-key claim; the policy denies offline");
            self.otk_rejected(&p, "otk_offline_denied", None);
            return;
        }
        if let Some(reason) = self.gone(&p) {
            self.otk_rejected(&p, reason, None);
            return;
        }
        p.claim.offline = true;
        // Queued (on disk) before the grant opens: a crash in between costs the grant,
        // never the controller's hearing of it.
        let queued = self.otk.link.as_ref().map(|link| {
            let r = link
                .offline
                .lock()
                .map_err(|_| std::io::Error::other("lock poisoned"))
                .and_then(|mut q| q.push(p.claim.clone()));
            if r.is_ok() {
                link.offline_added.notify_one();
            }
            r
        });
        if let Some(Err(e)) = queued {
            warn!(target: "knockgate::event", event = "spa.rejected", src = %p.claim.src,
                user = %p.claim.user, method = "otk", reason = "otk_store", error = %e,
                "cannot queue the offline claim; refusing (fail closed)");
            self.otk_rejected(&p, "otk_store", None);
            return;
        }
        info!(src = %p.claim.src, user = %p.claim.user, counter = p.claim.counter, why,
            "controller out of reach for a one-time-key claim; granting locally");
        self.otk_granted(p, true);
    }

    /// Why a waiting grant can no longer be given: its user or policy left the config.
    fn gone(&self, p: &Pending) -> Option<&'static str> {
        if !self.users.contains(&p.claim.user) {
            return Some("user_removed");
        }
        if !self
            .policies
            .iter()
            .any(|q| q.name == p.policy && q.otk.is_some())
        {
            return Some("policy_removed");
        }
        None
    }

    fn otk_granted(&mut self, p: Pending, offline: bool) {
        if let Some(reason) = self.gone(&p) {
            self.otk_rejected(&p, reason, None);
            return;
        }
        let Pending {
            claim,
            policy,
            addr,
            access,
            timeout,
            capped,
            at,
            ..
        } = p;
        let text: Vec<String> = access.iter().map(ToString::to_string).collect();
        info!(target: "knockgate::event", event = "spa.accepted", src = %claim.src,
            user = %claim.user, method = "otk", counter = claim.counter, offline,
            policy = %policy, allow_ip = %addr, access = %text.join(","),
            timeout_s = timeout.as_secs(), capped, latency_us = at.elapsed().as_micros() as u64,
            "SPA packet accepted");
        self.report(|| {
            ReportEvent::new("spa.accepted")
                .src(claim.src)
                .user(Some(&claim.user))
                .policy(&policy)
                .detail("method", "otk")
                .detail("counter", claim.counter)
                .detail("offline", offline)
                .detail("allow_ip", addr.to_string())
                .detail("access", text.join(","))
                .detail("timeout_s", timeout.as_secs())
                .detail("capped", capped)
        });
        self.open_grants(
            &policy,
            Some(&claim.user),
            addr,
            &access,
            timeout,
            Instant::now(),
        );
    }

    fn otk_rejected(&mut self, p: &Pending, reason: &str, controller: Option<&str>) {
        let c = &p.claim;
        info!(target: "knockgate::event", event = "spa.rejected", src = %c.src, user = %c.user,
            method = "otk", counter = c.counter, reason, controller_reason = controller.unwrap_or(""),
            "SPA packet refused");
        self.report(|| {
            let mut e = ReportEvent::new("spa.rejected")
                .src(c.src)
                .user(Some(&c.user))
                .policy(&p.policy)
                .reason(reason)
                .detail("method", "otk")
                .detail("counter", c.counter);
            if let Some(r) = controller {
                e = e.detail("controller_reason", r);
            }
            e
        });
    }
}
