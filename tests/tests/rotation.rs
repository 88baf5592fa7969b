//! End to end for rotating sequences and fleet-wide one-time keys: a controller, two
//! agents (gw1 and gw2, both role=edge) and two clients. What is checked is what a user
//! and an auditor see: which gateway opens, and what the audit trail says.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use knockgate_cli::spa::build_spa;
use knockgate_proto::Access;
use knockgate_proto::rotation::{RotationParams, derive_sequence, window_index};
use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::Netns;
use knockgate_tests::probe::{Listener, can_connect, opens_within};
use knockgate_tests::wait_until;
use serde_json::Value;

const CTL: usize = 0;
const GW1: usize = 1;
const GW2: usize = 2;
const CLIENT: usize = 3;
const CLIENT2: usize = 4;
const WINDOW: u64 = 5;

struct Profile {
    secret: [u8; 32],
    params: RotationParams,
}

fn read_profile(path: &Path) -> Profile {
    let profile = knockgate_cli::profile::read_profile(path).expect("profile");
    let b64 = profile
        .user
        .rotating_secret
        .clone()
        .expect("rotating_secret");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let secret: [u8; 32] = bytes.try_into().expect("32 bytes");
    let gw = profile
        .gateways
        .iter()
        .find(|g| g.name == "gw1")
        .expect("gw1 in profile");
    let params = gw
        .rotating
        .first()
        .expect("rotating params")
        .params()
        .expect("params");
    Profile { secret, params }
}

fn unix_now() -> u64 {
    knockgate_proto::unix_secs(SystemTime::now())
}

/// `knocker knock` specs for a sequence.
fn specs(seq: &[Access]) -> Vec<String> {
    seq.iter().map(|a| a.to_string()).collect()
}

fn knock_from(ns: &Netns, host: &str, seq: &[Access]) {
    let out = ns
        .cmd(knockgate_tests::bin("knocker"))
        .args(["knock", host, "--delay", "10ms"])
        .args(specs(seq))
        .output()
        .expect("knocker knock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn send_udp(ns: &Netns, packets: Vec<(SocketAddr, Vec<u8>)>) {
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for (to, p) in packets {
            sock.send_to(&p, to).expect("send");
        }
    });
}

fn otk_packet(secret: &[u8; 32], counter: u64, gateway: &str) -> Vec<u8> {
    build_spa(
        &knockgate_proto::scope::gateway_otk(secret, gateway, counter).expect("derive"),
        gateway,
        vec![Access::tcp(22)],
        None,
        0,
        SystemTime::now(),
    )
    .expect("build")
}

