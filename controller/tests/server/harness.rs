//! A real controller for the tests: a data dir made by `datadir::init`, the
//! server on 127.0.0.1:0 behind its own TLS accept loop, and tonic clients
//! holding real certificates (admin, enrolled agent, none, a foreign CA's).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knockgate_controller::datadir::{self, ADMIN_IDENTITY, CA_CERT};
use knockgate_controller::name::AdminName;
use knockgate_controller::pki::Ca;
use knockgate_controller::server::ServerError;
use knockgate_controller::store::Store;
use knockgate_controller::{Controller, serve};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::api::enrollment_client::EnrollmentClient;
use rcgen::{CertificateParams, KeyPair};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Streaming};

/// A running controller.
pub struct Server {
    pub dir: Arc<TempDir>,
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Server {
    /// A fresh data dir and a server on `store`.
    pub async fn start(store: Store) -> Self {
        install_provider();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let data = dir.path().join("data");
        datadir::init(&data, &[]).unwrap();
        Self::start_in(dir, store).await
    }

    /// Another replica: the same data dir (CA, server certificate), `store`.
    pub async fn replica(&self, store: Store) -> Self {
        Self::start_in(Arc::clone(&self.dir), store).await
    }

    async fn start_in(dir: Arc<TempDir>, store: Store) -> Self {
        let certs = datadir::load(&dir.path().join("data")).unwrap();
        let state = Controller::new(store.clone(), certs).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Self {
            dir,
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and returns how it ended.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data").join(CA_CERT)).unwrap()
    }

    pub fn admin_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data").join(ADMIN_IDENTITY)).unwrap()
    }

    /// A channel trusting this server's CA, presenting `identity` (cert, key).
    pub fn channel(&self, identity: Option<(&str, &str)>) -> Channel {
        self.channel_trusting(&self.ca_pem(), identity)
    }

    pub fn channel_trusting(&self, ca_pem: &str, identity: Option<(&str, &str)>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        let pem = self.admin_pem();
        AdminClient::new(self.channel(Some((&pem, &pem))))
    }

    pub fn anonymous_enrollment(&self) -> EnrollmentClient<Channel> {
        EnrollmentClient::new(self.channel(None))
    }
}

/// An enrolled agent's credentials.
pub struct AgentCreds {
    pub cert_pem: String,
    pub key_pem: String,
}

impl AgentCreds {
    pub fn client(&self, server: &Server) -> AgentControlClient<Channel> {
        AgentControlClient::new(server.channel(Some((&self.cert_pem, &self.key_pem))))
    }

    pub fn admin_client(&self, server: &Server) -> AdminClient<Channel> {
        AdminClient::new(server.channel(Some((&self.cert_pem, &self.key_pem))))
    }
}

/// A CSR for a fresh key, asking for whatever name (the controller ignores it).
pub fn csr() -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["whatever.example".into()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key)
}

/// `AddAgent` with `labels`; returns the token.
pub async fn add_agent(server: &Server, name: &str, labels: &[(&str, &str)]) -> String {
    let req = api::AddAgentRequest {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        address: String::new(),
        token_ttl_secs: 0,
    };
    server
        .admin()
        .add_agent(req)
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Adds and enrols an agent with a CSR made here, as the agent would.
pub async fn enrolled_agent(server: &Server, name: &str, labels: &[(&str, &str)]) -> AgentCreds {
    let token = add_agent(server, name, labels).await;
    let (csr_pem, key) = csr();
    let resp = server
        .anonymous_enrollment()
        .enroll(api::EnrollRequest { token, csr_pem })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.agent_name, name);
    assert_eq!(resp.ca_pem, server.ca_pem());
    AgentCreds {
        cert_pem: resp.cert_pem,
        key_pem: key.serialize_pem(),
    }
}

/// An admin identity from a CA the server does not trust.
pub fn foreign_admin() -> (String, String) {
    let (ca, _) = Ca::create("someone else's CA").unwrap();
    let issued = ca.issue_admin(&AdminName::new("admin").unwrap()).unwrap();
    (issued.cert_pem, issued.key_pem)
}

