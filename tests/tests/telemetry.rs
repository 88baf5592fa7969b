//! Telemetry end to end: in the controller's namespace a real OTLP receiver for traces
//! (rotel, printing every span) and a real collector (rotel) feeding a real metrics store
//! (VictoriaMetrics); the controller, an enrolled agent and knockadm exporting there
//! through the standard variables; a user and an admin doing what they do. What arrives is
//! checked as an operator would look at it: the traces (names, attributes, parents across
//! agent, knockadm and controller), the metrics as the store answers for them, and every
//! query of every shipped dashboard (`deploy/grafana`), each of which must return data. A
//! second test shows that, with no endpoint set, nothing is exported and no connection is
//! tried.

use std::net::SocketAddr;
use std::time::Duration;

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::{Controller, enroll_again, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::sh;
use knockgate_tests::otel::{MetricsTo, Received, Rotel, SpanRec, VictoriaMetrics, export_to};
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
    let ctl_ns = &fleet.host(CTL).ns;
    let vm = VictoriaMetrics::start(ctl_ns, &work.path);
    let rotel = Rotel::traces(ctl_ns, &work.path.join("rotel-traces.out"));
    // Traces over OTLP/gRPC to the receiver, metrics over OTLP/HTTP straight into the store.
    let at = fleet.host(CTL).v4;
    let metrics = format!("http://{at}:8428/opentelemetry/v1/metrics");
    export_to(&format!("http://{at}:4317"), MetricsTo::Http(&metrics));
    let ctl_addr = fleet.host(CTL).v4.to_string();
    let ctl = Controller::start(&fleet.host(CTL).ns, &work.path.join("ctl"), &ctl_addr, None);
    let _sshd = Listener::start(&fleet.host(GW1).ns, 22);
    let (agent, token) = enroll_and_start(&ctl, &fleet.host(GW1).ns, &work, "gw1", "role=edge");
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
    // Someone flushes the agent's table (it is put back), an admin asks for a user that
    // does not exist, and a spent enrolment token is tried again.
    sh(fleet
        .host(GW1)
        .ns
        .cmd("nft")
        .args(["flush", "table", "inet", "knockgate"]));
    assert!(!ctl.knockadm(&["user", "show", "nobody"]).status.success());
    let again = enroll_again(&ctl, &fleet.host(GW1).ns, &work, "gw1", &token);
    assert!(!again.status.success(), "a spent token is refused");

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
    // A config push (alice's policy) is one trace across controller and agent.
    let applied: Vec<&SpanRec> = got
        .spans
        .iter()
        .filter(|s| s.service == "knockgate-agent" && s.name == "config.apply")
        .collect();
    assert!(
        applied.iter().any(|a| got.spans.iter().any(|p| {
            p.service == "knockgate-controller"
                && p.name == "config.push"
                && p.trace == a.trace
                && p.id == a.parent
        })),
        "an agent's config.apply continues the controller's config.push"
    );
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

    // The metrics an operator graphs, as the store answers for them, with sane values.
    let agent_events = |e: &str| {
        format!(
            r#"sum(knockgate_events_total{{service_name="knockgate-agent",service_instance_id="gw1",event="{e}"}})"#
        )
    };
    wait_until("the metrics in the store", Duration::from_secs(15), || {
        vm.sum(&agent_events("firewall.repaired")) >= 1.0
            && vm.sum("sum(knockgate_otk_claims_total{outcome=\"granted\"})") >= 1.0
            && vm.sum(r#"sum(knockgate_audit_rows_total{kind="enrol.refused"})"#) >= 1.0
    });
    assert!(
        vm.sum(&agent_events("spa.accepted")) >= 2.0,
        "SPA and OTK accepted"
    );
    assert!(vm.sum(&agent_events("spa.rejected")) >= 1.0);
    assert!(
        vm.sum(&agent_events("grant.opened")) + vm.sum(&agent_events("grant.extended")) >= 2.0,
        "the OTK knock opens again (extending the SPA's grant)"
    );
    assert!(
        vm.sum("sum(knockgate_knock_to_open_duration_seconds_count)") >= 2.0,
        "one latency per opening"
    );
    let p99 = vm.sum(
        "histogram_quantile(0.99, sum by (le) (knockgate_knock_to_open_duration_seconds_bucket))",
    );
    assert!(p99 > 0.0 && p99 < 1.0, "knock-to-open p99 {p99} s");
    assert!(vm.sum("sum(knockgate_grants_open)") >= 1.0);
    assert!(vm.sum(r#"sum(knockgate_store_duration_seconds_count{operation="otk.claim"})"#) >= 1.0);
    assert!(vm.sum("sum(knockgate_capture_packets_total)") >= 3.0);
    assert!(vm.sum(r#"max(knockgate_config_version{service_name="knockgate-agent"})"#) >= 1.0);
    assert_eq!(vm.sum("sum(knockgate_agents_connected)"), 1.0);
    assert!(
        vm.sum(r#"sum(rpc_server_call_duration_seconds_count{rpc_method="Claim",rpc_grpc_status_code="0"})"#)
            >= 1.0
    );
    assert!(
        vm.sum(r#"sum(rpc_server_call_duration_seconds_count{rpc_method="GetUser",rpc_grpc_status_code="5"})"#)
            >= 1.0,
        "a refused call counts with its status"
    );
    for (labels, _) in vm.query(r#"{__name__=~"knockgate_.*|rpc_.*"}"#) {
        for key in labels.keys() {
            assert!(
                !["user", "src", "client_address", "agent"].contains(&key.as_str()),
                "{} has an unbounded label {key}",
                labels["__name__"]
            );
        }
    }

    // Traffic goes on: the same again, now that every series has a first sample, so that
    // rates (and the latency quantiles made from them) have something to show.
    knocker(&fleet, &["open", "gw1", "--profile", profile]);
    knocker(
        &fleet,
        &["open", "gw1", "--profile", profile, "--method", "otk"],
    );
    ctl.knockadm_json(&["status"]);
    wait_until(
        "latency quantiles in the store",
        Duration::from_secs(15),
        || {
            !vm.query("histogram_quantile(0.99, sum by (le) (rate(knockgate_otk_claim_duration_seconds_bucket[1m])))").is_empty()
            && !vm.query("histogram_quantile(0.99, sum by (le) (rate(knockgate_knock_to_open_duration_seconds_bucket[1m])))").is_empty()
        },
    );

    // Every query of every shipped dashboard panel returns data.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    sh(std::process::Command::new("python3")
        .arg(repo.join("deploy/grafana/build.py"))
        .arg("--check"));
    let mut empty = Vec::new();
    let mut queries = 0;
    for file in std::fs::read_dir(repo.join("deploy/grafana/dashboards")).expect("dashboards") {
        let path = file.expect("entry").path();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        for p in dash["panels"].as_array().expect("panels") {
            for t in p["targets"].as_array().expect("targets") {
                let expr = t["expr"]
                    .as_str()
                    .expect("expr")
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "10m")
                    .replace("$gateway", ".*");
                queries += 1;
                if vm.query(&expr).is_empty() {
                    empty.push(format!("{} / {}: {expr}", dash["title"], p["title"]));
                }
            }
        }
    }
    assert!(queries >= 20, "only {queries} dashboard queries");
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
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
