//! `knocker spa HOST --key-file FILE --gateway NAME --access tcp/22`: send one
//! native SPA packet asking gateway NAME to open access for this client.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, value_parser};
use knockgate_proto::spa::{MAX_ACCESS, MAX_GATEWAY_LEN, SealError, SpaKey};
use knockgate_proto::{Access, ParseAccessError};

use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::keyfile::{KeyFileError, read_key_file};
use crate::resolve::{Family, ResolveError, resolve_host};
use crate::spa::{
    BuildSpaError, DEFAULT_SPA_PORT, SendSpaError, bind_to_sender, build_spa, send_spa,
};

/// Arguments of `knocker spa`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The packet is sealed with your key (see 'knocker keygen'); it carries only the
key's id in clear, never your user name or the key.

Examples:
  knocker spa gw.example.net -u alice -k ~/.config/knockgate/alice.key -g gw1 -A tcp/22
  knocker spa -6 gw.example.net -u alice -k alice.key -g gw1 -A tcp/22,udp/51820 -t 10m")]
pub struct SpaArgs {
    /// Gateway host to send the packet to: an IPv4 or IPv6 address, or a
    /// hostname
    #[arg(value_name = "HOST")]
    pub host: String,

    /// Your knockgate user name, shown with --verbose (the key identifies you
    /// to the gateway; the name is never sent)
    #[arg(short, long, value_name = "USER")]
    pub user: String,

    /// File holding your SPA key (one base64 line; '#' comment lines allowed)
    #[arg(short, long, value_name = "FILE")]
    pub key_file: PathBuf,

    /// Name of the gateway the packet is for, as your admin configured it
    /// (1 to 64 bytes); a gateway rejects packets meant for another
    #[arg(short, long, value_name = "NAME", value_parser = parse_gateway)]
    pub gateway: String,

    /// Access to open: tcp/PORT or udp/PORT. Repeat the flag or separate
    /// entries with commas (at most 16)
    #[arg(
        short = 'A',
        long,
        value_name = "PROTO/PORT",
        required = true,
        value_delimiter = ',',
        value_parser = parse_access
    )]
    pub access: Vec<Access>,

    /// Address to open access for. Default: the address this host sends from,
    /// sealed into the packet. Behind a NAT, give your public address
    #[arg(short = 'a', long, value_name = "IP", conflicts_with = "source_any")]
    pub allow_ip: Option<IpAddr>,

    /// Seal no address: open whatever address the packet arrives from. Weaker:
    /// a copy taken off the wire and resent from elsewhere before yours arrives
    /// opens the gateway for the sender of the copy
    #[arg(long)]
    pub source_any: bool,

    /// How long to keep access open: 30s, 10m, 1h, … (a bare number is
    /// seconds). Default: the gateway policy's duration
    #[arg(short, long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u32>,

    /// UDP port the gateway listens on for SPA
    #[arg(short, long, value_name = "PORT", default_value_t = DEFAULT_SPA_PORT,
          value_parser = value_parser!(u16).range(1..))]
    pub port: u16,

    /// Send over IPv4 only (resolve HOST to an IPv4 address)
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Send over IPv6 only (resolve HOST to an IPv6 address)
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Print what was sent
    #[arg(short, long)]
    pub verbose: bool,
}

/// Why `knocker spa` failed.
#[derive(Debug, thiserror::Error)]
pub enum SpaCmdError {
    /// More `--access` entries than one packet carries (exit 64).
    #[error("too many --access entries: {0} (at most {MAX_ACCESS})")]
    TooManyAccess(usize),
    /// The key file is unreadable or holds no valid key (exit 64).
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// HOST did not resolve to a usable address (exit 64).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The packet could not be built (exit 64 for a bad request, else 1).
    #[error(transparent)]
    Build(#[from] BuildSpaError),
    /// The packet could not be sent (exit 1).
    #[error(transparent)]
    Send(#[from] SendSpaError),
    /// `--verbose` output could not be written (exit 1).
    #[error("failed to write to stdout")]
    Output(#[source] io::Error),
}

impl CommandError for SpaCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            SpaCmdError::TooManyAccess(_)
            | SpaCmdError::KeyFile(_)
            | SpaCmdError::Resolve(_)
            | SpaCmdError::Build(BuildSpaError::Seal(SealError::Invalid(_))) => EXIT_USAGE,
            SpaCmdError::Build(_) | SpaCmdError::Send(_) | SpaCmdError::Output(_) => EXIT_FAILURE,
        }
    }
}

