//! Knock-to-open latency, in network namespaces with the release agent: the time from the
//! last knock packet sent to the first successful TCP connect to the protected port; and,
//! under floods, what the agent and the machine spend meanwhile.
//!
//! Build the binaries first: `cargo build --release --workspace --bins`, then
//! `cargo bench -p knockgate-tests --bench knock_to_open [-- --runs 30 --mode MODE --baseline PATH]`.
//!
//! Modes (`--mode`, default `all`: every mode but `telemetry`); each 30 runs (`--runs`)
//! unless it is a flood mode; median and p90:
//! - `sequence`: a 4-knock sequence (tcp, udp, icmp, tcp);
//! - `spa`: one native SPA packet (`knocker`'s builder);
//! - `fwknop`: one packet made beforehand by the Debian `fwknop` client (`-T -B`), sent raw;
//! - `flood`: 10 valid knock sequences while a generator sends 200,000 junk UDP datagrams
//!   per second at knock port udp/8000; the agent as configured by default, which matches
//!   fixed sequences in nftables, in the kernel;
//! - `flood-userspace`: the same with the agent set to `sequence_matching = "userspace"`,
//!   so the agent itself matches the sequence: the user-space path;
//! - `spa-flood`: 10 valid native SPA packets while 200,000 fwknop-shaped junk datagrams
//!   per second hit the SPA port 62201 (each costs the agent an HMAC);
//! - `floods`: `flood`, `flood-userspace` and `spa-flood`;
//! - `telemetry`: `sequence`, `spa` and `flood` with an agent that exports nothing, then
//!   with one exporting traces and metrics over OTLP to a collector (rotel) in its
//!   namespace, and the ratio of the medians.
//!
//! Each flood mode starts its own agent, waits 1 s and reads its idle RSS, starts the
//! generator, lets it warm up for 300 ms, then times the 10 knocks; the window measured
//! runs from the end of the warm-up until the generator stops. A Markdown table at the end
//! has one row per flood mode and agent, with:
//! - opened: valid knocks that opened, of 10 (all 10 are required; a row marked ✗ does
//!   not count);
//! - median and p90 knock-to-open, ms;
//! - agent CPU %: the agent's CPU time over the window (utime + stime of
//!   `/proc/PID/stat`, all its threads) divided by the window's wall time, in % of one core;
//! - CPU µs per junk packet: the same CPU time divided by the junk datagrams sent in the
//!   window;
//! - RSS (VmRSS) at the end of the flood and peak RSS (VmHWM, over the agent's whole life),
//!   MiB; idle RSS: VmRSS 1 s after the agent is ready, before any knock;
//! - junk per second: the rate the generator actually achieved in the window;
//! - machine sys+softirq (incl. generator): the whole machine's system + irq + softirq time
//!   over the window (`cpu` line of `/proc/stat`), in % of one core. With sequences matched
//!   in the kernel the agent does almost nothing and the cost of each packet moves into the
//!   kernel's packet path: this column shows it. The junk generator runs in this process
//!   and its sends are system time too, so it is counted here.
//!
//! CPU times come in clock ticks (10 ms) and a window lasts about a second, so an agent
//! CPU figure below about 2 % is at the resolution of the measure.
//!
//! `--baseline PATH` compares with another `knockgate-agent` binary in the same run and
//! lab: each selected flood mode runs with the current agent, then, once that is stopped,
//! with the baseline, and the table gets the baseline's rows and a ratio row (current /
//! baseline) for agent CPU %, CPU µs per packet and machine sys+softirq. The baseline is
//! never given `sequence_matching` (an older build may not know the key), so for it `flood`
//! and `flood-userspace` are one thing: it runs once for both, in a row named for both.
//! Give an absolute path (cargo runs the bench from `tests/`). To compare with the build
//! N commits back:
//!
//! ```text
//! git worktree add /tmp/kg-base HEAD~N && cargo build --release -p knockgate-agent --manifest-path /tmp/kg-base/Cargo.toml
//! cargo bench -p knockgate-tests --bench knock_to_open -- --mode floods --baseline /tmp/kg-base/target/release/knockgate-agent
//! ```
//!
//! Every generator is bounded by count and time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
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
use knockgate_tests::probe::{Listener, first_connect, percentile_ms, report, report_median};
use knockgate_tests::procfs;

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

