//! Part one of the lab: one gateway on its own. A client and a gateway namespace, the
//! agent with a sample policy from its file, the protected port shown closed, a knock
//! with `knocker`, the port open, an SPA packet over IPv6, the table surviving
//! `nft flush ruleset` and a stopped agent, then cleanup.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::netns::Lab;
use knockgate_tests::probe::{Listener, can_connect, opens_within};

use crate::{print_indented, show, step};

/// The knock sequence the sample policy asks for.
const SEQUENCE: [&str; 4] = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"];
/// The protected port over IPv4 and IPv6.
const SSH4: SocketAddr = SocketAddr::new(IpAddr::V4(Lab::GW4), 22);
const SSH6: SocketAddr = SocketAddr::new(IpAddr::V6(Lab::GW6), 22);
const ME4: IpAddr = IpAddr::V4(Lab::CLIENT4);
const ME6: IpAddr = IpAddr::V6(Lab::CLIENT6);
/// A client address that never knocks.
const OTHER4: IpAddr = IpAddr::V4(Lab::OTHER4);

/// Returns whether everything behaved.
pub fn run() -> bool {
    step(
        "creating namespaces: client 10.240.0.2 / fd00:4b47::2  <-veth->  gateway 10.240.0.1 / fd00:4b47::1",
    );
    let lab = Lab::new();
    let _sshd = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let key_file = keygen(&work);
    let config = write_config(&work, &key_file);

    let mut agent = start_agent(&lab, &config);
    let closed_before = closed_before_knocking(&lab);
    knock(&lab);
    let open_after = opened_by_the_knock(&lab);
    let v6_closed = ipv6_still_closed(&lab);
    let v6_open = spa_opens_ipv6(&lab, &key_file);
    show_events(&agent);
    show_grants(&lab);
    let repaired = survives_a_flush(&lab, &mut agent);
    let stopped = survives_a_stop(&lab, &mut agent);

    drop(agent);
    drop(lab);
    step("cleaned up: namespaces, veth and the nftables table are gone");
    closed_before && open_after && v6_closed && v6_open && repaired && stopped
}

/// alice's SPA key, made by `knocker keygen` as a user would.
fn keygen(work: &Workdir) -> PathBuf {
    let key_file = work.path.join("alice.key");
    let out = std::process::Command::new(knockgate_tests::bin("knocker"))
        .args(["keygen", "--out"])
        .arg(&key_file)
        .output()
        .expect("run knocker keygen");
    assert!(
        out.status.success(),
        "knocker keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    key_file
}

/// The agent's config: the knock-sequence policy and an SPA policy for alice,
/// printed so the reader sees what the agent enforces.
fn write_config(work: &Workdir, key_file: &Path) -> PathBuf {
    let key = std::fs::read_to_string(key_file).unwrap_or_default();
    let spa = format!(
        "[[user]]\nname = \"alice\"\nspa_key = \"{}\"\n\n[[policy]]\nname = \"ssh-spa\"\nopen = [\"tcp/22\"]\n\
         timeout = \"30s\"\nmax_timeout = \"5m\"\nusers = [\"alice\"]\nspa = true\n",
        key.trim()
    );
    let config = work.config(&format!("{}\n{spa}", ssh_policy("30s", &SEQUENCE)));
    println!("{}", std::fs::read_to_string(&config).unwrap_or_default());
    config
}

/// Starts the agent in the gateway and shows the table it installed.
fn start_agent(lab: &Lab, config: &Path) -> AgentProc {
    step("starting knockgate-agent in the gateway");
    let agent = AgentProc::start(lab, config, &["--log-level", "info"]);
    println!("    agent pid {} enforcing; nft ruleset:", agent.pid());
    for line in lab.nft_table().unwrap_or_default().lines() {
        println!("    | {line}");
    }
    agent
}

/// Whether the protected port is closed to the client before it knocks.
fn closed_before_knocking(lab: &Lab) -> bool {
    step("client connects to 10.240.0.1:22 before knocking");
    !show(can_connect(&lab.client, ME4, SSH4), "tcp/22 for 10.240.0.2")
}

/// The client knocks the sequence with `knocker knock`.
fn knock(lab: &Lab) {
    step(&format!(
        "client runs: knocker knock 10.240.0.1 {}",
        SEQUENCE.join(" ")
    ));
    let out = lab
        .client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["knock", "10.240.0.1", "--verbose", "--delay", "20ms"])
        .args(SEQUENCE)
        .output()
        .expect("run knocker");
    print_indented(&out.stdout);
}

