//! `run` and `check`: load the config (and, with a controller, the last config it sent),
//! check the host, install the firewall, start the capture threads and the engine (and
//! the controller tasks), and tear down on a signal.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use knockgate_agent::capture::{self, Counters, Tuning};
use knockgate_agent::control::{self, cache, claim::ClaimParams, sync::SyncParams};
use knockgate_agent::engine::{ClaimLink, Engine, Input};
use knockgate_agent::firewall::command::CommandFirewall;
use knockgate_agent::firewall::nft::{self, NftFirewall};
use knockgate_agent::firewall::{Firewall, FirewallError};
use knockgate_agent::logging::{self, LogFormat};
use knockgate_agent::otk_store::{BurnedKeys, OfflineClaims};
use knockgate_agent::privilege;
use knockgate_agent::replay_store::ReplayStore;
use knockgate_agent::report;
use knockgate_agent::state;
use knockgate_agent_core::config::{Backend, Config, Material};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::filter::capture_filter;
use knockgate_agent_core::ruleset::Access;
use knockgate_proto::api::AgentConfig;
use tracing::{info, warn};

use crate::Failure;

/// Bounded queue between the capture threads (and the controller task) and the engine.
const QUEUE: usize = 8192;
/// One-time-key claims queued between the engine and the claim task; when full, the
/// controller counts as out of reach.
const CLAIM_QUEUE: usize = 256;

/// Read, parse and validate the config, including that its interfaces exist and, for an
/// enrolled agent, that its name is the one the controller enrolled (SPA packets are
/// sealed for that name).
pub fn load(path: &Path) -> Result<Config, Failure> {
    let config = parse(path)?;
    if config.controller.is_some() {
        let enrolled = control::enrolled_name(&config.agent.state_dir).map_err(|e| {
            Failure::runtime(anyhow::Error::new(e).context("failed to read the enrolled name"))
        })?;
        if let Some(name) = enrolled.filter(|n| *n != config.agent.name) {
            return Err(Failure::usage(format!(
                "{}: agent.name: {:?} is not the name this agent is enrolled as ({name:?}); \
                 set agent.name = {name:?}",
                path.display(),
                config.agent.name
            )));
        }
    }
    for (i, iface) in config.agent.interfaces.iter().enumerate() {
        if !Path::new("/sys/class/net").join(iface).exists() {
            return Err(Failure::usage(format!(
                "{}: agent.interfaces[{i}]: no network interface named {iface:?}",
                path.display()
            )));
        }
    }
    Ok(config)
}

