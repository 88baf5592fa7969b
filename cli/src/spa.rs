//! Native SPA from the client side: sealing one request under the user's key
//! with fresh operating-system randomness ([`build_spa`]), and sending it as
//! one UDP datagram ([`send_spa`]). The format itself lives in
//! `knockgate_proto::spa`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use knockgate_proto::Access;
use knockgate_proto::spa::{NONCE_LEN, SealError, SpaKey, SpaRequest, seal};
use rand::TryRng as _;
use rand::rngs::{SysError, SysRng};
use socket2::{Domain, Protocol, Socket, Type};

/// UDP port knockgate agents listen on for SPA unless told otherwise (the
/// port fwknop uses).
pub use knockgate_proto::policy::DEFAULT_SPA_PORT;

/// Length of the replay nonce sealed inside the body.
const REPLAY_NONCE_LEN: usize = 16;

/// Why an SPA packet could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildSpaError {
    /// The operating system's random source failed.
    #[error("failed to read randomness from the operating system")]
    Random(#[source] SysError),
    /// The request is out of bounds (gateway name length, access count, port 0).
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Why an SPA packet could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendSpaError {
    /// Creating the UDP socket failed.
    #[error("failed to open a udp socket for {target}")]
    Socket {
        /// Where the packet was going.
        target: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The datagram could not be sent (no route, broadcast address, …).
    #[error("failed to send the spa packet to {target}")]
    Send {
        /// Where the packet was going.
        target: SocketAddr,
        /// The send error.
        #[source]
        source: io::Error,
    },
    /// No local address routes to the gateway, so there is none to bind the packet to.
    #[error(
        "cannot tell which address a packet to {target} leaves from (use --allow-ip or --source-any)"
    )]
    Source {
        /// Where the packet was going.
        target: SocketAddr,
        /// The routing error.
        #[source]
        source: io::Error,
    },
}

/// The address a packet should ask to open. `allow_ip` when given; else, unless
/// `source_any`, the address a packet to `target` leaves from, so a copy taken off the
/// wire and resent from another address opens nothing. `None` (only with `source_any`)
/// asks for whatever source address the packet arrives from.
///
/// Behind a NAT the gateway sees another address than this one: name the public one with
/// `allow_ip`.
///
/// # Errors
/// [`SendSpaError::Source`] when no route leads to `target`.
pub fn bind_to_sender(
    target: SocketAddr,
    allow_ip: Option<IpAddr>,
    source_any: bool,
) -> Result<Option<IpAddr>, SendSpaError> {
    if allow_ip.is_some() || source_any {
        return Ok(allow_ip);
    }
    source_for(target)
        .map(Some)
        .map_err(|source| SendSpaError::Source { target, source })
}

/// The local address the kernel picks for a packet to `target` (nothing is sent).
fn source_for(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// Seals a native SPA request for `gateway` under `key`, stamped with `now`.
///
/// `allow_ip` of `None` asks for the packet's source address; `duration_secs`
/// of 0 asks for the policy's default duration. The replay nonce and the AEAD
/// nonce come from one read of the operating system's random source.
///
/// # Errors
/// [`BuildSpaError::Seal`] when the request is out of bounds (empty or
/// over-long gateway name, 0 or more than 16 access entries, port 0);
/// [`BuildSpaError::Random`] when the OS cannot supply randomness.
pub fn build_spa(
    key: &SpaKey,
    gateway: &str,
    access: Vec<Access>,
    allow_ip: Option<IpAddr>,
    duration_secs: u32,
    now: SystemTime,
) -> Result<Vec<u8>, BuildSpaError> {
    let mut random = [0u8; REPLAY_NONCE_LEN + NONCE_LEN];
    SysRng
        .try_fill_bytes(&mut random)
        .map_err(BuildSpaError::Random)?;
    let (replay, aead) = random.split_at(REPLAY_NONCE_LEN);
    let mut nonce = [0u8; REPLAY_NONCE_LEN];
    nonce.copy_from_slice(replay);
    let mut aead_nonce = [0u8; NONCE_LEN];
    aead_nonce.copy_from_slice(aead);
    // Built field by field rather than with `SpaRequest::new`, whose rng
    // argument must be infallible: an OS randomness failure here is an
    // error to report, not a panic.
    let req = SpaRequest {
        timestamp: knockgate_proto::unix_secs(now),
        nonce,
        gateway: gateway.to_owned(),
        allow_ip,
        access,
        duration_secs,
    };
    Ok(seal(key, &req, aead_nonce)?)
}

/// Sends `packet` to `target` as one UDP datagram: one socket (bound by the
/// kernel to an ephemeral port), one `sendto`, nothing waited for.
///
/// # Errors
/// [`SendSpaError`] naming `target` when the socket cannot be opened or the
/// datagram cannot be sent whole.
pub fn send_spa(target: SocketAddr, packet: &[u8]) -> Result<(), SendSpaError> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(|source| SendSpaError::Socket { target, source })?;
    let sent = socket
        .send_to(packet, &target.into())
        .map_err(|source| SendSpaError::Send { target, source })?;
    if sent != packet.len() {
        return Err(SendSpaError::Send {
            target,
            source: io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", packet.len()),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use knockgate_proto::spa::{BodyError, open};
    use std::net::Ipv4Addr;
    use std::time::{Duration, UNIX_EPOCH};

    fn key() -> SpaKey {
        SpaKey::from_secret([7; 32])
    }

    #[test]
    fn builds_a_packet_the_gateway_opens() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let allow = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let access = vec![Access::tcp(22), Access::udp(53)];
        let packet = build_spa(&key(), "gw1", access.clone(), Some(allow), 60, now).unwrap();
        let req = open(&key(), &packet).unwrap();
        assert_eq!(req.timestamp, 1_700_000_000);
        assert_eq!(req.gateway, "gw1");
        assert_eq!(req.access, access);
        assert_eq!(req.allow_ip, Some(allow));
        assert_eq!(req.duration_secs, 60);
    }

    #[test]
    fn one_port_short_gateway_is_88_bytes() {
        let packet = build_spa(
            &key(),
            "gw1",
            vec![Access::tcp(22)],
            None,
            0,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(packet.len(), 88);
    }

    #[test]
    fn nonces_differ_between_packets() {
        let build = || build_spa(&key(), "g", vec![Access::tcp(22)], None, 0, UNIX_EPOCH);
        let (a, b) = (build().unwrap(), build().unwrap());
        assert_ne!(a, b);
        assert_ne!(
            open(&key(), &a).unwrap().nonce,
            open(&key(), &b).unwrap().nonce
        );
    }

    #[test]
    fn out_of_bounds_requests_are_refused() {
        let err = build_spa(&key(), "", vec![Access::tcp(22)], None, 0, UNIX_EPOCH).unwrap_err();
        assert!(matches!(
            err,
            BuildSpaError::Seal(SealError::Invalid(BodyError::GatewayLength(0)))
        ));
        let err = build_spa(&key(), "g", vec![], None, 0, UNIX_EPOCH).unwrap_err();
        assert!(matches!(
            err,
            BuildSpaError::Seal(SealError::Invalid(BodyError::AccessCount(0)))
        ));
    }
}