/// Whether the knock opened the port to the client, and to no one else.
fn opened_by_the_knock(lab: &Lab) -> bool {
    step("client connects again");
    let open_after = show(
        opens_within(&lab.client, ME4, SSH4, Duration::from_secs(1)),
        "tcp/22 for 10.240.0.2",
    );
    let other_closed = !show(
        can_connect(&lab.client, OTHER4, SSH4),
        "tcp/22 for 10.240.0.3 (did not knock)",
    );
    open_after && other_closed
}

/// Whether the port stays closed over IPv6: the knock opened only IPv4.
fn ipv6_still_closed(lab: &Lab) -> bool {
    step("client connects over IPv6 (the IPv4 knock opened only IPv4)");
    !show(
        can_connect(&lab.client, ME6, SSH6),
        "tcp/22 for fd00:4b47::2",
    )
}

/// Whether one SPA packet from `knocker spa` opens the port over IPv6.
fn spa_opens_ipv6(lab: &Lab, key_file: &Path) -> bool {
    step(
        "client sends one SPA packet: knocker spa fd00:4b47::1 --user alice --key-file alice.key --gateway gw1 --access tcp/22",
    );
    let out = lab
        .client
        .cmd(knockgate_tests::bin("knocker"))
        .args([
            "spa",
            "fd00:4b47::1",
            "--user",
            "alice",
            "--gateway",
            "gw1",
            "--access",
            "tcp/22",
            "--verbose",
            "--key-file",
        ])
        .arg(key_file)
        .output()
        .expect("run knocker spa");
    print_indented(&out.stdout);
    show(
        opens_within(&lab.client, ME6, SSH6, Duration::from_secs(1)),
        "tcp/22 for fd00:4b47::2",
    )
}

/// The events the agent logged so far.
fn show_events(agent: &AgentProc) {
    step("agent events");
    for e in agent.events().iter().filter(|v| v.get("event").is_some()) {
        println!("    {}", e);
    }
}

/// The grants in the kernel's sets.
fn show_grants(lab: &Lab) {
    step("grant set in the kernel");
    for line in lab
        .nft_table()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("elements"))
    {
        println!("    | {}", line.trim());
    }
}

/// Whether the agent restores its table after `nft flush ruleset`, leaving the
/// port closed to whoever did not knock.
fn survives_a_flush(lab: &Lab, agent: &mut AgentProc) -> bool {
    step("the gateway runs: nft flush ruleset (what every `systemctl reload nftables` does)");
    let _ = lab.gw.cmd("nft").args(["flush", "ruleset"]).status();
    let repaired = agent
        .wait_event(
            |v| v["event"] == "firewall.repaired",
            Duration::from_secs(2),
        )
        .is_some();
    println!(
        "    {} the agent restored its table and its grants (event firewall.repaired)",
        if repaired { "OK    " } else { "FAILED" }
    );
    let still_closed = !show(
        can_connect(&lab.client, OTHER4, SSH4),
        "tcp/22 for 10.240.0.3 (did not knock)",
    );
    repaired && still_closed
}

/// Whether the agent stops cleanly on SIGTERM and the port stays protected
/// while it is down.
fn survives_a_stop(lab: &Lab, agent: &mut AgentProc) -> bool {
    step("the agent is stopped (SIGTERM): protection stays, grants run out in the kernel");
    let stopped = agent.stop().success();
    let closed_while_down = !show(
        can_connect(&lab.client, OTHER4, SSH4),
        "tcp/22 for 10.240.0.3 while the agent is down",
    );
    println!("    (knockgate-agent uninstall is the only way to remove the table)");
    stopped && closed_while_down
}
