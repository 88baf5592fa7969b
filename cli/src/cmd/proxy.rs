//! `knocker proxy GATEWAY HOST PORT --profile FILE`: knock, then connect. Opens
//! access at GATEWAY exactly as `knocker open` does (the same options, the same
//! [`OpenArgs::run`]), waits until HOST:PORT accepts a TCP connection, then
//! relays standard input and output over it, for ssh's `ProxyCommand`.
//!
//! Standard output carries the relayed bytes and nothing else (ssh reads it as
//! the protocol): `--verbose` and errors go to standard error. When to try
//! connecting and when to ask the gateway again is [`Wait`], pure, with time
//! passed in; the copying in both directions is `proxy/relay.rs`.

mod relay;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::{Args, value_parser};

use super::open::{OpenArgs, OpenCmdError};
use super::spa::{TimeoutError, parse_timeout};
use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::resolve::{ResolveError, resolve_host};

/// `--wait` unless given: long enough for a knock, a grant and a slow handshake.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The first connect attempt's time limit; each next one doubles, up to [`MAX_STEP`].
/// A SYN that reaches the gateway before the grant is dropped and the kernel would
/// resend it only after a second, so early attempts are short and fresh.
const FIRST_STEP: Duration = Duration::from_millis(100);
/// The longest one connect attempt (with the pause after a quick refusal) takes.
const MAX_STEP: Duration = Duration::from_secs(2);
/// Ask the gateway once more after this long without a connection (or at half the
/// wait, if that is sooner): the knock travels over UDP and may be lost.
const RESEND_AFTER: Duration = Duration::from_secs(3);

/// Arguments of `knocker proxy`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Use it as ssh's ProxyCommand, in ~/.ssh/config:

  Host gw1
      HostName gw1.example.net
      ProxyCommand knocker proxy gw1 %h %p --profile ~/.config/knockgate/alice.toml

Access is opened exactly as 'knocker open GATEWAY' does, with the same options
(see 'knocker help open'). Then knocker connects to HOST:PORT, retrying with a
short backoff for up to --wait; if there is still no connection after 3 s (or
half the wait), it asks the gateway once more, since the knock may have been
lost. Once connected it relays standard input to the connection and the
connection to standard output until the connection closes. Nothing but the
relayed bytes goes to standard output; --verbose reports on standard error.

A grant is for the address the knock came from: with -4 or -6, HOST is
resolved in that family too.

Exit status: 0 once the connection has closed, 64 for a bad argument, profile or
HOST, 1 when the gateway could not be asked or HOST:PORT accepted no
connection within --wait.

Examples:
  knocker proxy gw1 gw1.example.net 22 --profile alice.toml
  knocker proxy gw1 10.0.0.7 5432 --profile alice.toml --method otk -A tcp/5432 --wait 20s")]
pub struct ProxyArgs {
    /// The gateway and how to ask it, as for `knocker open`.
    #[command(flatten)]
    pub open: OpenArgs,

    /// Host to connect to once access is open (ssh's %h): an IPv4 or IPv6
    /// address, or a hostname
    #[arg(value_name = "HOST")]
    pub host: String,

    /// TCP port to connect to (ssh's %p)
    #[arg(value_name = "PORT", value_parser = value_parser!(u16).range(1..))]
    pub target_port: u16,

    /// How long to keep trying to connect after the knock: 10s, 1m, … (a bare
    /// number is seconds)
    #[arg(short, long, value_name = "DURATION", default_value = "10s",
          value_parser = parse_wait)]
    pub wait: Duration,
}

/// Why a `--wait` value is not usable.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Not a whole number of seconds, or too long.
    #[error(transparent)]
    Parse(#[from] TimeoutError),
    /// Zero: there would be no time to connect.
    #[error("must be at least one second")]
    Zero,
}

/// Parses `--wait`: whole seconds, as a humantime duration (`10s`, `1m`) or a
/// bare number of seconds, at least one.
pub fn parse_wait(s: &str) -> Result<Duration, WaitError> {
    match parse_timeout(s)? {
        0 => Err(WaitError::Zero),
        secs => Ok(Duration::from_secs(u64::from(secs))),
    }
}

