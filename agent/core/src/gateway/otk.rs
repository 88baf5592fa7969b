//! The one-time-key path. A native SPA packet sealed with a key from the stock has
//! passed every check of the SPA path (gateway, age, replay cache, a one-time-key policy
//! admitting the user, duration cap) and its key has left the stock; before anything
//! opens, the controller must grant the claim, because a key is single-use across the
//! whole fleet.
//!
//! The gateway never waits for it: the key is burned ([`Persist::Burn`]), the claim goes
//! out as [`Action::Claim`], the packet's grant waits here, and the answer comes back
//! through [`Gateway::handle_claimed`]. No answer by the deadline, or a shell that cannot
//! send the claim (no live sync stream, a full queue), means the controller is out of
//! reach, and the policy's `otk_offline` rule decides: deny, or queue an offline claim
//! ([`Persist::OfflineClaim`]) and grant locally.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use knockgate_proto::event::{Event, Method, OtkUse, Reason, Subject};
use serde::{Deserialize, Serialize};

use super::spa::micros;
use super::{Action, Gateway, Level, Persist, Then, Time};
use crate::config::{Otk, OtkOffline};
use crate::detect::spa::SpaGrant;
use crate::ruleset::Access;

/// How long a grant waits for the controller's answer before the offline rule applies.
/// Longer than the claim task's own RPC deadline, so this only catches a lost answer.
pub const CLAIM_WAIT: Duration = Duration::from_secs(3);

/// A claim of one one-time key, as the controller's `Claim` RPC takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub user: String,
    pub counter: u64,
    /// The packet's source address.
    pub src: IpAddr,
    /// When the packet arrived, unix ms.
    pub at_unix_ms: i64,
    /// Granted here already, without the controller.
    pub offline: bool,
}

/// A claim for the controller; its answer comes back with the same `id`.
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

/// A packet's grant, waiting for its claim.
#[derive(Debug, Clone)]
pub(super) struct Pending {
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

/// Which durable step a pending grant waits for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Burned,
    Queued,
}

/// Burned keys and claims in flight.
#[derive(Default)]
pub(super) struct OtkState {
    burned: BTreeSet<(String, u64)>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
}

impl OtkState {
    /// When the oldest claim in flight runs out of time.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

impl Gateway {
    /// The keys burned here in an earlier run (from the shell's store).
    pub fn restore_burned(&mut self, burned: BTreeSet<(String, u64)>) {
        self.otk.burned = burned;
    }

    /// Stock the SPA detector with `otks`, less the keys burned here; forget burns the
    /// controller no longer stocks. Returns how many keys are in stock.
    pub(super) fn stock_otks(&mut self, otks: Vec<Otk>) -> usize {
        let name = |o: &Otk| self.user_name(o.user).unwrap_or_default().to_string();
        let stocked: BTreeSet<(String, u64)> = otks.iter().map(|o| (name(o), o.counter)).collect();
        let fresh: Vec<Otk> = otks
            .into_iter()
            .filter(|o| !self.otk.burned.contains(&(name(o), o.counter)))
            .collect();
        let before = self.otk.burned.len();
        self.otk.burned.retain(|k| stocked.contains(k));
        if self.otk.burned.len() != before {
            let keep = self.otk.burned.clone();
            self.actions
                .push_back(Action::Persist(None, Persist::KeepBurned(keep)));
        }
        let n = fresh.len();
        if let Some(spa) = &mut self.spa {
            spa.detector.set_otks(fresh);
        }
        n
    }

