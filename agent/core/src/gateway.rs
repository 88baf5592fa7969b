//! The gateway: every decision the agent makes, as a sans-IO state machine.
//!
//! Inputs are handed in with the time they happen ([`Time`]): a captured packet
//! ([`Gateway::handle_packet`]), a new config ([`Gateway::handle_config`]), a revocation, a
//! claim answer, a tick ([`Gateway::handle_timeout`]). What the IO shell must do comes out
//! of [`Gateway::poll_action`] as [`Action`]s: open or close a grant, make something durable,
//! claim a one-time key, check or repair the firewall, retune the capture, tell an
//! [`Event`]. Where the gateway must know how an action went before it goes on (a grant
//! opens only after its replay entry is on disk), the shell answers with a `handle_*` call
//! right after carrying the action out.
//!
//! The paths live in the submodules: `update` (configs and revocations), `spa`, `otk`,
//! `rotating` and `guard` (keeping the firewall whole).

mod guard;
mod os;
mod otk;
mod rotating;
mod spa;
mod update;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knockgate_proto::event::{self, Event, Granted, Reason, Subject};

use crate::config::{Config, Policy};
use crate::detect::sealed::{Assembler, Step};
use crate::detect::sequence::{Decision, DoorError, Outcome, SequenceMatcher};
use crate::detect::spa::SpaDetector;
use crate::grants::{Grant, GrantLabel, Grants, Held, Opened};
use crate::p0f::{Database, Syn};
use crate::packet::KnockStep;
use crate::replay::{ReplayCache, ReplayKey};
use crate::ruleset::{Access, GrantKey, Ruleset};

pub use self::otk::{CLAIM_WAIT, Claim, ClaimJob, ClaimOutcome};
pub use self::rotating::Consumed;
pub use self::update::{Apply, Update};

/// The time of an input: monotonic for ordering and timeouts, wall clock (unix ms) for
/// what packets and windows are judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub mono: Instant,
    pub unix_ms: i64,
}

impl Time {
    /// The wall clock in whole unix seconds (0 before 1970).
    pub fn unix_secs(self) -> u64 {
        u64::try_from(self.unix_ms / 1000).unwrap_or(0)
    }

    /// The wall-clock time (unix ms) of the monotonic instant `at`.
    pub fn wall_ms(self, at: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if at >= self.mono {
            self.unix_ms.saturating_add(ms(at - self.mono))
        } else {
            self.unix_ms.saturating_sub(ms(self.mono - at))
        }
    }
}

/// One captured packet: a knock, or a datagram for the SPA port (with its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnockMsg {
    pub at: Instant,
    pub src: IpAddr,
    pub kind: KnockStep,
    pub tcp_flags: u8,
    /// The datagram body, kept only for the SPA port.
    pub payload: Option<Box<[u8]>>,
    /// The fields p0f reads from a TCP SYN, only while a policy requires an OS.
    pub syn: Option<Box<Syn>>,
}

/// An event to tell: always logged, at `level`; also reported when `report` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: Event,
    pub level: Level,
    pub report: bool,
    /// When it happened, unix ms.
    pub at_ms: i64,
}

/// How loudly a notice is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
}

/// A grant to open (or extend), handed back with how it went
/// ([`Gateway::handle_opened`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    pub key: GrantKey,
    pub timeout: Duration,
    pub label: GrantLabel,
    /// A grant the firewall lost, put back (no new grant, no event of its own).
    pub restore: bool,
    /// When the knock or packet that asked for it was captured (`None` for a restore):
    /// what knock-to-open latency is measured from.
    pub knocked_at: Option<Instant>,
}

/// Something to make durable before what depends on it happens. `Ticket`ed ones are
/// answered with [`Gateway::handle_recorded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// An accepted SPA packet, in the replay file.
    Replay { key: ReplayKey, expires: u64 },
    /// A one-time key used up here.
    Burn { user: String, counter: u64 },
    /// Only these burned keys are still stocked: forget the rest (not ticketed).
    KeepBurned(BTreeSet<(String, u64)>),
    /// A used rotating sequence.
    Consumed(Consumed),
    /// A one-time key granted without the controller, to report to it later.
    OfflineClaim(Claim),
    /// The protected set installed now (not ticketed).
    Protected(BTreeSet<Access>),
}

