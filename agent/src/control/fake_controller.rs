//! A stand-in controller for the agent's adapter tests: a real tonic server over real
//! TLS on 127.0.0.1 with the test PKI, whose sync streams the test drives by hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use knockgate_proto::api::agent_control_server::{AgentControl, AgentControlServer};
use knockgate_proto::api::enrollment_server::{Enrollment, EnrollmentServer};
use knockgate_proto::api::{
    AgentMessage, ClaimRequest, ClaimResponse, ControllerMessage, EnrollRequest, EnrollResponse,
    Event, Hello, ReportRequest, ReportResponse, agent_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::test_pki::TestPki;

/// The token the fake accepts.
pub const TOKEN: &str = "good-token";

/// One sync stream an agent opened.
pub struct Session {
    pub hello: Hello,
    pub to_agent: mpsc::UnboundedSender<ControllerMessage>,
    pub from_agent: mpsc::UnboundedReceiver<AgentMessage>,
}

/// What the fake saw, for the test to inspect.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<Event>,
    pub batch_sizes: Vec<usize>,
    /// Every claim, in order of arrival.
    pub claims: Vec<ClaimRequest>,
}

struct Fake {
    pki: Arc<TestPki>,
    sessions: mpsc::UnboundedSender<Session>,
    seen: Arc<Mutex<Seen>>,
    refuse_reports: Arc<AtomicBool>,
}

/// A running fake; stops on drop.
pub struct FakeController {
    pub addr: SocketAddr,
    pub sessions: mpsc::UnboundedReceiver<Session>,
    pub seen: Arc<Mutex<Seen>>,
    /// Answer reports and claims with `Unavailable`.
    pub refuse_reports: Arc<AtomicBool>,
    _stop: oneshot::Sender<()>,
}

impl FakeController {
    /// Serve on `addr` (port 0 for any) with `pki`'s server certificate.
    pub async fn start(pki: Arc<TestPki>, addr: SocketAddr) -> FakeController {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let refuse_reports = Arc::new(AtomicBool::new(false));
        let fake = Arc::new(Fake {
            pki: pki.clone(),
            sessions: sessions_tx,
            seen: seen.clone(),
            refuse_reports: refuse_reports.clone(),
        });
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_chain_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem))
            .client_auth_optional(true);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(tls)
            .expect("tls")
            .add_service(EnrollmentServer::from_arc(fake.clone()))
            .add_service(AgentControlServer::from_arc(fake));
        tokio::spawn(server.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        FakeController {
            addr,
            sessions,
            seen,
            refuse_reports,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next sync stream an agent opens.
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.sessions.recv())
            .await
            .expect("a sync stream within 10 s")
            .expect("server running")
    }
}

#[tonic::async_trait]
impl Enrollment for Fake {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let EnrollRequest { token, csr_pem } = request.into_inner();
        if token != TOKEN {
            return Err(Status::unauthenticated("unknown, used or expired token"));
        }
        Ok(Response::new(EnrollResponse {
            agent_name: "gw1".into(),
            cert_pem: self.pki.sign_agent_csr(&csr_pem, "gw1"),
            ca_pem: self.pki.ca_pem.clone(),
            renew_after_unix_ms: 0,
        }))
    }
}

#[tonic::async_trait]
impl AgentControl for Fake {
    type SyncStream = UnboundedReceiverStream<Result<ControllerMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("expected Hello first")),
        };
        let (to_agent, mut queued) = mpsc::unbounded_channel::<ControllerMessage>();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = queued.recv().await {
                if out_tx.send(Ok(m)).is_err() {
                    break;
                }
            }
        });
        let (from_tx, from_agent) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if from_tx.send(m).is_err() {
                    break;
                }
            }
        });
        let _ = self.sessions.send(Session {
            hello,
            to_agent,
            from_agent,
        });
        Ok(Response::new(UnboundedReceiverStream::new(out_rx)))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        if self.refuse_reports.load(Ordering::Relaxed) {
            return Err(Status::unavailable("not now"));
        }
        let events = request.into_inner().events;
        let mut seen = self.seen.lock().map_err(|_| Status::internal("poisoned"))?;
        seen.batch_sizes.push(events.len());
        for e in events {
            if !seen.events.iter().any(|s| s.seq == e.seq) {
                seen.events.push(e);
            }
        }
        let stored_through_seq = seen.events.iter().map(|e| e.seq).max().unwrap_or(0);
        Ok(Response::new(ReportResponse { stored_through_seq }))
    }

    /// The first claim of a (user, counter) wins, like the real controller's.
    async fn renew(
        &self,
        _request: Request<knockgate_proto::api::RenewRequest>,
    ) -> Result<Response<knockgate_proto::api::RenewResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in controller"))
    }

    async fn claim(
        &self,
        request: Request<ClaimRequest>,
    ) -> Result<Response<ClaimResponse>, Status> {
        if self.refuse_reports.load(Ordering::Relaxed) {
            return Err(Status::unavailable("not now"));
        }
        let c = request.into_inner();
        if c.user == "mallory" {
            return Err(Status::permission_denied("no policy admits mallory"));
        }
        let mut seen = self.seen.lock().map_err(|_| Status::internal("poisoned"))?;
        let used = seen
            .claims
            .iter()
            .any(|o| o.user == c.user && o.counter == c.counter);
        seen.claims.push(c);
        Ok(Response::new(ClaimResponse {
            granted: !used,
            reason: if used { "used".into() } else { String::new() },
        }))
    }
}
