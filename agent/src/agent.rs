//! The agent, started with its IO: the config to enforce ([`Start`]), and the firewall,
//! the opened captures and the controller channel ([`Io`]). [`Agent::start`] installs the
//! firewall, takes over grants left by an earlier run, and starts the engine thread, the
//! capture threads, the firewall watcher and the controller tasks; [`Agent::shutdown`]
//! stops them and leaves the firewall protecting. `main` and the tests share it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::control::ControllerChannel;
use knockgate_agent_core::config::{Config, Material};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::ruleset::Access;
use knockgate_proto::api::AgentConfig;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::capture::{self, Counters, Tuning};
use crate::control::{self, cache, claim::ClaimParams, sync::SyncParams};
use crate::engine::{ClaimLink, Engine, Input};
use crate::firewall::{Firewall, FirewallError};
use crate::otk_store::{BurnedKeys, OfflineClaims};
use crate::replay_store::ReplayStore;
use crate::report::{self, Spooler, spool::Spool};
use crate::state;

/// Bounded queue between the capture threads (and the controller tasks) and the engine.
const QUEUE: usize = 8192;
/// One-time-key claims queued between the engine and the claim task; when full, the
/// controller counts as out of reach.
const CLAIM_QUEUE: usize = 256;

/// What to enforce at start, and where it came from.
#[derive(Debug, Clone)]
pub struct Start {
    pub config: Config,
    pub material: Material,
    /// The controller's config it is, if it is one.
    pub cached: Option<AgentConfig>,
    /// Why the cached controller config was not used.
    pub ignored: Option<String>,
    /// Protected ports kept from the last run because no controller config is usable.
    pub floor: BTreeSet<Access>,
}

