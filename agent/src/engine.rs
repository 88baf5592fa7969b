//! The engine: the one owner of decision state. It receives knocks from the capture
//! threads, configs and revocations from the controller task, and the answers to its
//! one-time-key claims from the claim task; runs knocks through the fixed-sequence
//! matcher and the rotating-sequence detector, opens and closes grants through the
//! firewall, notices expiry, and emits every decision as a structured event (target
//! `knockgate::event`) and, with a controller, as a report event for it.

mod apply;
mod guard;
mod otk;
mod rotating;
mod spa;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use knockgate_agent_core::config::{Config, Policy};
use knockgate_agent_core::detect::sequence::{Decision, DoorError, Outcome, SequenceMatcher};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::grants::{Grant, Grants, Opened};
use knockgate_agent_core::ruleset::{Access, GrantKey};
use tokio::sync::oneshot;
use tracing::{debug, info, trace, warn};

pub use self::apply::Update;
pub use self::otk::{ClaimJob, ClaimLink, ClaimOutcome};
use crate::capture::{KnockMsg, Tuning};
use crate::firewall::Firewall;
use crate::replay_store::ReplayStore;
use crate::report::{GrantInfo, ReportEvent, Reporter, wall_ms};

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    Knock(KnockMsg),
    /// Enforce a new config (from the controller); whether it took goes to `done`.
    Apply {
        update: Box<Update>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Close these grants now: by ref, and every grant of these users.
    Revoke {
        grant_refs: Vec<String>,
        users: Vec<String>,
    },
    /// The controller's answer to the one-time-key claim `id` (see [`ClaimJob`]).
    Claimed {
        id: u64,
        outcome: ClaimOutcome,
    },
    /// Something other than the agent changed the firewall: check it and repair it.
    FirewallChanged,
    /// Stop. The firewall state stays (see [`crate::firewall::Firewall::stop`]).
    Shutdown,
}

/// How long the engine sleeps at most when nothing is due.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The wall clock rotating windows and SPA timestamps are judged by (a fake in tests).
pub trait Clock: Send {
    fn wall(&self) -> SystemTime;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Decision state plus the firewall that enforces it.
pub struct Engine {
    /// The config enforced now (to tell a config change from a material push).
    config: Config,
    policies: Vec<Policy>,
    users: Vec<String>,
    /// Policy index of each sequence door.
    door_policy: Vec<usize>,
    matcher: SequenceMatcher,
    spa: Option<spa::SpaState>,
    grants: Grants,
    firewall: Box<dyn Firewall>,
    decisions: Vec<Decision>,
    reporter: Option<Reporter>,
    tuning: Option<Arc<Tuning>>,
    rotating: rotating::RotatingState,
    otk: otk::OtkState,
    guard: guard::Guard,
    clock: Box<dyn Clock>,
}

impl Engine {
    /// An engine for `config` over an installed firewall. `spa` carries the detector and
    /// its on-disk replay cache when any policy is opened by SPA (or may be, later).
    pub fn new(
        config: &Config,
        firewall: Box<dyn Firewall>,
        spa: Option<(SpaDetector, ReplayStore)>,
    ) -> Result<Self, DoorError> {
        let (door_policy, doors): (Vec<usize>, Vec<_>) = config.doors().into_iter().unzip();
        let matcher = SequenceMatcher::new(doors, config.agent.max_sources)?;
        // Refs are `<run>-<n>`: a fresh run id per start keeps them unique across restarts.
        let run_id = format!("{:08x}", rand::random::<u32>());
        Ok(Engine {
            config: config.clone(),
            policies: config.policies.clone(),
            users: config.users.iter().map(|u| u.name.clone()).collect(),
            door_policy,
            matcher,
            spa: spa.map(|(detector, store)| {
                spa::SpaState::new(detector, store, config.spa.port, config.uses_spa())
            }),
            grants: Grants::with_ref_prefix(&run_id),
            firewall,
            decisions: Vec::new(),
            reporter: None,
            tuning: None,
            rotating: rotating::RotatingState::new(config.agent.max_sources),
            otk: otk::OtkState::default(),
            guard: guard::Guard::new(Instant::now()),
            clock: Box::new(SystemClock),
        })
    }

    /// Judge time windows and packet ages by `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Box<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also hand every decision to the controller's reporter.
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Retune the capture threads when a new config changes what they listen for.
    pub fn with_tuning(mut self, tuning: Arc<Tuning>) -> Self {
        self.tuning = Some(tuning);
        self
    }

    /// Install the static ruleset (protected ports, knock ports, grant sets) of the
    /// config, plus any protected floor.
    pub fn install(&mut self) -> Result<(), crate::firewall::FirewallError> {
        let ruleset = self.ruleset();
        self.install_base(&ruleset)
    }

