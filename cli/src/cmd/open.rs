//! `knocker open GATEWAY --profile FILE`: ask one gateway of a knockadm-written
//! profile to open access, with a native SPA packet (default) or a packet in
//! the stock fwknop client's format.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum, value_parser};
use knockgate_proto::fwknop::{self, DigestType, FwknopEncodeError, FwknopRequest, msg_type};
use knockgate_proto::spa::{MAX_ACCESS, SealError};
use knockgate_proto::{Access, unix_secs};
use rand::TryRng as _;
use rand::rngs::{SysError, SysRng};

use super::spa::{parse_access, parse_timeout};
use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::profile::{ProfileError, read_profile, split_address};
use crate::resolve::{Family, ResolveError, resolve_host};
use crate::spa::{BuildSpaError, DEFAULT_SPA_PORT, SendSpaError, build_spa, send_spa};

/// fwknop's protocol version, as Debian's fwknop 2.6.10 sends it.
const FWKNOP_VERSION: &str = "3.0.0";
/// Longest client timeout fwknopd (and the agent) accept in an fwknop packet.
const FWKNOP_MAX_TIMEOUT: u32 = 65_536;
/// fwknop's user name limit once base64-encoded is 64 characters: 48 bytes.
const FWKNOP_MAX_USER: usize = 48;

/// How to ask the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Native knockgate SPA, sealed with the profile's spa_key
    Spa,
    /// The stock fwknop client's packet (Rijndael + HMAC), with the profile's
    /// fwknop keys
    Fwknop,
    /// A rotating knock sequence (not supported yet)
    Rotating,
    /// Native SPA with a one-time key (not supported yet)
    Otk,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Spa => "spa",
            Method::Fwknop => "fwknop",
            Method::Rotating => "rotating",
            Method::Otk => "otk",
        }
    }
}

/// Arguments of `knocker open`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The profile is the file 'knockadm user add --profile-out FILE' wrote; it holds
your keys and the address of every gateway you may use.

Examples:
  knocker open gw1 --profile ~/.config/knockgate/alice.toml
  knocker open gw1 --profile alice.toml --method fwknop -A tcp/22,udp/51820 -t 10m")]
pub struct OpenArgs {
    /// Gateway to open, by its name in the profile
    #[arg(value_name = "GATEWAY")]
    pub gateway: String,

    /// Your knocker profile (TOML, from knockadm)
    #[arg(short = 'P', long, value_name = "FILE")]
    pub profile: PathBuf,

    /// How to ask the gateway
    #[arg(short, long, value_enum, default_value_t = Method::Spa)]
    pub method: Method,

    /// Access to open: tcp/PORT or udp/PORT. Repeat the flag or separate
    /// entries with commas (at most 16)
    #[arg(short = 'A', long, value_name = "PROTO/PORT", value_delimiter = ',',
          default_value = "tcp/22", value_parser = parse_access)]
    pub access: Vec<Access>,

    /// How long to keep access open: 30s, 10m, … (a bare number is seconds).
    /// Default: the gateway policy's duration
    #[arg(short, long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u32>,

    /// UDP port to send to. Default: the port in the gateway's address, else 62201
    #[arg(short, long, value_name = "PORT", value_parser = value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Send over IPv4 only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Send over IPv6 only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Print what was sent
    #[arg(short, long)]
    pub verbose: bool,
}