/// An open Sync stream, as an agent holds it.
pub struct SyncStream {
    pub tx: mpsc::Sender<api::AgentMessage>,
    pub rx: Streaming<api::ControllerMessage>,
}

pub fn msg(m: api::agent_message::Msg) -> api::AgentMessage {
    api::AgentMessage { msg: Some(m) }
}

impl SyncStream {
    /// Opens Sync and says Hello with `address`.
    pub async fn open(creds: &AgentCreds, server: &Server, address: &str) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(msg(api::agent_message::Msg::Hello(api::Hello {
            applied_version: 0,
            address: address.into(),
            software: "test-agent".into(),
        })))
        .await
        .unwrap();
        let rx = creds
            .client(server)
            .sync(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    /// The next message, within `within`.
    pub async fn next(
        &mut self,
        within: Duration,
    ) -> Result<Option<api::controller_message::Msg>, tonic::Status> {
        let m = tokio::time::timeout(within, self.rx.message())
            .await
            .expect("no message from the controller in time")?;
        Ok(m.map(|m| m.msg.expect("empty controller message")))
    }

    /// The next config, acked as applied; revokes on the way are returned too.
    pub async fn next_config(
        &mut self,
        within: Duration,
    ) -> (api::AgentConfig, Vec<api::RevokeGrants>) {
        let deadline = Instant::now() + within;
        let mut revokes = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await.unwrap() {
                Some(api::controller_message::Msg::Config(c)) => {
                    self.ack(c.version).await;
                    return (c, revokes);
                }
                Some(api::controller_message::Msg::Revoke(r)) => revokes.push(r),
                None => panic!("stream ended while waiting for a config"),
            }
        }
    }

    /// Reads until a RevokeGrants matching `pred` arrives (acking configs).
    pub async fn revoke_where(
        &mut self,
        within: Duration,
        pred: impl Fn(&api::RevokeGrants) -> bool,
    ) -> api::RevokeGrants {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await.unwrap() {
                Some(api::controller_message::Msg::Revoke(r)) if pred(&r) => return r,
                Some(api::controller_message::Msg::Config(c)) => self.ack(c.version).await,
                Some(_) => {}
                None => panic!("stream ended while waiting for a revoke"),
            }
        }
    }

    pub async fn ack(&self, version: u64) {
        self.tx
            .send(msg(api::agent_message::Msg::Applied(api::Applied {
                version,
            })))
            .await
            .unwrap();
    }
}

/// Audit events of `kind` (prefix), polling until `pred` holds for one of
/// them or two seconds pass (handshake refusals are written asynchronously).
pub async fn audit_until(
    server: &Server,
    kind: &str,
    pred: impl Fn(&api::AuditEvent) -> bool,
) -> api::AuditEvent {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let page = server
            .admin()
            .query_audit(api::AuditQuery {
                kind: kind.into(),
                limit: 1000,
                ..api::AuditQuery::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(e) = page.events.into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind} audit event matched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn detail(e: &api::AuditEvent) -> serde_json::Value {
    serde_json::from_str(&e.detail_json).unwrap()
}

pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    let status = r.expect_err("call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// `AddUser` with no groups; returns the credentials (with the rotating secret).
pub async fn new_user(server: &Server, name: &str) -> api::UserCredentials {
    server
        .admin()
        .add_user(api::AddUserRequest {
            name: name.into(),
            groups: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The rotating secret of `creds`, as the derivations take it.
pub fn rotating_secret(creds: &api::UserCredentials) -> [u8; 32] {
    creds.rotating_secret.clone().try_into().unwrap()
}

impl SyncStream {
    /// Reads configs (acking them) until one with `material_changed`.
    pub async fn next_material(&mut self, within: Duration) -> api::AgentConfig {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (c, _) = self.next_config(left).await;
            if c.material_changed {
                return c;
            }
        }
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(m) = tokio::time::timeout(quiet, self.rx.message()).await {
            panic!("expected silence, got {m:?}");
        }
    }
}
