//! End to end: sealed knock sequences (`proto/sealed.md`). gw1 protects tcp/22 with a
//! policy that only sealed sequences open; alice knocks from the client with `knocker
//! open --method sealed`. A sequence with one knock changed opens nothing; the real one
//! opens for the client alone; the captured sequence, replayed from the same host and
//! from another, opens nothing; `--allow-ip` opens only the address it names; and a flood
//! of random knocks on the sealed range leaves the agent's memory bounded and the next
//! real sequence still opens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use knockgate_cli::profile::read_profile;
use knockgate_proto::sealed::{self, DEFAULT_BASE_PORT, Request, SealedKeys};
use knockgate_proto::{Access, Proto};
use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start, wait_applied};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::{Netns, sh};
use knockgate_tests::probe::{Listener, can_connect, opens_within};
use knockgate_tests::{procfs, wait_until};

const GW: usize = 1;
const CLIENT: usize = 2;
const OTHER: usize = 3;
const THIRD: usize = 4;

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn a_sealed_sequence_opens_once_for_the_address_it_binds() {
    let mut s = Story::start();
    s.a_changed_knock_opens_nothing();
    let ports = s.knocker_opens_for_the_client();
    s.replays_open_nothing(&ports);
    s.allow_ip_opens_only_that_address();
    s.a_flood_of_random_knocks_is_bounded();
}

/// Fields drop in order: the agent, the listener, the controller, the work dir, the hosts.
struct Story {
    gw: AgentProc,
    _sshd: Listener,
    ctl: Controller,
    profile: PathBuf,
    _work: Workdir,
    fleet: Fleet,
}

