//! knockgate-agent: keeps protected services behind a default-drop policy and opens them
//! for one source after a valid knock.

mod enroll;
mod run;

use std::process::ExitCode;

use clap::Parser as _;
use knockgate_agent::cli::{Cli, Command};

use knockgate_proto::exit::{
    NOPERM as EXIT_NOPERM, UNAVAILABLE as EXIT_UNAVAILABLE, USAGE as EXIT_USAGE,
};

/// A failure with the exit code it deserves.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn noperm(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_NOPERM,
            message: message.into(),
        }
    }
    fn runtime(err: anyhow::Error) -> Self {
        Failure {
            code: knockgate_proto::exit::FAILURE,
            message: format!("{err:#}"),
        }
    }
}

fn main() -> ExitCode {
    // Before anything touches TLS; "already installed" is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run {
            config,
            log_format,
            log_level,
        } => run::run(&config, log_format, &log_level),
        Command::Check { config } => run::check(&config),
        Command::Uninstall { config } => run::uninstall(&config),
        Command::Enroll {
            config,
            controller,
            token,
            ca_sha256,
        } => enroll::enroll(&config, &controller, &token, &ca_sha256),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("knockgate-agent: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
