//! The controller edge against a real tonic server with real certificates on 127.0.0.1:
//! enrolment and its failures, the sync stream driving a real engine (over the fake
//! firewall), report delivery across a controller outage, and the TLS name of a URL.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use knockgate_agent_core::config::Config;
use knockgate_agent_core::packet::{KnockStep, tcp_flags};
use knockgate_proto::api::{
    self, AgentConfig, AgentMessage, ControllerMessage, RevokeGrants, agent_message,
    controller_message,
};
use knockgate_proto::spa::{self, SpaKey, SpaRequest};

use super::convert::tests::{alice, full, ssh, web};
use super::enroll::{EnrollError, enroll, write_credentials};
use super::fake_controller::{FakeController, TOKEN};
use super::test_pki::TestPki;
use super::tls::parse_fingerprint;
use super::{STATE_CA, STATE_CERT, STATE_KEY, cache, channel, host_of};
use crate::agent::{Agent, Io, Start};
use crate::capture::KnockMsg;
use crate::engine::Input;
use crate::firewall::fake::FakeFirewall;
use crate::report::{self, Record};
use knockgate_proto::event::Kind;
use tonic::transport::Uri;

pub(crate) fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

pub(crate) fn pin(pki: &TestPki) -> [u8; 32] {
    parse_fingerprint(&super::tls::fingerprint_hex(&pki.ca_der)).expect("pin")
}

/// A port nothing listens on (bound, then released).
pub(crate) fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub(crate) fn install_agent_credentials(pki: &TestPki, dir: &Path) {
    let (cert, key) = pki.agent("gw1");
    std::fs::write(dir.join(STATE_CERT), cert).expect("cert");
    std::fs::write(dir.join(STATE_KEY), key).expect("key");
    std::fs::write(dir.join(STATE_CA), &pki.ca_pem).expect("ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_pins_the_ca_and_names_each_failure() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
    let fake = FakeController::start(pki.clone(), any_port()).await;

    let e = enroll(&fake.url(), TOKEN, pin(&pki), "gw1")
        .await
        .expect("enrols");
    assert_eq!(e.agent_name, "gw1");
    assert_eq!(e.ca_pem, pki.ca_pem);
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    write_credentials(&state, &e).expect("write");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join(STATE_KEY))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The enrolled credentials are good for mutual TLS.
    let ch = channel(&[fake.url()], &state).expect("channel");
    let mut client = api::agent_control_client::AgentControlClient::new(ch);
    client
        .report(api::ReportRequest { events: vec![] })
        .await
        .expect("mTLS report call");

    let e = enroll(&fake.url(), TOKEN, [0x11; 32], "gw1")
        .await
        .expect_err("wrong pin");
    assert!(matches!(e, EnrollError::PinMismatch), "{e}");
    assert_eq!(
        e.to_string(),
        "the controller's CA does not match --ca-sha256"
    );

    let e = enroll(&fake.url(), "stale", pin(&pki), "gw1")
        .await
        .expect_err("bad token");
    assert_eq!(
        e.to_string(),
        "the controller refused the token: unknown, used or expired token"
    );

    let dead = format!("https://{}", free_port());
    let e = enroll(&dead, TOKEN, pin(&pki), "gw1")
        .await
        .expect_err("unreachable");
    assert!(matches!(e, EnrollError::Unreachable { .. }), "{e}");

    let e = enroll(
        &fake.url().replace("https", "http"),
        TOKEN,
        pin(&pki),
        "gw1",
    )
    .await
    .expect_err("http");
    assert!(matches!(e, EnrollError::BadUrl { .. }), "{e}");

    // The right CA, but a server certificate for another name.
    let other = Arc::new(TestPki::new(&["controller.test"]));
    let fake2 = FakeController::start(other.clone(), any_port()).await;
    let e = enroll(&fake2.url(), TOKEN, pin(&other), "gw1")
        .await
        .expect_err("name");
    assert!(matches!(e, EnrollError::BadCertificate { .. }), "{e}");
}

fn reply(m: Option<AgentMessage>) -> agent_message::Msg {
    m.and_then(|m| m.msg).expect("a reply")
}

async fn next_reply(s: &mut super::fake_controller::Session) -> agent_message::Msg {
    reply(
        tokio::time::timeout(Duration::from_secs(10), s.from_agent.recv())
            .await
            .expect("a reply within 10 s"),
    )
}

