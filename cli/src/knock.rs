//! Sending knocks: one TCP SYN, one UDP datagram or one ICMP echo request per
//! [`KnockStep`], exactly as the `knock` client does, with nothing waited for.
//!
//! Every knock uses a fresh socket, so knocks leave from distinct source ports
//! like `knock`'s, and a send never blocks on an answer: knock ports are dropped
//! by the gateway, so there is none.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::icmp;
use knockgate_proto::{KnockStep, Proto};

/// Payload of a UDP knock: one NUL byte, as the `knock` client sends.
const UDP_PAYLOAD: &[u8] = &[0];

/// Why a knock could not be sent. Every variant names the knock and the target.
#[derive(Debug, thiserror::Error)]
pub enum KnockError {
    /// Creating the socket failed (out of file descriptors, protocol unsupported, …).
    #[error("failed to open a socket for {knock} to {target}")]
    Socket {
        /// The knock being sent.
        knock: KnockStep,
        /// Where it was going.
        target: IpAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The TCP SYN could not be sent, or the UDP socket could not be connected
    /// (no route, broadcast address, …).
    #[error("failed to connect for {knock} to {target}")]
    Connect {
        /// The knock being sent.
        knock: KnockStep,
        /// Where it was going.
        target: IpAddr,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The datagram or echo request could not be sent.
    #[error("failed to send {knock} to {target}")]
    Send {
        /// The knock being sent.
        knock: KnockStep,
        /// Where it was going.
        target: IpAddr,
        /// The send error.
        #[source]
        source: io::Error,
    },
    /// Neither an unprivileged ping socket nor a raw socket could be opened.
    #[error(
        "failed to open an ICMP socket for icmp to {target}: ping socket: {ping}; raw socket: {raw} \
         (run as root, grant CAP_NET_RAW, or put your group in sysctl net.ipv4.ping_group_range)"
    )]
    IcmpSocket {
        /// Where the echo request was going.
        target: IpAddr,
        /// Why the `SOCK_DGRAM` ping socket failed.
        ping: io::Error,
        /// Why the `SOCK_RAW` socket failed.
        raw: io::Error,
    },
}

/// Sends one knock to `target` and returns as soon as the packet is handed to
/// the kernel. No DNS, no sleeping, no waiting for an answer.
///
/// - TCP: a non-blocking `connect` sends the SYN; the socket is closed at once.
///   Closing a socket in `SYN_SENT` sends no RST, so the gateway sees exactly
///   one SYN (and, if the port answers, the kernel resets the SYN-ACK).
/// - UDP: one datagram from a connected socket.
/// - ICMP: one echo request, from an unprivileged ping socket if the kernel
///   allows it (`net.ipv4.ping_group_range`), else from a raw socket.
pub fn send_knock(target: IpAddr, knock: &KnockStep) -> Result<(), KnockError> {
    match *knock {
        KnockStep::Port {
            proto: Proto::Tcp,
            port,
        } => send_tcp(target, port, knock),
        KnockStep::Port {
            proto: Proto::Udp,
            port,
        } => send_udp(target, port, knock),
        KnockStep::Icmp => send_icmp(target),
    }
}

/// Sends `knocks` to `target` in order, sleeping `delay` between two knocks
/// (not before the first or after the last). `on_sent` runs right after each
/// knock leaves, before the delay, so callers can log or timestamp it.
/// Stops at the first knock that fails.
pub fn send_sequence(
    target: IpAddr,
    knocks: &[KnockStep],
    delay: Duration,
    mut on_sent: impl FnMut(&KnockStep),
) -> Result<(), KnockError> {
    for (i, knock) in knocks.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        send_knock(target, knock)?;
        on_sent(knock);
    }
    Ok(())
}

fn send_tcp(target: IpAddr, port: u16, knock: &KnockStep) -> Result<(), KnockError> {
    let addr = SocketAddr::new(target, port);
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(|source| KnockError::Socket {
        knock: *knock,
        target,
        source,
    })?;
    match socket.connect(&addr.into()) {
        Ok(()) => Ok(()),
        // The SYN left; the answer (if any) arrives after we are gone.
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        // On loopback the RST can come back inside connect(): the SYN still left.
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(source) => Err(KnockError::Connect {
            knock: *knock,
            target,
            source,
        }),
    }
    // `socket` drops here: close() in SYN_SENT sends nothing, like `knock`.
}

fn send_udp(target: IpAddr, port: u16, knock: &KnockStep) -> Result<(), KnockError> {
    let addr = SocketAddr::new(target, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(
        |source| KnockError::Socket {
            knock: *knock,
            target,
            source,
        },
    )?;
    socket
        .connect(&addr.into())
        .map_err(|source| KnockError::Connect {
            knock: *knock,
            target,
            source,
        })?;
    socket
        .send(UDP_PAYLOAD)
        .map_err(|source| KnockError::Send {
            knock: *knock,
            target,
            source,
        })?;
    Ok(())
}

/// Echo sequence numbers, so successive ICMP knocks are distinguishable in a capture.
static ICMP_SEQ: AtomicU16 = AtomicU16::new(1);

fn send_icmp(target: IpAddr) -> Result<(), KnockError> {
    let (domain, protocol) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let seq = ICMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let (socket, message) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        // A ping socket owns the identifier (its "port") and fills in the checksum.
        Ok(socket) => (socket, echo_request(target, 0, seq)),
        Err(ping) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            // Truncation is fine: the identifier only has to differ between processes.
            Ok(socket) => (socket, echo_request(target, std::process::id() as u16, seq)),
            Err(raw) => return Err(KnockError::IcmpSocket { target, ping, raw }),
        },
    };
    let addr: SockAddr = SocketAddr::new(target, 0).into();
    socket
        .send_to(&message, &addr)
        .map_err(|source| KnockError::Send {
            knock: KnockStep::Icmp,
            target,
            source,
        })?;
    Ok(())
}

fn echo_request(target: IpAddr, id: u16, seq: u16) -> [u8; icmp::ECHO_LEN] {
    match target {
        IpAddr::V4(_) => icmp::echo_request_v4(id, seq),
        IpAddr::V6(_) => icmp::echo_request_v6(id, seq),
    }
}
