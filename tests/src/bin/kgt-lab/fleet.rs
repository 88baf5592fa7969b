//! Part two of the lab: a controller, gw1 (role=edge) and gw2 (role=core) enrolled with
//! one-time tokens, alice admitted on role=edge by a policy, her SPA knock opening gw1
//! but not gw2, the audit trail that recorded it all, and the same story as an operator's
//! telemetry: a collector and a metrics store in the controller's namespace, queried as
//! the Grafana dashboards in deploy/grafana query them, and the trace of alice's knock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::otel::{MetricsTo, Rotel, VictoriaMetrics, export_to};
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
    let telemetry = start_telemetry(&fleet, &work);
    let ctl = start_controller(&fleet, &work);
    let _sshd1 = Listener::start(&fleet.host(GW1).ns, 22);
    let _sshd2 = Listener::start(&fleet.host(GW2).ns, 22);

    let (gw1, gw2, connected) = enroll_gateways(&ctl, &fleet, &work);
    let profile = add_users(&ctl, &work);
    let applied = add_policies(&ctl);
    let closed = both_closed(&fleet);
    let opened = alice_opens_gw1_only(&fleet, &profile);
    show_trail(&ctl);
    let seen = show_telemetry(&telemetry);
    drop((gw1, gw2));
    step("cleaned up: agents, controller, collector, store, namespaces and bridge are gone");
    connected && applied && closed && opened && seen
}

/// The telemetry pipeline of docs/OBSERVABILITY.md, in the controller's namespace:
/// VictoriaMetrics fed by a collector (rotel), and a receiver that prints every span.
struct Telemetry {
    vm: VictoriaMetrics,
    traces: Rotel,
    _collector: Rotel,
}

fn start_telemetry(fleet: &Fleet, work: &Workdir) -> Telemetry {
    step("telemetry: VictoriaMetrics and an OTLP collector (rotel) in the controller's namespace");
    let ns = &fleet.host(CTL).ns;
    let vm = VictoriaMetrics::start(ns, &work.path);
    let traces = Rotel::traces(ns, &work.path.join("spans.txt"));
    let collector = Rotel::metrics_to(ns, &work.path.join("collector.txt"), vm.url());
    let at = fleet.host(CTL).v4;
    export_to(
        &format!("http://{at}:4317"),
        MetricsTo::Grpc(&format!("http://{at}:4327")),
    );
    println!(
        "    every process below exports: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://{at}:4317, \
         OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://{at}:4327"
    );
    println!(
        "    while the lab runs: ip netns exec {} curl -s 'http://127.0.0.1:8428/api/v1/query?query=knockgate_events_total'",
        ns.name
    );
    Telemetry {
        vm,
        traces,
        _collector: collector,
    }
}

/// What the store and the trace receiver say about the story; whether alice's knock is
/// in both.
fn show_telemetry(t: &Telemetry) -> bool {
    step("what an operator sees: the dashboards' queries against the store, and alice's trace");
    let queries = [
        ("agents connected", "sum(knockgate_agents_connected)"),
        (
            "decisions on gw1 by kind",
            r#"sum by (event) (knockgate_events_total{service_instance_id="gw1"})"#,
        ),
        (
            "grants open per gateway",
            "sum by (service_instance_id) (knockgate_grants_open)",
        ),
        (
            "knock-to-open p99 (s)",
            "histogram_quantile(0.99, sum by (le) (knockgate_knock_to_open_duration_seconds_bucket))",
        ),
        (
            "controller RPCs by method",
            "sum by (rpc_method) (rpc_server_call_duration_seconds_count)",
        ),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.vm.sum(queries[3].1) <= 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut seen = false;
    for (what, q) in queries {
        println!("    {what}:  {q}");
        for (labels, value) in t.vm.query(q) {
            let shown: Vec<String> = labels
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == "service_instance_id"
                        || !(k.starts_with("service") || k.starts_with("telemetry"))
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("      {:<40} {value}", shown.join(","));
            seen = true;
        }
    }
    let got = t.traces.received();
    let knock = got.spans.iter().find(|s| {
        s.name == "knock" && s.attrs.get("knockgate.user").map(String::as_str) == Some("alice")
    });
    match knock {
        Some(k) => {
            let steps: Vec<&str> = got.children(k).iter().map(|s| s.name.as_str()).collect();
            println!(
                "    trace {} on {}: knock -> {}",
                k.trace,
                k.instance.as_deref().unwrap_or("?"),
                steps.join(", ")
            );
        }
        None => println!("    (no trace of alice's knock arrived)"),
    }
    seen && knock.is_some()
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
