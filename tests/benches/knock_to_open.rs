//! Knock-to-open latency, in network namespaces with the release agent: the time from the
//! last knock packet sent to the first successful TCP connect to the protected port.
//!
//! Build the binaries first: `cargo build --release --workspace --bins`, then
//! `cargo bench -p knockgate-tests --bench knock_to_open [-- --runs 30 --mode sequence|flood|all]`.
//!
//! Modes (each 30 runs unless it is a flood mode; median and p90):
//! - `sequence`: a 4-knock sequence (tcp, udp, icmp, tcp);
//! - `spa`: one native SPA packet (`knocker`'s builder);
//! - `fwknop`: one packet made beforehand by the Debian `fwknop` client (`-T -B`), sent raw;
//! - `flood`: 10 valid knock sequences while a generator sends 200,000 junk UDP datagrams
//!   per second at a knock port;
//! - `spa-flood`: 10 valid native SPA packets while 200,000 fwknop-shaped junk datagrams
//!   per second hit the SPA port (each costs the agent an HMAC);
//! - `telemetry`: `sequence`, `spa` and `flood` with an agent that exports nothing, then
//!   with one exporting traces and metrics over OTLP to a collector (rotel) in its
//!   namespace, and the ratio of the medians.
//!
//! Every generator is bounded by count and time.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use knockgate_cli::send_knock;
use knockgate_cli::spa::{build_spa, send_spa};
use knockgate_proto::Access;
use knockgate_proto::KnockStep;
use knockgate_proto::spa::SpaKey;
use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::bench_arg;
use knockgate_tests::netns::{Lab, sh};
use knockgate_tests::probe::{Listener, first_connect, report, report_median};

const SEQ: [&str; 4] = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"];
const SPA_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const FW_KEY: &str = "wBtb3bHHJGV3gdeuR9C5rTBvRvqMtZQwRsGebvm3pQo=";
const FW_HMAC: &str =
    "a6v/eJvr/8hNW2tY9aRmn7PEyJqdK9UNEXqKeErHuOgqMXVWtEiNkzlgfxWqnZwOtdwySvzCGQnWYn6cp6E0GA==";

/// How one run sends its knock.
#[derive(Clone, Copy)]
enum Method {
    Sequence,
    Native,
    Fwknop,
}
/// Give up on one run after this long (counted as "did not open").
const RUN_LIMIT: Duration = Duration::from_secs(2);

