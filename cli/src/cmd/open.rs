//! `knocker open GATEWAY --profile FILE`: ask one gateway of a knockadm-written
//! profile to open access, with a native SPA packet (default), a packet in the
//! stock fwknop client's format, a native SPA packet under a one-time key, or
//! the rotating knock sequence of the current window (`open/rotating.rs`).
//! Without `--access`, what to ask for comes from the profile (`open/access.rs`).

mod access;
mod rotating;
mod sealed;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum, value_parser};
use knockgate_proto::fwknop::{self, DigestType, FwknopEncodeError, FwknopRequest, msg_type};
use knockgate_proto::scope::gateway_otk;
use knockgate_proto::spa::{MAX_ACCESS, SealError, SpaKey};
use knockgate_proto::{Access, unix_secs};
use rand::TryRng as _;
use rand::rngs::{SysError, SysRng};

use super::knock::parse_delay;
use super::spa::{parse_access, parse_timeout};
use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::knock::KnockError;
use crate::otk::{self, CounterError};
use crate::profile::{Profile, ProfileError, ProfileGateway, read_profile, split_address};
use crate::resolve::{Family, ResolveError, resolve_host};
use crate::spa::{
    BuildSpaError, DEFAULT_SPA_PORT, SendSpaError, bind_to_sender, build_spa, send_spa,
};

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
    /// The current window's rotating knock sequence, derived from the
    /// profile's rotating_secret
    Rotating,
    /// Native SPA under the next one-time key (derived from the profile's
    /// rotating_secret; the counter is kept in FILE.otk)
    Otk,
    /// A sealed knock sequence: the request encrypted into the ports of 17
    /// to 33 TCP knocks, under the profile's spa_key (proto/sealed.md)
    Sealed,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Spa => "spa",
            Method::Fwknop => "fwknop",
            Method::Rotating => "rotating",
            Method::Otk => "otk",
            Method::Sealed => "sealed",
        }
    }
}

