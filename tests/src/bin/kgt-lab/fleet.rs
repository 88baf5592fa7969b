//! Part two of the lab: a controller, gw1 (role=edge) and gw2 (role=core) enrolled with
//! one-time tokens, alice admitted on role=edge by a policy, her SPA knock opening gw1
//! but not gw2, and the audit trail that recorded it all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::probe::{Listener, can_connect, opens_within};

use crate::{print_indented, show, step};

/// The fleet's hosts, by their index in [`Fleet::new`]'s list.
const CTL: usize = 0;
const GW1: usize = 1;
const GW2: usize = 2;
const CLIENT: usize = 3;

/// Returns whether everything behaved.
pub fn run() -> bool {
    step("creating namespaces on one bridge: controller 10.240.1.1, gw1 .2, gw2 .3, client .4");
    let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client"]);
    let work = Workdir::new();
    let ctl = start_controller(&fleet, &work);
    let _sshd1 = Listener::start(&fleet.host(GW1).ns, 22);
    let _sshd2 = Listener::start(&fleet.host(GW2).ns, 22);

    let (gw1, gw2, connected) = enroll_gateways(&ctl, &fleet, &work);
    let profile = add_users(&ctl, &work);
    let applied = add_policies(&ctl);
    let closed = both_closed(&fleet);
    let opened = alice_opens_gw1_only(&fleet, &profile);
    show_trail(&ctl);
    drop((gw1, gw2));
    step("cleaned up: agents, controller, namespaces and bridge are gone");
    connected && applied && closed && opened
}

/// `knockgate-controller init` and `run` in the controller's namespace.
fn start_controller(fleet: &Fleet, work: &Workdir) -> Controller {
    step("knockgate-controller init && knockgate-controller run");
    let ctl = Controller::start(
        &fleet.host(CTL).ns,
        &work.path.join("ctl"),
        "10.240.1.1",
        None,
    );
    println!(
        "    controller up at {}, CA sha256 {}",
        ctl.url, ctl.ca_sha256
    );
    ctl
}

/// Enrols gw1 (role=edge) and gw2 (role=core) with one-time tokens and starts
/// their agents; also returns whether both connected and applied their config.
fn enroll_gateways(
    ctl: &Controller,
    fleet: &Fleet,
    work: &Workdir,
) -> (AgentProc, AgentProc, bool) {
    step(
        "knockadm agent add gw1 --label role=edge / gw2 --label role=core; knockgate-agent enroll on each",
    );
    let (gw1, _) = enroll_and_start(ctl, &fleet.host(GW1).ns, work, "gw1", "role=edge");
    let (gw2, _) = enroll_and_start(ctl, &fleet.host(GW2).ns, work, "gw2", "role=core");
    let connected = wait_applied(ctl, Duration::from_secs(10));
    print_indented(&ctl.knockadm(&["agent", "list"]).stdout);
    (gw1, gw2, connected)
}

/// Adds alice, with the profile she knocks with, and bob; returns alice's profile.
fn add_users(ctl: &Controller, work: &Workdir) -> PathBuf {
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
    profile
}

/// Admits alice on role=edge and bob on role=core; returns whether every agent
/// applied them.
fn add_policies(ctl: &Controller) -> bool {
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
    let applied = wait_applied(ctl, Duration::from_secs(5));
    print_indented(&ctl.knockadm(&["policy", "list"]).stdout);
    applied
}

/// The ssh port on gateway `i` of the fleet.
fn ssh(fleet: &Fleet, i: usize) -> SocketAddr {
    SocketAddr::new(fleet.host(i).addr(), 22)
}

/// Whether ssh is closed to the client on both gateways before anyone knocks.
fn both_closed(fleet: &Fleet) -> bool {
    let client = &fleet.host(CLIENT).ns;
    let me = fleet.host(CLIENT).addr();
    step("the client tries ssh on both gateways");
    !show(can_connect(client, me, ssh(fleet, GW1)), "gw1 tcp/22")
        & !show(can_connect(client, me, ssh(fleet, GW2)), "gw2 tcp/22")
}

/// Whether alice's `knocker open gw1` opens gw1 for her and leaves gw2, where
/// no policy admits her, closed.
fn alice_opens_gw1_only(fleet: &Fleet, profile: &Path) -> bool {
    let client = &fleet.host(CLIENT).ns;
    let me = fleet.host(CLIENT).addr();
    step("alice knocks: knocker open gw1 --profile alice.toml");
    let out = client
        .cmd(knockgate_tests::bin("knocker"))
        .args(["open", "gw1", "--verbose", "--profile"])
        .arg(profile)
        .output()
        .expect("knocker open");
    print_indented(&out.stdout);
    let open1 = show(
        opens_within(client, me, ssh(fleet, GW1), Duration::from_secs(2)),
        "gw1 tcp/22 for alice",
    );
    let still2 = !show(
        can_connect(client, me, ssh(fleet, GW2)),
        "gw2 tcp/22 (no policy admits alice there)",
    );
    open1 && still2
}

/// What the controller recorded: the grants and the audit trail.
fn show_trail(ctl: &Controller) {
    step("knockadm grant list; knockadm audit");
    std::thread::sleep(Duration::from_millis(500));
    print_indented(&ctl.knockadm(&["grant", "list"]).stdout);
    print_indented(&ctl.knockadm(&["audit", "--limit", "40"]).stdout);
}