/// Why the agent could not start. Nothing is left more open than before.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    /// The config cannot be enforced (a usage error).
    #[error("{0}")]
    Config(String),
    /// Starting could leave less protected than before.
    #[error("refusing to start: {0}")]
    Unsafe(String),
    #[error("failed to {what}: {source}")]
    State {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn state_error(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::State { what, source }
}

impl Start {
    /// The config to enforce at start for the config file `file`: the controller's last
    /// one (with its derived material) if it is cached and still valid against the file,
    /// else the file's own policies (with why the cache was not used). A managed agent
    /// without a usable cache also keeps the protected ports it installed last: losing
    /// the cache is no reason to protect less.
    pub fn from_file(file: &Config) -> Result<Start, StartError> {
        let own = |ignored| -> Result<Start, StartError> {
            let floor = match state::load_protected(&file.agent.state_dir) {
                Ok(recorded) if file.controller.is_some() => recorded.unwrap_or_default(),
                Ok(_) => BTreeSet::new(),
                Err(e) => {
                    return Err(StartError::Unsafe(format!(
                        "the record of the protected ports is unreadable, so what must stay \
                         protected is unknown ({e}); fix or remove it"
                    )));
                }
            };
            let (config, material) = (file.clone(), Material::default());
            Ok(Start {
                config,
                material,
                cached: None,
                ignored,
                floor,
            })
        };
        if file.controller.is_none() {
            return own(None);
        }
        let cached = match cache::load(&file.agent.state_dir) {
            Ok(Some(c)) => c,
            Ok(None) => return own(None),
            Err(e) => return own(Some(format!("ignoring it: {e}"))),
        };
        match control::prepare(file, &cached) {
            Ok(update) => Ok(Start {
                config: update.config().clone(),
                material: update.material().clone(),
                cached: Some(cached),
                ignored: None,
                floor: BTreeSet::new(),
            }),
            Err(e) => own(Some(format!(
                "the cached controller config (version {}) does not fit this config file: {e}",
                cached.version
            ))),
        }
    }

    /// The base ruleset it installs: the config's, plus the floor.
    pub fn ruleset(&self) -> knockgate_agent_core::ruleset::Ruleset {
        let mut rs = self.config.ruleset();
        rs.keep_protected(&self.floor);
        rs
    }
}

/// What the agent acts through.
pub struct Io {
    pub firewall: Box<dyn Firewall>,
    /// Captures opened on the config's interfaces (none in tests that feed knocks).
    pub captures: Vec<capture::Opened>,
    /// What the captures listen for; the engine retunes it.
    pub tuning: Arc<Tuning>,
    /// The controller, for a managed agent.
    pub controller: Option<ControllerChannel>,
    /// The firewall socket's netlink port, to watch the table for changes by others
    /// (nftables).
    pub watch: Option<u32>,
}

/// A running agent.
pub struct Agent {
    tx: SyncSender<Input>,
    stop: Arc<AtomicBool>,
    engine: JoinHandle<Box<dyn Firewall>>,
    captures: Vec<capture::Running>,
    spooler: Option<Spooler>,
    counters: Arc<Counters>,
    restart: Arc<Notify>,
    live: Arc<AtomicBool>,
    offline: Option<Arc<Mutex<OfflineClaims>>>,
}

impl Agent {
    /// Start enforcing `start` (for the config file `file`) through `io`; controller tasks
    /// run on `rt`.
    pub fn start(file: &Config, start: Start, io: Io, rt: &Handle) -> Result<Agent, StartError> {
        let Io {
            firewall,
            captures,
            tuning,
            controller,
            watch,
        } = io;
        let state_dir = file.agent.state_dir.clone();
        let mut engine =
            engine(file, &start, firewall, controller.is_some())?.with_tuning(tuning.clone());
        let spooler = match &controller {
            Some(_) => {
                let (reporter, spooler) = report::start(&state_dir)
                    .map_err(state_error("open the report spool in state_dir"))?;
                engine = engine.with_reporter(reporter);
                Some(spooler)
            }
            None => None,
        };
        let (tx, rx) = sync_channel(QUEUE);
        let live = Arc::new(AtomicBool::new(false));
        let claims = match &controller {
            Some(_) => {
                let (link, params, jobs) = claim_link(&state_dir, tx.clone(), live.clone(), file)?;
                let burned = BurnedKeys::open(&state_dir)
                    .map_err(state_error("load the burned one-time keys from state_dir"))?;
                engine = engine.with_claims(Some(link), burned);
                Some((jobs, params))
            }
            None => None,
        };
        engine.set_material(start.material.clone());
        engine.install()?;
        adopt(&mut engine);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        crate::metrics::observe(&engine.gauges(), &counters);
        let running = spawn_captures(captures, &tx, &stop, &counters, &tuning)?;
        if let Some(port) = watch {
            watch_firewall(port, tx.clone())?;
        }
        let engine = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine.run(rx))
            .map_err(state_error("start the engine thread"))?;
        let restart = Arc::new(Notify::new());
        let offline = claims.as_ref().map(|(_, p)| p.offline.clone());
        if let (Some(channel), Some(spooler)) = (&controller, &spooler) {
            let tasks = Tasks {
                channel,
                spooler,
                claims,
                tx: &tx,
                live: &live,
                restart: &restart,
            };
            tasks.spawn(file, &start, rt);
        }
        Ok(Agent {
            tx,
            stop,
            engine,
            captures: running,
            spooler,
            counters,
            restart,
            live,
            offline,
        })
    }

    /// The engine's input queue (knocks, configs, revocations).
    pub fn sender(&self) -> SyncSender<Input> {
        self.tx.clone()
    }

    /// Notified when the agent must restart itself (its certificate was renewed).
    pub fn restart_wanted(&self) -> Arc<Notify> {
        self.restart.clone()
    }

    /// Whether a sync stream with the controller is up.
    pub fn connected(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The report spool (events not yet stored by the controller), if managed.
    pub fn spool(&self) -> Option<Arc<Mutex<Spool>>> {
        self.spooler.as_ref().map(|s| s.spool.clone())
    }

    /// One-time keys granted offline and not yet reported, if managed.
    pub fn offline_claims(&self) -> Option<Arc<Mutex<OfflineClaims>>> {
        self.offline.clone()
    }

    /// Stop the engine, the spool writer and the captures; the firewall stays as the
    /// engine left it (protecting; grants expire on their own). Returns the firewall and
    /// the capture totals (knocks, dropped).
    pub fn shutdown(self) -> (Option<Box<dyn Firewall>>, (u64, u64)) {
        let _ = self.tx.send(Input::Shutdown);
        self.stop.store(true, Ordering::Relaxed);
        let firewall = self.engine.join().ok();
        if let Some(s) = self.spooler {
            s.join();
        }
        for t in self.captures {
            t.stop();
        }
        let c = &self.counters;
        (
            firewall,
            (
                c.knocks.load(Ordering::Relaxed),
                c.dropped.load(Ordering::Relaxed),
            ),
        )
    }
}

/// The controller tasks of a managed agent: sync, claims, report delivery, renewal.
struct Tasks<'a> {
    channel: &'a ControllerChannel,
    spooler: &'a Spooler,
    claims: Option<(
        tokio::sync::mpsc::Receiver<crate::engine::ClaimJob>,
        ClaimParams,
    )>,
    tx: &'a SyncSender<Input>,
    live: &'a Arc<AtomicBool>,
    restart: &'a Arc<Notify>,
}