    /// Take over the grants the firewall already holds (left by an earlier run).
    pub fn adopt_existing(
        &mut self,
        now: Instant,
    ) -> Result<usize, crate::firewall::FirewallError> {
        let held = self.firewall.list()?;
        let mut adopted = 0;
        for h in &held {
            if now.checked_add(h.remaining).is_none() {
                // No timeout (added by hand, not by knockgate): nothing would ever close
                // it, so it is not taken over; the operator who added it removes it.
                warn!(src = %h.key.addr, proto = %h.key.proto, port = h.key.port,
                    "a grant without a timeout is in the grant set; leaving it alone");
                continue;
            }
            adopted += 1;
            self.grants.adopt(h.key, h.remaining, h.label.as_ref(), now);
            let label = self.grants.label(&h.key);
            let user = label.user.as_deref();
            info!(target: "knockgate::event", event = "grant.adopted", src = %h.key.addr,
                proto = %h.key.proto, port = h.key.port, grant_ref = %label.grant_ref,
                policy = %label.policy, user = user.unwrap_or_default(),
                remaining_ms = h.remaining.as_millis() as u64, "grant adopted from the firewall");
            let expires = now.checked_add(h.remaining).unwrap_or(now);
            self.report(|| {
                ReportEvent::new("grant.adopted")
                    .src(h.key.addr)
                    .user(user)
                    .policy(&label.policy)
                    .grant(GrantInfo::new(
                        &label.grant_ref,
                        &h.key,
                        wall_ms(expires, now),
                    ))
            });
        }
        Ok(adopted)
    }

