//! End to end: the real agent in a gateway namespace, real knock clients in a client
//! namespace, a real listener behind nftables. What is checked is what a user sees: can
//! this source connect to the protected port or not.
//!
//! scripts/test.sh runs these stories twice: with the sequences matched in the kernel
//! (the default), and with `KGT_SEQUENCES=userspace`, by the agent; each story checks
//! that it ran on the path it was meant to.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use knockgate_cli::send_knock;
use knockgate_proto::KnockStep;
use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy, userspace_sequences};
use knockgate_tests::netns::Lab;
use knockgate_tests::netns::sh;
use knockgate_tests::probe::{Listener, can_connect, closes_within, opens_within};

const SEQ: [&str; 4] = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"];

fn specs() -> Vec<KnockStep> {
    vec![
        KnockStep::tcp(7000),
        KnockStep::udp(8000),
        KnockStep::Icmp,
        KnockStep::tcp(9000),
    ]
}

fn ssh4() -> SocketAddr {
    SocketAddr::new(Lab::GW4.into(), 22)
}

fn ssh6() -> SocketAddr {
    SocketAddr::new(Lab::GW6.into(), 22)
}

/// Knock from the client namespace with the knocker library, from source `src`.
fn knock_from(lab: &Lab, target: IpAddr, seq: Vec<KnockStep>, gap: Duration) {
    lab.client.run(move || {
        for (i, k) in seq.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            send_knock(target, k).expect("knock");
        }
    });
}

struct Setup {
    agent: AgentProc,
    _listener: Listener,
    _work: Workdir,
    lab: Lab,
}

