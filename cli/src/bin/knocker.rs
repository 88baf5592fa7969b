//! `knocker`: the knockgate user client. Parses the command line, runs one
//! subcommand from `knockgate_cli::cmd`, and turns its error into one line on
//! stderr and an exit code (64 for bad input, 1 for failures).

#![forbid(unsafe_code)]

use std::io;
use std::process::ExitCode;

use clap::Parser as _;
use knockgate_cli::cmd::{self, Cli, Command, CommandError};

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
        Command::Proxy(args) => args.run(io::stdin(), &mut out, &mut io::stderr())?,
    }
    Ok(())
}