/// Arguments of `knocker open`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The profile is the file 'knockadm user add --profile-out FILE' wrote; it holds
your keys, the address of every gateway you may use, the policies admitting you
there and the settings of its rotating policies ('knockadm user profile NAME
--update FILE' brings it up to date after policies change).

Without --access, knocker asks for everything the profile says your policy at
the gateway opens, if exactly one policy there allows the method; with none or
several it names them and asks for --access. A profile that lists no policies
for the gateway (written before they were listed) asks for tcp/22.

--method otk uses each one-time key once: the number of the next one is kept in
FILE.otk (created at 0), moved on before the packet is sent. A key reserved but
never sent is simply skipped: gateways hold the next several keys after the last
one used, so a client that skipped ahead is still let in.

--method rotating sends the current window's sequence; if the window is about to
end, it waits for the next one so the sequence does not straddle the boundary.

--method sealed knocks 17 TCP ports (21 with an IPv4 --allow-ip, 33 with IPv6)
whose numbers carry the request, encrypted and authenticated: nothing about the
sequence is configured at the gateway, and no two sequences are alike. The
gateway opens the address the knocks come from, as this host sees it; behind a
NAT, give your public address with --allow-ip.

Examples:
  knocker open gw1 --profile ~/.config/knockgate/alice.toml
  knocker open gw1 --profile alice.toml --method fwknop -A tcp/22,udp/51820 -t 10m
  knocker open gw1 --profile alice.toml --method otk -A tcp/22 -t 60s
  knocker open gw1 --profile alice.toml --method rotating --policy ssh --verbose
  knocker open gw1 --profile alice.toml --method sealed -A tcp/22")]
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
    /// entries with commas (at most 16). Default: what the one policy at the
    /// gateway allowing the method opens, per the profile (tcp/22 when the
    /// profile lists no policies there). Not with rotating: its policy says
    /// what opens
    #[arg(short = 'A', long, value_name = "PROTO/PORT", value_delimiter = ',',
          value_parser = parse_access)]
    pub access: Vec<Access>,

    /// How long to keep access open: 30s, 10m, … (a bare number is seconds).
    /// Default: the gateway policy's duration. Not with rotating
    #[arg(short, long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u32>,

    /// UDP port to send SPA to. Default: the port in the gateway's address,
    /// else 62201. Not with rotating
    #[arg(short, long, value_name = "PORT", value_parser = value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Rotating only: the rotating policy to knock for, by name. Default: the
    /// gateway's first in the profile
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,

    /// Rotating and sealed only: wait this long between two knocks: 50ms, 1s,
    /// … (a bare number is milliseconds). Default: 20ms rotating, 1ms sealed
    #[arg(short, long, value_name = "DURATION", value_parser = parse_delay)]
    pub delay: Option<Duration>,

    /// Address to open access for. Default: the address this host sends
    /// from, sealed into the packet. Behind a NAT, give your public address.
    /// Not with rotating
    #[arg(short = 'a', long, value_name = "IP", conflicts_with = "source_any")]
    pub allow_ip: Option<IpAddr>,

    /// Seal no address: open whatever address the packet arrives from. Weaker:
    /// a copy taken off the wire and resent from elsewhere before yours arrives
    /// opens the gateway for the sender of the copy. Not with rotating
    #[arg(long)]
    pub source_any: bool,

    /// Sealed only: the first port of the gateway's sealed range (its
    /// spa.sealed_base_port). Default: 20000
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,

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
    /// A flag given with a method it does not apply to (exit 64).
    #[error("{flag} does not apply to --method {}", .method.name())]
    FlagNotForMethod {
        /// The flag, as typed in its long form.
        flag: &'static str,
        /// The method chosen.
        method: Method,
    },
    /// No `--access`, and the profile does not say what to ask for (exit 64).
    #[error(transparent)]
    Access(#[from] access::ChooseAccessError),
    /// More `--access` entries than one packet carries (exit 64).
    #[error("too many --access entries: {0} (at most {MAX_ACCESS})")]
    TooManyAccess(usize),
    /// A sealed sequence carries exactly one access (exit 64).
    #[error("a sealed sequence asks for exactly one access: give one --access (not {0})")]
    SealedAccess(usize),
    /// The sealed range from `--base-port` does not fit below port 65536 (exit 64).
    #[error("--base-port {0}: the sealed range of {n} ports must end by 65535", n = knockgate_proto::sealed::RANGE)]
    SealedBase(u16),
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
    /// No one-time key number could be reserved (exit 64 when the counter file
    /// does not hold a number, else 1).
    #[error(transparent)]
    Counter(#[from] CounterError),
    /// A rotating knock could not be sent (exit 1).
    #[error(transparent)]
    Knock(#[from] KnockError),
    /// The fwknop packet could not be built (exit 64).
    #[error("cannot build the fwknop packet")]
    Fwknop(#[source] FwknopEncodeError),
    /// fwknop can only seal an IPv4 address (exit 64).
    #[error(
        "fwknop packets seal IPv4 addresses only: use -4, --allow-ip with an IPv4 address, or --source-any"
    )]
    FwknopIpv6,
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
            OpenCmdError::Counter(err) if err.is_corrupt() => EXIT_USAGE,
            OpenCmdError::Profile(_)
            | OpenCmdError::FlagNotForMethod { .. }
            | OpenCmdError::Access(_)
            | OpenCmdError::TooManyAccess(_)
            | OpenCmdError::SealedAccess(_)
            | OpenCmdError::SealedBase(_)
            | OpenCmdError::FwknopTimeout
            | OpenCmdError::FwknopUser(_)
            | OpenCmdError::FwknopIpv6
            | OpenCmdError::Resolve(_)
            | OpenCmdError::Fwknop(_)
            | OpenCmdError::Build(BuildSpaError::Seal(SealError::Invalid(_))) => EXIT_USAGE,
            OpenCmdError::Build(_)
            | OpenCmdError::Counter(_)
            | OpenCmdError::Knock(_)
            | OpenCmdError::Random(_)
            | OpenCmdError::Send(_)
            | OpenCmdError::Output(_) => EXIT_FAILURE,
        }
    }
}

