//! The engine: the IO shell around the [`Gateway`] on one thread. It receives knocks
//! from the capture threads, configs and revocations from the controller task, and the
//! answers to one-time-key claims from the claim task; hands each to the gateway with the
//! time; and carries out what the gateway asks ([`Action`]): firewall calls, durable
//! writes, claims, capture retuning, and telling each decision (a log line with target
//! `knockgate::event` and, with a controller, a report).

mod stores;
mod tell;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use knockgate_agent_core::config::{Config, Material};
use knockgate_agent_core::detect::sequence::DoorError;
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::gateway::{Action, Apply, Gateway, KnockMsg, Opening, Time};
pub use knockgate_agent_core::gateway::{ClaimJob, ClaimOutcome, Update};
use knockgate_agent_core::ruleset::Access;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use self::stores::Stores;
use crate::firewall::{Firewall, FirewallError};
use crate::metrics::{DecisionTrace, Gauges, Metrics};
use crate::otk_store::{BurnedKeys, OfflineClaims};
use crate::replay_store::ReplayStore;
use crate::report::{Reporter, unix_ms};

pub use self::stores::CONSUMED_FILE;

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    Knock(KnockMsg),
    /// Knocks and datagrams read together from one capture.
    Batch(Vec<KnockMsg>),
    /// The firewall matched kernel door `door` for `src` and opened its grants.
    KernelCompleted {
        door: String,
        src: std::net::IpAddr,
        at: Instant,
    },
    /// Enforce a new config (from the controller); whether it took goes to `done`.
    Apply {
        update: Box<Update>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
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
    /// Stop. The firewall state stays (see [`crate::firewall::Firewall::expires_grants`]).
    Shutdown,
}

/// How long kernel doors open after the firewall was last found whole (it is checked
/// every second): an agent that hangs or dies stops them within this.
const DOORS_ALIVE: Duration = Duration::from_secs(5);

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

/// The engine's line to the controller's `Claim` RPC.
pub struct ClaimLink {
    pub jobs: mpsc::Sender<ClaimJob>,
    /// A sync stream is up: without one the controller counts as out of reach at once.
    pub live: Arc<AtomicBool>,
    /// Offline claims waiting for delivery, and the delivery task's wake-up.
    pub offline: Arc<Mutex<OfflineClaims>>,
    pub offline_added: Arc<Notify>,
}

/// The gateway plus everything it acts through.
pub struct Engine {
    gateway: Gateway,
    firewall: Box<dyn Firewall>,
    stores: Stores,
    reporter: Option<Reporter>,
    tuning: Option<Arc<crate::capture::Tuning>>,
    claims: Option<ClaimLink>,
    clock: Box<dyn Clock>,
    metrics: Metrics,
    trace: DecisionTrace,
}

impl Engine {
    /// An engine for `config` over an installed firewall. `spa` carries the detector and
    /// its on-disk replay cache when any policy is opened by SPA (or may be, later).
    pub fn new(
        config: &Config,
        firewall: Box<dyn Firewall>,
        spa: Option<(SpaDetector, ReplayStore)>,
    ) -> Result<Self, DoorError> {
        // Refs are `<run>-<n>`: a fresh run id per start keeps them unique across restarts.
        let run_id = format!("{:08x}", rand::random::<u32>());
        let (detector, replay) = spa.unzip();
        let clock: Box<dyn Clock> = Box::new(SystemClock);
        let userspace;
        let config = if firewall.matches_sequences() {
            config
        } else {
            userspace = config.clone().userspace_sequences();
            &userspace
        };
        let gateway = Gateway::new(config, detector, &run_id, time(&*clock))?;
        Ok(Engine {
            gateway,
            firewall,
            stores: Stores::new(replay),
            reporter: None,
            tuning: None,
            claims: None,
            clock,
            metrics: Metrics::new(),
            trace: DecisionTrace::default(),
        })
    }

