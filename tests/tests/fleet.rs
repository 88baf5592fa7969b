//! End to end for the fleet: a controller, two enrolled agents (gw1 labelled role=edge,
//! gw2 not) and a client, each in its own namespace on one bridge. Everything is driven
//! through knockadm, knockgate-agent enroll and knocker, as an operator and a user would.
//! The same story runs on SQLite and on PostgreSQL.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_again, enroll_and_start, wait_applied};
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
    let mut story = FleetStory::start(db);
    story.add_users_and_policies();
    story.alice_opens_gw1_and_not_gw2();
    story.disabling_alice_closes_and_refuses();
    story.revoking_a_grant_closes_it();
    story.profile_update_brings_a_later_policy();
    story.agents_enforce_through_an_outage();
}

/// The fleet of the story: the controller (on SQLite or PostgreSQL), gw1
/// (role=edge) and gw2 (role=core) enrolled and running, the client, and alice's
/// profile. Fields drop in order: the agents, the listeners, the controller, the
/// work dir, then the hosts.
struct FleetStory {
    agents: Vec<AgentProc>,
    _sshd: [Listener; 2],
    ctl: Controller,
    profile: PathBuf,
    work: Workdir,
    fleet: Fleet,
}

/// Whether every agent has applied the controller's current version.
fn all_applied(ctl: &Controller) -> bool {
    ctl.knockadm_json(&["agent", "list"])
        .as_array()
        .is_some_and(|a| {
            a.iter()
                .all(|x| x["applied_version"] == x["current_version"])
        })
}

impl FleetStory {
    /// Starts the controller and enrols both agents with one-time tokens.
    fn start(db: Option<String>) -> FleetStory {
        let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client"]);
        let work = Workdir::new();
        let ctl_addr = fleet.host(CTL).v4.to_string();
        let ctl = Controller::start(&fleet.host(CTL).ns, &work.path.join("ctl"), &ctl_addr, db);
        let sshd1 = Listener::start(&fleet.host(GW1).ns, 22);
        let sshd2 = Listener::start(&fleet.host(GW2).ns, 22);
        let agents = enroll_both(&ctl, &fleet, &work);
        assert!(
            wait_applied(&ctl, Duration::from_secs(10)),
            "both agents connected"
        );
        let profile = work.path.join("alice.toml");
        FleetStory {
            agents,
            _sshd: [sshd2, sshd1],
            ctl,
            profile,
            work,
            fleet,
        }
    }

    fn client(&self) -> &Netns {
        &self.fleet.host(CLIENT).ns
    }

    fn me(&self) -> IpAddr {
        self.fleet.host(CLIENT).addr()
    }

    fn ssh(&self, gw: usize) -> SocketAddr {
        SocketAddr::new(self.fleet.host(gw).addr(), 22)
    }

    /// `knocker open gw1` with alice's profile, from the client.
    fn alice_opens_gw1(&self) {
        knocker(
            self.client(),
            &[
                "open",
                "gw1",
                "--profile",
                self.profile.to_str().expect("path"),
            ],
        );
    }

    /// bob with a policy on role=core (gw2 protects tcp/22 too, for him only), and
    /// alice with her profile and a policy on role=edge only.
    fn add_users_and_policies(&self) {
        let ctl = &self.ctl;
        // gw2 protects tcp/22 too, for bob only.
        ctl.add_user("bob", &self.work.path);
        ctl.add_ssh_policy("core", "bob", "role=core", &["--spa"]);
        // A user and a policy for role=edge only (each waits until both agents applied it).
        let profile = ctl.add_user("alice", &self.work.path);
        assert_eq!(profile, self.profile);
        ctl.add_ssh_policy(
            "ssh",
            "alice",
            "role=edge",
            &[
                "--timeout",
                "30s",
                "--max-timeout",
                "5m",
                "--spa",
                "--fwknop",
            ],
        );
    }