fn config(c: AgentConfig) -> ControllerMessage {
    ControllerMessage {
        msg: Some(controller_message::Msg::Config(c)),
        ..Default::default()
    }
}

fn knock(src: &str, kind: KnockStep, payload: Option<Vec<u8>>) -> Input {
    Input::Knock(KnockMsg {
        at: Instant::now(),
        src: src.parse().expect("ip"),
        kind,
        tcp_flags: tcp_flags::SYN,
        payload: payload.map(Into::into),
        syn: None,
    })
}

fn spa_packet(gateway: &str) -> Vec<u8> {
    let req = SpaRequest {
        timestamp: knockgate_proto::unix_secs(SystemTime::now()),
        nonce: rand::random(),
        gateway: gateway.into(),
        allow_ip: None,
        access: vec!["tcp/443".parse().expect("access")],
        duration_secs: 0,
    };
    spa::seal(&SpaKey::from_secret([7; 32]), &req, rand::random()).expect("seal")
}

/// Wait until `f` holds (the engine works on its own thread).
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What reached the controller, in order.
fn reported(seen: &std::sync::Mutex<super::fake_controller::Seen>) -> Vec<api::Event> {
    let mut events = seen.lock().expect("lock").events.clone();
    events.sort_by_key(|e| e.seq);
    events
}

/// A real agent (the library's `Agent`, over the fake firewall) synced by the stand-in
/// controller, for the story below.
struct SyncRig {
    fake: FakeController,
    agent: Agent,
    state: std::sync::Arc<std::sync::Mutex<crate::firewall::fake::FakeState>>,
    dir: tempfile::TempDir,
}

