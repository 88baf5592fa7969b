//! Capture: libpcap in immediate mode on each interface, inbound only, with a BPF filter
//! compiled from the policies. Each interface gets one thread that waits for the kernel's
//! packet ring, empties it without a system call per packet, and hands what it read to the
//! engine in batches through a bounded channel; when the engine falls behind, batches are
//! dropped and counted rather than queued without bound. A lone knock is handed on at
//! once; under a flood a thread reads at most every [`COALESCE`], so it and the engine wake
//! once per batch, not once per packet. When a new config changes what to listen for,
//! [`Tuning`] carries the new filter to every thread. The nflog group on which kernel
//! doors report their completions is read the same way.

use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use knockgate_agent_core::p0f;
use knockgate_agent_core::packet::{self, KnockStep, LinkType};
use knockgate_agent_core::ruleset::Proto;
use pcap::{Active, Capture, Direction, Linktype};

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
/// space, sealed and rotating knocks, ICMP echo requests and the SPA port pass the filter
/// (fixed sequences are matched in the kernel); the ring must absorb a burst while the
/// thread pauses ([`COALESCE`]) or waits for a core. With a 2 KiB snap length libpcap
/// gives each 2 KiB of this a 4 KiB block, which holds about a dozen small datagrams: a
/// 2 MiB ring, about 6,000 datagrams (it was 4 MiB of buffer, an 8 MiB ring: half of the
/// agent's idle memory). A longer burst is dropped by the kernel and counted in the
/// capture's statistics.
const CAPTURE_BUFFER: i32 = 1 << 20;

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
    // Non-blocking, like every capture: the thread waits with poll(2) itself.
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
        .map_err(open_err)?
        .setnonblock()
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
/// thread is woken through its own pipe to pick the change up.
pub struct Tuning {
    generation: AtomicU64,
    state: Mutex<(String, Option<u16>)>,
    /// Whether TCP knocks come with their SYN's p0f fields (a policy requires an OS);
    /// read per packet, so no wake-up is needed.
    fingerprint: AtomicBool,
    /// One per capture thread: a byte written wakes its wait.
    wakers: Mutex<Vec<PipeWriter>>,
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
            for mut w in wakers.iter() {
                // A thread that is gone has closed its end: nothing to wake.
                let _ = w.write(&[1]);
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

    /// A pipe whose read end becomes readable when the tuning changes.
    fn waker(&self) -> std::io::Result<PipeReader> {
        let (reader, writer) = std::io::pipe()?;
        if let Ok(mut w) = self.wakers.lock() {
            w.push(writer);
        }
        Ok(reader)
    }
}

/// Counters a capture thread keeps.
#[derive(Debug, Default)]
pub struct Counters {
    pub knocks: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running capture thread; it looks at the stop flag at least every [`WAIT_MS`].
pub struct Running {
    pub thread: JoinHandle<()>,
}

impl Running {
    /// Stop the thread (the caller has set the stop flag) and wait for it.
    pub fn stop(self) {
        let _ = self.thread.join();
    }
}

/// How long a capture thread waits for packets before it looks at the stop flag again.
const WAIT_MS: i32 = 100;
/// Knocks handed to the engine in one input at most.
const BATCH: usize = 64;
/// After the ring was emptied, pause this long before waiting again: under a flood the
/// packets of this interval are read, and handed on, together (one wake-up of this thread
/// and of the engine per batch, not per packet); a lone knock is read at once.
const COALESCE: Duration = Duration::from_micros(200);

/// Wait up to [`WAIT_MS`] until `fd` is readable or `wake` is; a wake-up is consumed.
/// Whether `fd` is.
#[allow(unsafe_code)] // poll(2): std has no wrapper for it
fn wait(fd: RawFd, wake: Option<&mut PipeReader>) -> bool {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        pollfd(fd),
        pollfd(wake.as_ref().map_or(-1, |w| w.as_raw_fd())),
    ];
    // SAFETY: two valid pollfds (a negative fd is ignored), owned by this frame, for the
    // duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, WAIT_MS) };
    if n > 0
        && fds[1].revents & libc::POLLIN != 0
        && let Some(w) = wake
    {
        let _ = w.read(&mut [0u8; 64]);
    }
    n > 0 && fds[0].revents & libc::POLLIN != 0
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
    // Only link captures are retuned.
    let mut wake = match framing {
        Framing::Link(_) => Some(tuning.waker()?),
        Framing::Nflog => None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("capture-{iface}"))
        .spawn(move || {
            tracing::info!(%iface, "capture started");
            let mut reader = Reader {
                framing,
                tuning: &tuning,
                spa_port: None,
                batch: Vec::with_capacity(BATCH),
                tx: &tx,
                counters: &counters,
            };
            let mut seen = u64::MAX;
            let fd = cap.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                let generation = tuning.generation();
                if generation != seen
                    && let Framing::Link(_) = framing
                    && let Some((filter, port)) = tuning.get()
                {
                    seen = generation;
                    reader.spa_port = port;
                    match cap.filter(&filter, true) {
                        Ok(()) => tracing::info!(%iface, %filter, "capture filter set"),
                        Err(e) => tracing::error!(%iface, %filter, error = %e,
                            "cannot change the capture filter; knocks of the new config are not seen"),
                    }
                }
                if !wait(fd, wake.as_mut()) {
                    continue;
                }
                // Empty the ring in place (the handle does not block): libpcap hands
                // each frame over where it lies, no copy, no system call. An nflog
                // handle reads one message per wake-up: libpcap reports its empty
                // non-blocking socket as an error, not as "no packet".
                let read = match framing {
                    Framing::Link(_) => drain(&mut cap, &mut reader),
                    Framing::Nflog => match cap.next_packet() {
                        Ok(frame) => reader.frame(frame.data),
                        Err(_) => Ok(()),
                    },
                };
                if read.and_then(|()| reader.flush()).is_err() {
                    return;
                }
                std::thread::sleep(COALESCE);
            }
            if let Ok(stats) = cap.stats() {
                tracing::debug!(%iface, received = stats.received, kernel_dropped = stats.dropped, "capture stopped");
            }
        })?;
    Ok(Running { thread })
}

