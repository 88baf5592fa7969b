//! `knockadm`, the admin CLI, as a library: `knockadm <noun> <verb>` maps each
//! command to one call of the controller's `Admin` gRPC service.
//!
//! - [`client`]: loading the admin identity and connecting over mutual TLS.
//! - [`dial`]: the TLS dialer under tonic, which sees a refused identity as such.
//! - [`error`]: [`AdminError`], gRPC statuses turned into one-line errors and
//!   exit codes.
//! - [`args`]: parsers for labels, selectors, durations and name lists.
//! - [`output`]: tables for people, JSON for scripts.
//! - [`agent`], [`user`], [`policy`], [`grant`], [`audit`]: one module per noun;
//!   [`status`]: the fleet at a glance.

pub mod admins;
pub mod agent;
pub mod args;
pub mod audit;
pub mod client;
pub mod dial;
pub mod error;
pub mod grant;
pub mod output;
pub mod policy;
pub mod status;
pub mod user;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use client::{Connector, DEFAULT_CONTROLLER, DEFAULT_IDENTITY, Identity, IdentityError};
pub use error::{AdminError, Subject};
pub use output::Format;

/// Options every `knockadm` command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Controller to talk to
    #[arg(long, global = true, value_name = "URL", env = "KNOCKADM_CONTROLLER",
          default_value = DEFAULT_CONTROLLER)]
    pub controller: String,

    /// PEM file holding the admin certificate, its private key and the CA
    /// certificate (written by 'knockgate-controller init' as DATA_DIR/admin.pem)
    #[arg(long, global = true, value_name = "FILE", env = "KNOCKADM_IDENTITY",
          default_value = DEFAULT_IDENTITY)]
    pub identity: PathBuf,

    /// Output format: aligned tables for people, JSON for scripts
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// The nouns of `knockadm`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Register, list and revoke agents (the gateways)
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Add, list, disable and remove users; issue their keys and profiles
    #[command(subcommand)]
    User(user::UserCmd),
    /// Add, list and remove policies: who may open what, where, and how
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// List and revoke open grants
    #[command(subcommand)]
    Grant(grant::GrantCmd),
    /// Show the audit trail (knocks, grants, rejections, admin changes)
    Audit(audit::AuditArgs),
    /// Add, list and revoke admin identities (pinned like agents)
    #[command(subcommand)]
    Admin(admins::AdminCmd),
    /// The fleet at a glance: agents by state, config versions, open grants,
    /// recent refusals
    Status(status::StatusArgs),
}

impl Command {
    /// The noun, as typed (it names the command's trace).
    #[must_use]
    pub fn noun(&self) -> &'static str {
        match self {
            Command::Agent(_) => "agent",
            Command::User(_) => "user",
            Command::Policy(_) => "policy",
            Command::Grant(_) => "grant",
            Command::Audit(_) => "audit",
            Command::Admin(_) => "admin",
            Command::Status(_) => "status",
        }
    }
}

/// What a command runs with: the (lazily connected) controller, the output
/// format, and where output goes.
pub struct Ctx<'a> {
    /// The controller connection, made on first use.
    pub conn: Connector,
    /// `--output`.
    pub format: Format,
    /// Standard output (or a buffer in tests).
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// The admin client, connecting on first use.
    ///
    /// # Errors
    /// [`AdminError`] for a bad identity, URL or unreachable controller.
    pub async fn client(&mut self) -> Result<client::Admin, AdminError> {
        self.conn.client().await
    }

    /// The controller URL as given (for messages and printed commands).
    pub fn url(&self) -> &str {
        self.conn.url()
    }
}

/// Runs one `knockadm` command.
///
/// # Errors
/// [`AdminError`], which knows its exit code.
pub async fn run(
    global: GlobalArgs,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let mut ctx = Ctx {
        conn: Connector::new(global.controller, global.identity),
        format: global.output,
        out,
    };
    match command {
        Command::Agent(cmd) => cmd.run(&mut ctx).await,
        Command::User(cmd) => cmd.run(&mut ctx).await,
        Command::Policy(cmd) => cmd.run(&mut ctx).await,
        Command::Grant(cmd) => cmd.run(&mut ctx).await,
        Command::Audit(args) => args.run(&mut ctx).await,
        Command::Admin(cmd) => cmd.run(&mut ctx).await,
        Command::Status(args) => args.run(&mut ctx).await,
    }
}

/// knockadm: manage a knockgate fleet (agents, users, policies, grants) and
/// read its audit trail, over mutual TLS with the controller.
#[derive(Debug, Parser)]
#[command(name = "knockadm", version, arg_required_else_help = true)]
#[command(after_help = "\
Exit status: 0 on success, 64 for a bad argument or identity file, 69 when the
controller cannot be reached, 1 when the controller refuses the request.

Run 'knockadm help <COMMAND>' for a command's options and examples.")]
pub struct Cli {
    /// How to reach the controller.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}