/// One packet ready to send, and what `--verbose` says about it.
struct Sealed {
    packet: Vec<u8>,
    target: SocketAddr,
    /// The address the packet asks to let in (`None`: its source address).
    allow: Option<IpAddr>,
    what: String,
}

/// The `--verbose` line: what was sent, where, for whom.
fn tell_sent(
    out: &mut dyn Write,
    sealed: &Sealed,
    profile: &Profile,
    gateway: &ProfileGateway,
    access: &[Access],
) -> Result<(), OpenCmdError> {
    let Sealed {
        packet,
        target,
        allow,
        what,
    } = sealed;
    let access: Vec<String> = access.iter().map(Access::to_string).collect();
    let allow = allow.map_or_else(|| "<source>".to_owned(), |ip| ip.to_string());
    writeln!(
        out,
        "sent {what} for {} to {} ({target}): access {}, allow {allow}, {} bytes",
        profile.user.name,
        gateway.name,
        access.join(","),
        packet.len()
    )
    .and_then(|()| out.flush())
    .map_err(OpenCmdError::Output)
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

    /// Reads the profile, resolves the gateway, then sends one packet or the
    /// rotating sequence; with `--verbose`, writes what was sent to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), OpenCmdError> {
        self.check_flags()?;
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
        match self.method {
            Method::Rotating => rotating::run(self, &profile, gateway, host, out),
            Method::Sealed => sealed::run(self, &profile, gateway, host, out),
            Method::Spa | Method::Fwknop | Method::Otk => {
                let port = self.port.or(address_port).unwrap_or(DEFAULT_SPA_PORT);
                self.send_packet(&profile, gateway, host, port, out)
            }
        }
    }

    /// Refuses flags that mean nothing to the chosen method, rather than
    /// ignoring what the user asked for.
    fn check_flags(&self) -> Result<(), OpenCmdError> {
        let rotating = self.method == Method::Rotating;
        let sealed = self.method == Method::Sealed;
        let misplaced = [
            ("--access", rotating && !self.access.is_empty()),
            ("--timeout", (rotating || sealed) && self.timeout.is_some()),
            ("--port", (rotating || sealed) && self.port.is_some()),
            ("--allow-ip", rotating && self.allow_ip.is_some()),
            // A sealed sequence always binds an address: the sender's, or --allow-ip.
            ("--source-any", (rotating || sealed) && self.source_any),
            ("--policy", !rotating && self.policy.is_some()),
            ("--delay", !(rotating || sealed) && self.delay.is_some()),
            ("--base-port", !sealed && self.base_port.is_some()),
        ];
        match misplaced.iter().find(|(_, bad)| *bad) {
            Some((flag, _)) => Err(OpenCmdError::FlagNotForMethod {
                flag,
                method: self.method,
            }),
            None => Ok(()),
        }
    }

    /// The access asked for, sorted and deduplicated; without `--access`, what
    /// the profile says the policy at `gateway` allowing the method opens.
    fn access(&self, gateway: &ProfileGateway) -> Result<Vec<Access>, OpenCmdError> {
        if self.access.is_empty() {
            return Ok(access::choose(gateway, self.method.name())?);
        }
        let mut access = self.access.clone();
        access.sort_unstable();
        access.dedup();
        if access.len() > MAX_ACCESS {
            return Err(OpenCmdError::TooManyAccess(access.len()));
        }
        Ok(access)
    }

    /// One SPA packet (native, one-time key or fwknop) to `host:port`.
    fn send_packet(
        &self,
        profile: &Profile,
        gateway: &ProfileGateway,
        host: &str,
        port: u16,
        out: &mut dyn Write,
    ) -> Result<(), OpenCmdError> {
        let access = self.access(gateway)?;
        let sealed = match self.method {
            Method::Fwknop => self.seal_fwknop(profile, gateway, host, port, &access)?,
            Method::Otk => self.seal_otk(profile, gateway, host, port, &access)?,
            // `run` sends knock sequences elsewhere; only Spa gets here.
            Method::Spa | Method::Rotating | Method::Sealed => {
                self.seal_spa(profile, gateway, host, port, &access)?
            }
        };
        send_spa(sealed.target, &sealed.packet)?;
        if self.verbose {
            tell_sent(out, &sealed, profile, gateway, &access)?;
        }
        Ok(())
    }

    /// The gateway's address in `family`, and the address the packet asks to
    /// let in. The seal functions check keys before calling it, so a broken
    /// profile fails before any DNS lookup.
    fn target(
        &self,
        host: &str,
        port: u16,
        family: Family,
    ) -> Result<(SocketAddr, Option<IpAddr>), OpenCmdError> {
        let target = SocketAddr::new(resolve_host(host, family)?, port);
        let allow = bind_to_sender(target, self.allow_ip, self.source_any)?;
        Ok((target, allow))
    }

    /// A native SPA packet under `key` for `gateway`, stamped now.
    fn native(
        &self,
        key: &SpaKey,
        gateway: &ProfileGateway,
        access: &[Access],
        allow: Option<IpAddr>,
    ) -> Result<Vec<u8>, OpenCmdError> {
        Ok(build_spa(
            key,
            &gateway.name,
            access.to_vec(),
            allow,
            self.timeout.unwrap_or(0),
            SystemTime::now(),
        )?)
    }

    /// A packet in the stock fwknop client's format, under the gateway's fwknop keys.
    fn seal_fwknop(
        &self,
        profile: &Profile,
        gateway: &ProfileGateway,
        host: &str,
        port: u16,
        access: &[Access],
    ) -> Result<Sealed, OpenCmdError> {
        let keys = profile.gateway_fwknop_keys(&gateway.name, &self.profile)?;
        // fwknop's allow-IP field is IPv4 only.
        let family = match self.family() {
            Family::Any if self.allow_ip.is_some_and(|ip| ip.is_ipv4()) => Family::V4,
            f => f,
        };
        let (target, allow) = self.target(host, port, family)?;
        let allow_v4 = match allow {
            None => None,
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(IpAddr::V6(_)) => return Err(OpenCmdError::FwknopIpv6),
        };
        let wire = self.fwknop_packet(&profile.user.name, &keys, access, allow_v4)?;
        Ok(Sealed {
            packet: wire.into_bytes(),
            target,
            allow,
            what: "fwknop SPA".to_owned(),
        })
    }

    /// A native SPA packet under the next one-time key, whose counter is moved
    /// on before anything is sent.
    fn seal_otk(
        &self,
        profile: &Profile,
        gateway: &ProfileGateway,
        host: &str,
        port: u16,
        access: &[Access],
    ) -> Result<Sealed, OpenCmdError> {
        let secret = profile.rotating_secret("--method otk", &self.profile)?;
        let (target, allow) = self.target(host, port, self.family())?;
        // Moved on before anything is sent: this key is never used again.
        let counter = otk::reserve(&self.profile)?;
        let key =
            gateway_otk(&secret, &gateway.name, counter).map_err(|err| ProfileError::BadKey {
                field: "rotating_secret",
                reason: format!("gateway {:?}: {err}", gateway.name),
                path: self.profile.clone(),
            })?;
        let what = format!("one-time SPA (key {counter}, key id {})", key.id());
        Ok(Sealed {
            packet: self.native(&key, gateway, access, allow)?,
            target,
            allow,
            what,
        })
    }

    /// A native SPA packet under the gateway's SPA key.
    fn seal_spa(
        &self,
        profile: &Profile,
        gateway: &ProfileGateway,
        host: &str,
        port: u16,
        access: &[Access],
    ) -> Result<Sealed, OpenCmdError> {
        let key = profile.gateway_spa_key(&gateway.name, &self.profile)?;
        let (target, allow) = self.target(host, port, self.family())?;
        let what = format!("SPA (key id {})", key.id());
        Ok(Sealed {
            packet: self.native(&key, gateway, access, allow)?,
            target,
            allow,
            what,
        })
    }

    /// An fwknop access request for `allow_ip` (`None`: the packet's source address),
    /// stamped now.
    fn fwknop_packet(
        &self,
        user: &str,
        keys: &fwknop::FwknopKeys,
        access: &[Access],
        allow_ip: Option<Ipv4Addr>,
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
            allow_ip: allow_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
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
mod tests;