/// Junk datagrams per second in a flood.
const JUNK_RATE: u64 = 200_000;
/// A generator stops after this long even if nobody stops it.
const JUNK_LIMIT: Duration = Duration::from_secs(60);
/// From the generator's start to the measured window.
const WARM_UP: Duration = Duration::from_millis(300);
/// Valid knocks timed during a flood.
const FLOOD_KNOCKS: usize = 10;
/// From an agent being ready to reading its idle RSS.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// Every `--mode`.
const MODES: [&str; 9] = [
    "all",
    "sequence",
    "spa",
    "fwknop",
    "flood",
    "flood-userspace",
    "spa-flood",
    "floods",
    "telemetry",
];

/// One flood mode: what the generator sends where, the valid knocks, and how the current
/// agent matches sequences.
struct Flood {
    name: &'static str,
    port: u16,
    method: Method,
    /// fwknop-shaped junk (each costs the agent an HMAC) rather than short datagrams.
    shaped: bool,
    /// The current agent's `sequence_matching`; `None` leaves the agent's default.
    matching: Option<&'static str>,
    /// The flood mode that is the same thing for the baseline, which is never given
    /// `matching`.
    baseline_twin: Option<&'static str>,
}

/// The flood modes, in the order they run.
const FLOODS: [Flood; 3] = [
    Flood {
        name: "flood",
        port: 8000,
        method: Method::Sequence,
        shaped: false,
        matching: None,
        baseline_twin: None,
    },
    Flood {
        name: "flood-userspace",
        port: 8000,
        method: Method::Sequence,
        shaped: false,
        matching: Some("userspace"),
        baseline_twin: Some("flood"),
    },
    Flood {
        name: "spa-flood",
        port: 62201,
        method: Method::Native,
        shaped: true,
        matching: None,
        baseline_twin: None,
    },
];

fn main() {
    let runs: usize = bench_arg("--runs").unwrap_or(30);
    let mode: String = bench_arg("--mode").unwrap_or_else(|| "all".into());
    let baseline = bench_arg::<PathBuf>("--baseline").map(baseline_binary);
    assert!(
        MODES.contains(&mode.as_str()),
        "unknown --mode {mode}: one of {}",
        MODES.join(", ")
    );

    let lab = Lab::new();
    let _listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let spa = format!(
        "[[user]]\nname = \"alice\"\nspa_key = \"{SPA_KEY}\"\nfwknop_key = \"{FW_KEY}\"\nfwknop_hmac_key = \"{FW_HMAC}\"\n\n\
         [[policy]]\nname = \"ssh-spa\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\nusers = [\"alice\"]\nspa = true\nfwknop = true\n"
    );
    let rest = format!("{}\n{spa}", ssh_policy("30s", &SEQ));
    let config = work.config(&rest);
    if mode == "telemetry" {
        telemetry_off_and_on(&lab, &config, runs, &work);
        return;
    }
    let want = |m: &str| {
        mode == "all" || mode == m || (mode == "floods" && FLOODS.iter().any(|f| f.name == m))
    };
    latency_modes(&lab, &config, runs, &work, &want);
    let selected: Vec<&Flood> = FLOODS.iter().filter(|f| want(f.name)).collect();
    if selected.is_empty() {
        if baseline.is_some() {
            println!("--baseline compares the flood modes only; mode {mode} has none");
        }
        return;
    }
    floods(&lab, &work, &rest, &selected, baseline.as_deref());
}

/// The `--baseline` agent binary as an absolute path (cargo runs a bench from its package
/// directory, so a relative path would be taken from there).
fn baseline_binary(path: PathBuf) -> PathBuf {
    std::fs::canonicalize(&path).unwrap_or_else(|e| {
        panic!(
            "--baseline {}: {e} (relative to {}; give an absolute path)",
            path.display(),
            std::env::current_dir().unwrap_or_default().display()
        )
    })
}