fn setup(timeout: &str, seq: &[&str]) -> Setup {
    let lab = Lab::new();
    let listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let config = work.config(&ssh_policy(timeout, seq));
    let agent = AgentProc::start(&lab, &config, &[]);
    let table = String::from_utf8_lossy(
        &sh(lab
            .gw
            .cmd("nft")
            .args(["list", "table", "inet", "knockgate"]))
        .stdout,
    )
    .into_owned();
    assert_eq!(
        table.contains("chain kd_"),
        !userspace_sequences(),
        "the sequence is matched on the wrong path:\n{table}"
    );
    // And `check` says which path it takes, and why.
    let check = sh(lab
        .gw
        .cmd(knockgate_tests::bin("knockgate-agent"))
        .args(["check", "--config"])
        .arg(&config));
    let said = String::from_utf8_lossy(&check.stdout);
    let expected = if userspace_sequences() {
        "sequence: matched by the agent (every knock captured): agent.sequence_matching is \"userspace\""
    } else {
        "sequence: matched in the kernel"
    };
    assert!(said.contains(expected), "{said}");
    Setup {
        agent,
        _listener: listener,
        _work: work,
        lab,
    }
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn closed_before_open_after_the_right_knock_closed_after_timeout() {
    let mut s = setup("2s", &SEQ);
    let me = IpAddr::V4(Lab::CLIENT4);
    assert!(
        !can_connect(&s.lab.client, me, ssh4()),
        "protected port must be closed before knocking"
    );
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::from_millis(20));
    assert!(
        opens_within(&s.lab.client, me, ssh4(), Duration::from_secs(1)),
        "knock must open tcp/22"
    );
    let opened = s
        .agent
        .events_named_within("grant.opened", Duration::from_secs(1));
    assert_eq!(opened.len(), 1, "one grant: {opened:?}");
    assert_eq!(opened[0]["src"], "10.240.0.2");
    assert_eq!(opened[0]["policy"], "ssh");
    assert!(
        s.lab
            .nft_table()
            .expect("table")
            .contains("10.240.0.2 . tcp . 22")
    );
    assert!(
        closes_within(&s.lab.client, me, ssh4(), Duration::from_secs(4)),
        "grant must close after timeout"
    );
    let mut agent = s.agent;
    assert!(
        agent
            .wait_event(|v| v["event"] == "grant.closed", Duration::from_secs(2))
            .is_some()
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn an_established_session_outlives_its_grant() {
    let s = setup("1s", &SEQ);
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::ZERO);
    let ok = s.lab.client.run(|| {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut stream = loop {
            if let Ok(st) =
                std::net::TcpStream::connect_timeout(&ssh4(), Duration::from_millis(100))
            {
                break st;
            }
            assert!(std::time::Instant::now() < deadline, "never opened");
        };
        let mut buf = [0u8; 6];
        stream.read_exact(&mut buf).expect("greeting");
        std::thread::sleep(Duration::from_millis(1800)); // grant is gone now
        // The listener closed its side after the greeting; our FIN/ACK exchange still
        // flows because conntrack knows the connection.
        stream.write_all(b"x").is_ok() && stream.read(&mut buf).is_ok()
    });
    assert!(
        ok,
        "traffic on an established connection must pass after the grant expired"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "new connections are refused again"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn wrong_order_and_too_slow_stay_closed() {
    let s = setup("5s", &SEQ);
    let me = IpAddr::V4(Lab::CLIENT4);
    let wrong = vec![
        KnockStep::tcp(7000),
        KnockStep::Icmp,
        KnockStep::udp(8000),
        KnockStep::tcp(9000),
    ];
    knock_from(&s.lab, Lab::GW4.into(), wrong, Duration::from_millis(20));
    assert!(
        !opens_within(&s.lab.client, me, ssh4(), Duration::from_millis(600)),
        "wrong order opened"
    );
    // sequence_timeout is 3 s: four knocks 1.1 s apart take 3.3 s.
    knock_from(
        &s.lab,
        Lab::GW4.into(),
        specs(),
        Duration::from_millis(1100),
    );
    assert!(
        !opens_within(&s.lab.client, me, ssh4(), Duration::from_millis(600)),
        "too slow opened"
    );
    // The agent's matcher tells each reset; the kernel's only its completions.
    if userspace_sequences() {
        let resets: Vec<String> = s
            .agent
            .events_named("knock.reset")
            .iter()
            .map(|v| v["reason"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(resets.contains(&"wrong_knock".to_string()), "{resets:?}");
        assert!(
            resets.contains(&"sequence_timeout".to_string()),
            "{resets:?}"
        );
    }
    assert!(s.agent.events_named("grant.opened").is_empty());
    assert!(s.agent.events_named("knock.completed").is_empty());
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_knock_from_one_client_opens_nothing_for_another() {
    let s = setup("10s", &SEQ);
    // The knocks leave from 10.240.0.2 (the primary address); .3 is another host.
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::from_millis(10));
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
    assert!(
        !can_connect(&s.lab.client, Lab::OTHER4.into(), ssh4()),
        "another source got in"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT6.into(), ssh6()),
        "the same host over IPv6 got in"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn ipv6_knock_opens_ipv6_only() {
    let s = setup("10s", &SEQ);
    let me6 = IpAddr::V6(Lab::CLIENT6);
    assert!(!can_connect(&s.lab.client, me6, ssh6()));
    knock_from(&s.lab, Lab::GW6.into(), specs(), Duration::from_millis(10));
    assert!(
        opens_within(&s.lab.client, me6, ssh6(), Duration::from_secs(1)),
        "IPv6 knock must open: {}",
        s.agent.log_text()
    );
    assert!(
        !can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "IPv6 grant must not open IPv4"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::OTHER6.into(), ssh6()),
        "other IPv6 source got in"
    );
    assert!(
        s.lab
            .nft_table()
            .expect("table")
            .contains("fd00:4b47::2 . tcp . 22")
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn the_debian_knock_client_opens_it() {
    // `knock` sends tcp and udp only: no icmp step in this policy.
    let s = setup("10s", &["tcp/7000", "udp/8000", "tcp/9000"]);
    let out = s
        .lab
        .client
        .cmd("knock")
        .args(["-d", "20", "10.240.0.1", "7000", "8000:udp", "9000"])
        .output()
        .expect("run knock (package knockd)");
    assert!(
        out.status.success(),
        "knock failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn knocker_opens_it() {
    let s = setup("10s", &SEQ);
    let out = s
        .lab
        .client
        .cmd(knockgate_tests::bin("knocker"))
        .args([
            "knock",
            "10.240.0.1",
            "tcp/7000",
            "udp/8000",
            "icmp",
            "tcp/9000",
            "--delay",
            "20ms",
        ])
        .output()
        .expect("run knocker");
    assert!(
        out.status.success(),
        "knocker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn kill_9_still_closes_the_grant_on_time() {
    let mut s = setup("2s", &SEQ);
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::ZERO);
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
    s.agent.kill9();
    assert!(
        can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()),
        "grant survives the agent for its lifetime"
    );
    assert!(
        closes_within(
            &s.lab.client,
            Lab::CLIENT4.into(),
            ssh4(),
            Duration::from_secs(4)
        ),
        "the kernel must expire the grant with the agent dead"
    );
    assert!(
        !can_connect(&s.lab.client, Lab::OTHER4.into(), ssh4()),
        "a dead agent leaves the port closed"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_restarted_agent_adopts_grants_without_duplicates() {
    let mut s = setup("6s", &SEQ);
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::ZERO);
    assert!(opens_within(
        &s.lab.client,
        Lab::CLIENT4.into(),
        ssh4(),
        Duration::from_secs(1)
    ));
    let opened = s
        .agent
        .events_named_within("grant.opened", Duration::from_secs(1));
    s.agent.kill9();
    let config = s._work.path.join("agent.toml");
    let mut agent = AgentProc::start(&s.lab, &config, &[]);
    let adopted = agent.events_named("grant.adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["src"], "10.240.0.2");
    // The grant keeps its ref and policy: they are stored with the element.
    assert_eq!(adopted[0]["grant_ref"], opened[0]["grant_ref"]);
    assert_eq!(adopted[0]["policy"], "ssh");
    // Knocking again refreshes the same element rather than adding another.
    knock_from(&s.lab, Lab::GW4.into(), specs(), Duration::ZERO);
    assert!(
        agent
            .wait_event(|v| v["event"] == "grant.extended", Duration::from_secs(2))
            .is_some(),
        "{}",
        agent.log_text()
    );
    let table = s.lab.nft_table().expect("table");
    assert_eq!(table.matches("10.240.0.2 . tcp . 22").count(), 1, "{table}");
    assert_eq!(table.matches("chain input").count(), 1, "{table}");
    assert!(can_connect(&s.lab.client, Lab::CLIENT4.into(), ssh4()));
    // A clean stop keeps the table and the grant (tests/tests/failclosed.rs has the rest).
    assert!(agent.stop().success());
    let table = s.lab.nft_table().expect("table kept on a clean exit");
    assert!(table.contains("10.240.0.2 . tcp . 22"), "{table}");
    s.agent = agent;
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn the_command_backend_runs_its_commands() {
    let lab = Lab::new();
    let work = Workdir::new();
    let log = work.path.join("commands.log");
    let fw = format!(
        "[firewall]\nbackend = \"command\"\nopen_command = \"echo open %IP% %PROTO% %PORT% %TIMEOUT% >> {0}\"\nclose_command = \"echo close %IP% %PROTO% %PORT% >> {0}\"\n\n",
        log.display()
    );
    let config = work.config(&(fw + &ssh_policy("1s", &SEQ)));
    let mut agent = AgentProc::start(&lab, &config, &[]);
    assert_eq!(
        lab.nft_table(),
        None,
        "the command backend installs no nftables table"
    );
    knock_from(&lab, Lab::GW4.into(), specs(), Duration::ZERO);
    assert!(
        agent
            .wait_event(|v| v["event"] == "grant.closed", Duration::from_secs(4))
            .is_some(),
        "{}",
        agent.log_text()
    );
    let text = std::fs::read_to_string(&log).expect("commands ran");
    assert_eq!(text, "open 10.240.0.2 tcp 22 1\nclose 10.240.0.2 tcp 22\n");
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn config_errors_exit_64_naming_the_key_and_install_nothing() {
    let lab = Lab::new();
    let work = Workdir::new();
    let cases: [(&str, &str); 3] = [
        ("timeout = \"2s\"\nbogus = 1\n", "bogus"),
        ("timeout = \"2 fortnights\"\n", "timeout"),
        ("timeout = \"2s\"\n", "agent.interfaces[0]"),
    ];
    for (i, (policy_tail, key)) in cases.iter().enumerate() {
        let text = format!(
            "[[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\nsequence = [\"tcp/7000\"]\n{policy_tail}"
        );
        let config = work.config(&text);
        if i == 2 {
            // A well-formed config naming an interface the gateway does not have.
            let t = std::fs::read_to_string(&config)
                .expect("read")
                .replace("\"kgt0\"", "\"kgt9\"");
            std::fs::write(&config, t).expect("write");
        }
        let out = lab
            .gw
            .cmd(knockgate_tests::bin("knockgate-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "case {i}: {err}");
        assert_eq!(err.lines().count(), 1, "case {i}: one line: {err}");
        assert!(
            err.contains(key) && err.contains("agent.toml"),
            "case {i}: {err}"
        );
        assert_eq!(lab.nft_table(), None, "case {i}: nothing may be installed");
    }
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn without_privileges_the_agent_says_so_and_exits_77() {
    let lab = Lab::new();
    let work = Workdir::new();
    let config = work.config(&ssh_policy("2s", &SEQ));
    let out = lab
        .gw
        .cmd("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(knockgate_tests::bin("knockgate-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("missing privilege CAP_NET_ADMIN and CAP_NET_RAW"),
        "{err}"
    );
    assert_eq!(lab.nft_table(), None);
}
