//! What the loopback tests share: the real controller in process (SQLite, real
//! certificates on 127.0.0.1), an agent enrolled with it the way `knockadm agent add`
//! says, running the real engine over a recording firewall with its sync, report and
//! claim tasks.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knockgate_agent::agent::{Io, Start};
use knockgate_agent::capture::KnockMsg;
use knockgate_agent::capture::Tuning;
use knockgate_agent::control;
use knockgate_agent::control::enroll::{enroll, write_credentials};
use knockgate_agent::control::tls::parse_fingerprint;
use knockgate_agent::engine::Input;
use knockgate_agent::firewall::{Firewall, FirewallError, Held};
use knockgate_agent::otk_store::OfflineClaims;
use knockgate_agent::report::spool::Spool;
use knockgate_agent_core::config::Config;
use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::packet::{KnockStep, tcp_flags};
use knockgate_agent_core::ruleset::{Access, GrantKey, Proto, Ruleset};
use knockgate_controller::datadir::{self, ADMIN_IDENTITY};
use knockgate_controller::store::{DEFAULT_SQLITE_FILE, Store};
use knockgate_controller::{Controller, serve};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use tokio::runtime::Handle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What the stand-in firewall holds.
#[derive(Default)]
pub struct Held2 {
    pub ruleset: Ruleset,
    pub open: BTreeMap<GrantKey, Duration>,
}

#[derive(Clone, Default)]
pub struct RecordingFirewall(pub Arc<Mutex<Held2>>);

impl Firewall for RecordingFirewall {
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").ruleset = ruleset.clone();
        Ok(())
    }
    fn open(
        &mut self,
        key: &GrantKey,
        timeout: Duration,
        _label: &GrantLabel,
    ) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").open.insert(*key, timeout);
        Ok(())
    }
    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError> {
        self.0.lock().expect("lock").open.remove(key);
        Ok(())
    }
    fn list(&mut self) -> Result<Vec<Held>, FirewallError> {
        let held = self.0.lock().expect("lock");
        Ok(held
            .open
            .iter()
            .map(|(key, remaining)| Held {
                key: *key,
                remaining: *remaining,
                label: None,
            })
            .collect())
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

pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn access(s: &str) -> Access {
    s.parse().expect("access")
}

pub fn api_access(s: &str) -> api::Access {
    let a = access(s);
    api::Access {
        proto: match a.proto {
            Proto::Tcp => api::Proto::Tcp as i32,
            Proto::Udp => api::Proto::Udp as i32,
        },
        port: u32::from(a.port),
    }
}

pub fn knock(src: &str, kind: KnockStep, payload: Option<Vec<u8>>) -> Input {
    Input::Knock(KnockMsg {
        at: Instant::now(),
        src: src.parse().expect("ip"),
        kind,
        tcp_flags: tcp_flags::SYN,
        payload: payload.map(Into::into),
        syn: None,
    })
}

/// The audit trail of gw1, entries of `kind` (a prefix).
pub async fn audit(admin: &mut AdminClient<Channel>, kind: &str) -> Vec<api::AuditEvent> {
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

/// An audit entry's details.
pub fn detail(e: &api::AuditEvent) -> serde_json::Value {
    serde_json::from_str(&e.detail_json).unwrap_or_default()
}

/// The controller, serving until stopped.
pub struct Lab {
    pub admin: AdminClient<Channel>,
    pub url: String,
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), knockgate_controller::server::ServerError>>>,
}

impl Lab {
    pub async fn start() -> Lab {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data = tempfile::tempdir().expect("tmp");
        datadir::init(data.path(), &[]).expect("init");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = format!("https://{addr}");
        let admin = AdminClient::new(admin_channel(data.path(), &url));
        let mut lab = Lab {
            admin,
            url,
            addr,
            data,
            stop: None,
            server: None,
        };
        lab.serve(listener).await;
        lab
    }

    async fn serve(&mut self, listener: tokio::net::TcpListener) {
        let certs = datadir::load(self.data.path()).expect("load");
        let db = self
            .data
            .path()
            .join(DEFAULT_SQLITE_FILE)
            .display()
            .to_string();
        let store = Store::open(&db).await.expect("store");
        let state = Controller::new(store, certs).await.expect("controller");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.server = Some(tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        })));
    }

    /// Shut the controller down (every stream ends).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }

    /// Serve again on the same address, from the same data.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener).await;
    }

    /// Add gw1 and enrol an agent for it, with the token and pin the admin API gives.
    pub async fn agent(&mut self) -> Agent {
        let added = self
            .admin
            .add_agent(api::AddAgentRequest {
                name: "gw1".into(),
                ..Default::default()
            })
            .await
            .expect("add agent")
            .into_inner();
        let pin = parse_fingerprint(&added.ca_sha256).expect("pin");
        let dir = tempfile::tempdir().expect("tmp");
        let enrolled = enroll(&self.url, &added.token, pin, "gw1")
            .await
            .expect("enrol");
        assert_eq!(enrolled.agent_name, "gw1");
        write_credentials(dir.path(), &enrolled).expect("credentials");
        let mut agent = Agent::start(&self.url, dir, added.token).await;
        agent.pin = pin;
        agent
    }
}

/// The agent (the library's, as `main` starts it) over a recording firewall, fed knocks
/// by the test instead of captures.
pub struct Agent {
    pub tx: SyncSender<Input>,
    pub held: Arc<Mutex<Held2>>,
    pub spool: Arc<Mutex<Spool>>,
    pub offline: Arc<Mutex<OfflineClaims>>,
    pub dir: tempfile::TempDir,
    /// The enrolment token used (single-use) and the CA pin.
    pub token: String,
    pub pin: [u8; 32],
    agent: Option<knockgate_agent::agent::Agent>,
}

impl Agent {
    async fn start(url: &str, dir: tempfile::TempDir, token: String) -> Agent {
        let file = Config::parse(&format!(
            "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = {:?}\n\n[controller]\nurl = {url:?}\nreconnect_max = \"1s\"\n",
            dir.path()
        ))
        .expect("config");
        let fw = RecordingFirewall::default();
        let held = fw.0.clone();
        let io = Io {
            firewall: Box::new(fw),
            captures: Vec::new(),
            tuning: Tuning::new(String::new(), None),
            controller: Some(control::channel(&[url.to_owned()], dir.path()).expect("channel")),
            watch: None,
        };
        let start = Start::from_file(&file).expect("start");
        let agent = knockgate_agent::agent::Agent::start(&file, start, io, &Handle::current())
            .expect("agent starts");
        Agent {
            tx: agent.sender(),
            held,
            spool: agent.spool().expect("a managed agent spools"),
            offline: agent.offline_claims().expect("a managed agent claims"),
            dir,
            token,
            pin: [0; 32],
            agent: Some(agent),
        }
    }

    /// Whether the sync stream is up.
    pub fn connected(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.connected())
    }

    /// Grants open now.
    pub fn open(&self) -> Vec<GrantKey> {
        self.held
            .lock()
            .expect("lock")
            .open
            .keys()
            .copied()
            .collect()
    }

    /// Stop the agent.
    pub fn stop(&mut self) {
        if let Some(a) = self.agent.take() {
            let (firewall, _) = a.shutdown();
            assert!(firewall.is_some(), "the engine stopped cleanly");
        }
    }
}
