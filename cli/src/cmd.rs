//! The subcommands of the command-line tools, one module each: its clap
//! arguments and a `run` that takes its output stream, so a binary's `main`
//! only parses, dispatches and maps errors to exit codes.

pub mod keygen;
pub mod knock;
pub mod spa;

/// Exit code for a failure that is not the user's input (a send failed, …).
pub const EXIT_FAILURE: u8 = 1;

/// Exit code for a bad flag, argument or config (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: u8 = 64;

/// An error a subcommand returns, which knows the exit code it deserves.
pub trait CommandError: std::error::Error + Send + Sync + 'static {
    /// [`EXIT_USAGE`] when the user's input was at fault, else [`EXIT_FAILURE`]
    /// or another non-zero code.
    fn exit_code(&self) -> u8;
}
