//! End to end: protection is never removed by accident. A stopped agent leaves the port
//! closed, something else flushing or deleting the table is undone within a second, only
//! `knockgate-agent uninstall` removes the table, a managed agent that lost its
//! controller config keeps the ports it protected, and grants nobody can expire do not
//! stop the agent from starting.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use knockgate_cli::send_knock;
use knockgate_proto::KnockStep;
use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::{Lab, Netns, sh};
use knockgate_tests::probe::{Listener, can_connect, closes_within, opens_within};
use knockgate_tests::wait_until;

const SEQ: [&str; 3] = ["tcp/7000", "udp/8000", "tcp/9000"];

fn knock(lab: &Lab, target: IpAddr) {
    lab.client.run(move || {
        for k in [
            KnockStep::tcp(7000),
            KnockStep::udp(8000),
            KnockStep::tcp(9000),
        ] {
            send_knock(target, &k).expect("knock");
        }
    });
}

fn ssh4() -> SocketAddr {
    SocketAddr::new(Lab::GW4.into(), 22)
}

fn ssh6() -> SocketAddr {
    SocketAddr::new(Lab::GW6.into(), 22)
}

fn nft(ns: &Netns, args: &[&str]) {
    sh(ns.cmd("nft").args(args));
}

/// A gateway namespace with tcp/22 listening, and an agent config for `SEQ` whose grants
/// last `timeout`.
struct Bench {
    lab: Lab,
    _sshd: Listener,
    _work: Workdir,
    config: std::path::PathBuf,
}

fn bench(timeout: &str) -> Bench {
    let lab = Lab::new();
    let _sshd = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let config = work.config(&ssh_policy(timeout, &SEQ));
    Bench {
        lab,
        _sshd,
        _work: work,
        config,
    }
}

