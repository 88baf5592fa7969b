//! `knocker`: the knockgate user client. Parses the command line, runs one
//! subcommand from `knockgate_cli::cmd`, and turns its error into one line on
//! stderr and an exit code (64 for bad input, 1 for failures).

#![forbid(unsafe_code)]

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use knockgate_cli::cmd::{self, CommandError};

/// knocker: the knockgate user client. Knocks on a knockgate (or knockd) gateway,
/// or sends it a Single Packet Authorization, so it opens a protected service
/// for your address.
#[derive(Debug, Parser)]
#[command(name = "knocker", version, arg_required_else_help = true)]
#[command(after_help = "\
Exit status: 0 on success, 64 for a bad argument, key file, profile or \
unresolvable host, 1 when a knock or packet could not be sent.

Run 'knocker help <COMMAND>' for a command's options and examples.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand; each module in `knockgate_cli::cmd` owns its args.
#[derive(Debug, Subcommand)]
enum Command {
    /// Send a port-knock sequence (TCP SYNs, UDP datagrams, ICMP echoes) to HOST,
    /// like knockd's `knock` client
    Knock(cmd::knock::KnockArgs),
    /// Send one native SPA packet to HOST, asking gateway NAME to open access
    /// for you
    Spa(cmd::spa::SpaArgs),
    /// Generate a native SPA key: print it, or write it to a 0600 file
    Keygen(cmd::keygen::KeygenArgs),
    /// Ask a gateway from your knockgate profile to open access for you
    /// (native SPA, fwknop's packet format, a one-time key or a rotating
    /// knock sequence)
    Open(cmd::open::OpenArgs),
}

/// A failed run: what to print and the exit code it deserves.
struct Failure {
    error: anyhow::Error,
    code: u8,
}

impl<E: CommandError> From<E> for Failure {
    fn from(err: E) -> Self {
        let code = err.exit_code();
        Failure {
            error: anyhow::Error::new(err),
            code,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return ExitCode::from(cmd::report_clap_error("knocker", &err)),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { error, code }) => {
            eprintln!("knocker: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Knock(args) => args.run(&mut out)?,
        Command::Spa(args) => args.run(&mut out)?,
        Command::Keygen(args) => args.run(&mut out)?,
        Command::Open(args) => args.run(&mut out)?,
    }
    Ok(())
}
