//! The exit codes of every knockgate binary: one definition, sysexits.h where one fits.

/// A failure that is not the caller's input (a send failed, the firewall refused, …).
pub const FAILURE: u8 = 1;
/// A bad flag, argument or config file (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// A service that cannot be reached, such as the controller (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// Missing privileges, such as CAP_NET_ADMIN (`EX_NOPERM`).
pub const NOPERM: u8 = 77;