/// What the IO shell must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a grant; answer with [`Gateway::handle_opened`].
    Open(Opening),
    /// Withdraw a grant (already forgotten here); a failure is only told.
    Close(GrantKey),
    /// Make this durable; answer ticketed ones with [`Gateway::handle_recorded`].
    Persist(Option<u64>, Persist),
    /// Send this claim to the controller; answer (now or later) with
    /// [`Gateway::handle_claimed`].
    Claim(ClaimJob),
    /// Check that the firewall still holds this base; answer with
    /// [`Gateway::handle_checked`].
    Check(Ruleset),
    /// Install this base again; answer with [`Gateway::handle_installed`].
    Install(Ruleset),
    /// List the grants the firewall holds; answer with [`Gateway::handle_listed`].
    List,
    /// Point the capture at these knocks and this SPA port; with `fingerprint`, TCP
    /// SYNs come with their p0f fields.
    Retune {
        filter: String,
        spa_port: Option<u16>,
        fingerprint: bool,
    },
    /// Tell this.
    Notice(Notice),
}

/// The agent's decision state.
pub struct Gateway {
    /// The config enforced now (to tell a config change from a material push).
    config: Config,
    /// Policy index of each sequence door.
    door_policy: Vec<usize>,
    matcher: SequenceMatcher,
    spa: Option<spa::SpaState>,
    /// Knocks on the sealed range, per source, while any policy takes sealed sequences.
    sealed: Option<Assembler>,
    /// SYN fingerprints, per source, while any policy requires an OS.
    os: Option<os::OsState>,
    grants: Grants,
    decisions: Vec<Decision>,
    rotating: rotating::RotatingState,
    otk: otk::OtkState,
    guard: guard::Guard,
    /// Whether capture is retuned (an agent without capture control has none).
    tuning: bool,
    actions: VecDeque<Action>,
    /// A config whose base the shell is installing.
    staged: Option<Box<Update>>,
    /// What waits for a ticketed [`Persist`].
    awaiting: BTreeMap<u64, Then>,
    next_ticket: u64,
}

/// What to do once a ticketed [`Persist`] is durable.
enum Then {
    Spa(spa::Accepted),
    Otk(otk::Pending, otk::Step),
    Rotating(rotating::Completed),
}

impl Gateway {
    /// A gateway for `config`; grant refs start with `run_id` (a fresh one per start keeps
    /// them unique across restarts). `spa` is the detector, with its replay cache loaded,
    /// when any policy is opened by SPA or may be later.
    pub fn new(
        config: &Config,
        spa: Option<SpaDetector>,
        run_id: &str,
        now: Time,
    ) -> Result<Self, DoorError> {
        let (door_policy, doors): (Vec<usize>, Vec<_>) = config.doors().into_iter().unzip();
        let matcher = SequenceMatcher::new(doors, config.agent.max_sources)?;
        Ok(Gateway {
            config: config.clone(),
            door_policy,
            matcher,
            spa: spa.map(|d| spa::SpaState::new(d, config.spa.port, config.uses_spa(), now)),
            sealed: config
                .sealed_ports()
                .map(|r| Assembler::new(*r.start(), config.agent.max_sources)),
            os: None,
            grants: Grants::with_ref_prefix(run_id),
            decisions: Vec::new(),
            rotating: rotating::RotatingState::new(config.agent.max_sources),
            otk: otk::OtkState::default(),
            guard: guard::Guard::new(now.mono),
            tuning: false,
            actions: VecDeque::new(),
            staged: None,
            awaiting: BTreeMap::new(),
            next_ticket: 0,
        })
    }

    /// Judge `require_os` by `db` (the p0f database the config's `agent.p0f_db` names,
    /// loaded by the shell), or by nothing: then a policy that requires an OS opens
    /// nothing (fail closed).
    pub fn set_p0f(&mut self, db: Option<Arc<Database>>) {
        self.os = match (db, self.os.take()) {
            (Some(db), Some(held)) if held.uses(&db) => Some(held),
            (Some(db), _) => Some(os::OsState::new(db, self.config.agent.max_sources)),
            (None, _) => None,
        };
    }

    /// Emit [`Action::Retune`] whenever what capture must see changes.
    pub fn enable_tuning(&mut self) {
        self.tuning = true;
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The config enforced now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The open grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The SPA replay cache (the replay file is compacted from it).
    pub fn replay_cache(&self) -> Option<&ReplayCache> {
        self.spa.as_ref().map(|s| s.detector.replay_cache_ref())
    }

    /// When [`Gateway::handle_timeout`] has something to do at the latest.
    pub fn poll_timeout(&self) -> Instant {
        [self.grants.next_expiry(), self.otk.next_deadline()]
            .into_iter()
            .flatten()
            .fold(self.guard.next_check(), Instant::min)
    }

    /// Time passed: expire grants, give up on late claims, follow the rotating windows,
    /// check the firewall, summarize SPA refusals, whatever is due.
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire(now);
        self.poll_claims(now);
        self.tick_rotating(now);
        self.poll_guard(now);
        self.summarize_spa(now);
    }

