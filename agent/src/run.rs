//! `run` and `check`: load the config (and, with a controller, the last config it sent),
//! check the host, install the firewall, start the capture threads and the engine (and
//! the controller tasks), and tear down on a signal.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use knockgate_agent::agent::{Agent, Io, Start, StartError};
use knockgate_agent::capture::{self, Tuning};
use knockgate_agent::control;
use knockgate_agent::firewall::command::CommandFirewall;
use knockgate_agent::firewall::nft::NftFirewall;
use knockgate_agent::firewall::{Firewall, FirewallError};
use knockgate_agent::privilege;
use knockgate_agent::state;
use knockgate_agent_core::config::{Backend, Config, SequenceMatching, SequencePath};
use knockgate_telemetry::{LogFormat, Setup};
use tracing::{info, warn};

use crate::Failure;

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

pub fn check(path: &Path) -> Result<(), Failure> {
    let file = load(path)?;
    let start = Start::from_file(&file).map_err(|e| start_failure(path, e))?;
    let rs = start.ruleset();
    let Start {
        config,
        material,
        cached,
        ignored,
        floor,
    } = start;
    println!(
        "config ok: agent {:?}, {} policies",
        config.agent.name,
        config.policies.len()
    );
    if let Some(c) = &config.controller {
        let enrolled = config.agent.state_dir.join(control::STATE_CERT).exists();
        println!(
            "  controller: {} ({})",
            c.urls.join(", "),
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
        match config.sequence_path(p) {
            Some(SequencePath::Kernel) => {
                println!(
                    "    sequence: matched in the kernel (nftables sets; the agent sees completions only)"
                );
            }
            Some(SequencePath::Userspace(why)) => {
                println!("    sequence: matched by the agent (every knock captured): {why}");
            }
            None => {}
        }
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
    for (outer, to) in &rs.forwards {
        println!("  forwarded: {outer} -> {to} (granted sources only)");
    }
    for warning in forwarding_off(&config) {
        println!("  warning: {warning}");
    }
    println!("  capture filter: {}", config.capture_filter(&[]));
    Ok(())
}

/// What the host's forwarding sysctls leave broken for the config's forwards: one line
/// each. Turning forwarding on is the operator's call (it affects the whole host), so the
/// agent only reads the sysctls and never writes them.
fn forwarding_off(config: &Config) -> Vec<String> {
    let (v4, v6) = config.forward_families();
    [
        (v4, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (v6, "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"),
    ]
    .into_iter()
    .filter(|(wanted, ..)| *wanted)
    .filter_map(|(_, path, key)| match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => None,
        Ok(_) => Some(format!(
            "a policy forwards, but {key} is off: forwarded connections are dropped until the operator sets {key}=1"
        )),
        Err(e) => Some(format!("a policy forwards, but {path} cannot be read ({e})")),
    })
    .collect()
}

pub fn run(path: &Path, format: LogFormat, level: &str) -> Result<(), Failure> {
    let file = load(path)?;
    let telemetry = knockgate_telemetry::init(&Setup {
        service: "knockgate-agent",
        format,
        level: level.to_owned(),
        instance: Some(file.agent.name.clone()),
    })
    .map_err(|e| Failure::usage(e.to_string()))?;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
        .map_err(Failure::runtime)?;
    // The controller's credentials are checked before anything is installed.
    let controller = match &file.controller {
        Some(c) => {
            let _guard = rt.enter();
            let channel = control::channel(&c.urls, &state_dir)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            Some(channel)
        }
        None => None,
    };
    let start = Start::from_file(&file).map_err(|e| start_failure(path, e))?;
    if let Some(why) = &start.ignored {
        warn!(%why, "enforcing the file's policies until the controller sends a config");
    }
    if !start.floor.is_empty() {
        let kept: Vec<String> = start.floor.iter().map(|a| a.to_string()).collect();
        warn!(ports = %kept.join(" "),
            "no controller config to enforce: keeping the ports protected last time until one arrives");
    }
    for warning in forwarding_off(&start.config) {
        warn!(%warning, "forwarding is off");
    }
    // Open every capture before touching the firewall: a bad interface installs nothing.
    let filter = start.config.capture_filter(&[]);
    let tuning = Tuning::new(filter.clone(), start.config.spa_port());
    tuning.set_fingerprint(start.config.fingerprints());
    let mut captures = Vec::new();
    for iface in &start.config.agent.interfaces {
        captures.push(capture::open(iface, &filter).map_err(|e| Failure::runtime(e.into()))?);
    }
    // Kernel doors report their completions on an nflog group: listen before any door is
    // installed, so none opens unheard.
    if start.config.agent.sequence_matching == SequenceMatching::Kernel
        && start.config.firewall.backend == Backend::Nftables
    {
        let group = start.config.agent.nflog_group;
        captures.push(capture::open_nflog(group).map_err(|e| {
            Failure::runtime(anyhow::anyhow!(
                "{e}; kernel-matched sequences need it (or set [agent] \
                 sequence_matching = \"userspace\")"
            ))
        })?);
    }
    let (firewall, watch) = firewall(&file).map_err(fw_failure)?;
    let version = start.cached.as_ref().map_or(0, |c| c.version);
    let io = Io {
        firewall,
        captures,
        tuning,
        controller,
        watch,
    };
    let agent = Agent::start(&file, start, io, rt.handle()).map_err(|e| start_failure(path, e))?;
    info!(agent = %file.agent.name, interfaces = ?file.agent.interfaces,
        backend = ?file.firewall.backend, %filter,
        controller = file.controller.as_ref().map_or(String::new(), |c| c.urls.join(" ")),
        controller_version = version, "agent started");
    // systemd (Type=notify): the captures are open and the firewall is in place.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "cannot tell the service manager that the agent is ready");
    }

    let restarting = rt
        .block_on(wait_for_signal(&agent.restart_wanted()))
        .map_err(Failure::runtime)?;
    info!(restarting, "shutting down");
    if !restarting {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    // The firewall stays as the engine left it (see Engine::run).
    let (_firewall, (knocks, dropped)) = agent.shutdown();
    rt.shutdown_timeout(Duration::from_secs(2));
    info!(knocks, dropped, "capture totals");
    info!(
        "stopped; protected ports stay closed and grants expire on their own (`knockgate-agent uninstall` removes the table)"
    );
    telemetry.shutdown();
    if restarting {
        return Err(reexec());
    }
    Ok(())
}

/// The firewall backend of `file`, and for nftables the netlink port of its socket (so
/// changes by anyone else can be told apart).
fn firewall(file: &Config) -> Result<(Box<dyn Firewall>, Option<u32>), FirewallError> {
    Ok(match file.firewall.backend {
        Backend::Nftables => {
            let nft = NftFirewall::new()?;
            let port = nft.port_id();
            (Box::new(nft), Some(port))
        }
        Backend::Command => {
            let fw = CommandFirewall::new(
                file.firewall.open_command.clone().unwrap_or_default(),
                file.firewall.close_command.clone(),
                &file.agent.state_dir,
            );
            (Box::new(fw), None)
        }
    })
}

fn start_failure(path: &Path, e: StartError) -> Failure {
    match e {
        StartError::Firewall(e) => fw_failure(e),
        StartError::Config(why) => Failure::usage(format!("{}: {why}", path.display())),
        other => Failure::runtime(anyhow::Error::new(other)),
    }
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