/// Why `knocker proxy` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyCmdError {
    /// Access could not be asked for (exit code as for `knocker open`).
    #[error(transparent)]
    Open(#[from] OpenCmdError),
    /// HOST did not resolve to a usable address (exit 64).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No connection to HOST:PORT within `--wait` (exit 1): the gateway refused
    /// the knock, or the service is down.
    #[error(
        "{target} accepted no connection within {}s of asking gateway {gateway}",
        .wait.as_secs()
    )]
    Unreachable {
        /// HOST:PORT, and the address HOST resolved to when it is a name.
        target: String,
        /// The gateway asked.
        gateway: String,
        /// `--wait`.
        wait: Duration,
        /// Why the last attempt failed.
        #[source]
        last: io::Error,
    },
    /// The connection failed while relaying, or standard output did (exit 1).
    #[error("relaying {target} failed")]
    Relay {
        /// HOST:PORT, and the address HOST resolved to when it is a name.
        target: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

impl CommandError for ProxyCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            ProxyCmdError::Open(err) => err.exit_code(),
            ProxyCmdError::Resolve(_) => EXIT_USAGE,
            ProxyCmdError::Unreachable { .. } | ProxyCmdError::Relay { .. } => EXIT_FAILURE,
        }
    }
}

impl ProxyArgs {
    /// Resolves HOST, asks the gateway, connects, then relays `input` to the
    /// connection and the connection to `output` until it closes. `--verbose`
    /// lines (what was sent, the connection) go to `messages`, never `output`.
    pub fn run(
        &self,
        input: impl Read + Send + 'static,
        output: &mut dyn Write,
        messages: &mut dyn Write,
    ) -> Result<(), ProxyCmdError> {
        let stream = self.knock_and_connect(messages)?;
        let target = stream.peer_addr().map_or_else(
            |_| format!("{}:{}", self.host, self.target_port),
            |addr| self.describe(addr),
        );
        relay::relay(stream, input, output)
            .map_err(|source| ProxyCmdError::Relay { target, source })
    }

    /// Resolves HOST first (a bad one burns no one-time key), asks the gateway,
    /// and returns the first connection HOST:PORT accepts within `--wait`.
    fn knock_and_connect(&self, messages: &mut dyn Write) -> Result<TcpStream, ProxyCmdError> {
        let addr = SocketAddr::new(
            resolve_host(&self.host, self.open.family())?,
            self.target_port,
        );
        self.open.run(messages)?;
        let mut wait = Wait::new(Instant::now(), self.wait);
        let mut last = io::Error::from(io::ErrorKind::TimedOut);
        loop {
            let now = Instant::now();
            if wait.poll_resend(now) {
                self.say(
                    messages,
                    format_args!("no connection to {addr} yet: asking again"),
                );
                self.open.run(messages)?;
            }
            let Some(slot) = wait.poll_attempt(now) else {
                return Err(ProxyCmdError::Unreachable {
                    target: self.describe(addr),
                    gateway: self.open.gateway.clone(),
                    wait: self.wait,
                    last,
                });
            };
            match TcpStream::connect_timeout(&addr, slot) {
                Ok(stream) => {
                    self.say(messages, format_args!("connected to {addr}"));
                    // ssh's keystrokes are small writes: send them at once.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                // A quick refusal waits out its slot, so retries back off too.
                Err(err) => {
                    last = err;
                    std::thread::sleep(slot.saturating_sub(now.elapsed()));
                }
            }
        }
    }

    /// HOST:PORT as the user wrote it, with the address when HOST is a name.
    fn describe(&self, addr: SocketAddr) -> String {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        if literal.parse() == Ok(addr.ip()) {
            addr.to_string()
        } else {
            format!("{}:{} ({})", self.host, self.target_port, addr.ip())
        }
    }

    /// A `--verbose` line on `messages`; a broken stderr is no reason to stop.
    fn say(&self, messages: &mut dyn Write, line: std::fmt::Arguments<'_>) {
        if self.open.verbose {
            let _ = writeln!(messages, "{line}").and_then(|()| messages.flush());
        }
    }
}

/// The schedule of one wait for a connection: connect attempts whose time limits
/// double from [`FIRST_STEP`] to [`MAX_STEP`], cut at the deadline, and one
/// request sent again after [`RESEND_AFTER`] (or half the wait).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wait {
    deadline: Instant,
    resend_at: Option<Instant>,
    step: Duration,
}

impl Wait {
    /// A wait of `wait` starting at `now`.
    fn new(now: Instant, wait: Duration) -> Wait {
        let far = || now + Duration::from_secs(86_400 * 365);
        Wait {
            deadline: now.checked_add(wait).unwrap_or_else(far),
            resend_at: now.checked_add(RESEND_AFTER.min(wait / 2)),
            step: FIRST_STEP,
        }
    }

    /// The time the next connect attempt may take at `now` (never zero), or
    /// `None` once the wait is over.
    fn poll_attempt(&mut self, now: Instant) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return None;
        }
        let slot = self.step.min(left);
        self.step = self.step.saturating_mul(2).min(MAX_STEP);
        Some(slot)
    }

    /// Whether to ask the gateway again at `now`: true once, when it is time.
    fn poll_resend(&mut self, now: Instant) -> bool {
        match self.resend_at {
            Some(at) if now >= at && now < self.deadline => {
                self.resend_at = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