/// Why `knocker open` failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenCmdError {
    /// The profile is unreadable, names no such gateway, or lacks a key (exit 64).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A method reserved for later (exit 64).
    #[error("--method {} is not supported yet (use spa or fwknop)", .0.name())]
    Unsupported(Method),
    /// More `--access` entries than one packet carries (exit 64).
    #[error("too many --access entries: {0} (at most {MAX_ACCESS})")]
    TooManyAccess(usize),
    /// A `--timeout` fwknop cannot carry (exit 64).
    #[error("--timeout must be at most {FWKNOP_MAX_TIMEOUT} seconds with --method fwknop")]
    FwknopTimeout,
    /// The profile's user name cannot travel in an fwknop packet (exit 64).
    #[error(
        "user name '{0}' cannot be sent by fwknop (at most 48 characters, none of \"/\\[]:;|=,+*?<>)"
    )]
    FwknopUser(String),
    /// The gateway's address did not resolve (exit 64).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The native packet could not be built (exit 64 for a bad request, else 1).
    #[error(transparent)]
    Build(#[from] BuildSpaError),
    /// The fwknop packet could not be built (exit 64).
    #[error("cannot build the fwknop packet")]
    Fwknop(#[source] FwknopEncodeError),
    /// The operating system's random source failed (exit 1).
    #[error("failed to read randomness from the operating system")]
    Random(#[source] SysError),
    /// The packet could not be sent (exit 1).
    #[error(transparent)]
    Send(#[from] SendSpaError),
    /// `--verbose` output could not be written (exit 1).
    #[error("failed to write to stdout")]
    Output(#[source] io::Error),
}

impl CommandError for OpenCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            OpenCmdError::Profile(_)
            | OpenCmdError::Unsupported(_)
            | OpenCmdError::TooManyAccess(_)
            | OpenCmdError::FwknopTimeout
            | OpenCmdError::FwknopUser(_)
            | OpenCmdError::Resolve(_)
            | OpenCmdError::Fwknop(_)
            | OpenCmdError::Build(BuildSpaError::Seal(SealError::Invalid(_))) => EXIT_USAGE,
            OpenCmdError::Build(_)
            | OpenCmdError::Random(_)
            | OpenCmdError::Send(_)
            | OpenCmdError::Output(_) => EXIT_FAILURE,
        }
    }
}

impl OpenArgs {
    /// The address family chosen by `-4`/`-6`.
    pub fn family(&self) -> Family {
        match (self.ipv4, self.ipv6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    /// Reads the profile, resolves the gateway, then builds and sends one
    /// packet; with `--verbose`, writes one line to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), OpenCmdError> {
        if matches!(self.method, Method::Rotating | Method::Otk) {
            return Err(OpenCmdError::Unsupported(self.method));
        }
        let mut access = self.access.clone();
        access.sort_unstable();
        access.dedup();
        if access.len() > MAX_ACCESS {
            return Err(OpenCmdError::TooManyAccess(access.len()));
        }
        let profile = read_profile(&self.profile)?;
        let gateway = profile.gateway(&self.gateway, &self.profile)?;
        let (host, address_port) = split_address(&gateway.address);
        if host.is_empty() {
            return Err(ProfileError::NoAddress {
                name: gateway.name.clone(),
                path: self.profile.clone(),
            }
            .into());
        }
        let port = self.port.or(address_port).unwrap_or(DEFAULT_SPA_PORT);
        // Keys are checked before DNS so a broken profile fails fast.
        let (packet, target, what) = match self.method {
            Method::Fwknop => {
                let keys = profile.fwknop_keys(&self.profile)?;
                let target = SocketAddr::new(resolve_host(host, self.family())?, port);
                let wire = self.fwknop_packet(&profile.user.name, &keys, &access)?;
                (wire.into_bytes(), target, "fwknop SPA".to_owned())
            }
            _ => {
                let key = profile.spa_key(&self.profile)?;
                let target = SocketAddr::new(resolve_host(host, self.family())?, port);
                let packet = build_spa(
                    &key,
                    &gateway.name,
                    access.clone(),
                    None,
                    self.timeout.unwrap_or(0),
                    SystemTime::now(),
                )?;
                (packet, target, format!("SPA (key id {})", key.id()))
            }
        };
        send_spa(target, &packet)?;
        if self.verbose {
            let access: Vec<String> = access.iter().map(Access::to_string).collect();
            writeln!(
                out,
                "sent {what} for {} to {} ({target}): access {}, {} bytes",
                profile.user.name,
                gateway.name,
                access.join(","),
                packet.len()
            )
            .and_then(|()| out.flush())
            .map_err(OpenCmdError::Output)?;
        }
        Ok(())
    }

    /// An fwknop access request for the packet's source address, stamped now.
    fn fwknop_packet(
        &self,
        user: &str,
        keys: &fwknop::FwknopKeys,
        access: &[Access],
    ) -> Result<String, OpenCmdError> {
        let timeout = self.timeout.filter(|&t| t > 0);
        if timeout.is_some_and(|t| t > FWKNOP_MAX_TIMEOUT) {
            return Err(OpenCmdError::FwknopTimeout);
        }
        if !fwknop_user_ok(user) {
            return Err(OpenCmdError::FwknopUser(user.to_owned()));
        }
        let mut random = [0u8; 16];
        SysRng
            .try_fill_bytes(&mut random)
            .map_err(OpenCmdError::Random)?;
        let (rand, salt) = random.split_at(8);
        let mut rand_bytes = [0u8; 8];
        rand_bytes.copy_from_slice(rand);
        let mut salt_bytes = [0u8; 8];
        salt_bytes.copy_from_slice(salt);
        let req = FwknopRequest {
            rand: format!(
                "{:016}",
                u64::from_le_bytes(rand_bytes) % 10_000_000_000_000_000
            ),
            user: user.to_owned(),
            timestamp: unix_secs(SystemTime::now()),
            version: FWKNOP_VERSION.to_owned(),
            msg_type: if timeout.is_some() {
                msg_type::CLIENT_TIMEOUT_ACCESS
            } else {
                msg_type::ACCESS
            },
            allow_ip: Ipv4Addr::UNSPECIFIED,
            access: access.to_vec(),
            command: None,
            nat_access: None,
            server_auth: None,
            client_timeout: timeout,
            digest_type: DigestType::Sha256,
        };
        fwknop::encode(keys, &req, salt_bytes).map_err(OpenCmdError::Fwknop)
    }
}

/// fwknop's `validate_username`, on the raw name.
fn fwknop_user_ok(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= FWKNOP_MAX_USER
        && user
            .bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && !b"\"/\\[]:;|=,+*?<>".contains(&c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests unwrap by design
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        open: OpenArgs,
    }

    fn parse(extra: &[&str]) -> Result<OpenArgs, clap::Error> {
        let base = ["knocker", "gw1", "--profile", "p.toml"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.open)
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.gateway, "gw1");
        assert_eq!(args.profile, PathBuf::from("p.toml"));
        assert_eq!(args.method, Method::Spa);
        assert_eq!(args.access, vec![Access::tcp(22)]);
        assert_eq!(args.timeout, None);
        assert_eq!(args.port, None);
        assert_eq!(args.family(), Family::Any);
    }

    #[test]
    fn flags() {
        let args = parse(&[
            "-m",
            "fwknop",
            "-A",
            "tcp/22,udp/53",
            "-t",
            "60s",
            "-p",
            "4000",
            "-4",
            "-v",
        ])
        .unwrap();
        assert_eq!(args.method, Method::Fwknop);
        assert_eq!(args.access, vec![Access::tcp(22), Access::udp(53)]);
        assert_eq!(args.timeout, Some(60));
        assert_eq!(args.port, Some(4000));
        assert_eq!(args.family(), Family::V4);
        assert!(args.verbose);
        for bad in [
            &["-m", "knock"][..],
            &["-A", "sctp/1"],
            &["-p", "0"],
            &["-t", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn later_methods_are_refused_clearly() {
        for method in ["rotating", "otk"] {
            let args = parse(&["--method", method]).unwrap();
            let err = args.run(&mut Vec::new()).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_USAGE);
            assert_eq!(
                err.to_string(),
                format!("--method {method} is not supported yet (use spa or fwknop)")
            );
        }
    }

    #[test]
    fn fwknop_user_names() {
        assert!(fwknop_user_ok("alice"));
        assert!(fwknop_user_ok("a.b-c_d"));
        assert!(fwknop_user_ok(&"a".repeat(48)));
        for bad in ["", "a:b", "a/b", "a,b", "a=b", "é"] {
            assert!(!fwknop_user_ok(bad), "{bad}");
        }
        assert!(!fwknop_user_ok(&"a".repeat(49)));
    }
}