    /// Run until told to stop or every sender is gone. Returns the firewall so the caller
    /// can stop it.
    pub fn run(mut self, rx: Receiver<Input>) -> Box<dyn Firewall> {
        loop {
            let now = Instant::now();
            self.expire(now);
            self.poll_claims(now);
            self.tick_rotating();
            self.poll_guard(now);
            let due = [
                self.grants.next_expiry(),
                self.otk.next_deadline(),
                Some(self.guard.next_check()),
            ];
            let wait = due
                .into_iter()
                .flatten()
                .fold(IDLE_TICK, |w, t| t.saturating_duration_since(now).min(w));
            self.summarize_spa(now);
            match rx.recv_timeout(wait) {
                Ok(Input::Knock(k)) => self.handle_input(k),
                Ok(Input::Apply { update, done }) => {
                    let result = self.apply(*update, Instant::now());
                    let _ = done.send(result);
                }
                Ok(Input::Revoke { grant_refs, users }) => {
                    self.revoke(&grant_refs, &users, Instant::now());
                }
                Ok(Input::Claimed { id, outcome }) => self.handle_claimed(id, outcome),
                Ok(Input::FirewallChanged) => self.handle_firewall_changed(Instant::now()),
                Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        self.stop(Instant::now());
        self.firewall
    }

    /// A clean stop: grants stay open and protection stays in place where the firewall
    /// expires grants by itself; where it cannot, the grants close now. Either way the
    /// controller hears of it, so its grant table stays true.
    fn stop(&mut self, now: Instant) {
        let kept = if self.firewall.expires_grants() {
            self.grants.len()
        } else {
            let all = self.grants.select(|_| true);
            self.close_now(all, "agent_stopped", now);
            0
        };
        info!(target: "knockgate::event", event = "agent.stopped", grants_kept = kept,
            "agent stopping; the firewall keeps protecting");
        self.report(|| ReportEvent::new("agent.stopped").detail("grants_kept", kept as u64));
    }

    /// One packet from capture: a datagram for the SPA port, or a knock. Every one is
    /// also a candidate rotating knock (a rotating port may even be the SPA port: the
    /// controller does not know it).
    pub fn handle_input(&mut self, k: KnockMsg) {
        self.handle_rotating(&k);
        if let Some(payload) = &k.payload {
            self.handle_spa(k.src, payload, k.at);
        } else {
            self.handle_knock(k);
        }
    }

    /// One knock through the matcher, and whatever it completes.
    fn handle_knock(&mut self, k: KnockMsg) {
        let mut decisions = std::mem::take(&mut self.decisions);
        decisions.clear();
        self.matcher
            .handle_knock(k.src, k.kind, k.tcp_flags, k.at, &mut decisions);
        for d in &decisions {
            let policy_idx = self.door_policy[d.door as usize];
            let policy = &self.policies[policy_idx].name;
            match d.outcome {
                Outcome::Progressed { stage, of } => debug!(target: "knockgate::event",
                    event = "knock.progressed", src = %k.src, policy = %policy, stage, of, "knock progressed"),
                Outcome::Retransmit { stage } => debug!(target: "knockgate::event",
                    event = "knock.retransmit", src = %k.src, policy = %policy, stage, "retransmitted knock ignored"),
                Outcome::Reset(reason) => debug!(target: "knockgate::event",
                    event = "knock.reset", src = %k.src, policy = %policy, reason = reason.as_str(), "knock sequence reset"),
                Outcome::FlagsIgnored => trace!(target: "knockgate::event",
                    event = "knock.ignored", src = %k.src, policy = %policy, reason = "tcp_flags", "knock ignored"),
                Outcome::Completed => {
                    info!(target: "knockgate::event", event = "knock.completed", src = %k.src,
                        policy = %policy, method = "sequence", "knock sequence completed");
                    let p = &self.policies[policy_idx];
                    let (name, open, timeout) = (p.name.clone(), p.open.clone(), p.timeout);
                    self.report(|| {
                        ReportEvent::new("knock.completed")
                            .src(k.src)
                            .policy(&name)
                            .detail("method", "sequence")
                    });
                    self.open_grants(&name, None, k.src, &open, timeout, Instant::now());
                }
            }
        }
        self.decisions = decisions;
    }

    /// Open `access` for `src` for `timeout` on behalf of `user` (None for sequence
    /// knocks); every port that fails stays closed. Returns how many opened.
    fn open_grants(
        &mut self,
        policy: &str,
        user: Option<&str>,
        src: IpAddr,
        access: &[Access],
        timeout: Duration,
        now: Instant,
    ) -> usize {
        let mut opened = 0;
        let expires_ms = wall_ms(now.checked_add(timeout).unwrap_or(now), now);
        for spec in access {
            let key = GrantKey {
                addr: src,
                proto: spec.proto,
                port: spec.port,
            };
            let label = self.grants.label_for_open(&key, policy, user);
            match self.firewall.open(&key, timeout, &label) {
                Ok(()) => {
                    opened += 1;
                    let kind = self.grants.handle_open(key, policy, user, timeout, now);
                    let event = if kind == Opened::New {
                        "grant.opened"
                    } else {
                        "grant.extended"
                    };
                    let grant_ref = self.grant_ref(&key);
                    info!(target: "knockgate::event", event, src = %src, policy = %policy,
                        user = user.unwrap_or_default(), proto = %spec.proto, port = spec.port,
                        timeout_s = timeout.as_secs_f64(), grant_ref = %grant_ref, "grant opened");
                    self.report(|| {
                        ReportEvent::new(event)
                            .src(src)
                            .user(user)
                            .policy(policy)
                            .grant(GrantInfo::new(&grant_ref, &key, expires_ms))
                            .detail("timeout_s", timeout.as_secs())
                    });
                }
                Err(e) => {
                    warn!(target: "knockgate::event", event = "grant.failed", src = %src,
                        policy = %policy, proto = %spec.proto, port = spec.port, error = %e,
                        "firewall refused the grant; the port stays closed");
                    self.report(|| {
                        ReportEvent::new("grant.failed")
                            .src(src)
                            .user(user)
                            .policy(policy)
                            .reason("firewall")
                            .grant(GrantInfo::new("", &key, expires_ms))
                            .detail("error", e.to_string())
                    });
                }
            }
        }
        opened
    }

    fn expire(&mut self, now: Instant) {
        for (key, grant) in self.grants.poll_expired(now) {
            // The kernel has expired nftables grants already; closing again is harmless and
            // is what makes the command backend close at all.
            self.close_in_firewall(&key);
            self.closed(&key, &grant, "expired", now);
        }
    }

    /// Close the grants at `keys` now, for `reason`.
    fn close_now(&mut self, keys: Vec<GrantKey>, reason: &str, now: Instant) {
        for key in keys {
            self.close_in_firewall(&key);
            if let Some(grant) = self.grants.handle_close(&key) {
                self.closed(&key, &grant, reason, now);
            }
        }
    }

    fn close_in_firewall(&mut self, key: &GrantKey) {
        if let Err(e) = self.firewall.close(key) {
            warn!(target: "knockgate::event", event = "grant.close_failed", src = %key.addr,
                proto = %key.proto, port = key.port, error = %e, "could not close grant");
        }
    }

    /// Say that a grant closed.
    fn closed(&mut self, key: &GrantKey, grant: &Grant, reason: &str, now: Instant) {
        info!(target: "knockgate::event", event = "grant.closed", src = %key.addr,
            policy = %grant.policy, user = grant.user.as_deref().unwrap_or_default(),
            proto = %key.proto, port = key.port, grant_ref = %grant.grant_ref, reason,
            "grant closed");
        self.report(|| {
            ReportEvent::new("grant.closed")
                .src(key.addr)
                .user(grant.user.as_deref())
                .policy(&grant.policy)
                .reason(reason)
                .grant(GrantInfo::new(
                    &grant.grant_ref,
                    key,
                    wall_ms(grant.expires_at, now),
                ))
        });
    }

    fn grant_ref(&self, key: &GrantKey) -> String {
        self.grants
            .get(key)
            .map(|g| g.grant_ref.clone())
            .unwrap_or_default()
    }

    /// Hand an event to the reporter, if there is one (building it only then).
    fn report(&mut self, event: impl FnOnce() -> ReportEvent) {
        if let Some(r) = &mut self.reporter {
            r.emit(event());
        }
    }
}

#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod otk_tests;
#[cfg(test)]
mod rotating_tests;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;
