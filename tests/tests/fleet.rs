//! End to end for the fleet: a controller, two enrolled agents (gw1 labelled role=edge,
//! gw2 not) and a client, each in its own namespace on one bridge. Everything is driven
//! through knockadm, knockgate-agent enroll and knocker, as an operator and a user would.
//! The same story runs on SQLite and on PostgreSQL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::{Netns, sh};
use knockgate_tests::pg::Postgres;
use knockgate_tests::probe::{Listener, can_connect, closes_within, opens_within};
use knockgate_tests::wait_until;
use serde_json::Value;

const CTL: usize = 0;
const GW1: usize = 1;
const GW2: usize = 2;
const CLIENT: usize = 3;

fn audit(ctl: &Controller, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--limit", "1000"];
    all.extend_from_slice(args);
    ctl.knockadm_json(&all)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn knocker(ns: &Netns, args: &[&str]) -> String {
    let out = sh(ns.cmd(knockgate_tests::bin("knocker")).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn story(db: Option<String>) {
    let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client"]);
    let work = Workdir::new();
    let ctl_addr = fleet.host(CTL).v4.to_string();
    let mut ctl = Controller::start(&fleet.host(CTL).ns, &work.path.join("ctl"), &ctl_addr, db);
    let _sshd1 = Listener::start(&fleet.host(GW1).ns, 22);
    let _sshd2 = Listener::start(&fleet.host(GW2).ns, 22);

    // Enrol both agents with one-time tokens.
    let mut agents = Vec::new();
    for (name, idx, label) in [("gw1", GW1, "role=edge"), ("gw2", GW2, "role=core")] {
        let (agent, token) = enroll_and_start(&ctl, &fleet.host(idx).ns, &work, name, label);
        agents.push(agent);
        // The token worked once: enrolling again with it is refused.
        let again = fleet
            .host(idx)
            .ns
            .cmd(knockgate_tests::bin("knockgate-agent"))
            .arg("enroll")
            .arg("--config")
            .arg(work.config_named(&format!("{name}-again"), ""))
            .args([
                "--controller",
                &ctl.url,
                "--token",
                &token,
                "--ca-sha256",
                &ctl.ca_sha256,
            ])
            .output()
            .expect("enroll again");
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(
            !again.status.success() && err.contains("token"),
            "a token works once: {err}"
        );
    }
    assert!(
        wait_applied(&ctl, Duration::from_secs(10)),
        "both agents connected"
    );

    // gw2 protects tcp/22 too, for bob only.
    let out = ctl.knockadm(&["user", "add", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctl.knockadm_json(&[
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
    // A user and a policy for role=edge only.
    let profile = work.path.join("alice.toml");
    let out = ctl.knockadm(&[
        "user",
        "add",
        "alice",
        "--profile-out",
        profile.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctl.knockadm_json(&[
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
        "--max-timeout",
        "5m",
        "--spa",
        "--fwknop",
    ]);
    wait_until(
        "both agents applied the policy",
        Duration::from_secs(5),
        || {
            ctl.knockadm_json(&["agent", "list"])
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .all(|x| x["applied_version"] == x["current_version"])
                })
        },
    );

    let client = &fleet.host(CLIENT).ns;
    let me: IpAddr = fleet.host(CLIENT).addr();
    let ssh1 = SocketAddr::new(fleet.host(GW1).addr(), 22);
    let ssh2 = SocketAddr::new(fleet.host(GW2).addr(), 22);
    assert!(
        !can_connect(client, me, ssh1) && !can_connect(client, me, ssh2),
        "closed before"
    );

    // alice's SPA opens gw1 and not gw2.
    knocker(
        client,
        &["open", "gw1", "--profile", profile.to_str().expect("path")],
    );
    assert!(
        opens_within(client, me, ssh1, Duration::from_secs(2)),
        "gw1 opens:\n{}",
        agents[0].log_text()
    );
    let key_file = work.path.join("alice.key");
    let alice = knockgate_cli::profile::read_profile(&profile).expect("profile");
    std::fs::write(&key_file, alice.user.spa_key.clone().expect("spa_key")).expect("key file");
    let gw2_addr = fleet.host(GW2).addr().to_string();
    let key = key_file.to_str().expect("path");
    knocker(
        client,
        &[
            "spa",
            &gw2_addr,
            "--user",
            "alice",
            "--key-file",
            key,
            "--gateway",
            "gw2",
            "--access",
            "tcp/22",
        ],
    );
    assert!(
        !opens_within(client, me, ssh2, Duration::from_millis(800)),
        "gw2 must stay closed"
    );
    wait_until(
        "both decisions in the audit trail",
        Duration::from_secs(5),
        || {
            let a1 = audit(&ctl, &["--agent", "gw1", "--kind", "spa"]);
            let a2 = audit(&ctl, &["--agent", "gw2", "--kind", "spa"]);
            a1.iter()
                .any(|e| e["kind"] == "spa.accepted" && e["user"] == "alice")
                && a2.iter().any(|e| e["kind"] == "spa.rejected")
        },
    );

    // Disabling alice closes her open grant within a second and refuses her next packet.
    ctl.knockadm(&["user", "disable", "alice"]);
    assert!(
        closes_within(client, me, ssh1, Duration::from_millis(1500)),
        "grant closed on disable"
    );
    knocker(
        client,
        &["open", "gw1", "--profile", profile.to_str().expect("path")],
    );
    assert!(
        !opens_within(client, me, ssh1, Duration::from_millis(800)),
        "disabled user refused"
    );

    // grant revoke closes a grant.
    ctl.knockadm(&["user", "enable", "alice"]);
    wait_until("gw1 applied the enable", Duration::from_secs(5), || {
        ctl.knockadm_json(&["agent", "list"])
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .all(|x| x["applied_version"] == x["current_version"])
            })
    });
    knocker(
        client,
        &["open", "gw1", "--profile", profile.to_str().expect("path")],
    );
    assert!(opens_within(client, me, ssh1, Duration::from_secs(2)));
    let mut id = None;
    wait_until("the grant reported", Duration::from_secs(5), || {
        let grants = ctl.knockadm_json(&["grant", "list", "--user", "alice"]);
        id = grants.as_array().and_then(|g| {
            g.iter()
                .find(|x| x["closed_at"].is_null())
                .and_then(|x| x["id"].as_i64())
        });
        id.is_some()
    });
    let id = id.expect("grant id").to_string();
    let out = ctl.knockadm(&["grant", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        closes_within(client, me, ssh1, Duration::from_millis(1500)),
        "revoked grant closes within a second"
    );

    // The controller goes away; agents keep enforcing; events made meanwhile arrive once.
    let accepted_before = audit(&ctl, &["--agent", "gw1", "--kind", "spa.accepted"]).len();
    ctl.kill();
    for _ in 0..3 {
        knocker(
            client,
            &["open", "gw1", "--profile", profile.to_str().expect("path")],
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        opens_within(client, me, ssh1, Duration::from_secs(2)),
        "enforcing without the controller"
    );
    assert!(
        !can_connect(client, me, ssh2),
        "gw2 still closed without the controller"
    );
    std::thread::sleep(Duration::from_secs(2));
    ctl.run(&fleet.host(CTL).ns);
    wait_until(
        "events from the outage delivered",
        Duration::from_secs(20),
        || audit(&ctl, &["--agent", "gw1", "--kind", "spa.accepted"]).len() >= accepted_before + 3,
    );
    std::thread::sleep(Duration::from_secs(2));
    let accepted = audit(&ctl, &["--agent", "gw1", "--kind", "spa.accepted"]);
    assert_eq!(
        accepted.len(),
        accepted_before + 3,
        "each event exactly once: {accepted:?}"
    );
    drop(agents);
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn fleet_story_on_sqlite() {
    story(None);
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn fleet_story_on_postgresql() {
    let pg = Postgres::start();
    story(Some(pg.url()));
}
