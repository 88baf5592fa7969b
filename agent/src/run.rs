//! `run` and `check`: load the config, check the host, install the firewall, start the
//! capture threads and the engine, and tear down on a signal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use knockgate_agent::capture::{self, Counters};
use knockgate_agent::engine::{Engine, Input};
use knockgate_agent::firewall::command::CommandFirewall;
use knockgate_agent::firewall::nft::NftFirewall;
use knockgate_agent::firewall::{Firewall, FirewallError};
use knockgate_agent::logging::{self, LogFormat};
use knockgate_agent::privilege;
use knockgate_agent::replay_store::ReplayStore;
use knockgate_agent_core::config::{Backend, Config};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::filter::capture_filter;
use tracing::info;

use crate::Failure;

/// Bounded queue between the capture threads and the engine.
const QUEUE: usize = 8192;

/// Read, parse and validate the config, including that its interfaces exist.
fn load(path: &Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read config {}: {e}", path.display())))?;
    let config =
        Config::parse(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
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

pub fn check(path: &Path) -> Result<(), Failure> {
    let config = load(path)?;
    let rs = config.ruleset();
    println!(
        "config ok: agent {:?}, {} policies",
        config.agent.name,
        config.policies.len()
    );
    for p in &config.policies {
        let open: Vec<String> = p.open.iter().map(|s| s.to_string()).collect();
        println!(
            "  policy {:?}: opens {} for {:?}",
            p.name,
            open.join(","),
            p.timeout
        );
    }
    let protected: Vec<String> = rs.protected.iter().map(|s| s.to_string()).collect();
    let knocks: Vec<String> = rs.knock_ports.iter().map(|s| s.to_string()).collect();
    println!("  protected: {}", protected.join(" "));
    println!("  knock ports (always dropped): {}", knocks.join(" "));
    println!(
        "  capture filter: {}",
        capture_filter(&config.capture_kinds())
    );
    Ok(())
}

pub fn run(path: &Path, format: LogFormat, level: &str, keep_on_exit: bool) -> Result<(), Failure> {
    logging::init(format, level).map_err(Failure::usage)?;
    let config = load(path)?;
    let missing = privilege::missing();
    if !missing.is_empty() {
        return Err(Failure::noperm(format!(
            "missing privilege {}: run as root (capture needs CAP_NET_RAW, the firewall CAP_NET_ADMIN)",
            missing.join(" and ")
        )));
    }
    std::fs::create_dir_all(&config.agent.state_dir)
        .with_context(|| {
            format!(
                "failed to create state_dir {}",
                config.agent.state_dir.display()
            )
        })
        .map_err(Failure::runtime)?;

    // Open every capture before touching the firewall: a bad interface installs nothing.
    let filter = capture_filter(&config.capture_kinds());
    let mut opened = Vec::new();
    for iface in &config.agent.interfaces {
        opened.push(capture::open(iface, &filter).map_err(|e| Failure::runtime(e.into()))?);
    }
    let spa = if config.uses_spa() {
        let mut detector = SpaDetector::new(&config);
        let now = knockgate_proto::unix_secs(SystemTime::now());
        let store = ReplayStore::open(&config.agent.state_dir, detector.replay_cache(), now)
            .context("failed to load the SPA replay cache from state_dir")
            .map_err(Failure::runtime)?;
        Some((detector, store))
    } else {
        None
    };

    let firewall: Box<dyn Firewall> = match config.firewall.backend {
        Backend::Nftables => Box::new(NftFirewall::new().map_err(fw_failure)?),
        Backend::Command => Box::new(CommandFirewall::new(
            config.firewall.open_command.clone().unwrap_or_default(),
            config.firewall.close_command.clone(),
            &config.agent.state_dir,
        )),
    };
    let mut engine = Engine::new(&config, firewall, spa)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    engine.install(&config.ruleset()).map_err(fw_failure)?;
    match engine.adopt_existing(Instant::now()) {
        Ok(n) if n > 0 => info!(adopted = n, "adopted grants left by an earlier run"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not list existing grants"),
    }

    let (tx, rx) = sync_channel(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for cap in opened {
        let spa_port = config.uses_spa().then_some(config.spa.port);
        let t = capture::spawn(cap, tx.clone(), stop.clone(), counters.clone(), spa_port)
            .context("failed to start a capture thread")
            .map_err(Failure::runtime)?;
        threads.push(t);
    }
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run(rx))
        .context("failed to start the engine thread")
        .map_err(Failure::runtime)?;
    info!(agent = %config.agent.name, interfaces = ?config.agent.interfaces,
        policies = config.policies.len(), backend = ?config.firewall.backend, %filter, "agent started");

    wait_for_signal().map_err(Failure::runtime)?;
    info!("shutting down");
    let _ = tx.send(Input::Shutdown { keep: keep_on_exit });
    stop.store(true, Ordering::Relaxed);
    let (mut firewall, keep) = engine_thread
        .join()
        .map_err(|_| Failure::runtime(anyhow::anyhow!("the engine thread panicked")))?;
    for t in threads {
        t.stop();
    }
    let dropped = counters.dropped.load(Ordering::Relaxed);
    info!(
        knocks = counters.knocks.load(Ordering::Relaxed),
        dropped, "capture totals"
    );
    if keep {
        info!("keeping the firewall state (--keep-on-exit)");
    } else {
        firewall.teardown().map_err(fw_failure)?;
        info!("firewall state removed");
    }
    Ok(())
}

fn fw_failure(e: FirewallError) -> Failure {
    match e {
        FirewallError::Permission(_) => Failure::noperm(e.to_string()),
        other => Failure::runtime(anyhow::Error::new(other).context("firewall")),
    }
}

/// Block until SIGINT or SIGTERM.
fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("failed to start the signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("failed to listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("failed to listen for SIGINT"),
            _ = term.recv() => Ok(()),
        }
    })
}
