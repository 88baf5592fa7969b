//! knockgate-tests: the network-namespace harness shared by the end-to-end tests, the lab
//! demo and the knock-to-open benchmark.
//!
//! Every namespace, link and process made here is owned by a guard whose `Drop` removes
//! it, so a failing test leaves nothing behind. Namespaces are named `kgt…`, addresses
//! come from 10.240.0.0/16 and fd00:4b47::/64, and no traffic leaves the machine.

pub mod agent;
pub mod controller;
pub mod fleet;
pub mod netns;
pub mod otel;
pub mod pg;
pub mod probe;
pub mod procfs;

use std::path::PathBuf;

/// A workspace binary built next to the running test (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/test-binary or target/<profile>/bench-binary
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (the README's test command does)",
        path.display()
    );
    path
}

/// Fail loudly unless root: the end-to-end tests must never skip quietly.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid0 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0");
    assert!(
        uid0,
        "end-to-end tests need root (network namespaces, nftables, pcap); CI runs them as root"
    );
}

/// Poll `f` every 100 ms until it holds; panic naming `what` after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// The value after `flag` on a benchmark's command line (`cargo bench … -- --runs 30`),
/// parsed; `None` when it is absent or does not parse, so the caller's default applies.
pub fn bench_arg<T: std::str::FromStr>(flag: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