impl Tasks<'_> {
    fn spawn(self, file: &Config, start: &Start, rt: &Handle) {
        let Some(ctl) = &file.controller else { return };
        let state_dir = file.agent.state_dir.clone();
        let sync = SyncParams {
            engine: self.tx.clone(),
            base: file.clone(),
            state_dir: state_dir.clone(),
            interface: start.config.agent.interfaces.first().cloned(),
            reconnect_max: ctl.reconnect_max,
            current: start.cached.clone(),
            live: self.live.clone(),
        };
        let channel = self.channel;
        rt.spawn(control::sync::run(channel.clone(), sync));
        if let Some((jobs, params)) = self.claims {
            rt.spawn(control::claim::run(channel.clone(), jobs, params));
        }
        let (spool, appended) = (self.spooler.spool.clone(), self.spooler.appended.clone());
        rt.spawn(report::sender::run(
            channel.clone(),
            spool,
            appended,
            ctl.reconnect_max,
        ));
        let name = start.config.agent.name.clone();
        rt.spawn(control::renew::run(
            channel.clone(),
            state_dir,
            name,
            self.restart.clone(),
        ));
    }
}

/// The engine over `firewall` for `start`, with its stores in `state_dir`. A managed
/// agent keeps the SPA replay cache ready: any later config may switch SPA on.
fn engine(
    file: &Config,
    start: &Start,
    firewall: Box<dyn Firewall>,
    managed: bool,
) -> Result<Engine, StartError> {
    let state_dir = &file.agent.state_dir;
    let spa = if start.config.uses_spa_detector() || managed {
        let mut detector = SpaDetector::new(&start.config);
        let now = knockgate_proto::unix_secs(SystemTime::now());
        let store = ReplayStore::open(state_dir, detector.replay_cache(), now)
            .map_err(state_error("load the SPA replay cache from state_dir"))?;
        Some((detector, store))
    } else {
        None
    };
    let p0f = crate::fingerprint::load(&start.config).map_err(StartError::Config)?;
    let engine = Engine::new(&start.config, firewall, spa)
        .map_err(|e| StartError::Config(e.to_string()))?
        .with_p0f(p0f)
        .with_rotating_store(state_dir)
        .map_err(state_error(
            "load the used rotating sequences from state_dir",
        ))?
        .with_protected_record(state_dir.clone())
        .with_protected_floor(start.floor.clone());
    Ok(engine)
}

type ClaimParts = (
    ClaimLink,
    ClaimParams,
    tokio::sync::mpsc::Receiver<crate::engine::ClaimJob>,
);

/// The line between the engine and the claim task, with offline claims from `state_dir`.
fn claim_link(
    state_dir: &Path,
    engine: SyncSender<Input>,
    live: Arc<AtomicBool>,
    file: &Config,
) -> Result<ClaimParts, StartError> {
    let offline = OfflineClaims::open(state_dir).map_err(state_error(
        "load the offline one-time key claims from state_dir",
    ))?;
    let (jobs, jobs_rx) = tokio::sync::mpsc::channel(CLAIM_QUEUE);
    let params = ClaimParams {
        engine,
        live: live.clone(),
        offline: Arc::new(Mutex::new(offline)),
        offline_added: Arc::new(Notify::new()),
        reconnect_max: file
            .controller
            .as_ref()
            .map_or(Duration::from_secs(30), |c| c.reconnect_max),
    };
    let link = ClaimLink {
        jobs,
        live,
        offline: params.offline.clone(),
        offline_added: params.offline_added.clone(),
    };
    Ok((link, params, jobs_rx))
}

/// Take over the grants an earlier run left in the firewall.
fn adopt(engine: &mut Engine) {
    match engine.adopt_existing() {
        Ok(n) if n > 0 => info!(adopted = n, "adopted grants left by an earlier run"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not list existing grants"),
    }
}

/// One thread per opened capture, feeding `tx`.
fn spawn_captures(
    captures: Vec<capture::Opened>,
    tx: &SyncSender<Input>,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
    tuning: &Arc<Tuning>,
) -> Result<Vec<capture::Running>, StartError> {
    captures
        .into_iter()
        .map(|cap| {
            capture::spawn(
                cap,
                tx.clone(),
                stop.clone(),
                counters.clone(),
                tuning.clone(),
            )
            .map_err(state_error("start a capture thread"))
        })
        .collect()
}

/// Tell the engine whenever someone else changes the nftables table.
fn watch_firewall(port: u32, tx: SyncSender<Input>) -> Result<(), StartError> {
    crate::firewall::nft::watch(port, move || match tx.try_send(Input::FirewallChanged) {
        // Busy: the engine checks every second anyway.
        Ok(()) | Err(TrySendError::Full(_)) => true,
        Err(TrySendError::Disconnected(_)) => false,
    })
    .map(|_| ())
    .map_err(state_error("watch the nftables table"))
}
