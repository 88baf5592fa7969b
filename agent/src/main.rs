//! knockgate-agent: keeps protected services behind a default-drop policy and opens them
//! for one source after a valid knock.

mod enroll;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use knockgate_agent::logging::LogFormat;

use knockgate_proto::exit::{
    NOPERM as EXIT_NOPERM, UNAVAILABLE as EXIT_UNAVAILABLE, USAGE as EXIT_USAGE,
};

#[derive(Parser)]
#[command(
    name = "knockgate-agent",
    version,
    about = "knockgate agent: port-knock gateway for one host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground: capture knocks and enforce grants (needs root).
    Run {
        /// The agent's config file.
        #[arg(long, short, default_value = "/etc/knockgate/agent.toml")]
        config: PathBuf,
        /// Log line format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Log level or filter directive (RUST_LOG overrides it).
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Check a config file and print what it would enforce; touches nothing.
    Check {
        #[arg(long, short, default_value = "/etc/knockgate/agent.toml")]
        config: PathBuf,
    },
    /// Remove the firewall table and its grants: the protected ports are open to everyone
    /// afterwards. A stopped agent leaves them protected; this is the only way to undo it.
    Uninstall {
        #[arg(long, short, default_value = "/etc/knockgate/agent.toml")]
        config: PathBuf,
    },
    /// Enrol with the controller: make this agent's key, get its certificate with a
    /// one-time token, and add [controller] to the config file.
    Enroll {
        #[arg(long, short, default_value = "/etc/knockgate/agent.toml")]
        config: PathBuf,
        /// The controller, https://HOST:PORT.
        #[arg(long)]
        controller: String,
        /// The one-time token from `knockadm agent add`.
        #[arg(long, env = "KNOCKGATE_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// SHA-256 of the controller's CA certificate, as `knockgate-controller init` prints.
        #[arg(long)]
        ca_sha256: String,
    },
}

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
