//! Part two of the lab: a controller, gw1 (role=edge) and gw2 (role=core) enrolled with
//! one-time tokens, alice admitted on role=edge by a policy, her SPA knock opening gw1
//! but not gw2, and the audit trail that recorded it all.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::probe::{Listener, can_connect, opens_within};

use crate::{show, step};

fn print_indented(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("    {line}");
    }
}

/// Returns whether everything behaved.
pub fn run() -> bool {
    step("creating namespaces on one bridge: controller 10.240.1.1, gw1 .2, gw2 .3, client .4");
    let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client"]);
    let work = Workdir::new();
    step("knockgate-controller init && knockgate-controller run");
    let ctl = Controller::start(
        &fleet.host(0).ns,
        &work.path.join("ctl"),
        "10.240.1.1",
        None,
    );
    println!(
        "    controller up at {}, CA sha256 {}",
        ctl.url, ctl.ca_sha256
    );
    let _sshd1 = Listener::start(&fleet.host(1).ns, 22);
    let _sshd2 = Listener::start(&fleet.host(2).ns, 22);

    step(
        "knockadm agent add gw1 --label role=edge / gw2 --label role=core; knockgate-agent enroll on each",
    );
    let (gw1, _) = enroll_and_start(&ctl, &fleet.host(1).ns, &work, "gw1", "role=edge");
    let (gw2, _) = enroll_and_start(&ctl, &fleet.host(2).ns, &work, "gw2", "role=core");
    let connected = wait_applied(&ctl, Duration::from_secs(10));
    print_indented(&ctl.knockadm(&["agent", "list"]).stdout);

    step("knockadm user add alice --profile-out alice.toml; knockadm user add bob");
    let profile = work.path.join("alice.toml");
    print_indented(
        &ctl.knockadm(&[
            "user",
            "add",
            "alice",
            "--profile-out",
            &profile.to_string_lossy(),
        ])
        .stdout,
    );
    ctl.knockadm(&["user", "add", "bob"]);
    step(
        "knockadm policy add ssh --open tcp/22 --users alice --agents role=edge --spa --fwknop (and bob on role=core)",
    );
    ctl.knockadm(&[
        "policy",
        "add",
        "ssh",
        "--open",
        "tcp/22",
        "--users",
        "alice",
        "--agents",
        "role=edge",
        "--timeout",
        "30s",
        "--spa",
        "--fwknop",
    ]);
    ctl.knockadm(&[
        "policy",
        "add",
        "core",
        "--open",
        "tcp/22",
        "--users",
        "bob",
        "--agents",
        "role=core",
        "--spa",
    ]);
    let applied = wait_applied(&ctl, Duration::from_secs(5));
    print_indented(&ctl.knockadm(&["policy", "list"]).stdout);

    let client = &fleet.host(3).ns;
    let me: IpAddr = fleet.host(3).addr();
    let (ssh1, ssh2) = (
        SocketAddr::new(fleet.host(1).addr(), 22),
        SocketAddr::new(fleet.host(2).addr(), 22),
    );
    step("the client tries ssh on both gateways");
    let closed = !show(can_connect(client, me, ssh1), "gw1 tcp/22")
        & !show(can_connect(client, me, ssh2), "gw2 tcp/22");

    step("alice knocks: knocker open gw1 --profile alice.toml");
    let out = client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["open", "gw1", "--verbose", "--profile"])
        .arg(&profile)
        .output()
        .expect("knocker open");
    print_indented(&out.stdout);
    let open1 = show(
        opens_within(client, me, ssh1, Duration::from_secs(2)),
        "gw1 tcp/22 for alice",
    );
    let still2 = !show(
        can_connect(client, me, ssh2),
        "gw2 tcp/22 (no policy admits alice there)",
    );

    step("knockadm grant list; knockadm audit");
    std::thread::sleep(Duration::from_millis(500));
    print_indented(&ctl.knockadm(&["grant", "list"]).stdout);
    print_indented(&ctl.knockadm(&["audit", "--limit", "40"]).stdout);
    drop((gw1, gw2));
    step("cleaned up: agents, controller, namespaces and bridge are gone");
    connected && applied && closed && open1 && still2
}
