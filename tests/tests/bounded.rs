//! End to end: an attacker who can reach the controller cannot lock agents out of it.
//! A thousand idle TCP connections (the cheapest way to stall a TLS accept loop) from a
//! test host, and an agent still connects and syncs within two seconds.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;

const IDLE: usize = 1000;

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn idle_connections_do_not_keep_an_agent_from_syncing() {
    let fleet = Fleet::new(&["ctl", "gw1", "flood"]);
    let work = Workdir::new();
    let ctl_addr = fleet.host(0).v4;
    let mut ctl = Controller::start(
        &fleet.host(0).ns,
        &work.path.join("ctl"),
        &ctl_addr.to_string(),
        None,
    );
    let gw = &fleet.host(1).ns;
    let (mut agent, _) = enroll_and_start(&ctl, gw, &work, "gw1", "role=edge");
    assert!(wait_applied(&ctl, Duration::from_secs(10)), "enrolled");
    assert!(agent.stop().success());

    // Open the idle connections as fast as the controller takes them, for 5 s at most,
    // and hold them: they never send a byte.
    let target = SocketAddr::new(ctl_addr.into(), 7443);
    let idle: Vec<TcpStream> = fleet.host(2).ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        (0..IDLE)
            .take_while(|_| Instant::now() < deadline)
            .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok())
            .collect()
    });

    let t0 = Instant::now();
    let config = work.path.join("agent.toml");
    let agent = AgentProc::start_in(gw, &config, &[]);
    let synced = wait_applied(&ctl, Duration::from_secs(2));
    let took = t0.elapsed();
    assert!(
        synced,
        "with {} idle connections the agent did not sync within 2 s ({took:?}):\n{}\n{}",
        idle.len(),
        agent.log_text(),
        ctl.log_text()
    );
    assert!(
        idle.len() >= IDLE * 9 / 10,
        "only {} of {IDLE} connections were taken within 5 s",
        idle.len()
    );
    drop(idle);
    ctl.kill();
}