    /// Take over the grants the firewall holds at start (left by an earlier run).
    /// Returns how many were taken.
    pub fn handle_adopt(&mut self, held: Vec<Held>, now: Time) -> usize {
        let mut adopted = 0;
        for h in held {
            let Some(expires) = now.mono.checked_add(h.remaining) else {
                // No timeout (added by hand, not by knockgate): nothing would ever close
                // it, so it is not taken over; the operator who added it removes it.
                self.tell(
                    Level::Warn,
                    false,
                    now,
                    Event::GrantCloseFailed {
                        grant: granted("", &h.key, i64::MAX),
                        error: "a grant without a timeout is in the grant set; left alone".into(),
                    },
                );
                continue;
            };
            adopted += 1;
            self.grants
                .adopt(h.key, h.remaining, h.label.as_ref(), now.mono);
            let label = self.grants.label(&h.key);
            let event = Event::GrantAdopted {
                subject: subject(h.key.addr, label.user.as_deref(), &label.policy),
                grant: granted(&label.grant_ref, &h.key, now.wall_ms(expires)),
                remaining_ms: u64::try_from(h.remaining.as_millis()).unwrap_or(u64::MAX),
            };
            self.tell(Level::Info, true, now, event);
        }
        adopted
    }

    /// One captured packet: a datagram for the SPA port, or a knock. Every one is also a
    /// candidate rotating knock (a rotating port may even be the SPA port: the controller
    /// does not know it).
    pub fn handle_packet(&mut self, k: &KnockMsg, now: Time) {
        self.handle_rotating(k, now);
        match &k.payload {
            Some(payload) => self.handle_spa(k.src, payload, k.at, now),
            None => self.handle_knock(k, now),
        }
    }

    /// A clean stop: grants stay open and protection stays in place where the firewall
    /// expires grants by itself (`expires_grants`); where it cannot, the grants close
    /// now. Either way the controller hears of it, so its grant table stays true.
    pub fn handle_stop(&mut self, expires_grants: bool, now: Time) {
        let kept = if expires_grants {
            self.grants.len()
        } else {
            let all = self.grants.select(|_| true);
            self.close_now(all, Reason::AgentStopped, now);
            0
        };
        let event = Event::AgentStopped {
            grants_kept: kept as u64,
        };
        self.tell(Level::Info, true, now, event);
    }

    /// One knock: on the sealed range it is collected (and a whole sequence judged);
    /// anything else goes through the fixed-sequence matcher, and whatever it completes
    /// opens.
    fn handle_knock(&mut self, k: &KnockMsg, now: Time) {
        if let Some(asm) = &mut self.sealed {
            match asm.handle_knock(k.src, k.kind, k.tcp_flags, k.at) {
                Step::Outside => {}
                Step::Collecting => return,
                Step::Complete { len, bytes } => {
                    self.handle_sealed(k.src, &bytes[..len], k.at, now);
                    return;
                }
            }
        }
        if let (Some(os), Some(syn)) = (&mut self.os, &k.syn) {
            os.observe(k.src, syn, k.at);
        }
        let mut decisions = std::mem::take(&mut self.decisions);
        decisions.clear();
        self.matcher
            .handle_knock(k.src, k.kind, k.tcp_flags, k.at, &mut decisions);
        for d in &decisions {
            let policy_idx = self.door_policy[d.door as usize];
            let subject = subject(k.src, None, &self.config.policies[policy_idx].name);
            let method = event::Method::Sequence;
            if d.outcome == Outcome::Completed {
                let os = match self.os_verdict(k.src, policy_idx, k.at) {
                    Ok(os) => os,
                    Err(error) => {
                        let reason = Reason::OsMismatch;
                        let event = Event::KnockRejected {
                            subject,
                            reason,
                            error,
                        };
                        self.tell(Level::Info, true, now, event);
                        continue;
                    }
                };
                let event = Event::KnockCompleted {
                    subject,
                    method,
                    window: None,
                    os,
                };
                self.tell(Level::Info, true, now, event);
                let policy = &self.config.policies[policy_idx];
                let (name, open, timeout) =
                    (policy.name.clone(), policy.open.clone(), policy.timeout);
                self.open_grants(&name, None, k.src, &open, timeout, k.at);
            } else if let Some((level, event)) = progress_event(d.outcome, subject, method) {
                self.tell(level, false, now, event);
            }
        }
        self.decisions = decisions;
    }

