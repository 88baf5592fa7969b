//! Part one of the lab: one gateway on its own. A client and a gateway namespace, the
//! agent with a sample policy from its file, the protected port shown closed, a knock
//! with `knocker`, the port open, an SPA packet over IPv6, the table surviving
//! `nft flush ruleset` and a stopped agent, then cleanup.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::netns::Lab;
use knockgate_tests::probe::{Listener, can_connect, opens_within};

use crate::{show, step};

/// Returns whether everything behaved.
pub fn run() -> bool {
    let sequence = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"];
    step(
        "creating namespaces: client 10.240.0.2 / fd00:4b47::2  <-veth->  gateway 10.240.0.1 / fd00:4b47::1",
    );
    let lab = Lab::new();
    let _sshd = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
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
    let key = std::fs::read_to_string(&key_file).unwrap_or_default();
    let spa = format!(
        "[[user]]\nname = \"alice\"\nspa_key = \"{}\"\n\n[[policy]]\nname = \"ssh-spa\"\nopen = [\"tcp/22\"]\n\
         timeout = \"30s\"\nmax_timeout = \"5m\"\nusers = [\"alice\"]\nspa = true\n",
        key.trim()
    );
    let config = work.config(&format!("{}\n{spa}", ssh_policy("30s", &sequence)));
    println!("{}", std::fs::read_to_string(&config).unwrap_or_default());

    step("starting knockgate-agent in the gateway");
    let agent = AgentProc::start(&lab, &config, &["--log-level", "info"]);
    println!("    agent pid {} enforcing; nft ruleset:", agent.pid());
    for line in lab.nft_table().unwrap_or_default().lines() {
        println!("    | {line}");
    }

    let ssh: SocketAddr = SocketAddr::new(Lab::GW4.into(), 22);
    let me: IpAddr = Lab::CLIENT4.into();
    step("client connects to 10.240.0.1:22 before knocking");
    let closed_before = !show(can_connect(&lab.client, me, ssh), "tcp/22 for 10.240.0.2");

    step(&format!(
        "client runs: knocker knock 10.240.0.1 {}",
        sequence.join(" ")
    ));
    let out = lab
        .client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["knock", "10.240.0.1", "--verbose", "--delay", "20ms"])
        .args(sequence)
        .output()
        .expect("run knocker");
    print!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );

    step("client connects again");
    let open_after = show(
        opens_within(&lab.client, me, ssh, Duration::from_secs(1)),
        "tcp/22 for 10.240.0.2",
    );
    let other_closed = !show(
        can_connect(&lab.client, Lab::OTHER4.into(), ssh),
        "tcp/22 for 10.240.0.3 (did not knock)",
    );

    let ssh6: SocketAddr = SocketAddr::new(Lab::GW6.into(), 22);
    let me6: IpAddr = Lab::CLIENT6.into();
    step("client connects over IPv6 (the IPv4 knock opened only IPv4)");
    let v6_closed = !show(
        can_connect(&lab.client, me6, ssh6),
        "tcp/22 for fd00:4b47::2",
    );
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
        .arg(&key_file)
        .output()
        .expect("run knocker spa");
    print!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let v6_open = show(
        opens_within(&lab.client, me6, ssh6, Duration::from_secs(1)),
        "tcp/22 for fd00:4b47::2",
    );

    step("agent events");
    for e in agent.events().iter().filter(|v| v.get("event").is_some()) {
        println!("    {}", e);
    }
    step("grant set in the kernel");
    for line in lab
        .nft_table()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("elements"))
    {
        println!("    | {}", line.trim());
    }

    step("the gateway runs: nft flush ruleset (what every `systemctl reload nftables` does)");
    let _ = lab.gw.cmd("nft").args(["flush", "ruleset"]).status();
    let mut agent = agent;
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
        can_connect(&lab.client, Lab::OTHER4.into(), ssh),
        "tcp/22 for 10.240.0.3 (did not knock)",
    );

    step("the agent is stopped (SIGTERM): protection stays, grants run out in the kernel");
    let stopped = agent.stop().success();
    let closed_while_down = !show(
        can_connect(&lab.client, Lab::OTHER4.into(), ssh),
        "tcp/22 for 10.240.0.3 while the agent is down",
    );
    println!("    (knockgate-agent uninstall is the only way to remove the table)");

    drop(agent);
    drop(lab);
    step("cleaned up: namespaces, veth and the nftables table are gone");
    closed_before
        && open_after
        && other_closed
        && v6_closed
        && v6_open
        && repaired
        && still_closed
        && stopped
        && closed_while_down
}