    /// Both gateways are closed; alice's SPA opens gw1 and not gw2, and the audit
    /// trail has both decisions.
    fn alice_opens_gw1_and_not_gw2(&self) {
        let (client, me) = (self.client(), self.me());
        let (ssh1, ssh2) = (self.ssh(GW1), self.ssh(GW2));
        assert!(
            !can_connect(client, me, ssh1) && !can_connect(client, me, ssh2),
            "closed before"
        );

        // alice's SPA opens gw1 and not gw2.
        self.alice_opens_gw1();
        assert!(
            opens_within(client, me, ssh1, Duration::from_secs(2)),
            "gw1 opens:\n{}",
            self.agents[0].log_text()
        );
        let key_file = self.work.path.join("alice.key");
        let alice = knockgate_cli::profile::read_profile(&self.profile).expect("profile");
        std::fs::write(&key_file, alice.user.spa_key.clone().expect("spa_key")).expect("key file");
        let gw2_addr = self.fleet.host(GW2).addr().to_string();
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
                let a1 = audit(&self.ctl, &["--agent", "gw1", "--kind", "spa"]);
                let a2 = audit(&self.ctl, &["--agent", "gw2", "--kind", "spa"]);
                a1.iter()
                    .any(|e| e["kind"] == "spa.accepted" && e["user"] == "alice")
                    && a2.iter().any(|e| e["kind"] == "spa.rejected")
            },
        );
        self.status_shows_the_fleet();
    }

    /// `knockadm status`: both agents connected and current, alice's grant open, gw2's
    /// refusal counted.
    fn status_shows_the_fleet(&self) {
        let mut last = Value::Null;
        let ok = (0..50).any(|_| {
            last = self.ctl.knockadm_json(&["status", "--since", "1h"]);
            let spa_refused = last["refusals"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["kind"] == "spa.rejected" && x["count"].as_u64() >= Some(1))
            });
            let done = last["agents"]["connected"] == 2
                && last["agents"]["behind"] == 0
                && last["open_grants"].as_u64() >= Some(1)
                && spa_refused;
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        });
        assert!(ok, "knockadm status: {last:#}");
    }

    /// Disabling alice closes her open grant within a second and refuses her next packet.
    fn disabling_alice_closes_and_refuses(&self) {
        let (client, me, ssh1) = (self.client(), self.me(), self.ssh(GW1));
        self.ctl.knockadm(&["user", "disable", "alice"]);
        assert!(
            closes_within(client, me, ssh1, Duration::from_millis(1500)),
            "grant closed on disable"
        );
        self.alice_opens_gw1();
        assert!(
            !opens_within(client, me, ssh1, Duration::from_millis(800)),
            "disabled user refused"
        );
    }

    /// grant revoke closes a grant.
    fn revoking_a_grant_closes_it(&self) {
        let (client, me, ssh1) = (self.client(), self.me(), self.ssh(GW1));
        let ctl = &self.ctl;
        ctl.knockadm(&["user", "enable", "alice"]);
        wait_until("gw1 applied the enable", Duration::from_secs(5), || {
            all_applied(ctl)
        });
        self.alice_opens_gw1();
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
    }

    /// A policy added after alice's profile was written (web, tcp/8443 on gw1 by one-time
    /// key) opens nothing with the old profile, which asks for tcp/22; `knockadm user
    /// profile alice --update` keeps her keys and lists it, and `knocker open gw1` without
    /// --access then asks for its port. Plain SPA still asks for ssh's tcp/22.
    fn profile_update_brings_a_later_policy(&self) {
        let (client, me, ctl) = (self.client(), self.me(), &self.ctl);
        let _web = Listener::start(&self.fleet.host(GW1).ns, 8443);
        let web = SocketAddr::new(self.fleet.host(GW1).addr(), 8443);
        let profile = self.profile.to_str().expect("path");
        ctl.knockadm_json(&[
            "policy",
            "add",
            "web",
            "--open",
            "tcp/8443",
            "--users",
            "alice",
            "--agents",
            "role=edge",
            "--timeout",
            "30s",
            "--otk",
        ]);
        wait_until("gw1 applied web", Duration::from_secs(5), || {
            all_applied(ctl)
        });
        let otk = ["open", "gw1", "--profile", profile, "--method", "otk"];
        knocker(client, &otk);
        assert!(
            !opens_within(client, me, web, Duration::from_millis(800)),
            "the old profile asks for tcp/22"
        );
        let keys = |text: &str| text[..text.find("[[gateway]]").expect("gateway")].to_owned();
        let before = std::fs::read_to_string(&self.profile).expect("profile");
        let update = ctl.knockadm_json(&["user", "profile", "alice", "--update", profile]);
        assert_eq!(update["removed"], serde_json::json!([]), "{update:#}");
        let after = std::fs::read_to_string(&self.profile).expect("profile");
        assert_eq!(keys(&after), keys(&before), "same keys");
        assert!(
            after.contains("name = \"web\"\nopen = [\"tcp/8443\"]"),
            "{after}"
        );
        let accepted = || audit(ctl, &["--agent", "gw1", "--kind", "spa.accepted"]).len();
        let accepted_before = accepted();
        knocker(client, &otk);
        assert!(
            opens_within(client, me, web, Duration::from_secs(2)),
            "web opens:\n{}",
            self.agents[0].log_text()
        );
        wait_until(
            "the grant in the audit trail",
            Duration::from_secs(5),
            || accepted() > accepted_before,
        );
    }

    /// The controller goes away; agents keep enforcing; events made meanwhile arrive once.
    fn agents_enforce_through_an_outage(&mut self) {
        let accepted_before = audit(&self.ctl, &["--agent", "gw1", "--kind", "spa.accepted"]).len();
        self.ctl.kill();
        for _ in 0..3 {
            self.alice_opens_gw1();
            std::thread::sleep(Duration::from_millis(200));
        }
        let (client, me) = (self.client(), self.me());
        assert!(
            opens_within(client, me, self.ssh(GW1), Duration::from_secs(2)),
            "enforcing without the controller"
        );
        assert!(
            !can_connect(client, me, self.ssh(GW2)),
            "gw2 still closed without the controller"
        );
        std::thread::sleep(Duration::from_secs(2));
        self.ctl.run(&self.fleet.host(CTL).ns);
        let ctl = &self.ctl;
        wait_until(
            "events from the outage delivered",
            Duration::from_secs(20),
            || {
                audit(ctl, &["--agent", "gw1", "--kind", "spa.accepted"]).len()
                    >= accepted_before + 3
            },
        );
        std::thread::sleep(Duration::from_secs(2));
        let accepted = audit(ctl, &["--agent", "gw1", "--kind", "spa.accepted"]);
        assert_eq!(
            accepted.len(),
            accepted_before + 3,
            "each event exactly once: {accepted:?}"
        );
    }
}

/// Enrols gw1 (role=edge) and gw2 (role=core) with one-time tokens and starts their
/// agents; each token, used once, is refused the second time.
fn enroll_both(ctl: &Controller, fleet: &Fleet, work: &Workdir) -> Vec<AgentProc> {
    let mut agents = Vec::new();
    for (name, idx, label) in [("gw1", GW1, "role=edge"), ("gw2", GW2, "role=core")] {
        let (agent, token) = enroll_and_start(ctl, &fleet.host(idx).ns, work, name, label);
        agents.push(agent);
        // The token worked once: enrolling again with it is refused.
        let again = enroll_again(ctl, &fleet.host(idx).ns, work, name, &token);
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(
            !again.status.success() && err.contains("token"),
            "a token works once: {err}"
        );
    }
    agents
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