/// The modes without a flood (`sequence`, `spa`, `fwknop`) that `want` selects, on one
/// current agent.
fn latency_modes(
    lab: &Lab,
    config: &Path,
    runs: usize,
    work: &Workdir,
    want: &dyn Fn(&str) -> bool,
) {
    let modes: Vec<(&str, Method)> = [
        ("sequence", Method::Sequence),
        ("spa", Method::Native),
        ("fwknop", Method::Fwknop),
    ]
    .into_iter()
    .filter(|(m, _)| want(m))
    .collect();
    if modes.is_empty() {
        return;
    }
    let mut agent = AgentProc::start(lab, config, &["--log-level", "info"]);
    println!(
        "knock-to-open: agent {}, pid {}",
        knockgate_tests::bin("knockgate-agent").display(),
        agent.pid()
    );
    for (name, method) in modes {
        let (lat, failed) = measure(lab, runs, method, work);
        let label = if name == "spa" { "spa (native)" } else { name };
        report(label, &lat, failed);
    }
    agent.stop();
}

/// Every `selected` flood mode with the current agent and, when `baseline` is given, then
/// with the baseline agent; one agent at a time, each started afresh. Prints the table.
fn floods(lab: &Lab, work: &Workdir, rest: &str, selected: &[&Flood], baseline: Option<&Path>) {
    let current = knockgate_tests::bin("knockgate-agent");
    let mut runs: Vec<FloodRun> = Vec::new();
    let mut lines: Vec<Line> = Vec::new();
    // Flood mode → the baseline's run for it.
    let mut baseline_runs: HashMap<&str, usize> = HashMap::new();
    for f in selected {
        let config = flood_config(work, &format!("current-{}", f.name), f.matching, rest);
        runs.push(flood_run(
            lab,
            work,
            &current,
            &config,
            f,
            f.name.into(),
            "current",
        ));
        let cur = runs.len() - 1;
        lines.push(Line::Run(cur));
        let Some(bin) = baseline else {
            continue;
        };
        let twin = f.baseline_twin.and_then(|t| baseline_runs.get(t).copied());
        let base = twin.unwrap_or_else(|| {
            let config = flood_config(work, &format!("baseline-{}", f.name), None, rest);
            let mode = baseline_mode(f, selected);
            runs.push(flood_run(lab, work, bin, &config, f, mode, "baseline"));
            lines.push(Line::Run(runs.len() - 1));
            runs.len() - 1
        });
        baseline_runs.insert(f.name, base);
        lines.push(Line::Ratio {
            mode: f.name,
            current: cur,
            baseline: base,
        });
    }
    println!("\ncurrent agent: {}", current.display());
    if let Some(bin) = baseline {
        println!("baseline agent: {}", bin.display());
    }
    println!();
    print_table(&runs, &lines);
}

