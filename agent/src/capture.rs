//! Capture: libpcap in immediate mode on each interface, inbound only, with a BPF filter
//! compiled from the policies. Each interface gets one blocking thread that parses frames
//! and hands knocks to the engine through a bounded channel; when the engine falls behind,
//! knocks are dropped and counted rather than queued without bound. When a new config
//! changes what to listen for, [`Tuning`] carries the new filter to every thread.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use knockgate_agent_core::p0f;
use knockgate_agent_core::packet::{self, KnockStep, LinkType};
use knockgate_agent_core::ruleset::Proto;
use pcap::{Active, BreakLoop, Capture, Direction, Linktype};

use crate::engine::Input;

/// One knock, owned, as it travels from a capture thread to the engine.
pub use knockgate_agent_core::gateway::KnockMsg;

/// Why capture could not start on an interface.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture on {iface}: {source}")]
    Open { iface: String, source: pcap::Error },
    #[error("cannot set capture filter {filter:?} on {iface}: {source}")]
    Filter {
        iface: String,
        filter: String,
        source: pcap::Error,
    },
    #[error("interface {iface} has link type {linktype} which knockgate does not parse")]
    LinkType { iface: String, linktype: i32 },
}

/// An opened, filtered capture, not yet running.
pub struct Opened {
    iface: String,
    framing: Framing,
    cap: Capture<Active>,
}

/// What a capture reads: frames of a link, or the nflog group kernel doors report
/// completed sequences on.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Link(LinkType),
    Nflog,
}

/// The kernel ring a link capture reads from. Only knocks of sequences matched in user
/// space, sealed and rotating knocks and ICMP echo requests pass the filter (fixed
/// sequences are matched in the kernel, SPA has its socket): 256 KiB holds thousands of
/// them, and is what the agent's idle memory is mostly made of.
const CAPTURE_BUFFER: i32 = 256 << 10;

/// libpcap's link type for an `nflog:GROUP` device.
const DLT_NFLOG: i32 = 239;

/// Open the nflog group the kernel doors log their completions to. Done before the
/// firewall is touched: a door is installed only with someone to hear it.
pub fn open_nflog(group: u16) -> Result<Opened, CaptureError> {
    let iface = format!("nflog:{group}");
    let open_err = |source| CaptureError::Open {
        iface: iface.clone(),
        source,
    };
    // Non-blocking, read when `readable` says so: libpcap's breakloop does not wake a
    // blocked nflog read, so a blocking one would keep the agent from stopping.
    let cap = Capture::from_device(iface.as_str())
        .map_err(open_err)?
        .immediate_mode(true)
        .buffer_size(256 << 10)
        .timeout(100)
        .open()
        .map_err(open_err)?
        .setnonblock()
        .map_err(open_err)?;
    match cap.get_datalink() {
        Linktype(DLT_NFLOG) => Ok(Opened {
            iface,
            framing: Framing::Nflog,
            cap,
        }),
        Linktype(other) => Err(CaptureError::LinkType {
            iface,
            linktype: other,
        }),
    }
}

/// Open `iface` with the knock filter. Done before the firewall is touched, so a bad
/// interface leaves nothing installed.
pub fn open(iface: &str, filter: &str) -> Result<Opened, CaptureError> {
    let open_err = |source| CaptureError::Open {
        iface: iface.to_string(),
        source,
    };
    let mut cap = Capture::from_device(iface)
        .map_err(open_err)?
        .immediate_mode(true)
        .snaplen(2048)
        .buffer_size(CAPTURE_BUFFER)
        .timeout(100)
        .open()
        .map_err(open_err)?;
    cap.direction(Direction::In).map_err(open_err)?;
    cap.filter(filter, true)
        .map_err(|source| CaptureError::Filter {
            iface: iface.to_string(),
            filter: filter.to_string(),
            source,
        })?;
    let link = match cap.get_datalink() {
        Linktype::ETHERNET => LinkType::Ethernet,
        Linktype::LINUX_SLL => LinkType::LinuxSll,
        Linktype(12) | Linktype(101) => LinkType::RawIp,
        Linktype(other) => {
            return Err(CaptureError::LinkType {
                iface: iface.to_string(),
                linktype: other,
            });
        }
    };
    Ok(Opened {
        iface: iface.to_string(),
        framing: Framing::Link(link),
        cap,
    })
}

/// What the capture threads listen for: the BPF filter, and the SPA port whose datagram
/// bodies go to the engine. Changed by the engine when it applies a new config; each
/// thread is woken from its blocking read (libpcap's breakloop) to pick the change up.
pub struct Tuning {
    generation: AtomicU64,
    state: Mutex<(String, Option<u16>)>,
    /// Whether TCP knocks come with their SYN's p0f fields (a policy requires an OS);
    /// read per packet, so no wake-up is needed.
    fingerprint: AtomicBool,
    /// One per capture thread. A blocked read does not return on libpcap's read timeout
    /// when no packet passes the filter, so a change must wake it.
    wakers: Mutex<Vec<BreakLoop>>,
}