    /// An accepted one-time-key packet: burn the key, then claim it.
    pub(super) fn handle_otk(
        &mut self,
        src: IpAddr,
        grant: SpaGrant,
        counter: u64,
        at: Instant,
        now: Time,
    ) {
        let Some(policy) = self.config.policies.get(grant.policy) else {
            return;
        };
        let p = Pending {
            deadline: now.mono + CLAIM_WAIT,
            claim: Claim {
                user: self.user_name(grant.user).unwrap_or_default().to_string(),
                counter,
                src,
                at_unix_ms: now.unix_ms,
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
        let burn = Persist::Burn {
            user: p.claim.user.clone(),
            counter,
        };
        self.persist_then(burn, Then::Otk(p, Step::Burned));
    }

    /// A durable step of a pending grant is done (or failed: then it is refused).
    pub(super) fn otk_recorded(
        &mut self,
        p: Pending,
        step: Step,
        result: Result<(), String>,
        now: Time,
    ) {
        if let Err(error) = result {
            self.otk_rejected(&p, Reason::OtkStore, None, Some(error), now);
            return;
        }
        match step {
            Step::Burned => {
                self.otk
                    .burned
                    .insert((p.claim.user.clone(), p.claim.counter));
                let id = self.otk.next_id;
                self.otk.next_id += 1;
                let claim = p.claim.clone();
                self.otk.pending.insert(id, p);
                self.actions
                    .push_back(Action::Claim(ClaimJob { id, claim }));
            }
            Step::Queued => self.otk_granted(p, true, now),
        }
    }

    /// The controller's answer to claim `id` (or the shell's word that it could not ask).
    pub fn handle_claimed(&mut self, id: u64, outcome: ClaimOutcome, now: Time) {
        let Some(p) = self.otk.pending.remove(&id) else {
            return; // after its deadline: the offline rule has decided
        };
        match outcome {
            ClaimOutcome::Granted => self.otk_granted(p, false, now),
            ClaimOutcome::Refused(why) => {
                self.otk_rejected(&p, Reason::OtkUsed, Some(why), None, now)
            }
            ClaimOutcome::Unreachable(_) => self.claim_unreachable(p, now),
        }
    }

    /// Claims whose answer did not come in time.
    pub(super) fn poll_claims(&mut self, now: Time) {
        let late: Vec<u64> = self
            .otk
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now.mono)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.otk.pending.remove(&id) {
                self.claim_unreachable(p, now);
            }
        }
    }

    /// The controller cannot be asked: the policy's offline rule decides.
    fn claim_unreachable(&mut self, mut p: Pending, now: Time) {
        if p.rule == OtkOffline::Deny {
            self.otk_rejected(&p, Reason::OtkOfflineDenied, None, None, now);
            return;
        }
        if let Some(reason) = self.gone(&p) {
            self.otk_rejected(&p, reason, None, None, now);
            return;
        }
        p.claim.offline = true;
        // Queued (on disk) before the grant opens: a crash in between costs the grant,
        // never the controller's hearing of it.
        let queue = Persist::OfflineClaim(p.claim.clone());
        self.persist_then(queue, Then::Otk(p, Step::Queued));
    }

    /// Why a waiting grant can no longer be given: its user or policy left the config.
    fn gone(&self, p: &Pending) -> Option<Reason> {
        if !self.config.users.iter().any(|u| u.name == p.claim.user) {
            return Some(Reason::UserRemoved);
        }
        if self.policy(&p.policy).is_none_or(|q| q.otk.is_none()) {
            return Some(Reason::PolicyRemoved);
        }
        None
    }

    fn otk_granted(&mut self, p: Pending, offline: bool, now: Time) {
        if let Some(reason) = self.gone(&p) {
            self.otk_rejected(&p, reason, None, None, now);
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
        let event = Event::SpaAccepted {
            subject: Subject {
                src: Some(claim.src),
                user: Some(claim.user.clone()),
                policy: Some(policy.clone()),
            },
            method: Method::Otk,
            allow_ip: addr,
            access: access.clone(),
            timeout_s: timeout.as_secs(),
            capped,
            otk: Some(OtkUse {
                counter: claim.counter,
                offline,
            }),
            latency_us: micros(now.mono.saturating_duration_since(at)),
        };
        self.tell(Level::Info, true, now, event);
        self.open_grants(&policy, Some(&claim.user), addr, &access, timeout, at);
    }

    fn otk_rejected(
        &mut self,
        p: &Pending,
        reason: Reason,
        controller_reason: Option<String>,
        error: Option<String>,
        now: Time,
    ) {
        let c = &p.claim;
        let level = if error.is_some() {
            Level::Warn
        } else {
            Level::Info
        };
        let event = Event::SpaRejected {
            subject: Subject {
                src: Some(c.src),
                user: Some(c.user.clone()),
                policy: Some(p.policy.clone()),
            },
            method: Some(Method::Otk),
            reason,
            counter: Some(c.counter),
            controller_reason,
            error,
        };
        self.tell(level, true, now, event);
    }
}
