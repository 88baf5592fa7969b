//! Probes that answer what a user would check: can this source connect to that port?

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

/// A TCP service on `[::]:port` (dual stack) inside a namespace that answers "hello\n";
/// stopped on drop.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(ns: &Netns, port: u16) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let listener = TcpListener::bind(("::", port)).expect("bind listener");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"hello\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listener ready");
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TCP connect from `src` to `dst`, true if it completes within `timeout` and the
/// service greets us. Call on a thread inside the client namespace.
pub fn connects(src: IpAddr, dst: SocketAddr, timeout: Duration) -> bool {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(sock) = Socket::new(domain, Type::STREAM, None) else {
        return false;
    };
    if sock.bind(&SocketAddr::new(src, 0).into()).is_err() {
        return false;
    }
    if sock.connect_timeout(&dst.into(), timeout).is_err() {
        return false;
    }
    let mut stream: std::net::TcpStream = sock.into();
    let _ = stream.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 6];
    stream.read_exact(&mut buf).is_ok() && &buf == b"hello\n"
}

/// From inside `ns`: does `src` reach `dst` now (one attempt, 400 ms)?
pub fn can_connect(ns: &Netns, src: IpAddr, dst: SocketAddr) -> bool {
    ns.run(move || connects(src, dst, Duration::from_millis(400)))
}

/// From inside `ns`: poll until `src` reaches `dst` or `within` passes.
pub fn opens_within(ns: &Netns, src: IpAddr, dst: SocketAddr, within: Duration) -> bool {
    ns.run(move || {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if connects(src, dst, Duration::from_millis(100)) {
                return true;
            }
        }
        false
    })
}

/// From inside `ns`: poll until `src` can no longer reach `dst` or `within` passes.
pub fn closes_within(ns: &Netns, src: IpAddr, dst: SocketAddr, within: Duration) -> bool {
    ns.run(move || {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !connects(src, dst, Duration::from_millis(200)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
}

/// Fire non-blocking connects at `dst` until one completes, a fresh SYN every 50 µs (a
/// SYN sent before a grant lands is dropped, and its retransmission would come a second
/// later). Returns the time from `t0` to the first completed handshake, or None after
/// `limit`. Call on a thread inside the client namespace.
pub fn first_connect(dst: SocketAddr, t0: Instant, limit: Duration) -> Option<Duration> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    while t0.elapsed() < limit {
        let sock = Socket::new(domain, Type::STREAM, None).ok()?;
        sock.set_nonblocking(true).ok()?;
        let _ = sock.connect(&dst.into());
        let attempt = Instant::now();
        while attempt.elapsed() < Duration::from_micros(50) {
            if sock.peer_addr().is_ok() {
                return Some(t0.elapsed());
            }
            std::hint::spin_loop();
        }
    }
    None
}

/// The `p` quantile of `lat` in ms (nearest rank); NaN when empty.
pub fn percentile_ms(lat: &[Duration], p: f64) -> f64 {
    nearest_rank(&sorted_ms(lat), p)
}

fn sorted_ms(lat: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Print one benchmark line: how many opened, median, p90, min, max (milliseconds).
pub fn report(mode: &str, lat: &[Duration], failed: usize) {
    report_median(mode, lat, failed);
}

/// [`report`], and the median in ms.
pub fn report_median(mode: &str, lat: &[Duration], failed: usize) -> f64 {
    let v = sorted_ms(lat);
    let pct = |p: f64| nearest_rank(&v, p);
    println!(
        "mode {mode}: {} of {} opened; knock-to-open median {:.3} ms, p90 {:.3} ms, min {:.3} ms, max {:.3} ms",
        v.len(),
        v.len() + failed,
        pct(0.5),
        pct(0.9),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    );
    pct(0.5)
}

/// A TCP service on `[::]:port` inside a namespace that greets like [`Listener`], then
/// echoes what it reads and keeps the connection open (so a test can tell whether an
/// established connection still carries traffic). It records every peer's address, IPv4
/// peers as IPv4. Stopped on drop.
pub struct Echo {
    stop: Arc<AtomicBool>,
    peers: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &Netns, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), peers.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let listener = TcpListener::bind(("::", port)).expect("bind echo");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            // Threads spawned here inherit the namespace; each stops with the flag.
            let mut conns = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        if let Ok(mut list) = seen.lock() {
                            list.push(peer);
                        }
                        let flag = flag.clone();
                        conns.push(std::thread::spawn(move || echo(s, &flag)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo ready");
        Echo {
            stop,
            peers,
            thread: Some(thread),
        }
    }

    /// The peers accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Greet, then echo until the peer closes or `stop` is set.
fn echo(mut s: std::net::TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    if s.write_all(b"hello\n").is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