impl Story {
    fn start() -> Story {
        let fleet = Fleet::new(&["ctl", "gw1", "client", "other", "third"]);
        let work = Workdir::new();
        let ctl_addr = fleet.host(0).v4.to_string();
        let ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &ctl_addr, None);
        let sshd = Listener::start(&fleet.host(GW).ns, 22);
        let (gw, _) = enroll_and_start(&ctl, &fleet.host(GW).ns, &work, "gw1", "role=edge");
        assert!(wait_applied(&ctl, Duration::from_secs(10)), "enrolled");
        let profile = ctl.add_user("alice", &work.path);
        ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--sealed"]);
        let story = Story {
            gw,
            _sshd: sshd,
            ctl,
            profile,
            _work: work,
            fleet,
        };
        for h in [CLIENT, OTHER, THIRD] {
            assert!(!story.reaches(h), "host {h} starts closed");
        }
        story
    }

    fn ns(&self, host: usize) -> &Netns {
        &self.fleet.host(host).ns
    }

    fn addr(&self, host: usize) -> IpAddr {
        self.fleet.host(host).addr()
    }

    fn ssh(&self) -> SocketAddr {
        SocketAddr::new(self.addr(GW), 22)
    }

    /// Whether `host` gets through to the protected port within 2 s (a grant landing).
    fn opens(&self, host: usize) -> bool {
        opens_within(
            self.ns(host),
            self.addr(host),
            self.ssh(),
            Duration::from_secs(2),
        )
    }

    fn reaches(&self, host: usize) -> bool {
        can_connect(self.ns(host), self.addr(host), self.ssh())
    }

    /// Knocks `ports` (TCP SYNs) at the gateway from `host`, with knocker's plain sender.
    fn knock(&self, host: usize, ports: &[u16]) {
        let gw = self.addr(GW).to_string();
        let steps: Vec<String> = ports.iter().map(|p| format!("tcp/{p}")).collect();
        let mut args = vec!["knock", gw.as_str(), "--delay", "1ms"];
        args.extend(steps.iter().map(String::as_str));
        sh(self
            .ns(host)
            .cmd(knockgate_tests::bin("knocker"))
            .args(&args));
    }

    /// Waits for the agent to refuse a sealed sequence from `host` for `reason`.
    fn refused(&mut self, host: usize, reason: &str) {
        let src = self.addr(host).to_string();
        let seen = self.gw.wait_event(
            |e| {
                e["event"] == "spa.rejected"
                    && e["method"] == "sealed"
                    && e["reason"] == reason
                    && e["src"] == src.as_str()
            },
            Duration::from_secs(3),
        );
        assert!(
            seen.is_some(),
            "refused ({reason}) from {src}:\n{}",
            self.gw.log_text()
        );
    }

    /// A sequence sealed here, for the client, the way knocker seals it, with one knock
    /// moved to another port of its block: refused (bad tag), the port stays closed. The
    /// same sequence untouched would open (it is knocked right after, and does).
    fn a_changed_knock_opens_nothing(&mut self) {
        let profile = read_profile(&self.profile).expect("profile");
        let key = profile
            .gateway_spa_key("gw1", &self.profile)
            .expect("gateway key");
        let now = knockgate_proto::unix_secs(SystemTime::now());
        let request = Request {
            timestamp: u32::try_from(now).expect("time"),
            nonce: 7,
            access: Access {
                proto: Proto::Tcp,
                port: 22,
            },
            allow_ip: None,
        };
        let keys = SealedKeys::derive(&key);
        let good: Vec<u16> = sealed::seal(&keys, "gw1", self.addr(CLIENT), &request)
            .ports(DEFAULT_BASE_PORT)
            .collect();
        let mut changed = good.clone();
        let i = 9;
        let (index, byte) = sealed::index_of(DEFAULT_BASE_PORT, changed[i]).expect("in range");
        changed[i] = sealed::port(DEFAULT_BASE_PORT, index, byte ^ 0x01);
        self.knock(CLIENT, &changed);
        self.refused(CLIENT, "bad_tag");
        assert!(!self.reaches(CLIENT), "a changed knock opens nothing");
        // Unchanged, it is what knocker would send, and it opens: the change was the cause.
        self.knock(CLIENT, &good);
        assert!(
            self.opens(CLIENT),
            "the untouched sequence opens:\n{}",
            self.gw.log_text()
        );
        self.close_all();
    }

    /// `knocker open gw1 --method sealed --verbose` from the client, with `extra` flags;
    /// what it printed.
    fn knocker_sealed(&self, extra: &[&str]) -> String {
        let profile = self.profile.to_str().expect("path");
        let mut args = vec![
            "open",
            "gw1",
            "--method",
            "sealed",
            "--verbose",
            "--profile",
            profile,
        ];
        args.extend_from_slice(extra);
        let out = sh(self
            .ns(CLIENT)
            .cmd(knockgate_tests::bin("knocker"))
            .args(&args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Revokes every grant (a clean slate for the next step) and waits until closed.
    fn close_all(&self) {
        self.ctl
            .knockadm_json(&["grant", "revoke", "--user", "alice"]);
        wait_until("alice's grants closed", Duration::from_secs(5), || {
            !self.reaches(CLIENT) && !self.reaches(OTHER)
        });
    }

    /// `knocker open --method sealed`: the client gets in, no one else. Returns the ports
    /// it knocked, as a sniffer would have seen them.
    fn knocker_opens_for_the_client(&mut self) -> Vec<u16> {
        let text = self.knocker_sealed(&[]);
        let ports: Vec<u16> = text
            .rsplit_once("knocks: ")
            .map(|(_, list)| {
                list.split_whitespace()
                    .filter_map(|k| k.strip_prefix("tcp/")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(ports.len(), sealed::LEN_SOURCE, "{text}");
        assert!(
            self.opens(CLIENT),
            "knocker's sealed sequence opens:\n{}",
            self.gw.log_text()
        );
        let accepted = self.gw.wait_event(
            |e| e["event"] == "spa.accepted" && e["method"] == "sealed" && e["user"] == "alice",
            Duration::from_secs(2),
        );
        assert!(accepted.is_some(), "{}", self.gw.log_text());
        assert!(!self.reaches(OTHER), "only the client");
        ports
    }

    /// The sniffed ports, knocked again: from the client a replay, from another host a
    /// sequence whose tag binds someone else; neither opens.
    fn replays_open_nothing(&mut self, ports: &[u16]) {
        self.close_all();
        self.knock(CLIENT, ports);
        self.refused(CLIENT, "replay");
        self.knock(OTHER, ports);
        self.refused(OTHER, "bad_tag");
        assert!(!self.reaches(CLIENT), "no replay from the client");
        assert!(!self.reaches(OTHER), "no replay from another host");
    }

    /// From the client, a sequence that carries another address: that address opens, the
    /// sender and everyone else stay closed.
    fn allow_ip_opens_only_that_address(&mut self) {
        let other = self.addr(OTHER).to_string();
        let text = self.knocker_sealed(&["--allow-ip", &other]);
        assert!(
            text.contains(&format!("{} knocks", sealed::LEN_V4)),
            "{text}"
        );
        assert!(
            self.opens(OTHER),
            "--allow-ip opens that address:\n{}",
            self.gw.log_text()
        );
        assert!(!self.reaches(CLIENT), "not the sender");
        assert!(!self.reaches(THIRD), "not anyone else");
        self.close_all();
    }

    /// 100,000 random knocks on the sealed range (bounded in count and time): the agent's
    /// memory grows by a bounded amount, it stays up, and a real sequence right after still
    /// opens. (Many spoofed sources are bounded by the collections' LRU: unit tests.)
    fn a_flood_of_random_knocks_is_bounded(&mut self) {
        let pid = self.gw.pid();
        let before = procfs::rss_kib(pid);
        let gw = self.addr(GW);
        let started = Instant::now();
        let sent = self
            .ns(THIRD)
            .run(move || flood(gw, 100_000, Duration::from_secs(20)));
        eprintln!("flood: {sent} knocks in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        let after = procfs::rss_kib(pid);
        assert!(after > 0, "the agent is still running");
        assert!(
            after < before + 16 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        self.knocker_sealed(&[]);
        assert!(
            self.opens(CLIENT),
            "a real sequence still opens after the flood:\n{}",
            self.gw.log_text()
        );
    }
}

/// Up to `count` UDP knocks on random ports of the sealed range, within `limit`.
fn flood(gw: IpAddr, count: u32, limit: Duration) -> u32 {
    let sock = std::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).expect("bind");
    let deadline = Instant::now() + limit;
    let mut x: u32 = 0x9e37_79b9;
    let mut sent = 0;
    while sent < count && Instant::now() < deadline {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = DEFAULT_BASE_PORT + (x % u32::from(sealed::RANGE)) as u16;
        if sock.send_to(&[0], (gw, port)).is_ok() {
            sent += 1;
        }
    }
    sent
}