/// The mode column of the baseline's run for `f`: `f` and every selected flood mode that is
/// the same thing for the baseline.
fn baseline_mode(f: &Flood, selected: &[&Flood]) -> String {
    let twins = selected
        .iter()
        .filter(|g| g.baseline_twin == Some(f.name))
        .map(|g| g.name);
    std::iter::once(f.name)
        .chain(twins)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config of one flood run's agent, with its own file and state directory (`tag`):
/// gateway `gw1` (the name native SPA packets are for) on the lab's interface,
/// `sequence_matching` only when `matching` is given (an older agent may not know the key;
/// `KGT_SEQUENCES` does not apply here), then `rest`.
fn flood_config(work: &Workdir, tag: &str, matching: Option<&str>, rest: &str) -> PathBuf {
    let matching = matching
        .map(|m| format!("sequence_matching = \"{m}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"{}\"]\nstate_dir = \"{}\"\n{matching}\n{rest}",
        Lab::GW_IFACE,
        work.path.join(format!("state-{tag}")).display()
    );
    let path = work.path.join(format!("{tag}.toml"));
    std::fs::write(&path, text).expect("write flood config");
    path
}

/// One agent through one flood: start `bin` with `config`, read its idle RSS, start the
/// generator, warm up, time the valid knocks while measuring the window, stop the agent.
fn flood_run(
    lab: &Lab,
    work: &Workdir,
    bin: &Path,
    config: &Path,
    f: &Flood,
    mode: String,
    agent: &'static str,
) -> FloodRun {
    let mut proc = AgentProc::start_bin(lab, bin, config, &["--log-level", "info"]);
    let pid = proc.pid();
    std::thread::sleep(IDLE_SETTLE);
    let idle_kib = procfs::rss_kib(pid);
    println!(
        "{mode}: {agent} agent, pid {pid}, idle RSS {:.1} MiB",
        mib(idle_kib)
    );
    let junk = Junk::start(lab, f.port, f.shaped, JUNK_RATE, JUNK_LIMIT);
    std::thread::sleep(WARM_UP);
    let window = Window::open(pid, &junk);
    let (lat, failed) = measure(lab, FLOOD_KNOCKS, f.method, work);
    let usage = window.close(junk);
    let (end_kib, peak_kib) = (procfs::rss_kib(pid), procfs::peak_rss_kib(pid));
    if end_kib == 0 {
        println!(
            "  the agent was gone at the end of the flood; log:\n{}",
            proc.log_text()
        );
    }
    proc.stop();
    let run = FloodRun {
        mode,
        agent,
        lat,
        failed,
        idle_kib,
        end_kib,
        peak_kib,
        usage,
    };
    run.print(f.port);
    run
}

/// What one agent did through one flood.
struct FloodRun {
    /// The flood mode, or modes for a baseline run that stands for more than one.
    mode: String,
    /// `current` or `baseline`.
    agent: &'static str,
    /// Knock-to-open of the valid knocks that opened.
    lat: Vec<Duration>,
    /// Valid knocks that did not open.
    failed: usize,
    /// VmRSS 1 s after the agent was ready, KiB.
    idle_kib: u64,
    /// VmRSS at the end of the flood, KiB.
    end_kib: u64,
    /// VmHWM at the end of the flood, KiB.
    peak_kib: u64,
    /// What the measured window cost.
    usage: Usage,
}

impl FloodRun {
    /// The usual latency line, then one line of costs.
    fn print(&self, port: u16) {
        report(
            &format!("{} ({})", self.mode, self.agent),
            &self.lat,
            self.failed,
        );
        let u = &self.usage;
        println!(
            "  agent CPU {:.1}% of a core, {:.3} µs per junk datagram; RSS {:.1} MiB, peak {:.1}, idle {:.1}",
            u.agent_pct(),
            u.us_per_datagram(),
            mib(self.end_kib),
            mib(self.peak_kib),
            mib(self.idle_kib)
        );
        println!(
            "  junk generator: {} datagrams to port {port} in {:.2} s = {:.0} per second; machine sys+softirq {:.1}% of a core (incl. generator)",
            u.sent,
            u.secs,
            u.rate(),
            u.machine_pct()
        );
    }

    /// `opened/total`, marked when a valid knock did not open.
    fn opened(&self) -> String {
        let total = self.lat.len() + self.failed;
        let mark = if self.failed > 0 { " ✗" } else { "" };
        format!("{}/{total}{mark}", self.lat.len())
    }
}

/// The measured part of a flood, from the end of the warm-up until the generator stops.
struct Window {
    pid: u32,
    at: Instant,
    agent_cpu: Duration,
    machine_kernel: Duration,
    sent: u64,
}

impl Window {
    /// Open it now, with `junk` running, on the agent `pid`.
    fn open(pid: u32, junk: &Junk) -> Window {
        Window {
            pid,
            sent: junk.sent(),
            at: Instant::now(),
            agent_cpu: procfs::cpu_time(pid),
            machine_kernel: procfs::machine_kernel_time(),
        }
    }

    /// Stop the generator and close the window: what the flood cost in between.
    fn close(self, junk: Junk) -> Usage {
        let (sent, _) = junk.stop();
        Usage {
            secs: self.at.elapsed().as_secs_f64(),
            agent_cpu: procfs::cpu_time(self.pid).saturating_sub(self.agent_cpu),
            machine_kernel: procfs::machine_kernel_time().saturating_sub(self.machine_kernel),
            sent: sent.saturating_sub(self.sent),
        }
    }
}

/// What a flood's measured window cost.
struct Usage {
    /// Wall time of the window.
    secs: f64,
    /// CPU time of the agent, user and system.
    agent_cpu: Duration,
    /// System, irq and softirq time of the whole machine.
    machine_kernel: Duration,
    /// Junk datagrams sent.
    sent: u64,
}

impl Usage {
    /// The agent's CPU, in % of one core.
    fn agent_pct(&self) -> f64 {
        self.agent_cpu.as_secs_f64() / self.secs * 100.0
    }

    /// The agent's CPU per junk datagram sent, µs.
    fn us_per_datagram(&self) -> f64 {
        self.agent_cpu.as_secs_f64() * 1e6 / self.sent as f64
    }

    /// Junk datagrams per second.
    fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }

    /// The machine's system + irq + softirq time, in % of one core.
    fn machine_pct(&self) -> f64 {
        self.machine_kernel.as_secs_f64() / self.secs * 100.0
    }
}

/// One row of the table.
enum Line {
    /// A flood run, by index.
    Run(usize),
    /// Current over baseline for one flood mode, by the indexes of the two runs.
    Ratio {
        mode: &'static str,
        current: usize,
        baseline: usize,
    },
}

/// The flood runs and their ratios as a Markdown table.
fn print_table(runs: &[FloodRun], lines: &[Line]) {
    println!(
        "| mode | agent | opened | median ms | p90 ms | agent CPU % | CPU µs/junk pkt | RSS MiB | peak RSS MiB | idle RSS MiB | junk/s | machine sys+softirq % (incl. generator) |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for line in lines {
        match *line {
            Line::Run(i) => {
                let r = &runs[i];
                let u = &r.usage;
                println!(
                    "| {} | {} | {} | {:.3} | {:.3} | {:.1} | {:.3} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
                    r.mode,
                    r.agent,
                    r.opened(),
                    percentile_ms(&r.lat, 0.5),
                    percentile_ms(&r.lat, 0.9),
                    u.agent_pct(),
                    u.us_per_datagram(),
                    mib(r.end_kib),
                    mib(r.peak_kib),
                    mib(r.idle_kib),
                    u.rate(),
                    u.machine_pct()
                );
            }
            Line::Ratio {
                mode,
                current,
                baseline,
            } => {
                let (c, b) = (&runs[current].usage, &runs[baseline].usage);
                println!(
                    "| {mode} | current / baseline | | | | {} | {} | | | | | {} |",
                    ratio(c.agent_pct(), b.agent_pct()),
                    ratio(c.us_per_datagram(), b.us_per_datagram()),
                    ratio(c.machine_pct(), b.machine_pct())
                );
            }
        }
    }
    if runs.iter().any(|r| r.failed > 0) {
        println!(
            "\n✗: not every valid knock opened during that flood (10 of 10 are required); its figures do not count."
        );
    }
}

/// `a / b` as `0.42×`, or `n/a` when `b` is zero.
fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "n/a".into()
    }
}

/// KiB as MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The sequence, SPA and flood figures with telemetry off, then on; the ratios of medians.
fn telemetry_off_and_on(lab: &Lab, config: &Path, runs: usize, work: &Workdir) {
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
        let junk = Junk::start(lab, 8000, false, JUNK_RATE, JUNK_LIMIT);
        std::thread::sleep(WARM_UP);
        let (lat, failed) = measure(lab, FLOOD_KNOCKS, Method::Sequence, work);
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

/// Keep one median of the telemetry comparison: a new row with telemetry off, its second
/// figure (row `i`, in the same order) with telemetry on.
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
    /// Start sending `per_second` datagrams to `port` from the client namespace.
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
                c2.store(n, Ordering::Relaxed);
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

    /// Datagrams sent so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stop and wait for the generator: datagrams sent, and seconds since it started.
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
