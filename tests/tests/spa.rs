//! End to end SPA: the real agent in a gateway namespace; the real Debian `fwknop` client
//! and `knocker spa` in a client namespace. Each refusal must show its reason in the
//! agent's event log, and what a user checks is whether the port opens.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::netns::Lab;
use knockgate_tests::probe::{Listener, can_connect, opens_within};
use serde_json::Value;

fn ssh4() -> SocketAddr {
    SocketAddr::new(Lab::GW4.into(), 22)
}

struct Keys {
    spa_file: PathBuf,
    spa: String,
    fw_key: String,
    fw_hmac: String,
}

/// A native key from `knocker keygen` and an fwknop key pair from `fwknop --key-gen`.
fn keys(work: &Workdir) -> Keys {
    let spa_file = work.path.join("alice.key");
    let out = std::process::Command::new(knockgate_tests::bin("knocker"))
        .args(["keygen", "--out"])
        .arg(&spa_file)
        .output()
        .expect("knocker keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spa = std::fs::read_to_string(&spa_file)
        .expect("key")
        .trim()
        .to_string();
    let out = std::process::Command::new("fwknop")
        .args(["--key-gen"])
        .env("HOME", &work.path)
        .output()
        .expect("fwknop --key-gen (package fwknop-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    Keys {
        spa_file,
        spa,
        fw_key: field("KEY_BASE64:"),
        fw_hmac: field("HMAC_KEY_BASE64:"),
    }
}

fn config(work: &Workdir, k: &Keys) -> PathBuf {
    work.config(&format!(
        r#"[spa]
port = 62201
max_age = "120s"

[[user]]
name = "alice"
spa_key = "{}"
fwknop_key = "{}"
fwknop_hmac_key = "{}"

[[policy]]
name = "ssh-spa"
open = ["tcp/22"]
timeout = "30s"
max_timeout = "5m"
users = ["alice"]
spa = true
fwknop = true
"#,
        k.spa, k.fw_key, k.fw_hmac
    ))
}

struct Setup {
    lab: Lab,
    work: Workdir,
    keys: Keys,
    agent: AgentProc,
    _listener: Listener,
}

fn setup() -> Setup {
    let lab = Lab::new();
    let listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let keys = keys(&work);
    let cfg = config(&work, &keys);
    let agent = AgentProc::start(&lab, &cfg, &[]);
    Setup {
        lab,
        work,
        keys,
        agent,
        _listener: listener,
    }
}

impl Setup {
    /// Run the Debian fwknop client in the client namespace against the gateway.
    fn fwknop(&self, hmac_key: &str, extra: &[&str]) -> Output {
        let out = self
            .lab
            .client
            .cmd("fwknop")
            .env("HOME", &self.work.path)
            .args([
                "--no-rc-file",
                "--no-save-args",
                "-D",
                "10.240.0.1",
                "-U",
                "alice",
                "--use-hmac",
            ])
            .args([
                "--key-base64-rijndael",
                &self.keys.fw_key,
                "--key-base64-hmac",
                hmac_key,
            ])
            .args(extra)
            .output()
            .expect("run fwknop");
        assert!(
            out.status.success(),
            "fwknop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn knocker_spa(&self, host: &str, extra: &[&str]) -> Output {
        let out = self
            .lab
            .client
            .cmd(knockgate_tests::bin("knocker"))
            .args(["spa", host, "--user", "alice", "--key-file"])
            .arg(&self.keys.spa_file)
            .args(extra)
            .output()
            .expect("run knocker spa");
        assert!(
            out.status.success(),
            "knocker spa failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn wait(&mut self, event: &str, reason: Option<&str>) -> Value {
        let found = self.agent.wait_event(
            |v| v["event"] == event && reason.is_none_or(|r| v["reason"] == r),
            Duration::from_secs(3),
        );
        found.unwrap_or_else(|| panic!("no {event} {reason:?} in log:\n{}", self.agent.log_text()))
    }
}

/// Send raw bytes to the SPA port from the client namespace.
fn send_raw(lab: &Lab, payload: Vec<Vec<u8>>) {
    send_raw_from(lab, Lab::CLIENT4, payload);
}

/// Send raw bytes to the SPA port from `src`, one of the client's addresses.
fn send_raw_from(lab: &Lab, src: std::net::Ipv4Addr, payload: Vec<Vec<u8>>) {
    lab.client.run(move || {
        let sock = UdpSocket::bind((src, 0)).expect("bind");
        for p in payload {
            sock.send_to(&p, (Lab::GW4, 62201)).expect("send");
        }
    });
}

/// What `knocker spa` sends, taken off the wire: it is sent to a listener on another
/// port of the gateway instead of the SPA port, so the agent never sees the original.
fn intercepted_knocker_spa(s: &Setup, extra: &[&str]) -> Vec<u8> {
    let listener = s
        .lab
        .gw
        .run(|| UdpSocket::bind((Lab::GW4, 62299)).expect("bind"));
    listener
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut args = vec!["--gateway", "gw1", "--access", "tcp/22", "--port", "62299"];
    args.extend_from_slice(extra);
    s.knocker_spa("10.240.0.1", &args);
    let mut buf = vec![0u8; 2048];
    let (n, from) = listener.recv_from(&mut buf).expect("the packet");
    assert_eq!(from.ip(), IpAddr::from(Lab::CLIENT4));
    buf.truncate(n);
    buf
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_packet_resent_from_another_address_opens_nothing_for_it() {
    let mut s = setup();
    // By default knocker seals the address it sends from.
    let copy = intercepted_knocker_spa(&s, &[]);
    send_raw_from(&s.lab, Lab::OTHER4, vec![copy]);
    let accepted = s.wait("grant.opened", None);
    assert_eq!(
        accepted["src"], "10.240.0.2",
        "the sealed address, not the sender"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::OTHER4.into(), ssh4()),
        "the resender gets nothing"
    );

    // --source-any seals nothing: the same theft opens the gateway for the thief.
    let copy = intercepted_knocker_spa(&s, &["--source-any"]);
    send_raw_from(&s.lab, Lab::OTHER4, vec![copy]);
    assert!(
        opens_within(
            &s.lab.client,
            Lab::OTHER4.into(),
            ssh4(),
            Duration::from_secs(1)
        ),
        "why --source-any is weaker"
    );
}

fn saved_packet(path: &Path) -> Vec<u8> {
    std::fs::read_to_string(path)
        .expect("saved packet")
        .trim()
        .as_bytes()
        .to_vec()
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn the_fwknop_client_opens_it_and_a_replay_is_refused_even_after_restart() {
    let mut s = setup();
    let saved = fwknop_client_opens_it(&mut s);
    a_thousand_replays_are_summarized(&mut s, &saved);
    a_replay_after_restart_opens_nothing(&mut s, &saved);
}

/// The port is closed; the stock fwknop client opens it for alice. Returns the file
/// the client saved its packet in.
fn fwknop_client_opens_it(s: &mut Setup) -> PathBuf {
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "closed before"
    );
    let saved = s.work.path.join("fwknop.pkt");
    s.fwknop(
        &s.keys.fw_hmac.clone(),
        &["-A", "tcp/22", "-s", "-B", saved.to_str().expect("path")],
    );
    assert!(
        opens_within(
            &s.lab.client,
            Lab::CLIENT4.into(),
            ssh4(),
            Duration::from_secs(1)
        ),
        "{}",
        s.agent.log_text()
    );
    let accepted = s.wait("spa.accepted", None);
    assert_eq!(
        (accepted["method"].as_str(), accepted["user"].as_str()),
        (Some("fwknop"), Some("alice"))
    );
    saved
}

/// How many replays the agent's refusal summaries have counted.
fn replays_summarized(agent: &AgentProc) -> u64 {
    agent
        .events_named("spa.refused_summary")
        .iter()
        .filter_map(|v| v["counts"].as_str().map(str::to_owned))
        .flat_map(|c| {
            c.split(' ')
                .filter_map(|kv| kv.strip_prefix("replay=")?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Replayed a thousand times: a few lines, the rest counted in the summary. Sent 100 at
/// a time, 5 ms apart (20,000 a second): all at once, a burst beyond what the capture
/// ring holds while the debug build is busy would be dropped by the kernel (and counted
/// in the capture's statistics), which is not what this story is about.
fn a_thousand_replays_are_summarized(s: &mut Setup, saved: &Path) {
    for _ in 0..10 {
        send_raw(&s.lab, vec![saved_packet(saved); 100]);
        std::thread::sleep(Duration::from_millis(5));
    }
    let replay = s.wait("spa.rejected", Some("replay"));
    assert_eq!(replay["src"], "10.240.0.2");
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while replays_summarized(&s.agent) < 1000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(replays_summarized(&s.agent), 1000, "{}", s.agent.log_text());
    let told: Vec<Value> = s
        .agent
        .events_named("spa.rejected")
        .into_iter()
        .filter(|v| v["reason"] == "replay" && v["level"] == "INFO")
        .collect();
    assert!(
        told.len() <= 3,
        "{} replay lines told: {told:?}",
        told.len()
    );
}

/// A clean stop keeps the grant; take it out while the agent is down (as if it had
/// expired), so only the replay could open the port again. The replay cache is on disk.
fn a_replay_after_restart_opens_nothing(s: &mut Setup, saved: &Path) {
    assert!(s.agent.stop().success());
    let out = s
        .lab
        .gw
        .cmd("nft")
        .args(["delete", "element", "inet", "knockgate", "grants4"])
        .arg("{ 10.240.0.2 . tcp . 22 }")
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = s.work.path.join("agent.toml");
    s.agent = AgentProc::start(&s.lab, &cfg, &[]);
    send_raw(&s.lab, vec![saved_packet(saved)]);
    s.wait("spa.rejected", Some("replay"));
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "the replay opened nothing"
    );
    assert!(s.agent.events_named("grant.opened").is_empty());
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn refusals_are_logged_with_their_reasons() {
    let mut s = setup();
    // A wrong HMAC key.
    let wrong = "dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGhtYWMga2V5IGF0IGFsbCEhISEhISEhISEhIQ==";
    s.fwknop(wrong, &["-A", "tcp/22", "-s"]);
    let r = s.wait("spa.rejected", Some("no_matching_key"));
    assert_eq!(r["src"], "10.240.0.2");
    // A stale timestamp (max_age is 120 s).
    let hmac = s.keys.fw_hmac.clone();
    s.fwknop(
        &hmac,
        &["-A", "tcp/22", "-s", "--time-offset-minus", "10min"],
    );
    s.wait("spa.rejected", Some("stale"));
    // Access outside the policy.
    s.fwknop(&hmac, &["-A", "tcp/23", "-s"]);
    let r = s.wait("spa.rejected", Some("access_denied"));
    assert_eq!(r["user"], "alice");
    // A native packet sealed for another gateway.
    s.knocker_spa("10.240.0.1", &["--gateway", "gw2", "--access", "tcp/22"]);
    s.wait("spa.rejected", Some("wrong_gateway"));
    assert!(
        s.agent.events_named("grant.opened").is_empty(),
        "nothing opened"
    );
    assert!(!can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()));
    // A small skew within max_age is fine.
    s.fwknop(&hmac, &["-A", "tcp/22", "-s", "--time-offset-minus", "60s"]);
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn allow_ip_opens_only_the_named_address() {
    let mut s = setup();
    let hmac = s.keys.fw_hmac.clone();
    s.fwknop(&hmac, &["-A", "tcp/22", "-a", "10.240.0.3"]);
    s.wait("grant.opened", None);
    assert!(
        opens_within(
            &s.lab.client,
            Lab::OTHER4.into(),
            ssh4(),
            Duration::from_secs(1)
        ),
        "named address opens"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "the sender itself stays closed"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_requested_timeout_above_max_timeout_is_capped() {
    let mut s = setup();
    s.knocker_spa(
        "10.240.0.1",
        &["--gateway", "gw1", "--access", "tcp/22", "--timeout", "1h"],
    );
    let a = s.wait("spa.accepted", None);
    assert_eq!(
        (a["timeout_s"].as_u64(), a["capped"].as_bool()),
        (Some(300), Some(true))
    );
    let table = s.lab.nft_table().expect("table");
    assert!(
        table.contains("10.240.0.2 . tcp . 22 timeout 5m"),
        "{table}"
    );
    // fwknop's -f the same way.
    let hmac = s.keys.fw_hmac.clone();
    s.fwknop(&hmac, &["-A", "tcp/22", "-a", "10.240.0.3", "-f", "7200"]);
    let table = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            s.lab.nft_table().unwrap_or_default()
        })
        .find(|t| t.contains("10.240.0.3"))
        .expect("fwknop grant");
    assert!(
        table.contains("10.240.0.3 . tcp . 22 timeout 5m"),
        "{table}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn knocker_spa_opens_over_ipv4_and_ipv6() {
    let s = setup();
    s.knocker_spa("10.240.0.1", &["--gateway", "gw1", "--access", "tcp/22"]);
    assert!(
        opens_within(
            &s.lab.client,
            Lab::CLIENT4.into(),
            ssh4(),
            Duration::from_secs(1)
        ),
        "{}",
        s.agent.log_text()
    );
    let ssh6 = SocketAddr::new(Lab::GW6.into(), 22);
    assert!(
        !can_connect(&s.lab.client, IpAddr::V6(Lab::CLIENT6), ssh6),
        "IPv4 grant opens no IPv6"
    );
    s.knocker_spa("fd00:4b47::1", &["--gateway", "gw1", "--access", "tcp/22"]);
    assert!(
        opens_within(
            &s.lab.client,
            Lab::CLIENT6.into(),
            ssh6,
            Duration::from_secs(1)
        ),
        "{}",
        s.agent.log_text()
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn ten_thousand_junk_datagrams_open_nothing_and_the_agent_keeps_serving() {
    let mut s = setup();
    // Deterministic junk: random bytes, fwknop-shaped base64, and native-magic prefixes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let junk: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let len = (next() % 300) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match i % 3 {
                0 => p.iter_mut().for_each(|b| *b = b64[(*b as usize) % 64]),
                1 if !p.is_empty() => {
                    p[0] = 0xC5;
                    if p.len() > 1 {
                        p[1] = 1;
                    }
                }
                _ => {}
            }
            p
        })
        .collect();
    send_raw(&s.lab, junk);
    s.agent
        .wait_event(|v| v["event"] == "spa.rejected", Duration::from_secs(2))
        .expect("junk seen");
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.agent.events_named("spa.accepted").is_empty());
    assert!(s.agent.events_named("grant.opened").is_empty());
    assert!(
        !s.lab.nft_table().expect("table").contains("10.240.0.2 ."),
        "no grant element"
    );
    s.knocker_spa("10.240.0.1", &["--gateway", "gw1", "--access", "tcp/22"]);
    assert!(
        opens_within(
            &s.lab.client,
            Lab::CLIENT4.into(),
            ssh4(),
            Duration::from_secs(1)
        ),
        "still serving"
    );
}

/// What a UDP scan learns of `port` on the gateway: `true` if the port answered with a
/// port unreachable ("closed"), `false` if nothing came back ("open|filtered").
fn answers_unreachable(lab: &Lab, port: u16) -> bool {
    lab.client.run(move || {
        let sock = UdpSocket::bind((Lab::CLIENT4, 0)).expect("bind");
        sock.connect((Lab::GW4, port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        sock.send(b"probe").expect("send");
        let mut buf = [0u8; 64];
        matches!(sock.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn the_spa_port_looks_filtered_whether_the_agent_runs_or_not() {
    let mut s = setup();
    // The probe tells a closed port from a silent one.
    assert!(answers_unreachable(&s.lab, 5555), "a closed port answers");
    // The agent reads the SPA port (capture sees it before the firewall drops it) and
    // never answers.
    assert!(!answers_unreachable(&s.lab, 62201));
    assert_eq!(
        s.agent
            .wait_event(|v| v["event"] == "spa.rejected", Duration::from_secs(2))
            .map(|v| v["reason"].clone()),
        Some("malformed".into()),
        "the probe reached the agent"
    );
    // Without the agent the port is still dropped, not answered.
    assert!(s.agent.stop().success());
    assert!(!answers_unreachable(&s.lab, 62201));
    assert!(answers_unreachable(&s.lab, 5555));
}
