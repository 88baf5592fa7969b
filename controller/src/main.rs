//! knockgate-controller: `init` creates the data dir (CA, server certificate,
//! admin identity); `run` serves the gRPC API over mutual TLS.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use knockgate_controller::cli::{Cli, Command, EXIT_USAGE, InitArgs, RunArgs};
use knockgate_controller::datadir::{self, DataDirError};
use knockgate_controller::store::{DEFAULT_SQLITE_FILE, Store};
use knockgate_controller::{Controller, health, serve};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let telemetry = match knockgate_telemetry::init(&knockgate_telemetry::Setup {
        service: "knockgate-controller",
        format: cli.log_format,
        level: "info".to_owned(),
        instance: None,
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("knockgate-controller: {e}");
            return exit(EXIT_USAGE);
        }
    };
    // Before anything builds a rustls config: one process-wide provider, ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match cli.command {
        Command::Init(args) => init(&args),
        Command::Run(args) => run(args),
    };
    telemetry.shutdown();
    code
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init(args: &InitArgs) -> ExitCode {
    match datadir::init(&args.data_dir, &args.sans) {
        Ok(done) => {
            println!("initialized {}", args.data_dir.display());
            println!("server certificate names: {}", done.sans.join(", "));
            println!(
                "admin identity for knockadm: {}",
                done.admin_identity.display()
            );
            println!("ca sha256: {}", done.ca_fingerprint);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = if matches!(e, DataDirError::BadSan(_)) {
                EXIT_USAGE
            } else {
                1
            };
            eprintln!("knockgate-controller: {:#}", anyhow::Error::new(e));
            exit(code)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("knockgate-controller: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "controller stopped");
            eprintln!("knockgate-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    let pki_dir = args.pki_dir.as_ref().unwrap_or(&args.data_dir);
    let certs = datadir::load(pki_dir).with_context(|| {
        format!(
            "failed to load the CA and certificates from {}",
            pki_dir.display()
        )
    })?;
    let database = match args.database_url {
        Some(url) => url,
        None => args
            .data_dir
            .join(DEFAULT_SQLITE_FILE)
            .display()
            .to_string(),
    };
    let store = Store::open(&database)
        .await
        .context("failed to open the store")?;
    let backend = store.backend();
    let health = match args.health_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (--health-listen)"))?;
            tracing::info!(listen = %addr, "health probes on /healthz and /readyz (plain HTTP)");
            Some(tokio::spawn(health::serve(listener, store.clone())))
        }
        None => None,
    };
    let state = Controller::with_agent_cert_lifetime(store, certs, args.agent_cert_lifetime)
        .await
        .context("failed to start")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    let local = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(
        listen = %local, backend = ?backend, ca_sha256 = %state.ca.sha256_fingerprint(),
        "controller listening (mutual TLS)"
    );
    // systemd (Type=notify): the store is open and migrated, the listeners are bound.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager that the controller is ready");
    }
    let served = serve(listener, state, async {
        shutdown_signal().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    })
    .await
    .context("server failed");
    if let Some(task) = health {
        task.abort();
    }
    served
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