fn events(agent: &AgentProc, name: &str) -> Vec<Value> {
    agent.events_named(name)
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn rotating_sequences_and_one_time_keys_across_the_fleet() {
    let mut story = Story::start();
    // --- Rotating: knocker opens gw1; the same knocks from another client open nothing. ---
    let w = story.knocker_opens_gw1_and_its_sequence_is_spent();
    story.only_the_current_window_opens(w);
    // --- One-time keys: knocker's key 0 opens gw1 once; the same packet or key at gw2 opens nothing. ---
    story.knocker_key_0_opens_gw1_only();
    story.each_key_opens_exactly_one_gateway();
    // --- Offline: "deny" refuses. ---
    story.offline_deny_refuses();
    // --- Offline: "local" grants; a key used twice offline shows up flagged. ---
    story.offline_local_grants_and_reuse_is_flagged();
}

/// The fleet of the story: a controller, gw1 and gw2 (role=edge) enforcing alice's
/// rotating and one-time-key policies, two clients, and alice's profile. Fields drop
/// in order: the agents, the listeners, the controller, then the hosts.
struct Story {
    gw2: AgentProc,
    gw1: AgentProc,
    _sshd: [Listener; 2],
    ctl: Controller,
    /// alice's profile file, as `knocker --profile` takes it.
    profile: String,
    p: Profile,
    _work: Workdir,
    fleet: Fleet,
}

impl Story {
    /// Starts the controller and both agents, adds alice and the `rot` (rotating,
    /// 5 s windows) and `otk` (one-time keys, offline deny) policies, and writes her
    /// profile.
    fn start() -> Story {
        let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client", "client2"]);
        let work = Workdir::new();
        let ctl = Controller::start(
            &fleet.host(CTL).ns,
            &work.path.join("ctl"),
            &fleet.host(CTL).v4.to_string(),
            None,
        );
        let s1 = Listener::start(&fleet.host(GW1).ns, 22);
        let s2 = Listener::start(&fleet.host(GW2).ns, 22);
        let (gw1, _) = enroll_and_start(&ctl, &fleet.host(GW1).ns, &work, "gw1", "role=edge");
        let (gw2, _) = enroll_and_start(&ctl, &fleet.host(GW2).ns, &work, "gw2", "role=edge");
        assert!(
            wait_applied(&ctl, Duration::from_secs(10)),
            "agents connected"
        );
        let profile_path = work.path.join("alice.toml");
        let profile = profile_path.to_str().expect("path").to_string();
        add_alice_and_her_policies(&ctl);
        // Keys only go out once: rotate to get a profile now that the policies exist.
        let out = ctl.knockadm(&["user", "rotate-keys", "alice", "--profile-out", &profile]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wait_applied(&ctl, Duration::from_secs(5)),
            "policies applied"
        );
        let p = read_profile(&profile_path);
        assert_eq!(p.params.window_secs as u64, WINDOW);
        Story {
            gw2,
            gw1,
            _sshd: [s2, s1],
            ctl,
            profile,
            p,
            _work: work,
            fleet,
        }
    }

    fn ns(&self, host: usize) -> &Netns {
        &self.fleet.host(host).ns
    }

    fn addr(&self, host: usize) -> IpAddr {
        self.fleet.host(host).addr()
    }

    fn ssh(&self, gw: usize) -> SocketAddr {
        SocketAddr::new(self.addr(gw), 22)
    }

    fn spa_port(&self, gw: usize) -> SocketAddr {
        SocketAddr::new(self.addr(gw), 62201)
    }

    /// `knocker open gw1 --method METHOD` from the first client, which must succeed.
    fn knocker_open_gw1(&self, method: &str) {
        let out = self
            .ns(CLIENT)
            .cmd(knockgate_tests::bin("knocker"))
            .args([
                "open",
                "gw1",
                "--method",
                method,
                "--profile",
                &self.profile,
            ])
            .output()
            .expect("knocker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// knocker's rotating sequence opens gw1 for the first client; the same knocks
    /// from the second client then open nothing, at gw1 (spent) or at gw2 (not its
    /// sequence). Returns the window knocker used.
    fn knocker_opens_gw1_and_its_sequence_is_spent(&self) -> u64 {
        let (c1, c2) = (self.ns(CLIENT), self.ns(CLIENT2));
        let (me1, me2) = (self.addr(CLIENT), self.addr(CLIENT2));
        let p = &self.p;
        // Start early in a window so the replay below lands in the same window.
        wait_until(
            "the start of a window",
            Duration::from_secs(WINDOW + 1),
            || unix_now().is_multiple_of(WINDOW),
        );
        let w = window_index(unix_now(), p.params.window_secs);
        self.knocker_open_gw1("rotating");
        assert!(
            opens_within(c1, me1, self.ssh(GW1), Duration::from_secs(2)),
            "rotating knock opens gw1:\n{}",
            self.gw1.log_text()
        );
        // The window knocker actually used (it may have waited for the next one).
        let used = events(&self.gw1, "knock.completed")
            .iter()
            .find(|e| e["method"] == "rotating")
            .and_then(|e| e["window"].as_u64())
            .expect("the completed rotating sequence names its window");
        assert!(used == w || used == w + 1, "window {used}, expected {w}");
        let w = used;
        let seq = derive_sequence(&p.secret, "gw1", w, &p.params).expect("derive");
        knock_from(c2, &self.addr(GW1).to_string(), &seq);
        knock_from(c2, &self.addr(GW2).to_string(), &seq);
        assert!(
            !opens_within(c2, me2, self.ssh(GW1), Duration::from_millis(600)),
            "a consumed sequence opens nothing at gw1"
        );
        assert!(
            !can_connect(c2, me2, self.ssh(GW2)),
            "gw1's sequence opens nothing at gw2"
        );
        w
    }

    /// Once its window `w` has passed (and the one after, the skew allowance), an
    /// unused sequence opens nothing; the current one still works.
    fn only_the_current_window_opens(&self, w: u64) {
        let (c2, me2) = (self.ns(CLIENT2), self.addr(CLIENT2));
        let gw2_ip = self.addr(GW2).to_string();
        let p = &self.p;
        let old = derive_sequence(&p.secret, "gw1", w, &p.params).expect("derive");
        let fresh_gw2 = derive_sequence(&p.secret, "gw2", w + 2, &p.params).expect("derive");
        wait_until("window w + 2", Duration::from_secs(3 * WINDOW), || {
            window_index(unix_now(), p.params.window_secs) >= w + 2
        });
        knock_from(
            c2,
            &gw2_ip,
            &derive_sequence(&p.secret, "gw2", w, &p.params).expect("derive"),
        );
        assert!(
            !opens_within(c2, me2, self.ssh(GW2), Duration::from_millis(600)),
            "last window's sequence opens nothing"
        );
        let _ = old;
        knock_from(c2, &gw2_ip, &fresh_gw2);
        assert!(
            opens_within(c2, me2, self.ssh(GW2), Duration::from_secs(2)),
            "the current window's sequence opens gw2:\n{}",
            self.gw2.log_text()
        );
    }

    /// knocker's one-time key 0 is accepted at gw1; key 0 sealed for gw2 then opens
    /// nothing there.
    fn knocker_key_0_opens_gw1_only(&self) {
        self.knocker_open_gw1("otk");
        wait_until("key 0 accepted at gw1", Duration::from_secs(3), || {
            events(&self.gw1, "spa.accepted")
                .iter()
                .any(|e| e["method"] == "otk")
        });
        let again = otk_packet(&self.p.secret, 0, "gw2");
        send_udp(self.ns(CLIENT), vec![(self.spa_port(GW2), again)]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !events(&self.gw2, "spa.accepted")
                .iter()
                .any(|e| e["method"] == "otk"),
            "key 0 at gw2 opens nothing"
        );
    }

    /// Fifty rounds: the same key at gw1 and gw2 at the same instant opens exactly one.
    fn each_key_opens_exactly_one_gateway(&self) {
        for counter in 1..=50u64 {
            send_udp(
                self.ns(CLIENT2),
                vec![
                    (
                        self.spa_port(GW1),
                        otk_packet(&self.p.secret, counter, "gw1"),
                    ),
                    (
                        self.spa_port(GW2),
                        otk_packet(&self.p.secret, counter, "gw2"),
                    ),
                ],
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        wait_until("every round decided", Duration::from_secs(5), || {
            let audit =
                self.ctl
                    .knockadm_json(&["audit", "--kind", "otk.claimed", "--limit", "1000"]);
            audit.as_array().map_or(0, |a| a.len()) >= 51
        });
        let claimed =
            self.ctl
                .knockadm_json(&["audit", "--kind", "otk.claimed", "--limit", "1000"]);
        let claimed = claimed.as_array().expect("array");
        assert_eq!(claimed.len(), 51, "one winner per key: {claimed:?}");
        let accepted: usize = [&self.gw1, &self.gw2]
            .iter()
            .map(|a| {
                events(a, "spa.accepted")
                    .iter()
                    .filter(|e| e["method"] == "otk")
                    .count()
            })
            .sum();
        assert_eq!(accepted, 51, "exactly one gateway opened per key");
    }

    /// With the controller down, the `deny` offline rule refuses a one-time key.
    fn offline_deny_refuses(&mut self) {
        self.ctl.kill();
        let packet = otk_packet(&self.p.secret, 51, "gw1");
        send_udp(self.ns(CLIENT), vec![(self.spa_port(GW1), packet)]);
        assert!(
            self.gw1
                .wait_event(
                    |e| e["event"] == "spa.rejected" && e["reason"] == "otk_offline_denied",
                    Duration::from_secs(5)
                )
                .is_some(),
            "deny refuses offline:\n{}",
            self.gw1.log_text()
        );
        self.ctl.run(&self.fleet.host(CTL).ns);
    }

    /// Under the `local` offline rule both gateways grant the same key while the
    /// controller is down; once it is back, the reuse is flagged in the audit trail.
    fn offline_local_grants_and_reuse_is_flagged(&mut self) {
        self.ctl.knockadm(&["policy", "remove", "otk"]);
        self.ctl.knockadm_json(&[
            "policy",
            "add",
            "otk",
            "--open",
            "tcp/22",
            "--users",
            "alice",
            "--agents",
            "role=edge",
            "--otk",
            "--otk-offline",
            "local",
            "--timeout",
            "30s",
        ]);
        assert!(
            wait_applied(&self.ctl, Duration::from_secs(10)),
            "local policy applied"
        );
        self.ctl.kill();
        let key = 52;
        let (c1, me1) = (self.ns(CLIENT), self.addr(CLIENT));
        send_udp(
            c1,
            vec![(self.spa_port(GW1), otk_packet(&self.p.secret, key, "gw1"))],
        );
        send_udp(
            self.ns(CLIENT2),
            vec![(self.spa_port(GW2), otk_packet(&self.p.secret, key, "gw2"))],
        );
        assert!(
            opens_within(c1, me1, self.ssh(GW1), Duration::from_secs(2))
                || can_connect(c1, me1, self.ssh(GW1)),
            "local grants offline at gw1"
        );
        assert!(
            self.gw2
                .wait_event(
                    |e| e["event"] == "spa.accepted" && e["offline"] == true,
                    Duration::from_secs(5)
                )
                .is_some(),
            "local grants offline at gw2:\n{}",
            self.gw2.log_text()
        );
        self.ctl.run(&self.fleet.host(CTL).ns);
        wait_until(
            "the reuse flagged in the audit trail",
            Duration::from_secs(20),
            || {
                self.ctl
                    .knockadm_json(&["audit", "--kind", "otk.reuse"])
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            },
        );
    }
}

/// alice, and the `rot` and `otk` policies that admit her on role=edge.
fn add_alice_and_her_policies(ctl: &Controller) {
    let out = ctl.knockadm(&["user", "add", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctl.knockadm_json(&[
        "policy",
        "add",
        "rot",
        "--open",
        "tcp/22",
        "--users",
        "alice",
        "--agents",
        "role=edge",
        "--rotating",
        "--window",
        "5s",
        "--timeout",
        "30s",
    ]);
    ctl.knockadm_json(&[
        "policy",
        "add",
        "otk",
        "--open",
        "tcp/22",
        "--users",
        "alice",
        "--agents",
        "role=edge",
        "--otk",
        "--timeout",
        "30s",
    ]);
}