    /// The firewall matched kernel door `door` for `src` at `at` and opened its grants
    /// itself: tell the completion and take the grants over (the open gives them their
    /// label and a timeout counted from now). A door the config no longer has opened
    /// under the config before: its grants expire in the kernel on their own time.
    pub fn handle_kernel_completed(&mut self, door: &str, src: IpAddr, at: Instant, now: Time) {
        let found = self
            .config
            .kernel_doors()
            .into_iter()
            .find(|d| d.id() == door);
        let Some(d) = found else {
            let event = Event::KnockRejected {
                subject: subject(src, None, door),
                reason: Reason::PolicyRemoved,
                error: format!(
                    "the kernel reported a sequence of door {door}, which the config no \
                     longer has; its grants expire on their own"
                ),
            };
            self.tell(Level::Warn, true, now, event);
            return;
        };
        let event = Event::KnockCompleted {
            subject: subject(src, None, &d.policy),
            method: event::Method::Sequence,
            window: None,
            os: None,
        };
        self.tell(Level::Info, true, now, event);
        self.open_grants(&d.policy, None, src, &d.open, d.timeout, at);
    }

    /// Whether the sequence of policy `policy_idx` that `src` completed at `at` came from
    /// a required OS: `Ok(None)` when the policy requires none, `Ok(Some(label))` when it
    /// does and every SYN matched, else what was seen.
    fn os_verdict(
        &mut self,
        src: IpAddr,
        policy_idx: usize,
        at: Instant,
    ) -> Result<Option<String>, String> {
        let Some(policy) = self.config.policies.get(policy_idx) else {
            return Ok(None);
        };
        if policy.require_os.is_empty() {
            return Ok(None);
        }
        let Some(os) = &mut self.os else {
            return Err("no p0f database is loaded to fingerprint the knocks".into());
        };
        let window = policy
            .door
            .as_ref()
            .map_or(Duration::ZERO, |d| d.sequence_timeout);
        let since = at.checked_sub(window).unwrap_or(at);
        let verdict = os.verdict(src, &policy.require_os, since);
        os.forget(&src);
        match verdict {
            Ok(label) => Ok(Some(label)),
            Err(seen) => Err(format!(
                "its SYNs look like {seen}; the policy requires {}",
                policy.require_os.join(" or ")
            )),
        }
    }

    /// Ask the shell to open `access` for `src` for `timeout` on behalf of `user` (None
    /// for sequence knocks). Each grant is recorded only once the firewall took it.
    fn open_grants(
        &mut self,
        policy: &str,
        user: Option<&str>,
        src: IpAddr,
        access: &[Access],
        timeout: Duration,
        knocked_at: Instant,
    ) {
        for a in access {
            let key = GrantKey {
                addr: src,
                proto: a.proto,
                port: a.port,
            };
            let label = self.grants.label_for_open(&key, policy, user);
            self.actions.push_back(Action::Open(Opening {
                key,
                timeout,
                label,
                restore: false,
                knocked_at: Some(knocked_at),
            }));
        }
    }

    /// How an [`Action::Open`] went.
    pub fn handle_opened(&mut self, open: Opening, result: Result<(), String>, now: Time) {
        if open.restore {
            self.handle_restored(result, now);
            return;
        }
        let Opening {
            key,
            timeout,
            label,
            ..
        } = open;
        let user = label.user.as_deref();
        let subject = subject(key.addr, user, &label.policy);
        let expires_ms = now.wall_ms(now.mono.checked_add(timeout).unwrap_or(now.mono));
        match result {
            Ok(()) => {
                let kind = self
                    .grants
                    .handle_open(key, &label.policy, user, timeout, now.mono);
                let grant_ref = self
                    .grants
                    .get(&key)
                    .map(|g| g.grant_ref.as_str())
                    .unwrap_or("");
                let event = Event::GrantOpened {
                    subject,
                    grant: granted(grant_ref, &key, expires_ms),
                    timeout_s: timeout.as_secs(),
                    extended: kind == Opened::Extended,
                };
                self.tell(Level::Info, true, now, event);
            }
            Err(error) => {
                let grant = granted("", &key, expires_ms);
                self.tell(
                    Level::Warn,
                    true,
                    now,
                    Event::GrantFailed {
                        subject,
                        grant,
                        error,
                    },
                );
            }
        }
    }

