//! `knocker knock HOST SPEC...`: send a port-knock sequence, like the `knock`
//! client from knockd.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::knock::{KnockError, send_sequence};
use crate::resolve::{Family, ResolveError, resolve_host};
use knockgate_proto::KnockStep;

/// Arguments of `knocker knock`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  knocker knock gw.example.net tcp/7000 udp/8000 icmp
  knocker knock -6 --delay 100ms gw.example.net 7000 8000:udp 9000")]
pub struct KnockArgs {
    /// Host to knock on: an IPv4 or IPv6 address, or a hostname (resolved once,
    /// before the first knock)
    #[arg(value_name = "HOST")]
    pub host: String,

    /// Knocks to send, in order: tcp/PORT, udp/PORT or icmp. The knock client's
    /// shorthand also works: PORT (tcp), PORT:tcp, PORT:udp
    #[arg(value_name = "SPEC", required = true)]
    pub knocks: Vec<KnockStep>,

    /// Wait this long between two knocks: 50ms, 1s, … (a bare number is
    /// milliseconds, like knock -d)
    #[arg(short, long, value_name = "DURATION", default_value = "0ms", value_parser = parse_delay)]
    pub delay: Duration,

    /// Knock over IPv4 only (resolve HOST to an IPv4 address)
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Knock over IPv6 only (resolve HOST to an IPv6 address)
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Print each knock as it is sent
    #[arg(short, long)]
    pub verbose: bool,
}

/// Why `knocker knock` failed.
#[derive(Debug, thiserror::Error)]
pub enum KnockCmdError {
    /// HOST did not resolve to a usable address (exit 64).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// A knock could not be sent (exit 1).
    #[error(transparent)]
    Knock(#[from] KnockError),
    /// `--verbose` output could not be written (exit 1).
    #[error("failed to write to stdout")]
    Output(#[source] io::Error),
}

impl CommandError for KnockCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            KnockCmdError::Resolve(_) => EXIT_USAGE,
            KnockCmdError::Knock(_) | KnockCmdError::Output(_) => EXIT_FAILURE,
        }
    }
}

impl KnockArgs {
    /// The address family chosen by `-4`/`-6`.
    pub fn family(&self) -> Family {
        match (self.ipv4, self.ipv6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    /// Resolves HOST, then sends the knocks in order, writing one line per knock
    /// to `out` with `--verbose`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), KnockCmdError> {
        let target = resolve_host(&self.host, self.family())?;
        let mut output_error = None;
        send_sequence(target, &self.knocks, self.delay, |knock| {
            if self.verbose && output_error.is_none() {
                output_error = report(out, knock, target).err();
            }
        })?;
        match output_error {
            Some(err) => Err(KnockCmdError::Output(err)),
            None => Ok(()),
        }
    }
}

fn report(out: &mut dyn Write, knock: &KnockStep, target: IpAddr) -> io::Result<()> {
    writeln!(out, "knocked {knock} on {target}")?;
    out.flush()
}

/// Why a `--delay` value is not a duration.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DelayError(#[from] humantime::DurationError);

/// Parses `--delay`: a humantime duration (`50ms`, `1s`, `1m 30s`), or a bare
/// number of milliseconds as the `knock` client's `-d` takes.
pub fn parse_delay(s: &str) -> Result<Duration, DelayError> {
    if !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && let Ok(ms) = s.parse::<u64>()
    {
        return Ok(Duration::from_millis(ms));
    }
    Ok(humantime::parse_duration(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        assert_eq!(parse_delay("50ms").ok(), Some(Duration::from_millis(50)));
        assert_eq!(parse_delay("1s").ok(), Some(Duration::from_secs(1)));
        assert_eq!(parse_delay("0").ok(), Some(Duration::ZERO));
        assert_eq!(parse_delay("250").ok(), Some(Duration::from_millis(250)));
        for bad in ["", "5x", "ms", "-1s", "1.5.5s"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn family_flags() {
        let mut args = KnockArgs {
            host: "h".into(),
            knocks: vec![KnockStep::Icmp],
            delay: Duration::ZERO,
            ipv4: false,
            ipv6: false,
            verbose: false,
        };
        assert_eq!(args.family(), Family::Any);
        args.ipv4 = true;
        assert_eq!(args.family(), Family::V4);
        args.ipv4 = false;
        args.ipv6 = true;
        assert_eq!(args.family(), Family::V6);
    }
}