/// Knock `target` from the client, then: does `src` reach `dst` within a second?
fn knock_opens(lab: &Lab, target: IpAddr, src: IpAddr, dst: SocketAddr) -> bool {
    knock(lab, target);
    opens_within(&lab.client, src, dst, Duration::from_secs(1))
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_stopped_agent_keeps_the_port_closed_and_a_restarted_one_opens_it() {
    let Bench { lab, config, .. } = &bench("4s");
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(knock_opens(
        lab,
        Lab::GW4.into(),
        Lab::CLIENT4.into(),
        ssh4()
    ));
    let stopped = Instant::now();
    assert!(agent.stop().success(), "{}", agent.log_text());

    // While the agent is down: never open to anyone else; the grant runs out by itself.
    let table = lab.nft_table().expect("the table outlives the agent");
    assert!(table.contains("10.240.0.2 . tcp . 22"), "{table}");
    while stopped.elapsed() < Duration::from_secs(2) {
        assert!(
            !can_connect(&lab.client, Lab::OTHER4.into(), ssh4()),
            "a stopped agent must leave the port closed to others"
        );
    }
    assert!(
        closes_within(
            &lab.client,
            Lab::CLIENT4.into(),
            ssh4(),
            Duration::from_secs(4)
        ),
        "the grant expires in the kernel with nobody to close it"
    );
    assert!(!can_connect(&lab.client, Lab::OTHER4.into(), ssh4()));
    // Nothing opens without an agent to hear of it, a sequence matched in the kernel
    // neither (the agent stopped its doors).
    assert!(
        !knock_opens(lab, Lab::GW4.into(), Lab::CLIENT4.into(), ssh4()),
        "a valid knock opened with the agent stopped"
    );

    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(
        knock_opens(lab, Lab::GW4.into(), Lab::CLIENT4.into(), ssh4()),
        "{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_killed_agents_sequences_stop_opening_within_five_seconds() {
    let Bench { lab, config, .. } = &bench("1s");
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(knock_opens(
        lab,
        Lab::GW4.into(),
        Lab::CLIENT4.into(),
        ssh4()
    ));
    agent.kill9();
    // SIGKILL: no cleanup ran. The kernel doors' keep-alive (5 s) runs out, and the
    // 1 s grant with it.
    std::thread::sleep(Duration::from_millis(5500));
    assert!(
        !knock_opens(lab, Lab::GW4.into(), Lab::CLIENT4.into(), ssh4()),
        "a valid knock opened 5 s after the agent died"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn the_table_repairs_itself_within_a_second_and_keeps_grants() {
    let Bench { lab, config, .. } = &bench("60s");
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(knock_opens(
        lab,
        Lab::GW4.into(),
        Lab::CLIENT4.into(),
        ssh4()
    ));

    let damage: [&[&str]; 4] = [
        &["flush", "ruleset"],
        &["delete", "table", "inet", "knockgate"],
        &["flush", "chain", "inet", "knockgate", "input"],
        &["flush", "set", "inet", "knockgate", "grants4"],
    ];
    for (i, cmd) in damage.into_iter().enumerate() {
        let t0 = Instant::now();
        nft(&lab.gw, cmd);
        let mut repairs = 0;
        while repairs <= i && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(10));
            repairs = agent.events_named("firewall.repaired").len();
        }
        assert_eq!(
            repairs,
            i + 1,
            "no repair within 1 s after nft {cmd:?}:\n{}",
            agent.log_text()
        );
        let table = lab.nft_table().expect("table back");
        assert!(
            table.contains("10.240.0.2 . tcp . 22") && table.contains("chain input"),
            "after nft {cmd:?}: {table}"
        );
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "repair took {took:?}");
        assert!(
            !can_connect(&lab.client, Lab::OTHER4.into(), ssh4()),
            "after nft {cmd:?} the port is closed to others again"
        );
        assert!(
            can_connect(&lab.client, Lab::CLIENT4.into(), ssh4()),
            "after nft {cmd:?} the granted source is still inside"
        );
    }
    // The next knock still opens (a new grant, over IPv6).
    assert!(!can_connect(&lab.client, Lab::CLIENT6.into(), ssh6()));
    assert!(
        knock_opens(lab, Lab::GW6.into(), Lab::CLIENT6.into(), ssh6()),
        "{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn only_uninstall_removes_the_table() {
    let Bench { lab, config, .. } = &bench("60s");
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(agent.stop().success());
    assert!(lab.nft_table().is_some());
    assert!(!can_connect(&lab.client, Lab::OTHER4.into(), ssh4()));
    let out = sh(lab
        .gw
        .cmd(knockgate_tests::bin("knockgate-agent"))
        .args(["uninstall", "--config"])
        .arg(config));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("no longer protected"), "{said}");
    assert_eq!(lab.nft_table(), None);
    assert!(can_connect(&lab.client, Lab::OTHER4.into(), ssh4()));
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_grant_nobody_can_expire_does_not_stop_the_agent() {
    let Bench { lab, config, .. } = &bench("60s");
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(agent.stop().success());
    // By hand, without a timeout: knockgate never adds one like it.
    nft(
        &lab.gw,
        &[
            "add",
            "element",
            "inet",
            "knockgate",
            "grants4",
            "{ 10.240.0.3 . tcp . 22 }",
        ],
    );
    let mut agent = AgentProc::start(lab, config, &[]);
    assert!(
        agent
            .log_text()
            .contains("a grant without a timeout is in the grant set")
    );
    assert!(agent.events_named("grant.adopted").is_empty());
    assert!(knock_opens(
        lab,
        Lab::GW4.into(),
        Lab::CLIENT4.into(),
        ssh4()
    ));
    assert!(agent.stop().success());
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_managed_agent_without_its_controller_config_keeps_its_protected_ports() {
    let fleet = Fleet::new(&["ctl", "gw1", "client"]);
    let work = Workdir::new();
    let ctl_addr = fleet.host(0).v4.to_string();
    let gw = &fleet.host(1).ns;
    let client = &fleet.host(2).ns;
    let me = fleet.host(2).addr();
    let ssh = SocketAddr::new(fleet.host(1).addr(), 22);
    let mut ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &ctl_addr, None);
    let _sshd = Listener::start(gw, 22);
    let (mut agent, _) = enroll_and_start(&ctl, gw, &work, "gw1", "role=edge");
    ctl.add_user("alice", &work.path);
    ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa"]);
    wait_until("tcp/22 protected", Duration::from_secs(2), || {
        !can_connect(client, me, ssh)
    });

    // The controller goes away, the host reboots (the kernel's table is gone) and the
    // cached controller config is lost.
    assert!(agent.stop().success());
    ctl.kill();
    nft(gw, &["delete", "table", "inet", "knockgate"]);
    assert!(can_connect(client, me, ssh), "open with no table at all");
    let state = work.path.join("state");
    std::fs::remove_file(state.join("controller-config.pb")).expect("cache removed");

    let config = work.path.join("agent.toml");
    let agent = AgentProc::start_in(gw, &config, &[]);
    assert!(
        !can_connect(client, me, ssh),
        "the recorded protected port must stay closed:\n{}",
        agent.log_text()
    );
    assert!(
        agent
            .log_text()
            .contains("keeping the ports protected last time"),
        "{}",
        agent.log_text()
    );
    // Every state file (keys, cached config, replay history, spool, records) is 0600.
    let mut files = Vec::new();
    let mut dirs = vec![state.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("state dir").flatten() {
            let meta = e.metadata().expect("meta");
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                files.push((e.path(), meta.permissions().mode() & 0o777));
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    let open: Vec<_> = files.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "state files readable by others: {open:?}");
    let check = sh(gw
        .cmd(knockgate_tests::bin("knockgate-agent"))
        .args(["check", "--config"])
        .arg(&config));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("kept protected from the last run") && said.contains("tcp/22"),
        "{said}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_restarted_agent_still_closes_a_disabled_users_grant() {
    let fleet = Fleet::new(&["ctl", "gw1", "client"]);
    let work = Workdir::new();
    let ctl_addr = fleet.host(0).v4.to_string();
    let gw = &fleet.host(1).ns;
    let client = &fleet.host(2).ns;
    let me = fleet.host(2).addr();
    let ssh = SocketAddr::new(fleet.host(1).addr(), 22);
    let ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &ctl_addr, None);
    let _sshd = Listener::start(gw, 22);
    let (mut agent, _) = enroll_and_start(&ctl, gw, &work, "gw1", "role=edge");
    let profile = ctl.add_user("alice", &work.path);
    let profile_arg = profile.to_str().expect("path");
    ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa", "--timeout", "60s"]);
    sh(client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["open", "gw1", "--profile", profile_arg]));
    assert!(opens_within(client, me, ssh, Duration::from_secs(2)));

    // Restarted: the grant is adopted with its user, so disabling her still closes it.
    assert!(agent.stop().success());
    let mut agent = AgentProc::start_in(gw, &work.path.join("agent.toml"), &[]);
    let adopted = agent
        .wait_event(|v| v["event"] == "grant.adopted", Duration::from_secs(2))
        .expect("adopted");
    assert_eq!(adopted["user"], "alice", "{adopted}");
    assert!(wait_applied(&ctl, Duration::from_secs(10)), "reconnected");
    assert!(can_connect(client, me, ssh), "still open after the restart");
    assert!(ctl.knockadm(&["user", "disable", "alice"]).status.success());
    assert!(
        closes_within(client, me, ssh, Duration::from_millis(1500)),
        "the adopted grant of a disabled user closes:\n{}",
        agent.log_text()
    );
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn an_agent_that_cannot_hear_its_kernel_doors_does_not_start_and_changes_nothing() {
    // Written by hand, not with `Workdir::config`: this story is about the kernel path
    // whichever path the other stories run on.
    let lab = Lab::new();
    let _sshd = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let agent_config = |name: &str| {
        let path = work.path.join(format!("{name}.toml"));
        let text = format!(
            "[agent]\nname = \"gw1\"\ninterfaces = [\"{}\"]\nstate_dir = \"{}\"\n\n{}",
            Lab::GW_IFACE,
            work.path.join(name).display(),
            ssh_policy("60s", &SEQ)
        );
        std::fs::write(&path, text).expect("config");
        path
    };
    let mut first = AgentProc::start(&lab, &agent_config("first"), &[]);
    let before = lab.nft_table().expect("table");
    // Another agent in the same namespace finds the nflog group taken: it must not
    // install doors nobody would hear of, nor touch the table.
    let out = lab
        .gw
        .cmd("timeout")
        .arg("20")
        .arg(knockgate_tests::bin("knockgate-agent"))
        .args(["run", "--config"])
        .arg(agent_config("second"))
        .output()
        .expect("run a second agent");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("nflog:4747") && said.contains("sequence_matching = \"userspace\""),
        "{said}"
    );
    assert_eq!(
        without_expiry(&lab.nft_table().expect("table")),
        without_expiry(&before)
    );
    assert!(!can_connect(&lab.client, Lab::OTHER4.into(), ssh4()));
    // The first agent still opens for a valid knock.
    assert!(knock_opens(
        &lab,
        Lab::GW4.into(),
        Lab::CLIENT4.into(),
        ssh4()
    ));
    assert!(first.stop().success());
}

/// A listing without the time left on each element (the keep-alive renews it).
fn without_expiry(listing: &str) -> String {
    listing
        .split(' ')
        .scan(false, |skip, word| {
            let drop = *skip;
            *skip = word == "expires";
            Some((!drop && word != "expires").then_some(word))
        })
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}
