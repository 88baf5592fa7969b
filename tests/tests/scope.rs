//! End to end: a user's secrets are scoped to one gateway. Two enrolled gateways admit
//! alice; the stock fwknop client, using the stanza knockadm wrote for gw1, opens gw1;
//! the very packet, resent to gw2 from the same source, is refused there. And knocker's
//! native packets for gw1 open nothing at gw2.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::{Netns, sh};
use knockgate_tests::probe::{Listener, can_connect, opens_within};
use knockgate_tests::wait_until;

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_sniffed_fwknop_packet_opens_one_gateway_at_most() {
    let mut story = ScopeStory::start();
    let saved = story.fwknop_client_opens_gw1();
    story.the_same_bytes_are_refused_at_gw2(&saved);
    story.knockers_gw1_packet_is_refused_at_gw2();
    story.gw2_opens_for_its_own_packet();
    let _ = story.gw1.stop();
    story.a_config_naming_another_gateway_is_refused();
}

/// gw1 and gw2 (both role=edge) admitting alice by SPA and fwknop, the client, and
/// alice's profile. Fields drop in order: the agents, the listeners, the controller,
/// the work dir, then the hosts.
struct ScopeStory {
    gw2: AgentProc,
    gw1: AgentProc,
    _sshd: [Listener; 2],
    _ctl: Controller,
    profile: PathBuf,
    work: Workdir,
    fleet: Fleet,
}

