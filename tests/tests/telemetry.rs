//! Telemetry end to end: a real OTLP receiver (rotel) in the controller's namespace, the
//! controller and an enrolled agent exporting to it through the standard variables, and a
//! user and an admin doing what they do. What arrives is checked as an operator would
//! look at it: the traces (names, attributes, parents across agent, knockadm and
//! controller) and the metrics. A second test shows that, with no endpoint set, nothing
//! is exported and no connection is tried.

use std::net::SocketAddr;
use std::time::Duration;

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::sh;
use knockgate_tests::otel::{Received, Rotel, SpanRec, export_to};
use knockgate_tests::probe::{Listener, opens_within};
use knockgate_tests::wait_until;

const CTL: usize = 0;
const GW1: usize = 1;
const CLIENT: usize = 2;

fn knocker(fleet: &Fleet, args: &[&str]) {
    sh(fleet
        .host(CLIENT)
        .ns
        .cmd(knockgate_tests::bin("knocker"))
        .args(args));
}

/// The one span named `name` from `service` (panics listing what arrived otherwise).
fn span<'a>(got: &'a Received, service: &str, name: &str) -> &'a SpanRec {
    got.spans
        .iter()
        .find(|s| s.service == service && s.name == name)
        .unwrap_or_else(|| {
            let seen: Vec<String> = got
                .spans
                .iter()
                .map(|s| format!("{}:{}", s.service, s.name))
                .collect();
            panic!("no span {name} from {service}; got {seen:?}")
        })
}

