//! The agent's controller client against the real controller, in process, over real
//! mutual TLS on 127.0.0.1 with a real SQLite store: enrolment with the token and pin
//! `knockadm agent add` gives, policies pushed by the admin API reaching the engine,
//! decisions reaching the audit trail, and revocations closing grants. The firewall is a
//! recording stand-in (the nftables edge has its own tests); no privileges needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use knockgate_agent::capture::KnockMsg;
use knockgate_agent::control::enroll::{enroll, write_credentials};
use knockgate_agent::control::sync::{self, SyncParams};
use knockgate_agent::control::tls::parse_fingerprint;
use knockgate_agent::control::{self, cache};
use knockgate_agent::engine::{Engine, Input};
use knockgate_agent::firewall::{Firewall, FirewallError, Held};
use knockgate_agent::replay_store::ReplayStore;
use knockgate_agent::report;
use knockgate_agent_core::config::Config;
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::packet::{KnockKind, tcp_flags};
use knockgate_agent_core::ruleset::{Access, GrantKey, Proto, Ruleset};
use knockgate_controller::datadir::{self, ADMIN_IDENTITY};
use knockgate_controller::store::{DEFAULT_SQLITE_FILE, Store};
use knockgate_controller::{Controller, serve};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::spa::{SpaKey, SpaRequest, seal};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What the stand-in firewall holds.
#[derive(Default)]
struct Held2 {
    ruleset: Ruleset,
    open: BTreeMap<GrantKey, Duration>,
}

#[derive(Clone, Default)]
struct RecordingFirewall(Arc<Mutex<Held2>>);

impl Firewall for RecordingFirewall {
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").ruleset = ruleset.clone();
        Ok(())
    }
    fn open(&mut self, key: &GrantKey, timeout: Duration) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").open.insert(*key, timeout);
        Ok(())
    }
    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").open.remove(key);
        Ok(())
    }
    fn list(&mut self) -> Result<Vec<Held>, FirewallError> {
        Ok(Vec::new())
    }
}

fn admin_channel(data: &Path, url: &str) -> Channel {
    let pem = std::fs::read_to_string(data.join(ADMIN_IDENTITY)).expect("admin.pem");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem))
        .identity(Identity::from_pem(&pem, &pem))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(url.to_string())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_lazy()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn access(s: &str) -> Access {
    s.parse().expect("access")
}

fn api_access(s: &str) -> api::Access {
    let a = access(s);
    api::Access {
        proto: match a.proto {
            Proto::Tcp => api::Proto::Tcp as i32,
            Proto::Udp => api::Proto::Udp as i32,
        },
        port: u32::from(a.port),
    }
}

fn knock(src: &str, kind: KnockKind, payload: Option<Vec<u8>>) -> Input {
    Input::Knock(KnockMsg {
        at: Instant::now(),
        src: src.parse().expect("ip"),
        kind,
        tcp_flags: tcp_flags::SYN,
        payload: payload.map(Into::into),
    })
}