impl SpaArgs {
    /// The address family chosen by `-4`/`-6`.
    pub fn family(&self) -> Family {
        match (self.ipv4, self.ipv6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    /// The requested access, sorted and without duplicates.
    pub fn access_set(&self) -> Result<Vec<Access>, SpaCmdError> {
        let mut access = self.access.clone();
        access.sort_unstable();
        access.dedup();
        if access.len() > MAX_ACCESS {
            return Err(SpaCmdError::TooManyAccess(access.len()));
        }
        Ok(access)
    }

    /// Reads the key, resolves HOST, then seals and sends one packet stamped
    /// with the current time; with `--verbose`, writes one line to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), SpaCmdError> {
        let access = self.access_set()?;
        let key = read_key_file(&self.key_file)?;
        let target = SocketAddr::new(resolve_host(&self.host, self.family())?, self.port);
        let allow_ip = bind_to_sender(target, self.allow_ip, self.source_any)?;
        // Stamped after DNS so resolver latency does not age the packet.
        let packet = build_spa(
            &key,
            &self.gateway,
            access.clone(),
            allow_ip,
            self.timeout.unwrap_or(0),
            SystemTime::now(),
        )?;
        send_spa(target, &packet)?;
        if self.verbose {
            self.report(out, target, &access, allow_ip, packet.len(), &key)
                .map_err(SpaCmdError::Output)?;
        }
        Ok(())
    }

    fn report(
        &self,
        out: &mut dyn Write,
        target: SocketAddr,
        access: &[Access],
        allow_ip: Option<IpAddr>,
        len: usize,
        key: &SpaKey,
    ) -> io::Result<()> {
        let access: Vec<String> = access.iter().map(Access::to_string).collect();
        let allow = allow_ip.map_or_else(|| "<source>".to_owned(), |ip| ip.to_string());
        writeln!(
            out,
            "sent SPA for {} to {} ({target}): access {}, allow {allow}, {len} bytes, key id {}",
            self.user,
            self.gateway,
            access.join(","),
            key.id(),
        )?;
        out.flush()
    }
}

/// Why a `--gateway` value is not a gateway name.
#[derive(Debug, thiserror::Error)]
#[error("gateway name must be 1 to {MAX_GATEWAY_LEN} bytes, got {0}")]
pub struct GatewayError(usize);

/// Parses `--gateway`: 1 to 64 bytes of UTF-8, as the packet carries it.
pub fn parse_gateway(s: &str) -> Result<String, GatewayError> {
    if s.is_empty() || s.len() > MAX_GATEWAY_LEN {
        return Err(GatewayError(s.len()));
    }
    Ok(s.to_owned())
}

/// Parses one `--access` entry: `tcp/PORT` or `udp/PORT`, protocol in any case.
pub fn parse_access(s: &str) -> Result<Access, ParseAccessError> {
    s.trim().to_ascii_lowercase().parse()
}

/// Why a `--timeout` value is not a grant duration.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError {
    /// Not a humantime duration.
    #[error(transparent)]
    Parse(#[from] humantime::DurationError),
    /// A fraction of a second (the packet carries whole seconds).
    #[error("must be whole seconds")]
    Fraction,
    /// More seconds than the packet's `u32` field holds.
    #[error("must be at most {} seconds", u32::MAX)]
    TooLong,
}

/// Parses `--timeout`: a humantime duration (`30s`, `10m`, `1h 30m`) or a bare
/// number of seconds, in whole seconds up to 4294967295. `0` asks for the
/// policy default.
pub fn parse_timeout(s: &str) -> Result<u32, TimeoutError> {
    let duration = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(s.parse().map_err(|_| TimeoutError::TooLong)?)
    } else {
        humantime::parse_duration(s)?
    };
    if duration.subsec_nanos() != 0 {
        return Err(TimeoutError::Fraction);
    }
    u32::try_from(duration.as_secs()).map_err(|_| TimeoutError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        spa: SpaArgs,
    }