impl std::fmt::Debug for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuning")
            .field("generation", &self.generation)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Tuning {
    pub fn new(filter: String, spa_port: Option<u16>) -> Arc<Tuning> {
        Arc::new(Tuning {
            generation: AtomicU64::new(0),
            state: Mutex::new((filter, spa_port)),
            fingerprint: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Listen with `filter`, and hand `spa_port`'s datagrams on as SPA.
    pub fn set(&self, filter: String, spa_port: Option<u16>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if *state == (filter.clone(), spa_port) {
            return;
        }
        *state = (filter, spa_port);
        self.generation.fetch_add(1, Ordering::Release);
        drop(state);
        if let Ok(wakers) = self.wakers.lock() {
            for w in wakers.iter() {
                w.breakloop();
            }
        }
    }

    /// Hand TCP knocks on with their SYN's p0f fields, or not.
    pub fn set_fingerprint(&self, on: bool) {
        self.fingerprint.store(on, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The filter and SPA port the threads are told to use now.
    pub fn get(&self) -> Option<(String, Option<u16>)> {
        self.state.lock().ok().map(|s| s.clone())
    }
}

/// Counters a capture thread keeps.
#[derive(Debug, Default)]
pub struct Counters {
    pub knocks: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running capture thread and the handle that wakes it to stop.
pub struct Running {
    pub thread: JoinHandle<()>,
    breaker: BreakLoop,
}

impl Running {
    /// Stop the thread: libpcap's breakloop wakes a blocked read (libpcap >= 1.10).
    pub fn stop(self) {
        self.breaker.breakloop();
        let _ = self.thread.join();
    }
}

/// Wait up to `ms` for `fd` to be readable.
#[allow(unsafe_code)] // poll(2): std has no wrapper for it
fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
    let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Run a capture on its own thread until `stop` is set or the engine goes away.
pub fn spawn(
    opened: Opened,
    tx: SyncSender<Input>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tuning: Arc<Tuning>,
) -> std::io::Result<Running> {
    let Opened {
        iface,
        framing,
        mut cap,
    } = opened;
    let breaker = cap.breakloop_handle();
    let nflog_fd = match framing {
        Framing::Nflog => Some(cap.as_raw_fd()),
        // Only link captures are retuned.
        Framing::Link(_) => {
            if let Ok(mut w) = tuning.wakers.lock() {
                w.push(cap.breakloop_handle());
            }
            None
        }
    };
    let thread = std::thread::Builder::new().name(format!("capture-{iface}")).spawn(move || {
        tracing::info!(%iface, "capture started");
        let mut seen = 0;
        let mut spa_port = tuning.get().and_then(|(_, p)| p);
        while !stop.load(Ordering::Relaxed) {
            let generation = tuning.generation();
            if generation != seen
                && let Framing::Link(_) = framing
                && let Some((filter, port)) = tuning.get()
            {
                seen = generation;
                spa_port = port;
                match cap.filter(&filter, true) {
                    Ok(()) => tracing::info!(%iface, %filter, "capture filter changed"),
                    Err(e) => tracing::error!(%iface, %filter, error = %e,
                        "cannot change the capture filter; knocks of the new config are not seen"),
                }
            }
            if let Some(fd) = nflog_fd
                && !readable(fd, 200)
            {
                continue;
            }
            let frame = match cap.next_packet() {
                Ok(p) => p,
                // A timeout, or a breakloop: to stop (checked above) or to retune.
                Err(pcap::Error::TimeoutExpired | pcap::Error::NoMorePackets) => continue,
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(e) => {
                    tracing::error!(%iface, error = %e, "capture failed; no more knocks from this interface");
                    break;
                }
            };
            let link = match framing {
                Framing::Link(link) => link,
                Framing::Nflog => {
                    let Some(logged) = packet::nflog(frame.data) else {
                        tracing::debug!(%iface, len = frame.data.len(), "an nflog frame that is no kernel door's completion");
                        continue;
                    };
                    let msg = Input::KernelCompleted {
                        door: logged.prefix.to_string(),
                        src: logged.src,
                        at: Instant::now(),
                    };
                    // Blocking: a completion is a grant the kernel already opened and is
                    // rare (it takes a whole sequence); it must not be dropped.
                    if tx.send(msg).is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Some(k) = packet::parse(link, frame.data) else {
                continue;
            };
            let spa = KnockStep::Port { proto: Proto::Udp, port: spa_port.unwrap_or(0) };
            let payload = (spa_port.is_some() && k.kind == spa).then(|| Box::from(k.payload));
            let tcp = matches!(k.kind, KnockStep::Port { proto: Proto::Tcp, .. });
            let syn = (tcp && tuning.fingerprint.load(Ordering::Relaxed))
                .then(|| p0f::syn(link, frame.data).map(Box::new))
                .flatten();
            let msg = KnockMsg { at: Instant::now(), src: k.src, kind: k.kind, tcp_flags: k.tcp_flags, payload, syn };
            counters.knocks.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(Input::Knock(msg)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        if let Ok(stats) = cap.stats() {
            tracing::debug!(%iface, received = stats.received, kernel_dropped = stats.dropped, "capture stopped");
        }
    })?;
    Ok(Running { thread, breaker })
}