/// The thread ends: the engine is gone, or the capture failed (told where it did).
struct Stop;

/// Hand every frame in `cap`'s ring to `reader`.
fn drain(cap: &mut Capture<Active>, reader: &mut Reader<'_>) -> Result<(), Stop> {
    loop {
        let mut gone = false;
        let n = cap
            .dispatch(None, |frame| {
                gone = gone || reader.frame(frame.data).is_err();
            })
            .map_err(|e| {
                tracing::error!(error = %e, "capture failed; no more knocks from this interface");
                Stop
            })?;
        if gone {
            return Err(Stop);
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// What one capture thread turns its frames into, batched for the engine.
struct Reader<'a> {
    framing: Framing,
    tuning: &'a Tuning,
    /// Datagrams to this UDP port carry their body on to the engine (SPA).
    spa_port: Option<u16>,
    batch: Vec<KnockMsg>,
    tx: &'a SyncSender<Input>,
    counters: &'a Counters,
}

impl Reader<'_> {
    /// One frame: a knock for the batch, or (nflog) a kernel door's completion.
    fn frame(&mut self, data: &[u8]) -> Result<(), Stop> {
        let link = match self.framing {
            Framing::Link(link) => link,
            Framing::Nflog => {
                let Some(logged) = packet::nflog(data) else {
                    tracing::debug!(
                        len = data.len(),
                        "an nflog frame that is no kernel door's completion"
                    );
                    return Ok(());
                };
                let msg = Input::KernelCompleted {
                    door: logged.prefix.to_string(),
                    src: logged.src,
                    at: Instant::now(),
                };
                // Blocking: a completion is a grant the kernel already opened, and rare
                // (it takes a whole sequence); it must not be dropped.
                return self.tx.send(msg).map_err(|_| Stop);
            }
        };
        let Some(k) = packet::parse(link, data) else {
            return Ok(());
        };
        let spa = self.spa_port.map(KnockStep::udp);
        let payload = (Some(k.kind) == spa).then(|| Box::from(k.payload));
        let tcp = matches!(
            k.kind,
            KnockStep::Port {
                proto: Proto::Tcp,
                ..
            }
        );
        let syn = (tcp && self.tuning.fingerprint.load(Ordering::Relaxed))
            .then(|| p0f::syn(link, data).map(Box::new))
            .flatten();
        self.batch.push(KnockMsg {
            at: Instant::now(),
            src: k.src,
            kind: k.kind,
            tcp_flags: k.tcp_flags,
            payload,
            syn,
        });
        if self.batch.len() == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand the batch to the engine; when it is behind, the batch is dropped and counted
    /// rather than queued without bound.
    fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let n = batch.len() as u64;
        self.counters.knocks.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Input::Batch(batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(Stop),
        }
    }
}
