//! The subcommands of the command-line tools, one module each: its clap
//! arguments and a `run` that takes its output stream, so a binary's `main`
//! only parses, dispatches and maps errors to exit codes.

pub mod keygen;
pub mod knock;
pub mod open;
pub mod proxy;
pub mod spa;

use clap::{Parser, Subcommand};

pub use knockgate_proto::exit::{
    FAILURE as EXIT_FAILURE, UNAVAILABLE as EXIT_UNAVAILABLE, USAGE as EXIT_USAGE,
};

/// An error a subcommand returns, which knows the exit code it deserves.
pub trait CommandError: std::error::Error + Send + Sync + 'static {
    /// [`EXIT_USAGE`] when the user's input was at fault, else [`EXIT_FAILURE`]
    /// or another non-zero code.
    fn exit_code(&self) -> u8;
}

/// Reports a clap error the way every binary here does, and returns the exit
/// code: help and version go out as clap renders them (0); a missing
/// subcommand prints help (64); every other error becomes one
/// `PROG: error: …` line on stderr (64).
pub fn report_clap_error(prog: &str, err: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    use std::io::Write as _;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Nothing useful to do if stdout is gone (`knocker --help | true`).
            let _ = err.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            EXIT_USAGE
        }
        _ => {
            let _ = writeln!(std::io::stderr(), "{prog}: error: {}", clap_one_line(err));
            EXIT_USAGE
        }
    }
}

/// clap's message up to its first blank line (dropping tips and usage), on one line.
pub fn clap_one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message = rendered.split("\n\n").next().unwrap_or_default();
    let message = message.trim().strip_prefix("error:").unwrap_or(message);
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

/// knocker: the knockgate user client. Knocks on a knockgate (or knockd) gateway,
/// or sends it a Single Packet Authorization, so it opens a protected service
/// for your address.
#[derive(Debug, Parser)]
#[command(name = "knocker", version, arg_required_else_help = true)]
#[command(after_help = "\
Exit status: 0 on success, 64 for a bad argument, key file, profile or \
unresolvable host, 1 when a knock or packet could not be sent (or, for \
proxy, no connection was accepted).

Run 'knocker help <COMMAND>' for a command's options and examples.")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One variant per subcommand; each module in `knockgate_cli::cmd` owns its args.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a port-knock sequence (TCP SYNs, UDP datagrams, ICMP echoes) to HOST,
    /// like knockd's `knock` client
    Knock(knock::KnockArgs),
    /// Send one native SPA packet to HOST, asking gateway NAME to open access
    /// for you
    Spa(spa::SpaArgs),
    /// Generate a native SPA key: print it, or write it to a 0600 file
    Keygen(keygen::KeygenArgs),
    /// Ask a gateway from your knockgate profile to open access for you
    /// (native SPA, fwknop's packet format, a one-time key or a rotating
    /// knock sequence)
    Open(open::OpenArgs),
    /// Open access at a gateway as `open` does, then connect to HOST:PORT and
    /// relay standard input and output over the connection (ssh's
    /// ProxyCommand)
    Proxy(proxy::ProxyArgs),
}
