//! The `knockgate-controller` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
pub use knockgate_telemetry::LogFormat;

/// Exit status for a bad flag or config (sysexits `EX_USAGE`), as `exit` takes it.
pub const EXIT_USAGE: i32 = knockgate_proto::exit::USAGE as i32;

/// knockgate controller: internal CA, store and the gRPC API for agents and knockadm.
#[derive(Debug, Parser)]
#[command(name = "knockgate-controller", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data dir: CA, server certificate and knockadm's admin identity.
    Init(InitArgs),
    /// Serve the gRPC API (mutual TLS only).
    Run(RunArgs),
}

/// `init` flags.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory for keys, certificates and the SQLite database (created 0700).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Extra name for the server certificate, besides localhost, 127.0.0.1 and ::1 (repeatable).
    #[arg(long = "san", value_name = "DNS-or-IP")]
    pub sans: Vec<String>,
}

/// `run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory made by `init`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Where the CA, server certificate and admin identity are read from (ca.pem,
    /// ca-key.pem, server.pem, server-key.pem, admin.pem; read-only is fine, e.g. a
    /// Kubernetes Secret); default: the data dir.
    #[arg(long, value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,
    /// Address to listen on (mutual TLS only).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Also serve plain-HTTP health probes here: GET /healthz (alive) and /readyz (the
    /// store answers); default: none.
    #[arg(long, value_name = "ADDR:PORT")]
    pub health_listen: Option<SocketAddr>,
    /// PostgreSQL URL (postgres://...) for replicas sharing one database; default: SQLite in the data dir.
    #[arg(
        long,
        alias = "database",
        value_name = "URL",
        env = "KNOCKGATE_DATABASE_URL"
    )]
    pub database_url: Option<String>,
    /// How long an agent certificate is valid; agents renew theirs when two thirds of
    /// it has passed.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_lifetime)]
    pub agent_cert_lifetime: std::time::Duration,
}

/// A certificate lifetime: humantime, 10 s to 10 years.
fn parse_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 90d, 12h)"))?;
    if d < std::time::Duration::from_secs(10) || d > std::time::Duration::from_secs(3650 * 86_400) {
        return Err("must be between 10s and 10 years".into());
    }
    Ok(d)
}