impl ScopeStory {
    /// Enrols both gateways, adds alice and the policy, and brings alice's profile up to
    /// date: its fwknoprc has a stanza for each gateway, asking for what the policy opens.
    fn start() -> ScopeStory {
        let fleet = Fleet::new(&["ctl", "gw1", "gw2", "client"]);
        let work = Workdir::new();
        let ctl_addr = fleet.host(0).v4.to_string();
        let ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &ctl_addr, None);
        let sshd1 = Listener::start(&fleet.host(1).ns, 22);
        let sshd2 = Listener::start(&fleet.host(2).ns, 22);
        let (gw1, _) = enroll_and_start(&ctl, &fleet.host(1).ns, &work, "gw1", "role=edge");
        let (gw2, _) = enroll_and_start(&ctl, &fleet.host(2).ns, &work, "gw2", "role=edge");
        assert!(wait_applied(&ctl, Duration::from_secs(10)), "both enrolled");
        let profile = ctl.add_user("alice", &work.path);
        ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa", "--fwknop"]);
        // The profile was written before the policy: its rc file names no access yet.
        let rc = work.path.join("alice.toml.fwknoprc");
        let rc_text = std::fs::read_to_string(&rc).expect("rc file");
        assert!(!rc_text.contains("ACCESS"), "nothing guessed:\n{rc_text}");
        // Brought up to date, each stanza asks for what the policy opens with fwknop.
        ctl.knockadm_json(&[
            "user",
            "profile",
            "alice",
            "--update",
            profile.to_str().expect("utf-8 path"),
        ]);
        let rc_text = std::fs::read_to_string(&rc).expect("rc file");
        assert!(
            rc_text.contains("[gw1]") && rc_text.contains("[gw2]"),
            "{rc_text}"
        );
        assert_eq!(rc_text.matches("\nACCESS tcp/22\n").count(), 2, "{rc_text}");
        ScopeStory {
            gw2,
            gw1,
            _sshd: [sshd2, sshd1],
            _ctl: ctl,
            profile,
            work,
            fleet,
        }
    }

    fn client(&self) -> &Netns {
        &self.fleet.host(3).ns
    }

    fn me(&self) -> IpAddr {
        self.fleet.host(3).addr()
    }

    fn ssh(&self, gw: usize) -> SocketAddr {
        SocketAddr::new(self.fleet.host(gw).addr(), 22)
    }

    /// The stock client with gw1's stanza opens gw1; the packet is saved as it went
    /// on the wire, and its file returned.
    fn fwknop_client_opens_gw1(&self) -> PathBuf {
        let (client, me) = (self.client(), self.me());
        let saved = self.work.path.join("gw1.pkt");
        let out = client
            .cmd("fwknop")
            .env("HOME", &self.work.path)
            .args(["--rc-file"])
            .arg(self.work.path.join("alice.toml.fwknoprc"))
            .args(["-n", "gw1", "--no-save-args", "-a", &me.to_string(), "-B"])
            .arg(&saved)
            .output()
            .expect("run fwknop");
        assert!(
            out.status.success(),
            "fwknop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            opens_within(client, me, self.ssh(1), Duration::from_secs(2)),
            "gw1 opens:\n{}",
            self.gw1.log_text()
        );
        saved
    }

    /// The same bytes to gw2, from the same source: refused, the port stays closed.
    fn the_same_bytes_are_refused_at_gw2(&mut self, saved: &Path) {
        let (client, me) = (self.client(), self.me());
        let packet = std::fs::read_to_string(saved).expect("saved packet");
        let gw2_spa = SocketAddr::new(self.fleet.host(2).addr(), 62201);
        client.run(move || {
            let sock = UdpSocket::bind((me, 0)).expect("bind");
            sock.send_to(packet.trim().as_bytes(), gw2_spa)
                .expect("send");
        });
        let refused = self
            .gw2
            .wait_event(|v| v["event"] == "spa.rejected", Duration::from_secs(3));
        assert!(
            refused.is_some(),
            "gw2 saw the packet:\n{}",
            self.gw2.log_text()
        );
        assert!(self.gw2.events_named("spa.accepted").is_empty());
        assert!(
            !can_connect(self.client(), me, self.ssh(2)),
            "gw2 stays closed"
        );
    }

    /// knocker's native packet for gw1, sent to gw2 (a profile whose gw1 entry points at
    /// gw2's address): refused there too, since gw2 holds another key for alice.
    fn knockers_gw1_packet_is_refused_at_gw2(&self) {
        let (client, me) = (self.client(), self.me());
        let misdirected = self.work.path.join("misdirected.toml");
        let text = std::fs::read_to_string(&self.profile).expect("profile");
        let gw1_addr = format!("\"{}\"", self.fleet.host(1).addr());
        let gw2_addr = format!("\"{}\"", self.fleet.host(2).addr());
        assert!(text.contains(&gw1_addr), "{text}");
        std::fs::write(&misdirected, text.replace(&gw1_addr, &gw2_addr)).expect("write");
        let rejected_before = self.gw2.events_named("spa.rejected").len();
        sh(client
            .cmd(knockgate_tests::bin("knocker"))
            .args(["open", "gw1", "--profile"])
            .arg(&misdirected));
        wait_until(
            "gw2 refused the packet sealed for gw1",
            Duration::from_secs(3),
            || self.gw2.events_named("spa.rejected").len() > rejected_before,
        );
        assert!(self.gw2.events_named("spa.accepted").is_empty());
        assert!(!can_connect(client, me, self.ssh(2)), "gw2 still closed");
    }

    /// The same profile, unchanged, opens gw2 with gw2's own key.
    fn gw2_opens_for_its_own_packet(&self) {
        let (client, me) = (self.client(), self.me());
        sh(client.cmd(knockgate_tests::bin("knocker")).args([
            "open",
            "gw2",
            "--profile",
            self.profile.to_str().expect("path"),
        ]));
        assert!(
            opens_within(client, me, self.ssh(2), Duration::from_secs(2)),
            "gw2 opens for its own packet:\n{}",
            self.gw2.log_text()
        );
    }

    /// The gateway name packets are checked against is the enrolled one: a config that
    /// names the agent otherwise is refused at start.
    fn a_config_naming_another_gateway_is_refused(&mut self) {
        assert!(self.gw2.stop().success());
        let config = self.work.path.join("gw2.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        std::fs::write(&config, text.replace("name = \"gw2\"", "name = \"gw9\"")).expect("write");
        let out = self
            .fleet
            .host(2)
            .ns
            .cmd(knockgate_tests::bin("knockgate-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains("is not the name this agent is enrolled as (\"gw2\")"),
            "{err}"
        );
    }
}
