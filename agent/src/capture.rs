//! Capture: libpcap in immediate mode on each interface, inbound only, with a BPF filter
//! compiled from the policies. Each interface gets one blocking thread that parses frames
//! and hands knocks to the engine through a bounded channel; when the engine falls behind,
//! knocks are dropped and counted rather than queued without bound.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use knockgate_agent_core::packet::{self, KnockKind, LinkType};
use knockgate_agent_core::ruleset::Proto;
use pcap::{Active, BreakLoop, Capture, Direction, Linktype};

use crate::engine::Input;

/// One knock, owned, as it travels from a capture thread to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnockMsg {
    pub at: Instant,
    pub src: IpAddr,
    pub kind: KnockKind,
    pub tcp_flags: u8,
    /// The datagram body, kept only for the SPA port.
    pub payload: Option<Box<[u8]>>,
}

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
    link: LinkType,
    cap: Capture<Active>,
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
        .buffer_size(4 << 20)
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
        link,
        cap,
    })
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

/// Run a capture on its own thread until `stop` is set or the engine goes away.
pub fn spawn(
    opened: Opened,
    tx: SyncSender<Input>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    spa_port: Option<u16>,
) -> std::io::Result<Running> {
    let Opened {
        iface,
        link,
        mut cap,
    } = opened;
    let breaker = cap.breakloop_handle();
    let thread = std::thread::Builder::new().name(format!("capture-{iface}")).spawn(move || {
        tracing::info!(%iface, "capture started");
        while !stop.load(Ordering::Relaxed) {
            let frame = match cap.next_packet() {
                Ok(p) => p,
                Err(pcap::Error::TimeoutExpired) => continue,
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(e) => {
                    tracing::error!(%iface, error = %e, "capture failed; no more knocks from this interface");
                    break;
                }
            };
            let Some(k) = packet::parse(link, frame.data) else {
                continue;
            };
            let spa = KnockKind::Port { proto: Proto::Udp, port: spa_port.unwrap_or(0) };
            let payload = (spa_port.is_some() && k.kind == spa).then(|| Box::from(k.payload));
            let msg = KnockMsg { at: Instant::now(), src: k.src, kind: k.kind, tcp_flags: k.tcp_flags, payload };
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
