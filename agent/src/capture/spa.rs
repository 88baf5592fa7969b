//! SPA datagrams from a UDP socket on the SPA port, read in batches with recvmmsg(2): one
//! system call and one hand-over to the engine for up to [`BATCH`] datagrams, where the
//! capture path costs a wake-up and a hand-over per packet. The socket never sends.
//!
//! The input chain accepts the SPA port only while a socket is bound to it (`socket
//! transparent 0`, docs/ARCHITECTURE.md): with the agent running or not, the port answers
//! nothing, so it looks filtered to a scanner.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use knockgate_agent_core::gateway::KnockMsg;
use knockgate_agent_core::packet::KnockStep;
use socket2::{Domain, Protocol, Socket, Type};

use super::Counters;
use crate::engine::Input;

/// Datagrams read per system call at most.
pub const BATCH: usize = 64;
/// Longer datagrams are no SPA packet (fwknop's longest is 1,500 bytes): cut, then refused.
const DATAGRAM: usize = 1536;
/// How often a blocked read looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// What the kernel queues for the socket while the engine is busy; beyond it, datagrams
/// are dropped (and counted by the kernel) rather than held without bound.
const RECV_BUFFER: usize = 1 << 20;

/// Bind the SPA port on `iface` (every interface for `any`), IPv6 and IPv4 alike.
pub fn open(port: u16, iface: &str) -> io::Result<Socket> {
    let (sock, any) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => {
            s.set_only_v6(false)?;
            (s, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        }
        // A host without IPv6.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => (
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?,
            SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
        ),
        Err(e) => return Err(e),
    };
    if iface != "any" {
        sock.bind_device(Some(iface.as_bytes()))?;
    }
    sock.set_recv_buffer_size(RECV_BUFFER)?;
    sock.set_read_timeout(Some(STOP_CHECK))?;
    sock.bind(&any.into())?;
    Ok(sock)
}

/// Read `sock` until `stop` is set or the engine goes away, handing each batch on as one
/// [`Input::Batch`].
pub fn run(
    sock: &Socket,
    port: u16,
    tx: &SyncSender<Input>,
    stop: &AtomicBool,
    counters: &Arc<Counters>,
) {
    let mut ring = Ring::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match ring.recv(sock) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::error!(port, error = %e, "SPA socket failed; no more SPA packets");
                return;
            }
        };
        let at = Instant::now();
        let batch: Vec<KnockMsg> = (0..n)
            .filter_map(|i| ring.datagram(i))
            .map(|(src, payload)| KnockMsg {
                at,
                src,
                kind: KnockStep::udp(port),
                tcp_flags: 0,
                payload: Some(Box::from(payload)),
                syn: None,
            })
            .collect();
        let count = batch.len() as u64;
        counters.knocks.fetch_add(count, Ordering::Relaxed);
        match tx.try_send(Input::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counters.dropped.fetch_add(count, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// The buffers one recvmmsg(2) fills: a datagram and its sender per slot.
struct Ring {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    /// Per slot: the length received, and whether it was cut.
    got: [(usize, bool); BATCH],
}

impl Ring {
    fn new() -> Ring {
        Ring {
            bufs: Box::new([[0; DATAGRAM]; BATCH]),
            addrs: Box::new([zeroed_storage(); BATCH]),
            got: [(0, false); BATCH],
        }
    }

    /// Block (up to [`STOP_CHECK`]) for at least one datagram, then take every one
    /// queued, up to [`BATCH`]. Returns how many slots hold one.
    #[allow(unsafe_code)] // recvmmsg(2): neither std nor socket2 wraps it
    fn recv(&mut self, sock: &Socket) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.bufs[i].as_mut_ptr().cast(),
            iov_len: DATAGRAM,
        });
        let mut hdrs: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
            // SAFETY: msghdr is plain old data; the fields that matter are set below.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = socklen::<libc::sockaddr_storage>();
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        });
        // SAFETY: every header points at its own iovec, buffer and address in `self`
        // and `iovs`, all alive and unaliased for the call; the kernel writes at most the
        // lengths given. BATCH fits in a u32.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        for (got, h) in self.got.iter_mut().zip(&hdrs).take(n) {
            *got = (
                h.msg_len as usize,
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            );
        }
        Ok(n)
    }

    /// Slot `i`'s sender and datagram; `None` for a cut one (longer than any SPA packet)
    /// or a sender that is not IP.
    fn datagram(&self, i: usize) -> Option<(IpAddr, &[u8])> {
        let (len, cut) = self.got[i];
        if cut {
            return None;
        }
        let src = sender(&self.addrs[i])?;
        Some((src, self.bufs[i].get(..len)?))
    }
}

/// The address in a `sockaddr_storage` the kernel filled, IPv4-mapped IPv6 as IPv4.
#[allow(unsafe_code)] // reading the sockaddr the kernel wrote, by its family
fn sender(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_canonical())
        }
        _ => None,
    }
}

#[allow(unsafe_code)]
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}