/// Read and parse the config, without looking at the host.
fn parse(path: &Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read config {}: {e}", path.display())))?;
    Config::parse(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// What to enforce at start, and where it came from.
struct Effective {
    config: Config,
    material: Material,
    /// The controller's config it is, if it is one.
    cached: Option<AgentConfig>,
    /// Why the cached controller config was not used.
    ignored: Option<String>,
    /// Protected ports kept from the last run because no controller config is usable.
    floor: BTreeSet<Access>,
}

/// The config to enforce at start: the controller's last one (with its derived material)
/// if it is cached and still valid against this file, else the file's own policies (with
/// why the cache was not used). A managed agent without a usable cache also keeps the
/// protected ports it installed last: losing the cache is no reason to protect less.
fn effective(file: &Config) -> Result<Effective, Failure> {
    let own = |ignored| -> Result<Effective, Failure> {
        let floor = match state::load_protected(&file.agent.state_dir) {
            Ok(recorded) if file.controller.is_some() => recorded.unwrap_or_default(),
            Ok(_) => BTreeSet::new(),
            Err(e) => {
                return Err(Failure::runtime(anyhow::anyhow!(
                    "refusing to start: the record of the protected ports is unreadable, so \
                     what must stay protected is unknown ({e}); fix or remove it"
                )));
            }
        };
        Ok(Effective {
            config: file.clone(),
            material: Material::default(),
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
        Ok(update) => Ok(Effective {
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

pub fn check(path: &Path) -> Result<(), Failure> {
    let file = load(path)?;
    let Effective {
        config,
        material,
        cached,
        ignored,
        floor,
    } = effective(&file)?;
    let mut rs = config.ruleset();
    rs.keep_protected(&floor);
    println!(
        "config ok: agent {:?}, {} policies",
        config.agent.name,
        config.policies.len()
    );
    if let Some(c) = &config.controller {
        let enrolled = config.agent.state_dir.join(control::STATE_CERT).exists();
        println!(
            "  controller: {} ({})",
            c.url,
            if enrolled { "enrolled" } else { "not enrolled" }
        );
        match &cached {
            Some(a) => println!(
                "  policies: from the controller, cached version {} ({} rotating sequences, {} one-time keys)",
                a.version,
                material.rotating.len(),
                material.otks.len()
            ),
            None => println!("  policies: from this file until the controller sends some"),
        }
        if let Some(why) = &ignored {
            println!("  warning: {why}");
        }
    }
    for p in &config.policies {
        let open: Vec<String> = p.open.iter().map(|s| s.to_string()).collect();
        println!(
            "  policy {:?}: opens {} for {:?}",
            p.name,
            open.join(","),
            p.timeout
        );
    }
    if !floor.is_empty() {
        let kept: Vec<String> = floor.iter().map(|a| a.to_string()).collect();
        println!(
            "  kept protected from the last run until the controller sends a config: {}",
            kept.join(" ")
        );
    }
    let protected: Vec<String> = rs.protected.iter().map(|s| s.to_string()).collect();
    let knocks: Vec<String> = rs.knock_ports.iter().map(|s| s.to_string()).collect();
    println!("  protected: {}", protected.join(" "));
    println!("  knock ports (always dropped): {}", knocks.join(" "));
    if config.policies.iter().any(|p| p.rotating.is_some()) {
        println!("  rotating knock ports: captured per window, never dropped");
    }
    println!(
        "  capture filter: {}",
        capture_filter(&config.capture_kinds())
    );
    Ok(())
}

pub fn run(path: &Path, format: LogFormat, level: &str) -> Result<(), Failure> {
    logging::init(format, level).map_err(Failure::usage)?;
    let file = load(path)?;
    let missing = privilege::missing();
    if !missing.is_empty() {
        return Err(Failure::noperm(format!(
            "missing privilege {}: run as root (capture needs CAP_NET_RAW, the firewall CAP_NET_ADMIN)",
            missing.join(" and ")
        )));
    }
    let state_dir = file.agent.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("failed to create state_dir {}", state_dir.display()))
        .map_err(Failure::runtime)?;

    // The controller's credentials are checked before anything is installed.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
        .map_err(Failure::runtime)?;
    let channel = match &file.controller {
        Some(c) => {
            let _guard = rt.enter();
            Some(
                control::channel(&c.url, &state_dir)
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let Effective {
        config,
        material,
        cached: current,
        ignored,
        floor,
    } = effective(&file)?;
    if let Some(why) = ignored {
        warn!(%why, "enforcing the file's policies until the controller sends a config");
    }
    if !floor.is_empty() {
        let kept: Vec<String> = floor.iter().map(|a| a.to_string()).collect();
        warn!(ports = %kept.join(" "),
            "no controller config to enforce: keeping the ports protected last time until one arrives");
    }

    // Open every capture before touching the firewall: a bad interface installs nothing.
    let filter = capture_filter(&config.capture_kinds());
    let tuning = Tuning::new(filter.clone(), config.spa_port());
    let mut opened = Vec::new();
    for iface in &config.agent.interfaces {
        opened.push(capture::open(iface, &filter).map_err(|e| Failure::runtime(e.into()))?);
    }
    // With a controller, SPA may be switched on by any later config: keep its replay
    // cache ready.
    let spa = if config.uses_spa() || channel.is_some() {
        let mut detector = SpaDetector::new(&config);
        let now = knockgate_proto::unix_secs(SystemTime::now());
        let store = ReplayStore::open(&state_dir, detector.replay_cache(), now)
            .context("failed to load the SPA replay cache from state_dir")
            .map_err(Failure::runtime)?;
        Some((detector, store))
    } else {
        None
    };

    // The nftables backend's netlink port, so changes by anyone else can be told apart.
    let mut nft_port = None;
    let firewall: Box<dyn Firewall> = match config.firewall.backend {
        Backend::Nftables => {
            let nft = NftFirewall::new().map_err(fw_failure)?;
            nft_port = Some(nft.port_id());
            Box::new(nft)
        }
        Backend::Command => Box::new(CommandFirewall::new(
            config.firewall.open_command.clone().unwrap_or_default(),
            config.firewall.close_command.clone(),
            &state_dir,
        )),
    };
    let mut engine = Engine::new(&config, firewall, spa)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
        .with_tuning(tuning.clone())
        .with_rotating_store(&state_dir)
        .context("failed to load the used rotating sequences from state_dir")
        .map_err(Failure::runtime)?
        .with_protected_record(state_dir.clone())
        .with_protected_floor(floor);
    let spooler = if channel.is_some() {
        let (reporter, spooler) = report::start(&state_dir)
            .context("failed to open the report spool in state_dir")
            .map_err(Failure::runtime)?;
        engine = engine.with_reporter(reporter);
        Some(spooler)
    } else {
        None
    };
    let (tx, rx) = sync_channel(QUEUE);
    // One-time keys: claimed through the controller, burned keys and offline claims kept
    // in state_dir. Without a controller no policy can take them.
    let live = Arc::new(AtomicBool::new(false));
    let claims = match &channel {
        Some(_) => {
            let burned = BurnedKeys::open(&state_dir)
                .context("failed to load the burned one-time keys from state_dir")
                .map_err(Failure::runtime)?;
            let offline = OfflineClaims::open(&state_dir)
                .context("failed to load the offline one-time key claims from state_dir")
                .map_err(Failure::runtime)?;
            let (jobs, jobs_rx) = tokio::sync::mpsc::channel(CLAIM_QUEUE);
            let params = ClaimParams {
                engine: tx.clone(),
                live: live.clone(),
                offline: Arc::new(Mutex::new(offline)),
                offline_added: Arc::new(tokio::sync::Notify::new()),
                reconnect_max: config
                    .controller
                    .as_ref()
                    .map_or(Duration::from_secs(30), |c| c.reconnect_max),
            };
            let link = ClaimLink {
                jobs,
                live: live.clone(),
                offline: params.offline.clone(),
                offline_added: params.offline_added.clone(),
            };
            engine = engine.with_claims(Some(link), burned);
            Some((jobs_rx, params))
        }
        None => None,
    };
    engine.set_material(material);
    engine.install().map_err(fw_failure)?;
    match engine.adopt_existing() {
        Ok(n) if n > 0 => info!(adopted = n, "adopted grants left by an earlier run"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not list existing grants"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Notified when the agent must restart itself (a renewed certificate).
    let restart = Arc::new(tokio::sync::Notify::new());
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for cap in opened {
        let t = capture::spawn(
            cap,
            tx.clone(),
            stop.clone(),
            counters.clone(),
            tuning.clone(),
        )
        .context("failed to start a capture thread")
        .map_err(Failure::runtime)?;
        threads.push(t);
    }
    if let Some(port) = nft_port {
        let tx = tx.clone();
        nft::watch(port, move || match tx.try_send(Input::FirewallChanged) {
            // Busy: the engine checks every second anyway.
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        })
        .context("failed to watch the nftables table")
        .map_err(Failure::runtime)?;
    }
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run(rx))
        .context("failed to start the engine thread")
        .map_err(Failure::runtime)?;
    if let (Some(channel), Some(ctl), Some(spooler)) = (&channel, &config.controller, &spooler) {
        rt.spawn(control::sync::run(
            channel.clone(),
            SyncParams {
                engine: tx.clone(),
                base: file.clone(),
                state_dir: state_dir.clone(),
                interface: config.agent.interfaces.first().cloned(),
                reconnect_max: ctl.reconnect_max,
                current: current.clone(),
                url: ctl.url.clone(),
                live,
            },
        ));
        if let Some((jobs, params)) = claims {
            rt.spawn(control::claim::run(channel.clone(), jobs, params));
        }
        rt.spawn(report::sender::run(
            channel.clone(),
            spooler.spool.clone(),
            spooler.appended.clone(),
            ctl.reconnect_max,
        ));
        rt.spawn(control::renew::run(
            channel.clone(),
            state_dir.clone(),
            config.agent.name.clone(),
            restart.clone(),
        ));
    }
    info!(agent = %config.agent.name, interfaces = ?config.agent.interfaces,
        policies = config.policies.len(), backend = ?config.firewall.backend, %filter,
        controller = config.controller.as_ref().map_or("", |c| c.url.as_str()),
        controller_version = current.as_ref().map_or(0, |c| c.version), "agent started");

    let restarting = rt
        .block_on(wait_for_signal(&restart))
        .map_err(Failure::runtime)?;
    info!(restarting, "shutting down");
    let _ = tx.send(Input::Shutdown);
    stop.store(true, Ordering::Relaxed);
    // The firewall stays as the engine left it (see Engine::run).
    let _firewall = engine_thread
        .join()
        .map_err(|_| Failure::runtime(anyhow::anyhow!("the engine thread panicked")))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Some(s) = spooler {
        s.join();
    }
    for t in threads {
        t.stop();
    }
    let dropped = counters.dropped.load(Ordering::Relaxed);
    info!(
        knocks = counters.knocks.load(Ordering::Relaxed),
        dropped, "capture totals"
    );
    info!(
        "stopped; protected ports stay closed and grants expire on their own (`knockgate-agent uninstall` removes the table)"
    );
    if restarting {
        return Err(reexec());
    }
    Ok(())
}

/// Replace this process with a fresh run of the same command line (same PID, so a
/// service manager sees no exit): it adopts the table and grants left in place and
/// connects with the renewed certificate. Returns only if the exec failed.
fn reexec() -> Failure {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    Failure::runtime(
        anyhow::Error::new(err).context("failed to restart with the renewed certificate"),
    )
}

/// Remove what the agent installed: the nftables table and its grants (or, with the
/// command backend, close the grants it holds), and the record of the protected ports.
/// The protected ports are open to everyone afterwards.
pub fn uninstall(path: &Path) -> Result<(), Failure> {
    let config = parse(path)?;
    let missing = privilege::missing();
    if missing.iter().any(|m| m.contains("NET_ADMIN")) {
        return Err(Failure::noperm(
            "missing privilege CAP_NET_ADMIN: run as root to remove the firewall table",
        ));
    }
    match config.firewall.backend {
        Backend::Nftables => {
            NftFirewall::new()
                .and_then(|mut fw| fw.remove_table())
                .map_err(fw_failure)?;
            println!("removed nftables table inet knockgate: its ports are no longer protected");
        }
        Backend::Command => {
            CommandFirewall::new(
                config.firewall.open_command.clone().unwrap_or_default(),
                config.firewall.close_command.clone(),
                &config.agent.state_dir,
            )
            .close_all()
            .map_err(fw_failure)?;
            println!("closed the command backend's grants");
        }
    }
    match state::forget_protected(&config.agent.state_dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Failure::runtime(
            anyhow::Error::new(e).context("failed to remove the protected-ports record"),
        )),
    }
}

fn fw_failure(e: FirewallError) -> Failure {
    match e {
        FirewallError::Permission(_) => Failure::noperm(e.to_string()),
        other => Failure::runtime(anyhow::Error::new(other).context("firewall")),
    }
}

/// Wait for SIGINT or SIGTERM (false), or for `restart` (true).
async fn wait_for_signal(restart: &tokio::sync::Notify) -> anyhow::Result<bool> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("failed to listen for SIGINT").map(|()| false),
        _ = term.recv() => Ok(false),
        () = restart.notified() => Ok(true),
    }
}