impl SyncRig {
    async fn start() -> SyncRig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
        let fake = FakeController::start(pki.clone(), any_port()).await;
        let dir = tempfile::tempdir().expect("tmp");
        install_agent_credentials(&pki, dir.path());
        let base = Config::parse(&format!(
            "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = {:?}\n\n[controller]\nurl = {:?}\nreconnect_max = \"1s\"\n",
            dir.path(),
            fake.url()
        ))
        .expect("base");
        let fw = FakeFirewall::default();
        let state = fw.state.clone();
        let io = Io {
            firewall: Box::new(fw),
            captures: Vec::new(),
            tuning: crate::capture::Tuning::new(String::new(), None),
            controller: Some(channel(&[fake.url()], dir.path()).expect("channel")),
            watch: None,
        };
        let start = Start::from_file(&base).expect("start");
        let handle = tokio::runtime::Handle::current();
        let agent = Agent::start(&base, start, io, &handle).expect("agent");
        SyncRig {
            fake,
            agent,
            state,
            dir,
        }
    }

    fn ruleset(&self) -> knockgate_agent_core::ruleset::Ruleset {
        self.state
            .lock()
            .expect("lock")
            .ruleset
            .clone()
            .expect("ruleset")
    }

    fn open(&self) -> Vec<String> {
        let state = self.state.lock().expect("lock");
        state.open.keys().map(|k| k.to_string()).collect()
    }

    /// A full config: enforced, cached, acknowledged.
    async fn full_config_is_enforced(&mut self, s: &mut super::fake_controller::Session) {
        assert_eq!(s.hello.applied_version, 0);
        assert!(s.hello.software.starts_with("knockgate-agent "));
        s.to_agent
            .send(config(full(1, vec![ssh(), web()], vec![alice()])))
            .expect("send");
        assert_eq!(
            next_reply(s).await,
            agent_message::Msg::Applied(api::Applied { version: 1 })
        );
        let rs = self.ruleset();
        assert!(rs.protected.contains(&"tcp/443".parse().expect("a")));
        assert!(rs.knock_ports.contains(&"udp/62201".parse().expect("a")));
        let cached = cache::load(self.dir.path()).expect("cache");
        assert_eq!(cached.map(|c| c.version), Some(1));
    }

    /// A sequence grant (no user) and an SPA grant for alice.
    async fn knock_and_spa(&self) {
        let tx = self.agent.sender();
        for k in [KnockStep::tcp(7000), KnockStep::udp(8000), KnockStep::Icmp] {
            tx.send(knock("10.0.0.2", k, None)).expect("knock");
        }
        let spa = knock("10.0.0.3", KnockStep::udp(62201), Some(spa_packet("gw1")));
        tx.send(spa).expect("spa");
        eventually("two grants", || {
            self.state.lock().expect("lock").open.len() == 2
        })
        .await;
    }

    /// A delta removing alice: her grant closes at once, the sequence grant stays.
    async fn delta_removing_alice(&self, s: &mut super::fake_controller::Session) {
        let mut d = AgentConfig {
            version: 2,
            full: false,
            base_version: 1,
            ..Default::default()
        };
        let mut web_no_alice = web();
        web_no_alice.spa = false;
        web_no_alice.fwknop = false;
        web_no_alice.users.clear();
        web_no_alice.sequence = vec!["tcp/9100".into()];
        d.policies = vec![web_no_alice];
        d.removed_users = vec!["alice".into()];
        s.to_agent.send(config(d)).expect("send");
        assert_eq!(
            next_reply(s).await,
            agent_message::Msg::Applied(api::Applied { version: 2 })
        );
        assert_eq!(self.open(), ["10.0.0.2 tcp/22"]);
    }

    /// An invalid config is refused as a whole; the old one stays. So is one that names a
    /// user it does not have (the core's validation).
    async fn invalid_configs_are_refused(&self, s: &mut super::fake_controller::Session) {
        let mut bad = ssh();
        bad.timeout_secs = 0;
        s.to_agent
            .send(config(full(3, vec![bad], vec![])))
            .expect("send");
        match next_reply(s).await {
            agent_message::Msg::Refused(r) => {
                assert_eq!(r.version, 3);
                assert!(r.reason.contains("timeout_secs"), "{}", r.reason);
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        let kept = self
            .ruleset()
            .knock_ports
            .contains(&"tcp/9100".parse().expect("a"));
        assert!(kept, "version 2 is still enforced");
        let mut p = web();
        p.users = vec!["mallory".into()];
        s.to_agent
            .send(config(full(4, vec![p], vec![alice()])))
            .expect("send");
        assert!(matches!(
            next_reply(s).await,
            agent_message::Msg::Refused(api::Refused { version: 4, .. })
        ));
    }

    /// A delta on a version the agent does not hold: refused, and a new stream.
    async fn a_stale_delta_resyncs(
        &mut self,
        s: &mut super::fake_controller::Session,
    ) -> super::fake_controller::Session {
        let d = AgentConfig {
            version: 6,
            full: false,
            base_version: 5,
            ..Default::default()
        };
        s.to_agent.send(config(d)).expect("send");
        assert!(matches!(
            next_reply(s).await,
            agent_message::Msg::Refused(api::Refused { version: 6, .. })
        ));
        let s2 = self.fake.session().await;
        assert_eq!(s2.hello.applied_version, 2);
        s2
    }

    /// Revocation by ref closes the grant within a second.
    async fn revocation_by_ref(&self, s: &super::fake_controller::Session) {
        let grant_ref = reported(&self.fake.seen)
            .into_iter()
            .find(|e| e.kind == "grant.opened" && e.src == "10.0.0.2")
            .and_then(|e| e.grant)
            .expect("grant.opened for the sequence grant")
            .grant_ref;
        let revoke = RevokeGrants {
            grant_refs: vec![grant_ref],
            users: vec![],
        };
        let msg = controller_message::Msg::Revoke(revoke);
        s.to_agent
            .send(ControllerMessage {
                msg: Some(msg),
                ..Default::default()
            })
            .expect("send");
        let asked = Instant::now();
        eventually("the revoked grant to close", || {
            self.state.lock().expect("lock").open.is_empty()
        })
        .await;
        assert!(asked.elapsed() < Duration::from_secs(1));
    }

    /// Every decision reached the controller, with its reason, in order.
    async fn every_decision_was_reported(&self) {
        let seen = &self.fake.seen;
        let closed = || {
            reported(seen)
                .iter()
                .filter(|e| e.kind == "grant.closed")
                .count()
        };
        eventually("grant.closed reports", || closed() == 2).await;
        let events = reported(seen);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        for k in ["knock.completed", "spa.accepted", "grant.opened"] {
            assert!(kinds.contains(&k), "{k} in {kinds:?}");
        }
        let closed: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.kind == "grant.closed")
            .map(|e| (e.user.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(closed, [("alice", "user_removed"), ("", "revoked")]);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_refuses_resyncs_and_revokes() {
    let mut rig = SyncRig::start().await;
    let mut s = rig.fake.session().await;
    rig.full_config_is_enforced(&mut s).await;
    rig.knock_and_spa().await;
    rig.delta_removing_alice(&mut s).await;
    rig.invalid_configs_are_refused(&mut s).await;
    let s2 = rig.a_stale_delta_resyncs(&mut s).await;
    rig.revocation_by_ref(&s2).await;
    rig.every_decision_was_reported().await;
    assert!(
        rig.agent.shutdown().0.is_some(),
        "the engine stopped cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_wait_for_the_controller_and_all_arrive() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
    let dir = tempfile::tempdir().expect("tmp");
    install_agent_credentials(&pki, dir.path());
    let addr = free_port();
    let url = format!("https://{addr}");
    let (mut reporter, spooler) = report::start(dir.path()).expect("spool");
    for i in 0..3 {
        reporter.emit(Record::new(Kind::GrantOpened, 0).with_detail("i", i));
    }
    tokio::spawn(report::sender::run(
        channel(std::slice::from_ref(&url), dir.path()).expect("channel"),
        spooler.spool.clone(),
        spooler.appended.clone(),
        Duration::from_millis(300),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        spooler.spool.lock().expect("lock").pending(),
        3,
        "kept while the controller is away"
    );

    let fake = FakeController::start(pki.clone(), addr).await;
    let seen = fake.seen.clone();
    eventually("the backlog to arrive", || {
        seen.lock().expect("lock").events.len() == 3
    })
    .await;
    // A controller that answers with an error keeps events spooled too.
    fake.refuse_reports
        .store(true, std::sync::atomic::Ordering::Relaxed);
    reporter.emit(Record::new(Kind::GrantClosed, 0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(spooler.spool.lock().expect("lock").pending(), 1);
    fake.refuse_reports
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for i in 0..1199 {
        reporter.emit(Record::new(Kind::SpaRejected, 0).with_detail("i", i));
    }
    eventually("everything to arrive", || {
        seen.lock().expect("lock").events.len() == 1203
    })
    .await;
    eventually("the spool to empty", || {
        spooler.spool.lock().expect("lock").pending() == 0
    })
    .await;
    let seen = seen.lock().expect("lock");
    let mut seqs: Vec<u64> = seen.events.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1203).collect::<Vec<_>>());
    assert!(
        seen.batch_sizes.iter().all(|&n| n <= 500),
        "{:?}",
        seen.batch_sizes
    );
}

#[test]
fn the_tls_name_is_the_bare_host() {
    let host = |u: &str| host_of(&u.parse::<Uri>().expect("uri"));
    assert_eq!(host("https://10.0.0.1:7443").as_deref(), Some("10.0.0.1"));
    assert_eq!(host("https://[fd00::1]:7443").as_deref(), Some("fd00::1"));
    assert_eq!(host("https://ctl.example").as_deref(), Some("ctl.example"));
}

#[test]
fn an_agent_that_never_enrolled_is_told_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let e =
        channel(&["https://127.0.0.1:7443".to_owned()], dir.path()).expect_err("no credentials");
    assert!(
        e.to_string().starts_with("not enrolled:") && e.to_string().contains("enroll"),
        "{e}"
    );
}

#[tokio::test]
async fn calls_move_on_to_the_next_replica_when_one_cannot_be_reached() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
    let fake = FakeController::start(pki.clone(), any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    install_agent_credentials(&pki, dir.path());
    let down = format!("https://{}", free_port());
    let ch = channel(&[down.clone(), fake.url()], dir.path()).expect("channel");
    assert_eq!(ch.url(), down, "the first listed replica first");
    let mut client = api::agent_control_client::AgentControlClient::new(ch.clone());
    let report = api::ReportRequest { events: vec![] };
    let status = client
        .report(report.clone())
        .await
        .expect_err("the first replica is down");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(ch.url(), fake.url(), "moved on to the second replica");
    client
        .report(report.clone())
        .await
        .expect("the second replica answers");
    client.report(report).await.expect("and keeps answering");
    assert_eq!(ch.url(), fake.url(), "a replica that answers is kept");
}