    fn parse(extra: &[&str]) -> Result<SpaArgs, clap::Error> {
        let base = [
            "knocker",
            "gw.example",
            "-u",
            "alice",
            "-k",
            "k",
            "-g",
            "gw1",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.spa)
    }

    #[test]
    fn defaults() {
        let args = parse(&["--access", "tcp/22"]).unwrap();
        assert_eq!(args.host, "gw.example");
        assert_eq!(args.user, "alice");
        assert_eq!(args.key_file, PathBuf::from("k"));
        assert_eq!(args.gateway, "gw1");
        assert_eq!(args.access, vec![Access::tcp(22)]);
        assert_eq!(args.allow_ip, None);
        assert_eq!(args.timeout, None);
        assert_eq!(args.port, 62201);
        assert_eq!(args.family(), Family::Any);
        assert!(!args.verbose);
    }

    #[test]
    fn access_repeated_and_comma_separated() {
        let args = parse(&["-A", "tcp/22,udp/53", "--access", "TCP/443", "-A", "tcp/22"]).unwrap();
        assert_eq!(
            args.access,
            vec![
                Access::tcp(22),
                Access::udp(53),
                Access::tcp(443),
                Access::tcp(22)
            ]
        );
        assert_eq!(
            args.access_set().unwrap(),
            vec![Access::tcp(22), Access::tcp(443), Access::udp(53)]
        );
    }

    #[test]
    fn too_many_access_entries() {
        let list: Vec<String> = (1..=17).map(|p| format!("tcp/{p}")).collect();
        let args = parse(&["-A", &list.join(",")]).unwrap();
        assert!(matches!(
            args.access_set(),
            Err(SpaCmdError::TooManyAccess(17))
        ));
    }

    #[test]
    fn all_flags() {
        let args = parse(&[
            "-A",
            "udp/51820",
            "-a",
            "2001:db8::7",
            "-t",
            "10m",
            "-p",
            "4000",
            "-6",
            "-v",
        ])
        .unwrap();
        assert_eq!(args.allow_ip, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(args.timeout, Some(600));
        assert_eq!(args.port, 4000);
        assert_eq!(args.family(), Family::V6);
        assert!(args.verbose);
    }

    #[test]
    fn bad_values_are_named() {
        for (flags, needle) in [
            (&["-A", "sctp/1"][..], "'sctp/1'"),
            (&["-A", "tcp/22,tcp/0"], "'tcp/0'"),
            (&["-A", "tcp/22", "-t", "5x"], "'5x'"),
            (&["-A", "tcp/22", "-a", "10.0.0.300"], "'10.0.0.300'"),
            (&["-A", "tcp/22", "-p", "0"], "'0'"),
            (&["-A", "tcp/22", "-4", "-6"], "--ipv4"),
            (&[], "--access"),
        ] {
            let err = parse(flags).unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
        let long = "g".repeat(65);
        let err = Cli::try_parse_from(["k", "h", "-u", "a", "-k", "k", "-A", "tcp/1", "-g", &long])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 64 bytes, got 65"), "{err}");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("60s").ok(), Some(60));
        assert_eq!(parse_timeout("60").ok(), Some(60));
        assert_eq!(parse_timeout("0").ok(), Some(0));
        assert_eq!(parse_timeout("1h 30m").ok(), Some(5400));
        assert_eq!(parse_timeout("4294967295s").ok(), Some(u32::MAX));
        assert_eq!(parse_timeout("4294967295").ok(), Some(u32::MAX));
        for too_long in [
            "4294967296s",
            "4294967296",
            "99999999999999999999999",
            "200y",
        ] {
            assert!(
                matches!(parse_timeout(too_long), Err(TimeoutError::TooLong)),
                "{too_long}: {:?}",
                parse_timeout(too_long)
            );
        }
        assert!(matches!(
            parse_timeout("1500ms"),
            Err(TimeoutError::Fraction)
        ));
        for bad in ["", "5x", "s", "-1s", "1.5.5s"] {
            assert!(
                matches!(parse_timeout(bad), Err(TimeoutError::Parse(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn gateway_names() {
        assert_eq!(parse_gateway("gw1").ok().as_deref(), Some("gw1"));
        assert!(parse_gateway(&"g".repeat(64)).is_ok());
        assert!(parse_gateway("").is_err());
        assert!(parse_gateway(&"g".repeat(65)).is_err());
    }
}