    /// The values its gauges read.
    pub fn gauges(&self) -> Arc<Gauges> {
        Arc::clone(&self.metrics.gauges)
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
    /// Judge `require_os` by `db` (see [`crate::fingerprint::load`]).
    pub fn with_p0f(mut self, db: Option<Arc<knockgate_agent_core::p0f::Database>>) -> Self {
        self.gateway.set_p0f(db);
        self
    }

    pub fn with_tuning(mut self, tuning: Arc<crate::capture::Tuning>) -> Self {
        self.gateway.enable_tuning();
        self.tuning = Some(tuning);
        self
    }

    /// Claim one-time keys through `link`, and remember burned keys in `burned`.
    pub fn with_claims(mut self, link: Option<ClaimLink>, burned: BurnedKeys) -> Self {
        self.gateway.restore_burned(burned.keys().clone());
        self.stores.burned = Some(burned);
        self.claims = link;
        self
    }

    /// Keep used sequences in `state_dir` (see [`CONSUMED_FILE`]) and restore the ones
    /// still within their acceptance window, so a restarted agent refuses them too.
    pub fn with_rotating_store(mut self, state_dir: &Path) -> std::io::Result<Self> {
        let now = self.now().unix_secs();
        let live = self.stores.open_consumed(state_dir, now)?;
        self.gateway.restore_consumed(&live);
        Ok(self)
    }

    /// Record every protected set installed in `state_dir`.
    pub fn with_protected_record(mut self, state_dir: std::path::PathBuf) -> Self {
        self.stores.state_dir = Some(state_dir);
        self
    }

    /// Keep `floor` protected too, until a config from the controller replaces it.
    pub fn with_protected_floor(mut self, floor: BTreeSet<Access>) -> Self {
        self.gateway.keep_floor(floor);
        self
    }

    /// Hold `material` (checked against the config enforced now).
    pub fn set_material(&mut self, material: Material) {
        let now = self.now();
        self.gateway.set_material(material, now);
        self.drain(now);
    }

    /// Install the static ruleset (protected ports, knock ports, grant sets) of the
    /// config, plus any protected floor.
    pub fn install(&mut self) -> Result<(), FirewallError> {
        let ruleset = self.gateway.ruleset();
        self.firewall.ensure_base(&ruleset)?;
        self.keep_doors_alive(&ruleset);
        self.gateway.installed(&ruleset);
        self.drain(self.now());
        Ok(())
    }

    /// Take over the grants the firewall already holds (left by an earlier run).
    pub fn adopt_existing(&mut self) -> Result<usize, FirewallError> {
        let held = self.firewall.list()?;
        let now = self.now();
        let n = self.gateway.handle_adopt(held, now);
        self.drain(now);
        Ok(n)
    }

    /// Run until told to stop or every sender is gone. Returns the firewall so the caller
    /// can stop it.
    pub fn run(mut self, rx: Receiver<Input>) -> Box<dyn Firewall> {
        loop {
            let now = self.now();
            self.trace.begin(None);
            self.gateway.handle_timeout(now);
            self.drain(now);
            self.trace.finish();
            let wait = self
                .gateway
                .poll_timeout()
                .saturating_duration_since(now.mono)
                .min(IDLE_TICK);
            match rx.recv_timeout(wait) {
                Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => self.handle_input(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let now = self.now();
        self.gateway
            .handle_stop(self.firewall.expires_grants(), now);
        self.drain(now);
        // No kernel door opens anything without an agent to hear of it.
        if let Err(e) = self.firewall.keep_doors_alive(Duration::ZERO) {
            warn!(error = %e, "cannot stop the kernel-matched sequences; they stop within 5 s");
        }
        self.firewall
    }

    /// Let the kernel doors open for [`DOORS_ALIVE`] more: done whenever the firewall is
    /// found or made whole.
    fn keep_doors_alive(&mut self, ruleset: &knockgate_agent_core::ruleset::Ruleset) {
        if ruleset.doors.is_empty() {
            return;
        }
        if let Err(e) = self.firewall.keep_doors_alive(DOORS_ALIVE) {
            warn!(error = %e, "cannot keep the kernel-matched sequences alive");
        }
    }

    /// One input, and everything it leads to.
    pub fn handle_input(&mut self, input: Input) {
        let now = self.now();
        self.trace.begin(match &input {
            Input::Knock(k) => Some(k.at),
            Input::Batch(b) => b.first().map(|k| k.at),
            Input::KernelCompleted { at, .. } => Some(*at),
            _ => None,
        });
        match input {
            Input::Knock(k) => self.gateway.handle_packet(&k, now),
            Input::Batch(knocks) => {
                for k in &knocks {
                    self.gateway.handle_packet(k, now);
                    self.drain(now);
                }
            }
            Input::KernelCompleted { door, src, at } => {
                self.gateway.handle_kernel_completed(&door, src, at, now);
            }
            Input::Apply { update, done } => {
                let result = self.apply(*update, now);
                let _ = done.send(result);
            }
            Input::Revoke { grant_refs, users } => {
                let closing = self.gateway.handle_revoke(&grant_refs, &users, now);
                info!(
                    grant_refs = grant_refs.len(),
                    users = users.len(),
                    closing,
                    "revocation from the controller"
                );
            }
            Input::Claimed { id, outcome } => self.gateway.handle_claimed(id, outcome, now),
            Input::FirewallChanged => self.gateway.handle_firewall_changed(now),
            Input::Shutdown => {}
        }
        self.drain(now);
        self.trace.finish();
    }

    /// Enforce `update`: the firewall's ruleset first (one atomic change), and only if
    /// that worked the decision state. On an error nothing has changed.
    fn apply(&mut self, update: Update, now: Time) -> Result<(), String> {
        let update = if self.firewall.matches_sequences() {
            update
        } else {
            update.userspace_sequences().map_err(|e| e.to_string())?
        };
        let ruleset = match self.gateway.handle_config(update, now)? {
            Apply::Done => return Ok(()),
            Apply::Install(ruleset) => ruleset,
        };
        let installed = self
            .firewall
            .ensure_base(&ruleset)
            .map_err(|e| e.to_string());
        if installed.is_ok() {
            self.keep_doors_alive(&ruleset);
        }
        self.gateway.handle_installed_config(installed, now)?;
        self.drain(now);
        let c = self.gateway.config();
        info!(
            policies = c.policies.len(),
            users = c.users.len(),
            protected = ruleset.protected.len(),
            knock_ports = ruleset.knock_ports.len(),
            "new config enforced"
        );
        Ok(())
    }

    /// Carry out every action the gateway asks for, feeding results back.
    fn drain(&mut self, now: Time) {
        while let Some(action) = self.gateway.poll_action() {
            self.execute(action, now);
        }
        let open = u64::try_from(self.gateway.grants().len()).unwrap_or(u64::MAX);
        self.metrics
            .gauges
            .grants_open
            .store(open, std::sync::atomic::Ordering::Relaxed);
    }

    fn execute(&mut self, action: Action, now: Time) {
        let gw = &mut self.gateway;
        match action {
            Action::Open(open) => {
                let Opening {
                    key,
                    timeout,
                    label,
                    restore,
                    knocked_at,
                } = &open;
                let started = Instant::now();
                let r = self
                    .firewall
                    .open(key, *timeout, label)
                    .map_err(|e| e.to_string());
                if !restore {
                    self.trace.firewall_write(started, r.is_ok());
                }
                if let (Ok(()), Some(at)) = (&r, knocked_at) {
                    self.metrics.opened(*at);
                }
                gw.handle_opened(open, r, now);
            }
            Action::Close(key) => {
                if let Err(e) = self.firewall.close(&key) {
                    gw.handle_close_failed(key, e.to_string(), now);
                }
            }
            Action::Persist(ticket, persist) => {
                let r = self
                    .stores
                    .persist(&persist, gw.replay_cache(), &self.claims);
                match ticket {
                    Some(t) => gw.handle_recorded(t, r, now),
                    None => {
                        if let Err(error) = r {
                            warn!(%error, "could not write agent state to state_dir");
                        }
                    }
                }
            }
            Action::Claim(job) => {
                let id = job.id;
                if let Err(why) = send_claim(self.claims.as_ref(), job) {
                    gw.handle_claimed(id, ClaimOutcome::Unreachable(why.into()), now);
                }
            }
            Action::Check(ruleset) => {
                let r = self.firewall.intact(&ruleset).map_err(|e| e.to_string());
                if r == Ok(true) {
                    self.keep_doors_alive(&ruleset);
                }
                self.gateway.handle_checked(r, now);
            }
            Action::Install(ruleset) => {
                let r = self
                    .firewall
                    .ensure_base(&ruleset)
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    self.keep_doors_alive(&ruleset);
                }
                self.gateway.handle_installed(r, now);
            }
            Action::List => {
                let r = self.firewall.list().map_err(|e| e.to_string());
                gw.handle_listed(r.map(|h| h.into_iter().map(|h| h.key).collect()), now);
            }
            Action::Retune {
                filter,
                spa_port,
                fingerprint,
            } => {
                if let Some(t) = &self.tuning {
                    t.set_fingerprint(fingerprint);
                    t.set(filter, spa_port);
                }
            }
            Action::Notice(n) => {
                tell::log(&n);
                self.metrics.event(&n);
                if n.report {
                    self.trace.decision(&n);
                }
                if let (true, Some(r)) = (n.report, &mut self.reporter) {
                    r.emit(n.event.to_record(n.at_ms));
                }
            }
        }
    }

    /// The time now, by the monotonic clock and the engine's wall clock.
    fn now(&self) -> Time {
        time(&*self.clock)
    }
}

fn time(clock: &dyn Clock) -> Time {
    Time {
        mono: Instant::now(),
        unix_ms: unix_ms(clock.wall()),
    }
}

/// Hand `job` to the claim task; why the controller is out of reach if it cannot be.
fn send_claim(link: Option<&ClaimLink>, job: ClaimJob) -> Result<(), &'static str> {
    let Some(link) = link else {
        return Err("no controller");
    };
    if !link.live.load(Ordering::Acquire) {
        return Err("no sync stream");
    }
    link.jobs.try_send(job).map_err(|_| "claim queue full")
}

/// Queue an offline claim for delivery (on disk first).
fn queue_offline(
    link: Option<&ClaimLink>,
    claim: &knockgate_agent_core::gateway::Claim,
) -> std::io::Result<()> {
    let Some(link) = link else {
        return Ok(());
    };
    link.offline
        .lock()
        .map_err(|_| std::io::Error::other("lock poisoned"))?
        .push(claim.clone())?;
    link.offline_added.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests;