async fn audit(admin: &mut AdminClient<Channel>, kind: &str) -> Vec<api::AuditEvent> {
    admin
        .query_audit(api::AuditQuery {
            kind: kind.into(),
            agent: "gw1".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_real_controller() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The controller.
    let data = tempfile::tempdir().expect("tmp");
    datadir::init(data.path(), &[]).expect("init");
    let certs = datadir::load(data.path()).expect("load");
    let db = data.path().join(DEFAULT_SQLITE_FILE).display().to_string();
    let store = Store::open(&db).await.expect("store");
    let state = Controller::new(store, certs).await.expect("controller");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let mut admin = AdminClient::new(admin_channel(data.path(), &url));

    // Enrolment with what `knockadm agent add` prints.
    let added = admin
        .add_agent(api::AddAgentRequest {
            name: "gw1".into(),
            ..Default::default()
        })
        .await
        .expect("add agent")
        .into_inner();
    let pin = parse_fingerprint(&added.ca_sha256).expect("pin");
    let agent_dir = tempfile::tempdir().expect("tmp");
    let enrolled = enroll(&url, &added.token, pin, "gw1").await.expect("enrol");
    assert_eq!(enrolled.agent_name, "gw1");
    write_credentials(agent_dir.path(), &enrolled).expect("credentials");
    let e = enroll(&url, &added.token, pin, "gw1")
        .await
        .expect_err("a token is single-use");
    assert!(
        e.to_string()
            .starts_with("the controller refused the token"),
        "{e}"
    );

    // The agent: engine over the stand-in firewall, sync and report tasks.
    let base = Config::parse(&format!(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = {:?}\n\n[controller]\nurl = {url:?}\nreconnect_max = \"1s\"\n",
        agent_dir.path()
    ))
    .expect("config");
    let fw = RecordingFirewall::default();
    let held = fw.0.clone();
    let mut detector = SpaDetector::new(&base);
    let replay =
        ReplayStore::open(agent_dir.path(), detector.replay_cache(), 0).expect("replay store");
    let (reporter, spooler) = report::start(agent_dir.path()).expect("spool");
    let engine = Engine::new(&base, Box::new(fw), Some((detector, replay)))
        .expect("engine")
        .with_reporter(reporter);
    let (tx, rx) = sync_channel(64);
    let engine_thread = std::thread::spawn(move || engine.run(rx));
    let ch = control::channel(&url, agent_dir.path()).expect("channel");
    tokio::spawn(sync::run(
        ch.clone(),
        SyncParams {
            engine: tx.clone(),
            base: base.clone(),
            state_dir: agent_dir.path().to_path_buf(),
            interface: None,
            reconnect_max: Duration::from_secs(1),
            current: None,
            url: url.clone(),
        },
    ));
    tokio::spawn(report::sender::run(
        ch,
        spooler.spool.clone(),
        spooler.appended.clone(),
        Duration::from_secs(1),
    ));

    // Policies from the admin API reach the firewall.
    let alice = admin
        .add_user(api::AddUserRequest {
            name: "alice".into(),
            groups: vec![],
        })
        .await
        .expect("add user")
        .into_inner();
    for spec in [
        api::PolicySpec {
            name: "legacy".into(),
            open: vec![api_access("tcp/22")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            sequence: vec!["tcp/7000".into(), "udp/8000".into()],
            ..Default::default()
        },
        api::PolicySpec {
            name: "web".into(),
            open: vec![api_access("tcp/443")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            spa: true,
            ..Default::default()
        },
    ] {
        admin.add_policy(spec).await.expect("add policy");
    }
    eventually("both policies enforced", async || {
        let h = held.lock().expect("lock");
        h.ruleset.protected.contains(&access("tcp/22"))
            && h.ruleset.protected.contains(&access("tcp/443"))
    })
    .await;
    eventually("the agent to report the version applied", async || {
        let agents = admin
            .list_agents(api::ListAgentsRequest {})
            .await
            .expect("list")
            .into_inner()
            .agents;
        agents
            .iter()
            .any(|a| a.name == "gw1" && a.connected && a.applied_version == a.current_version)
    })
    .await;
    assert!(
        cache::load(agent_dir.path()).expect("cache").is_some(),
        "what was applied is cached"
    );

    // A sequence knock and an SPA packet with the key the controller issued.
    let port = |proto, port| KnockKind::Port { proto, port };
    tx.send(knock("10.0.0.2", port(Proto::Tcp, 7000), None))
        .expect("knock");
    tx.send(knock("10.0.0.2", port(Proto::Udp, 8000), None))
        .expect("knock");
    let key: [u8; 32] = alice.spa_key.as_slice().try_into().expect("32-byte key");
    let packet = seal(
        &SpaKey::from_secret(key),
        &SpaRequest {
            timestamp: knockgate_proto::unix_secs(SystemTime::now()),
            nonce: [3; 16],
            gateway: "gw1".into(),
            allow_ip: None,
            access: vec![access("tcp/443")],
            duration_secs: 0,
        },
        [4; 24],
    )
    .expect("seal");
    tx.send(knock("10.0.0.3", port(Proto::Udp, 62201), Some(packet)))
        .expect("spa");
    eventually("both grants in the audit trail", async || {
        audit(&mut admin, "grant.opened").await.len() == 2
    })
    .await;
    assert_eq!(audit(&mut admin, "knock.completed").await.len(), 1);
    let accepted = audit(&mut admin, "spa.accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].user, "alice");

    // Revoking one grant by id closes it on the agent.
    let grants = admin
        .list_grants(api::ListGrantsRequest {
            agent: "gw1".into(),
            ..Default::default()
        })
        .await
        .expect("grants")
        .into_inner()
        .grants;
    let legacy = grants
        .iter()
        .find(|g| g.policy == "legacy")
        .expect("the sequence grant is recorded");
    admin
        .revoke_grants(api::RevokeGrantsRequest {
            id: legacy.id,
            user: String::new(),
        })
        .await
        .expect("revoke");
    eventually("the revoked grant to close", async || {
        let h = held.lock().expect("lock");
        h.open.len() == 1 && h.open.keys().all(|k| k.port == 443)
    })
    .await;

    // Disabling alice takes her grant away at once.
    admin
        .set_user_disabled(api::SetUserDisabledRequest {
            name: "alice".into(),
            disabled: true,
        })
        .await
        .expect("disable");
    eventually("alice's grant to close", async || {
        held.lock().expect("lock").open.is_empty()
    })
    .await;
    eventually("both closes in the audit trail", async || {
        audit(&mut admin, "grant.closed").await.len() == 2
    })
    .await;
    let mut reasons: Vec<String> = audit(&mut admin, "grant.closed")
        .await
        .iter()
        .map(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap_or_default();
            d["reason"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["revoked", "user_removed"]);

    tx.send(Input::Shutdown { keep: false }).expect("stop");
    engine_thread.join().expect("engine");
    let _ = stop.send(());
    let _ = server.await;
}
