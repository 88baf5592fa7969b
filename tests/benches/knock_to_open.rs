//! Knock-to-open latency, in network namespaces with the release agent: the time from the
//! last knock packet sent to the first successful TCP connect to the protected port.
//!
//! Build the binaries first: `cargo build --release --workspace --bins`, then
//! `cargo bench -p knockgate-tests --bench knock_to_open [-- --runs 30 --mode sequence|flood|all]`.
//!
//! `sequence`: 30 runs, median and p90. `flood`: 10 valid knocks while a generator in the
//! client namespace sends 200,000 junk UDP datagrams per second at a knock port (bounded
//! by count and time); reports how many opened and their latencies.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use knockgate_cli::{KnockSpec, send_knock};
use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::netns::{Lab, sh};
use knockgate_tests::probe::Listener;
use socket2::{Domain, Socket, Type};

const SEQ: [&str; 4] = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"];
/// Give up on one run after this long (counted as "did not open").
const RUN_LIMIT: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = get("--runs").and_then(|v| v.parse().ok()).unwrap_or(30);
    let mode = get("--mode").unwrap_or_else(|| "all".into());

    let lab = Lab::new();
    let _listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let config = work.config(&ssh_policy("30s", &SEQ));
    let agent = AgentProc::start(&lab, &config, &["--log-level", "info"]);
    println!(
        "knock-to-open: agent {}, pid {}",
        knockgate_tests::bin("knockgate-agent").display(),
        agent.pid()
    );

    if mode == "all" || mode == "sequence" {
        let (lat, failed) = measure(&lab, runs, None);
        report("sequence", &lat, failed);
    }
    if mode == "all" || mode == "flood" {
        let junk = Junk::start(&lab, 200_000, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let (lat, failed) = measure(&lab, 10, Some(&junk));
        let (sent, secs) = junk.stop();
        report("flood", &lat, failed);
        println!(
            "  junk generator: {sent} datagrams in {secs:.1} s = {:.0} per second",
            sent as f64 / secs
        );
    }
    drop(agent);
}

/// `runs` knock sequences, each from a clean slate (grants flushed), timed to first connect.
fn measure(lab: &Lab, runs: usize, _junk: Option<&Junk>) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(runs);
    let mut failed = 0;
    // Warm the neighbour caches and the agent's code paths once.
    one_run(lab);
    for _ in 0..runs {
        sh(lab
            .gw
            .cmd("nft")
            .args(["flush", "set", "inet", "knockgate", "grants4"]));
        std::thread::sleep(Duration::from_millis(50));
        match one_run(lab) {
            Some(d) => lat.push(d),
            None => failed += 1,
        }
    }
    (lat, failed)
}

/// Knock, then fire non-blocking connects and spin until one completes.
fn one_run(lab: &Lab) -> Option<Duration> {
    lab.client.run(|| {
        let gw: IpAddr = Lab::GW4.into();
        let knocks = [
            KnockSpec::Tcp(7000),
            KnockSpec::Udp(8000),
            KnockSpec::Icmp,
            KnockSpec::Tcp(9000),
        ];
        for k in &knocks {
            send_knock(gw, k).expect("knock");
        }
        let t0 = Instant::now();
        let dst: SocketAddr = SocketAddr::new(gw, 22);
        while t0.elapsed() < RUN_LIMIT {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            sock.set_nonblocking(true).expect("nonblocking");
            let _ = sock.connect(&dst.into());
            // A SYN sent before the grant landed is dropped; try a fresh one every 50 µs.
            let attempt = Instant::now();
            while attempt.elapsed() < Duration::from_micros(50) {
                if sock.peer_addr().is_ok() {
                    return Some(t0.elapsed());
                }
                std::hint::spin_loop();
            }
        }
        None
    })
}

fn report(mode: &str, lat: &[Duration], failed: usize) {
    let mut v: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "mode {mode}: {} of {} opened; knock-to-open median {:.3} ms, p90 {:.3} ms, min {:.3} ms, max {:.3} ms",
        v.len(),
        v.len() + failed,
        pct(0.5),
        pct(0.9),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// A bounded junk generator: UDP datagrams from 10.240.0.4 to a knock port (udp/8000), at
/// a fixed rate, until stopped or `limit` passes.
struct Junk {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Junk {
    fn start(lab: &Lab, per_second: u64, limit: Duration) -> Junk {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, c2) = (stop.clone(), sent.clone());
        let thread = lab.client.spawn(move || {
            let sock = UdpSocket::bind((Lab::JUNK4, 0)).expect("bind junk");
            sock.connect((Lab::GW4, 8000)).expect("connect junk");
            let start = Instant::now();
            let max = per_second * limit.as_secs();
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) && start.elapsed() < limit && n < max {
                // Pace in 1 ms slots.
                let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
                while n < due {
                    let _ = sock.send(b"junkjunkjunkjunk");
                    n += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            c2.store(n, Ordering::Relaxed);
        });
        Junk {
            stop,
            sent,
            started: Instant::now(),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }
}

impl Drop for Junk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