fn main() {
    let runs: usize = bench_arg("--runs").unwrap_or(30);
    let mode: String = bench_arg("--mode").unwrap_or_else(|| "all".into());

    let lab = Lab::new();
    let _listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let spa = format!(
        "[[user]]\nname = \"alice\"\nspa_key = \"{SPA_KEY}\"\nfwknop_key = \"{FW_KEY}\"\nfwknop_hmac_key = \"{FW_HMAC}\"\n\n\
         [[policy]]\nname = \"ssh-spa\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\nusers = [\"alice\"]\nspa = true\nfwknop = true\n"
    );
    let config = work.config(&format!("{}\n{spa}", ssh_policy("30s", &SEQ)));
    if mode == "telemetry" {
        telemetry_off_and_on(&lab, &config, runs, &work);
        return;
    }
    let agent = AgentProc::start(&lab, &config, &["--log-level", "info"]);
    println!(
        "knock-to-open: agent {}, pid {}",
        knockgate_tests::bin("knockgate-agent").display(),
        agent.pid()
    );
    let want = |m: &str| mode == "all" || mode == m;

    if want("sequence") {
        let (lat, failed) = measure(&lab, runs, Method::Sequence, &work);
        report("sequence", &lat, failed);
    }
    if want("spa") {
        let (lat, failed) = measure(&lab, runs, Method::Native, &work);
        report("spa (native)", &lat, failed);
    }
    if want("fwknop") {
        let (lat, failed) = measure(&lab, runs, Method::Fwknop, &work);
        report("fwknop", &lat, failed);
    }
    for (name, port, method, shaped) in [
        ("flood", 8000, Method::Sequence, false),
        ("spa-flood", 62201, Method::Native, true),
    ] {
        if !want(name) {
            continue;
        }
        let junk = Junk::start(&lab, port, shaped, 200_000, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let (lat, failed) = measure(&lab, 10, method, &work);
        let (sent, secs) = junk.stop();
        report(name, &lat, failed);
        println!(
            "  junk generator: {sent} datagrams to port {port} in {secs:.1} s = {:.0} per second",
            sent as f64 / secs
        );
    }
    drop(agent);
}

/// The sequence, SPA and flood figures with telemetry off, then on; the ratios of medians.
fn telemetry_off_and_on(lab: &Lab, config: &std::path::Path, runs: usize, work: &Workdir) {
    let mut medians: Vec<(&str, f64, f64)> = Vec::new();
    let mut sink = None;
    for on in [false, true] {
        if on {
            sink = Some(knockgate_tests::otel::Rotel::sink(
                &lab.gw,
                &work.path.join("sink.out"),
            ));
            knockgate_tests::otel::export_to(
                "http://127.0.0.1:4317",
                knockgate_tests::otel::MetricsTo::Grpc("http://127.0.0.1:4317"),
            );
        }
        let label = if on { "on" } else { "off" };
        let agent = AgentProc::start(lab, config, &["--log-level", "info"]);
        let mut i = 0;
        for (name, method) in [("sequence", Method::Sequence), ("spa", Method::Native)] {
            let (lat, failed) = measure(lab, runs, method, work);
            let m = report_median(&format!("{name}, telemetry {label}"), &lat, failed);
            record(&mut medians, &mut i, name, on, m);
        }
        let junk = Junk::start(lab, 8000, false, 200_000, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let (lat, failed) = measure(lab, 10, Method::Sequence, work);
        let (sent, secs) = junk.stop();
        let m = report_median(&format!("flood, telemetry {label}"), &lat, failed);
        println!(
            "  junk generator: {:.0} datagrams per second",
            sent as f64 / secs
        );
        record(&mut medians, &mut i, "flood", on, m);
        drop(agent);
    }
    drop(sink);
    for (name, off, on) in medians {
        println!(
            "telemetry on/off, {name}: median {on:.3} / {off:.3} ms = {:.2}",
            on / off
        );
    }
}

fn record(
    medians: &mut Vec<(&'static str, f64, f64)>,
    i: &mut usize,
    name: &'static str,
    on: bool,
    m: f64,
) {
    if on {
        medians[*i].2 = m;
    } else {
        medians.push((name, m, f64::NAN));
    }
    *i += 1;
}

/// `runs` knocks, each from a clean slate (grants flushed), timed to first connect.
fn measure(lab: &Lab, runs: usize, method: Method, work: &Workdir) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(runs);
    let mut failed = 0;
    // fwknop packets are made beforehand by the real client; only sending is timed.
    let mut fwknop: Vec<Vec<u8>> = match method {
        Method::Fwknop => (0..=runs).map(|i| fwknop_packet(lab, work, i)).collect(),
        _ => Vec::new(),
    };
    // Warm the neighbour caches and the agent's code paths once.
    one_run(lab, method, fwknop.pop());
    for _ in 0..runs {
        sh(lab
            .gw
            .cmd("nft")
            .args(["flush", "set", "inet", "knockgate", "grants4"]));
        std::thread::sleep(Duration::from_millis(50));
        match one_run(lab, method, fwknop.pop()) {
            Some(d) => lat.push(d),
            None => failed += 1,
        }
    }
    (lat, failed)
}

/// A packet from the Debian fwknop client, saved with `-T -B` (built, not sent).
fn fwknop_packet(lab: &Lab, work: &Workdir, i: usize) -> Vec<u8> {
    let file = work.path.join(format!("fw{i}.pkt"));
    let out = lab
        .client
        .cmd("fwknop")
        .env("HOME", &work.path)
        .args([
            "--no-rc-file",
            "--no-save-args",
            "-T",
            "-D",
            "10.240.0.1",
            "-U",
            "alice",
        ])
        .args([
            "--use-hmac",
            "-A",
            "tcp/22",
            "-s",
            "--key-base64-rijndael",
            FW_KEY,
        ])
        .args(["--key-base64-hmac", FW_HMAC, "-B"])
        .arg(&file)
        .output()
        .expect("run fwknop");
    assert!(
        out.status.success(),
        "fwknop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&file)
        .expect("packet")
        .trim()
        .as_bytes()
        .to_vec()
}

/// Knock, then fire non-blocking connects and spin until one completes.
fn one_run(lab: &Lab, method: Method, fwknop: Option<Vec<u8>>) -> Option<Duration> {
    lab.client.run(move || {
        let gw: IpAddr = Lab::GW4.into();
        let spa_port = SocketAddr::new(gw, 62201);
        match method {
            Method::Sequence => {
                let knocks = [
                    KnockStep::tcp(7000),
                    KnockStep::udp(8000),
                    KnockStep::Icmp,
                    KnockStep::tcp(9000),
                ];
                for k in &knocks {
                    send_knock(gw, k).expect("knock");
                }
            }
            Method::Native => {
                let key = SpaKey::parse(SPA_KEY).expect("key");
                let now = std::time::SystemTime::now();
                let p = build_spa(&key, "gw1", vec![Access::tcp(22)], None, 0, now).expect("build");
                send_spa(spa_port, &p).expect("send");
            }
            Method::Fwknop => send_spa(spa_port, &fwknop.expect("packet")).expect("send"),
        }
        first_connect(SocketAddr::new(gw, 22), Instant::now(), RUN_LIMIT)
    })
}

/// A bounded junk generator: UDP datagrams from 10.240.0.4 to `port`, at a fixed rate,
/// until stopped or `limit` passes. `shaped` junk looks like fwknop (180 base64
/// characters starting with `8`), so the agent must check an HMAC for each.
struct Junk {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Junk {
    fn start(lab: &Lab, port: u16, shaped: bool, per_second: u64, limit: Duration) -> Junk {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, c2) = (stop.clone(), sent.clone());
        let thread = lab.client.spawn(move || {
            let sock = UdpSocket::bind((Lab::JUNK4, 0)).expect("bind junk");
            sock.connect((Lab::GW4, port)).expect("connect junk");
            let payload: Vec<u8> = if shaped {
                let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                std::iter::once(b'8')
                    .chain((0..179).map(|i| b64[(i * 7) % 64]))
                    .collect()
            } else {
                b"junkjunkjunkjunk".to_vec()
            };
            let start = Instant::now();
            let max = per_second * limit.as_secs();
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) && start.elapsed() < limit && n < max {
                // Pace in 1 ms slots.
                let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
                while n < due {
                    let _ = sock.send(&payload);
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
