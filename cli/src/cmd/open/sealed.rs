//! `knocker open --method sealed`: one access request sealed into the ports of a knock
//! sequence (`proto/sealed.md`) under the gateway's SPA key from the profile, sent with
//! the ordinary knock sender as TCP SYNs.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use knockgate_proto::sealed::{self, DEFAULT_BASE_PORT, Request, SealedKeys};
use knockgate_proto::{KnockStep, Proto, unix_secs};
use rand::TryRng as _;
use rand::rngs::SysRng;

use super::{OpenArgs, OpenCmdError};
use crate::knock::send_sequence;
use crate::profile::{Profile, ProfileGateway};
use crate::resolve::resolve_host;
use crate::spa::bind_to_sender;

/// Time between two knocks unless `--delay` says otherwise: enough to keep them in
/// order on most paths (the gateway puts them back in order anyway).
pub const DEFAULT_DELAY: Duration = Duration::from_millis(1);

/// Seals the request and knocks it; with `--verbose`, says what was sent to `out`.
pub(super) fn run(
    args: &OpenArgs,
    profile: &Profile,
    gateway: &ProfileGateway,
    host: &str,
    out: &mut dyn Write,
) -> Result<(), OpenCmdError> {
    let key = profile.gateway_spa_key(&gateway.name, &args.profile)?;
    let access = match args.access(gateway)?[..] {
        [one] => one,
        ref many => return Err(OpenCmdError::SealedAccess(many.len())),
    };
    let base = args.base_port.unwrap_or(DEFAULT_BASE_PORT);
    if sealed::range(base).is_none() {
        return Err(OpenCmdError::SealedBase(base));
    }
    let target = resolve_host(host, args.family())?;
    // The address the gateway will see the knocks come from: bound by the tag unless an
    // address to open is carried.
    let source = bind_to_sender(SocketAddr::new(target, base), None, false)?.unwrap_or(target);
    let mut nonce = [0u8; 2];
    SysRng
        .try_fill_bytes(&mut nonce)
        .map_err(OpenCmdError::Random)?;
    let request = Request {
        timestamp: u32::try_from(unix_secs(SystemTime::now())).unwrap_or(u32::MAX),
        nonce: u16::from_be_bytes(nonce),
        access,
        allow_ip: args.allow_ip,
    };
    let sealed = sealed::seal(&SealedKeys::derive(&key), &gateway.name, source, &request);
    let knocks: Vec<KnockStep> = sealed
        .ports(base)
        .map(|port| KnockStep::Port {
            proto: Proto::Tcp,
            port,
        })
        .collect();
    send_sequence(target, &knocks, args.delay.unwrap_or(DEFAULT_DELAY), |_| {})?;
    if args.verbose {
        let allow: IpAddr = args.allow_ip.unwrap_or(source);
        let ports: Vec<String> = knocks.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "sent a sealed sequence for {} to {} ({target}): access {access}, allow {allow}, {} knocks: {}",
            profile.user.name,
            gateway.name,
            knocks.len(),
            ports.join(" "),
        )
        .and_then(|()| out.flush())
        .map_err(OpenCmdError::Output)?;
    }
    Ok(())
}
