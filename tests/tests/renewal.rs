//! End to end: an agent renews its certificate over the authenticated channel before it
//! expires, restarts itself with it, and keeps serving after the first one has expired.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::sh;
use knockgate_tests::probe::{Listener, opens_within};
use knockgate_tests::wait_until;

/// Short enough for a test: renewal is due after two thirds of it (10 s).
const LIFETIME: &str = "15s";

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn an_agent_renews_its_certificate_and_keeps_working_after_the_old_one_expired() {
    let fleet = Fleet::new(&["ctl", "gw1", "client"]);
    let work = Workdir::new();
    let addr = fleet.host(0).v4.to_string();
    let ctl = Controller::start_with(
        &fleet.host(0).ns,
        &work.path.join("ctl"),
        &addr,
        None,
        &["--agent-cert-lifetime", LIFETIME],
    );
    let gw = &fleet.host(1).ns;
    let _sshd = Listener::start(gw, 22);
    let enrolled = Instant::now();
    let (mut agent, _) = enroll_and_start(&ctl, gw, &work, "gw1", "role=edge");
    let first_pid = agent.pid();
    let profile = ctl.add_user("alice", &work.path);
    let profile_arg = profile.to_str().expect("path");
    ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa"]);

    let renewed = agent.wait_event(|v| v["event"] == "agent.renewed", Duration::from_secs(20));
    assert!(renewed.is_some(), "no renewal:\n{}", agent.log_text());
    wait_until(
        "the renewal in the audit trail",
        Duration::from_secs(5),
        || {
            ctl.knockadm_json(&["audit", "--kind", "agent.renewed"])
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    );
    assert_eq!(agent.pid(), first_pid, "restarted in place (same process)");

    // Past the first certificate's end: the agent is connected with the new one.
    let left = Duration::from_secs(16).saturating_sub(enrolled.elapsed());
    std::thread::sleep(left);
    assert!(
        wait_applied(&ctl, Duration::from_secs(10)),
        "connected after the first certificate expired:\n{}",
        agent.log_text()
    );
    let client = &fleet.host(2).ns;
    sh(client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["open", "gw1", "--profile", profile_arg]));
    let ssh = SocketAddr::new(fleet.host(1).addr(), 22);
    assert!(
        opens_within(client, fleet.host(2).addr(), ssh, Duration::from_secs(2)),
        "the restarted agent serves:\n{}",
        agent.log_text()
    );
    let _ = agent.stop();
}
