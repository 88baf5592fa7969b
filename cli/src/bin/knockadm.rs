//! `knockadm`: the knockgate admin CLI. Parses `knockadm <noun> <verb>`, runs
//! it against the controller (`knockgate_cli::admin`), and turns its error
//! into one line on stderr and an exit code (64 bad input, 69 controller
//! unreachable, 1 refused).

#![forbid(unsafe_code)]

use std::io;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use knockgate_cli::admin::{self, AdminError, Cli};
use knockgate_cli::cmd::{self, CommandError as _};
use tracing::Instrument as _;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return ExitCode::from(cmd::report_clap_error("knockadm", &err)),
    };
    // Already installed is fine: there is only ring in this binary.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `knockadm audit --follow | head`: the reader left, nothing to report.
        Err((error, _))
            if error
                .downcast_ref::<AdminError>()
                .is_some_and(AdminError::is_broken_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err((error, code)) => {
            eprintln!("knockadm: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), (anyhow::Error, u8)> {
    // No log lines unless RUST_LOG asks; traces and metrics when OTEL_* asks.
    let telemetry = knockgate_telemetry::init(&knockgate_telemetry::Setup {
        service: "knockadm",
        format: knockgate_telemetry::LogFormat::Text,
        level: "off".to_owned(),
        instance: None,
    })
    .map_err(|err| (anyhow::Error::new(err), cmd::EXIT_USAGE))?;
    let result = run_traced(cli);
    telemetry.shutdown();
    result
}

/// One trace per command: the controller's handling of each call is part of it.
fn run_traced(cli: Cli) -> Result<(), (anyhow::Error, u8)> {
    let span = tracing::info_span!(
        target: "knockgate_cli",
        "knockadm",
        otel.name = format!("knockadm {}", cli.command.noun()),
        otel.kind = "client",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
        .map_err(|err| (err, cmd::EXIT_FAILURE))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    runtime
        .block_on(admin::run(cli.global, cli.command, &mut out).instrument(span))
        .map_err(|err: AdminError| {
            let code = err.exit_code();
            (anyhow::Error::new(err), code)
        })
}
