//! The `knockgate-agent` command line (clap), shared by `main.rs` and the generated man
//! page and shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use knockgate_telemetry::LogFormat;

/// The agent's command line.
#[derive(Parser)]
#[command(
    name = "knockgate-agent",
    version,
    about = "knockgate agent: port-knock gateway for one host"
)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Subcommand)]
/// Subcommands.
pub enum Command {
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