#[test]
fn traces_and_metrics_reach_a_collector() {
    let fleet = Fleet::new(&["ctl", "gw1", "client"]);
    let work = Workdir::new();
    let rotel = Rotel::start(&fleet.host(CTL).ns, &work.path.join("rotel.out"));
    export_to(&format!("http://{}:4317", fleet.host(CTL).v4));
    let ctl_addr = fleet.host(CTL).v4.to_string();
    let ctl = Controller::start(&fleet.host(CTL).ns, &work.path.join("ctl"), &ctl_addr, None);
    let _sshd = Listener::start(&fleet.host(GW1).ns, 22);
    let (agent, _) = enroll_and_start(&ctl, &fleet.host(GW1).ns, &work, "gw1", "role=edge");
    assert!(wait_applied(&ctl, Duration::from_secs(10)), "gw1 connected");
    let profile = ctl.add_user("alice", &work.path);
    ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa", "--otk"]);
    let profile = profile.to_str().expect("path");

    // A knock that opens (SPA), one that is refused (a packet sealed for another
    // gateway), a one-time key claimed through the controller, and an admin's command.
    let (client, me) = (&fleet.host(CLIENT).ns, fleet.host(CLIENT).addr());
    let ssh = SocketAddr::new(fleet.host(GW1).addr(), 22);
    knocker(&fleet, &["open", "gw1", "--profile", profile]);
    assert!(
        opens_within(client, me, ssh, Duration::from_secs(2)),
        "SPA opens:\n{}",
        agent.log_text()
    );
    let alice =
        knockgate_cli::profile::read_profile(std::path::Path::new(profile)).expect("profile");
    let key = work.path.join("alice.key");
    std::fs::write(&key, alice.user.spa_key.clone().expect("spa key")).expect("key file");
    let gw1_addr = fleet.host(GW1).addr().to_string();
    knocker(
        &fleet,
        &[
            "spa",
            &gw1_addr,
            "--user",
            "alice",
            "--key-file",
            key.to_str().expect("path"),
            "--gateway",
            "gw2",
            "--access",
            "tcp/22",
        ],
    );
    knocker(
        &fleet,
        &["open", "gw1", "--profile", profile, "--method", "otk"],
    );
    ctl.knockadm_json(&["status"]);

    let mut got = Received::default();
    wait_until(
        "the decisions' traces and metrics",
        Duration::from_secs(15),
        || {
            got = rotel.received();
            let has = |svc: &str, name: &str| {
                got.spans.iter().any(|s| s.service == svc && s.name == name)
            };
            has("knockgate-agent", "spa.rejected")
                && has("knockgate-agent", "otk.claim")
                && has("knockadm", "knockadm status")
                && !got.points("knockgate.otk.claims").is_empty()
                && !got.points("knockgate.knock_to_open.duration").is_empty()
        },
    );

    // The SPA knock's trace: capture -> decision -> firewall write, with who and what.
    let opened: Vec<&SpanRec> = got
        .spans_named("knock")
        .into_iter()
        .filter(|k| {
            k.attrs.get("knockgate.method").map(String::as_str) == Some("spa")
                && k.attrs.get("knockgate.event").map(String::as_str) == Some("grant.opened")
        })
        .collect();
    let knock = opened
        .first()
        .unwrap_or_else(|| panic!("no opening knock trace: {got:?}"));
    assert_eq!(knock.service, "knockgate-agent");
    assert_eq!(
        knock.instance.as_deref(),
        Some("gw1"),
        "the gateway names itself"
    );
    assert_eq!(
        knock.attrs.get("knockgate.policy").map(String::as_str),
        Some("ssh")
    );
    assert_eq!(
        knock.attrs.get("knockgate.user").map(String::as_str),
        Some("alice")
    );
    let children: Vec<&str> = got
        .children(knock)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for step in ["spa.accepted", "firewall.open", "grant.opened"] {
        assert!(children.contains(&step), "{step} in {children:?}");
    }
    for s in &got.spans {
        for (k, v) in &s.attrs {
            assert!(
                !v.contains(alice.user.spa_key.as_deref().unwrap_or("-")),
                "a key leaked into span {} attribute {k}",
                s.name
            );
        }
    }
    let refused = span(&got, "knockgate-agent", "spa.rejected");
    assert!(
        refused.attrs.contains_key("knockgate.reason"),
        "{refused:?}"
    );

    // Across processes: the agent's claim and knockadm's command continue on the controller.
    let claim = span(&got, "knockgate-agent", "otk.claim");
    let handled: Vec<&str> = got
        .children(claim)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        handled.contains(&"knockgate.v1.AgentControl/Claim"),
        "the controller's handling is part of the claim's trace: {handled:?}"
    );
    let status = span(&got, "knockadm", "knockadm status");
    let handled: Vec<&SpanRec> = got.children(status);
    assert!(
        handled
            .iter()
            .any(|s| s.service == "knockgate-controller"
                && s.name == "knockgate.v1.Admin/FleetStatus"),
        "knockadm's trace continues on the controller: {handled:?}"
    );

    // The metrics an operator graphs, with sane values: the latest value of each series
    // (counters are cumulative), summed over the series `pick` selects.
    let value = |metric: &str, pick: &dyn Fn(&knockgate_tests::otel::PointRec) -> bool| {
        let mut series: std::collections::BTreeMap<String, f64> = Default::default();
        for p in got.points(metric).into_iter().filter(|p| pick(p)) {
            series.insert(format!("{}{:?}", p.service, p.attrs), p.value);
        }
        series.values().sum::<f64>()
    };
    let any = |_: &knockgate_tests::otel::PointRec| true;
    let event = |kind: &'static str| {
        move |p: &knockgate_tests::otel::PointRec| {
            p.service == "knockgate-agent" && p.attrs.get("event").map(String::as_str) == Some(kind)
        }
    };
    assert!(
        value("knockgate.events", &event("spa.accepted")) >= 2.0,
        "SPA and OTK accepted"
    );
    assert!(value("knockgate.events", &event("spa.rejected")) >= 1.0);
    assert!(
        value("knockgate.events", &event("grant.opened"))
            + value("knockgate.events", &event("grant.extended"))
            >= 2.0,
        "the OTK knock opens again (extending the SPA's grant)"
    );
    assert!(
        value("knockgate.knock_to_open.duration", &any) >= 2.0,
        "one per opening"
    );
    assert!(value("knockgate.grants.open", &any) >= 1.0);
    assert!(value("knockgate.capture.packets", &any) >= 3.0);
    assert!(
        value("knockgate.config.version", &|p| p.service
            == "knockgate-agent")
            >= 1.0
    );
    assert!(value("knockgate.agents.connected", &any) == 1.0);
    assert!(
        value("knockgate.otk.claims", &|p| p
            .attrs
            .get("outcome")
            .map(String::as_str)
            == Some("granted"))
            >= 1.0
    );
    assert!(value("knockgate.audit.rows", &any) >= 1.0);
    assert!(
        value("rpc.server.call.duration", &|p| {
            p.attrs.get("rpc.method").map(String::as_str) == Some("Claim")
                && p.attrs.get("rpc.grpc.status_code").map(String::as_str) == Some("0")
        }) >= 1.0
    );
    for p in &got.points {
        for key in p.attrs.keys() {
            assert!(
                !["user", "src", "client.address", "agent"].contains(&key.as_str()),
                "metric {} has an unbounded label {key}",
                p.metric
            );
        }
    }
}

/// With no endpoint set, nothing is exported: a listener on the default OTLP port sees no
/// connection while the controller serves, an agent runs and an admin command runs.
#[test]
fn nothing_is_exported_without_an_endpoint() {
    let fleet = Fleet::new(&["ctl", "gw1"]);
    let work = Workdir::new();
    let ctl_ns = fleet.host(CTL).ns.name.clone();
    let watch = |ns: &knockgate_tests::netns::Netns| {
        ns.run(|| {
            let l = std::net::TcpListener::bind("0.0.0.0:4317").expect("bind 4317");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
    };
    let listeners = [watch(&fleet.host(CTL).ns), watch(&fleet.host(GW1).ns)];
    let ctl_addr = fleet.host(CTL).v4.to_string();
    let ctl = Controller::start(&fleet.host(CTL).ns, &work.path.join("ctl"), &ctl_addr, None);
    let (_agent, _) = enroll_and_start(&ctl, &fleet.host(GW1).ns, &work, "gw1", "role=edge");
    assert!(wait_applied(&ctl, Duration::from_secs(10)), "gw1 connected");
    ctl.knockadm_json(&["status"]);
    std::thread::sleep(Duration::from_secs(2));
    for (l, ns) in listeners.iter().zip([&ctl_ns, &fleet.host(GW1).ns.name]) {
        assert!(
            l.accept().is_err(),
            "something connected to the OTLP port in {ns} with no endpoint set"
        );
    }
}