    /// Closing `key` failed in the firewall.
    pub fn handle_close_failed(&mut self, key: GrantKey, error: String, now: Time) {
        let grant = granted("", &key, now.unix_ms);
        self.tell(
            Level::Warn,
            false,
            now,
            Event::GrantCloseFailed { grant, error },
        );
    }

    fn expire(&mut self, now: Time) {
        for (key, grant) in self.grants.poll_expired(now.mono) {
            // The kernel has expired nftables grants already; closing again is harmless and
            // is what makes the command backend close at all.
            self.actions.push_back(Action::Close(key));
            self.closed(&key, &grant, Reason::Expired, now);
        }
    }

    /// Close the grants at `keys` now, for `reason`.
    fn close_now(&mut self, keys: Vec<GrantKey>, reason: Reason, now: Time) {
        for key in keys {
            self.actions.push_back(Action::Close(key));
            if let Some(grant) = self.grants.handle_close(&key) {
                self.closed(&key, &grant, reason, now);
            }
        }
    }

    /// Say that a grant closed.
    fn closed(&mut self, key: &GrantKey, g: &Grant, reason: Reason, now: Time) {
        let event = Event::GrantClosed {
            subject: subject(key.addr, g.user.as_deref(), &g.policy),
            grant: granted(&g.grant_ref, key, now.wall_ms(g.expires_at)),
            reason,
        };
        self.tell(Level::Info, true, now, event);
    }

    /// Queue `event` to be told.
    fn tell(&mut self, level: Level, report: bool, now: Time, event: Event) {
        let at_ms = now.unix_ms;
        self.actions.push_back(Action::Notice(Notice {
            event,
            level,
            report,
            at_ms,
        }));
    }

    /// Queue `persist`, to be answered with `then` once durable.
    fn persist_then(&mut self, persist: Persist, then: Then) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.awaiting.insert(ticket, then);
        self.actions
            .push_back(Action::Persist(Some(ticket), persist));
    }

    /// How a ticketed [`Action::Persist`] went: on success what waited on it goes on; on
    /// an error it is refused (fail closed).
    pub fn handle_recorded(&mut self, ticket: u64, result: Result<(), String>, now: Time) {
        match self.awaiting.remove(&ticket) {
            Some(Then::Spa(a)) => self.spa_recorded(a, result, now),
            Some(Then::Otk(p, step)) => self.otk_recorded(p, step, result, now),
            Some(Then::Rotating(c)) => self.rotating_recorded(c, result, now),
            None => {}
        }
    }

    fn policy(&self, name: &str) -> Option<&Policy> {
        self.config.policies.iter().find(|p| p.name == name)
    }

    fn user_name(&self, index: usize) -> Option<&str> {
        self.config.users.get(index).map(|u| u.name.as_str())
    }
}

/// The notice of a knock that did not complete its sequence (`None` for one that did).
fn progress_event(
    outcome: Outcome,
    subject: Subject,
    method: event::Method,
) -> Option<(Level, Event)> {
    Some(match outcome {
        Outcome::Progressed { stage, of } => (
            Level::Debug,
            Event::KnockProgressed {
                subject,
                method,
                stage,
                of,
            },
        ),
        Outcome::Retransmit { stage } => (Level::Debug, Event::KnockRetransmit { subject, stage }),
        Outcome::Reset(r) => (
            Level::Debug,
            Event::KnockReset {
                subject,
                method,
                reason: Some(r.reason()),
            },
        ),
        Outcome::FlagsIgnored => (
            Level::Trace,
            Event::KnockIgnored {
                subject,
                reason: Reason::TcpFlags,
            },
        ),
        Outcome::Completed => return None,
    })
}

/// The subject of an event about `src`.
fn subject(src: IpAddr, user: Option<&str>, policy: &str) -> Subject {
    Subject {
        src: Some(src),
        user: user.map(str::to_string),
        policy: (!policy.is_empty()).then(|| policy.to_string()),
    }
}

/// The grant at `key`, as events name it.
fn granted(grant_ref: &str, key: &GrantKey, expires_at_ms: i64) -> Granted {
    Granted {
        grant_ref: grant_ref.to_string(),
        addr: key.addr,
        access: Access {
            proto: key.proto,
            port: key.port,
        },
        expires_at_ms,
    }
}

#[cfg(test)]
mod tests;
