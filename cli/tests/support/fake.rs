//! A stand-in controller for knockadm's tests: a tonic `Admin` service with
//! canned answers, served over real mutual TLS on 127.0.0.1:0, and an
//! identity file it accepts.

#![allow(dead_code)] // each test crate uses part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use knockgate_proto::api::admin_server::{Admin, AdminServer};
use knockgate_proto::api::*;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::pki::{TestCa, identity_pem};

pub const SPA_KEY: [u8; 32] = [7; 32];
pub const FWKNOP_KEY: [u8; 32] = [1; 32];
pub const FWKNOP_HMAC_KEY: [u8; 64] = [2; 64];

type Reply<T> = Result<Response<T>, Status>;

/// What the stand-in controller holds.
#[derive(Clone, Default)]
pub struct Fake {
    pub events: Arc<Mutex<Vec<AuditEvent>>>,
    pub audit_queries: Arc<Mutex<Vec<AuditQuery>>>,
    pub added_agents: Arc<Mutex<Vec<AddAgentRequest>>>,
    pub status_queries: Arc<Mutex<Vec<FleetStatusRequest>>>,
    pub gateway_address: String,
}

fn admin_only<T>(request: &Request<T>) -> Result<(), Status> {
    match request.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated("no client certificate")),
    }
}

pub fn event(id: i64, kind: &str) -> AuditEvent {
    AuditEvent {
        id,
        at_unix_ms: 1_748_779_200_000 + id * 1000,
        agent: "gw1".into(),
        kind: kind.into(),
        user: "alice".into(),
        src: "198.51.100.4".into(),
        detail_json: format!(r#"{{"n":{id}}}"#),
    }
}

fn user_info(name: &str) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: vec!["ops".into()],
        disabled: false,
        key_version: 1,
        created_at_unix_ms: 1_748_779_200_000,
        spa_key_id: "00112233aabbccdd".into(),
    }
}

impl Fake {
    fn credentials(&self, req: AddUserRequest) -> Reply<UserCredentials> {
        if req.name == "taken" {
            return Err(Status::already_exists("duplicate key value"));
        }
        Ok(Response::new(UserCredentials {
            user: Some(UserInfo {
                groups: req.groups,
                ..user_info(&req.name)
            }),
            spa_key: SPA_KEY.to_vec(),
            fwknop_key: FWKNOP_KEY.to_vec(),
            fwknop_hmac_key: FWKNOP_HMAC_KEY.to_vec(),
            fwknop_hmac: "sha256".into(),
            rotating_secret: vec![3; 32],
            gateways: vec![GatewayAddress {
                name: "gw1".into(),
                address: self.gateway_address.clone(),
                rotating: vec![GatewayRotation {
                    policy: "ssh".into(),
                    length: 4,
                    protos: "both".into(),
                    port_lo: 20000,
                    port_hi: 60000,
                    window_secs: 30,
                    exclude: vec![22],
                }],
                policies: vec![GatewayPolicy {
                    name: "ssh".into(),
                    open: vec![Access { proto: 1, port: 22 }],
                    methods: ["spa", "fwknop", "rotating", "otk"]
                        .map(String::from)
                        .to_vec(),
                }],
            }],
        }))
    }

    /// The user's gateways now: gw1 as `credentials` lists it, with a second
    /// policy (web) added since, and a new gateway gw3.
    fn gateways(&self, name: &str) -> Reply<UserGatewaysResponse> {
        match name {
            "alice" => {}
            "carol" => return Err(Status::invalid_argument("user carol is disabled")),
            _ => return Err(Status::not_found(format!("user {name} not found"))),
        }
        let mut gw1 = self
            .credentials(AddUserRequest {
                name: name.into(),
                groups: vec![],
            })?
            .into_inner()
            .gateways
            .remove(0);
        let web = GatewayPolicy {
            name: "web".into(),
            open: vec![Access {
                proto: 1,
                port: 443,
            }],
            methods: vec!["spa".into(), "fwknop".into()],
        };
        gw1.policies.push(web.clone());
        let gw3 = GatewayAddress {
            name: "gw3".into(),
            address: "203.0.113.9".into(),
            rotating: vec![],
            policies: vec![web],
        };
        Ok(Response::new(UserGatewaysResponse {
            user: Some(user_info(name)),
            gateways: vec![gw1, gw3],
        }))
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn add_agent(&self, r: Request<AddAgentRequest>) -> Reply<AddAgentResponse> {
        admin_only(&r)?;
        let req = r.into_inner();
        self.added_agents.lock().expect("lock").push(req.clone());
        Ok(Response::new(AddAgentResponse {
            token: format!("tok-{}", req.name),
            expires_at_unix_ms: 1_748_779_200_000 + i64::from(req.token_ttl_secs) * 1000,
            ca_sha256: "ab".repeat(32),
        }))
    }
    async fn list_agents(&self, r: Request<ListAgentsRequest>) -> Reply<ListAgentsResponse> {
        admin_only(&r)?;
        let gw = |name: &str, connected| AgentInfo {
            name: name.into(),
            labels: [("role".to_owned(), "edge".to_owned())]
                .into_iter()
                .collect(),
            address: "203.0.113.7".into(),
            enrolled: true,
            connected,
            last_seen_unix_ms: if connected { 1_748_779_200_000 } else { 0 },
            applied_version: 3,
            current_version: 3,
            active_grants: 1,
            revoked: false,
        };
        Ok(Response::new(ListAgentsResponse {
            agents: vec![gw("gw2", false), gw("gw1", true)],
        }))
    }
    async fn revoke_agent(&self, r: Request<RevokeAgentRequest>) -> Reply<RevokeAgentResponse> {
        admin_only(&r)?;
        match r.into_inner().name.as_str() {
            "root" => Err(Status::permission_denied("admin certificates only")),
            "gw1" => Ok(Response::new(RevokeAgentResponse {})),
            _ => Err(Status::not_found("agent not found")),
        }
    }
    async fn add_user(&self, r: Request<AddUserRequest>) -> Reply<UserCredentials> {
        admin_only(&r)?;
        self.credentials(r.into_inner())
    }
    async fn list_users(&self, r: Request<ListUsersRequest>) -> Reply<ListUsersResponse> {
        admin_only(&r)?;
        Ok(Response::new(ListUsersResponse {
            users: vec![user_info("alice")],
        }))
    }
    async fn get_user(&self, r: Request<GetUserRequest>) -> Reply<UserInfo> {
        admin_only(&r)?;
        match r.into_inner().name.as_str() {
            "alice" => Ok(Response::new(user_info("alice"))),
            _ => Err(Status::not_found("user not found")),
        }
    }
    async fn set_user_disabled(&self, r: Request<SetUserDisabledRequest>) -> Reply<UserInfo> {
        admin_only(&r)?;
        let req = r.into_inner();
        Ok(Response::new(UserInfo {
            disabled: req.disabled,
            ..user_info(&req.name)
        }))
    }
    async fn remove_user(&self, r: Request<RemoveUserRequest>) -> Reply<RemoveUserResponse> {
        admin_only(&r)?;
        Ok(Response::new(RemoveUserResponse {}))
    }
    async fn rotate_user_keys(&self, r: Request<RotateUserKeysRequest>) -> Reply<UserCredentials> {
        admin_only(&r)?;
        self.credentials(AddUserRequest {
            name: r.into_inner().name,
            groups: vec![],
        })
    }
    async fn user_gateways(&self, r: Request<GetUserRequest>) -> Reply<UserGatewaysResponse> {
        admin_only(&r)?;
        self.gateways(&r.into_inner().name)
    }
    async fn add_policy(&self, r: Request<PolicySpec>) -> Reply<PolicySpec> {
        admin_only(&r)?;
        let spec = r.into_inner();
        if spec.name == "bad" {
            return Err(Status::invalid_argument("policy name 'bad' is reserved"));
        }
        Ok(Response::new(spec))
    }
    async fn list_policies(&self, r: Request<ListPoliciesRequest>) -> Reply<ListPoliciesResponse> {
        admin_only(&r)?;
        Ok(Response::new(ListPoliciesResponse { policies: vec![] }))
    }
    async fn get_policy(&self, r: Request<GetPolicyRequest>) -> Reply<PolicySpec> {
        admin_only(&r)?;
        Err(Status::not_found("no such policy"))
    }
    async fn remove_policy(&self, r: Request<RemovePolicyRequest>) -> Reply<RemovePolicyResponse> {
        admin_only(&r)?;
        Ok(Response::new(RemovePolicyResponse {}))
    }
    async fn list_grants(&self, r: Request<ListGrantsRequest>) -> Reply<ListGrantsResponse> {
        admin_only(&r)?;
        Ok(Response::new(ListGrantsResponse { grants: vec![] }))
    }
    async fn revoke_grants(&self, r: Request<RevokeGrantsRequest>) -> Reply<RevokeGrantsResponse> {
        admin_only(&r)?;
        let req = r.into_inner();
        match (req.id, req.user.as_str()) {
            (99, _) => Err(Status::not_found("grant not found")),
            (0, "alice") => Ok(Response::new(RevokeGrantsResponse { revoked: 3 })),
            _ => Ok(Response::new(RevokeGrantsResponse { revoked: 1 })),
        }
    }
    async fn query_audit(&self, r: Request<AuditQuery>) -> Reply<AuditPage> {
        admin_only(&r)?;
        let q = r.into_inner();
        self.audit_queries.lock().expect("lock").push(q.clone());
        let limit = if q.limit == 0 { 100 } else { q.limit as usize };
        let mut events: Vec<AuditEvent> = self
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e.id > q.after_id && e.kind.starts_with(&q.kind))
            .take(limit)
            .cloned()
            .collect();
        // Newest first on purpose: knockadm must print oldest first anyway.
        events.reverse();
        Ok(Response::new(AuditPage { events }))
    }
    async fn fleet_status(&self, r: Request<FleetStatusRequest>) -> Reply<FleetStatusResponse> {
        admin_only(&r)?;
        self.status_queries
            .lock()
            .expect("lock")
            .push(r.into_inner());
        let refusal = |kind: &str, reason: &str, count| RefusalCount {
            kind: kind.into(),
            reason: reason.into(),
            count,
        };
        Ok(Response::new(FleetStatusResponse {
            agents_connected: 1,
            agents_stale: 2,
            agents_never_connected: 1,
            agents_not_enrolled: 0,
            agents_revoked: 1,
            current_version: 7,
            agents_behind: 3,
            open_grants: 1,
            refusals: vec![
                refusal("spa.rejected", "bad_tag", 4),
                refusal("auth.refused", "agent gw3 is revoked", 1),
            ],
        }))
    }
    // The admin-identity commands are tested against the real controller
    // (controller/tests/cli.rs); this stand-in does not hold admins.
    async fn add_admin(&self, r: Request<AddAdminRequest>) -> Reply<AddAdminResponse> {
        admin_only(&r)?;
        Err(Status::unimplemented("not in the stand-in controller"))
    }
    async fn list_admins(&self, r: Request<ListAdminsRequest>) -> Reply<ListAdminsResponse> {
        admin_only(&r)?;
        Err(Status::unimplemented("not in the stand-in controller"))
    }
    async fn revoke_admin(&self, r: Request<RevokeAdminRequest>) -> Reply<RevokeAdminResponse> {
        admin_only(&r)?;
        Err(Status::unimplemented("not in the stand-in controller"))
    }
}

/// A running stand-in controller and an identity file it accepts.
pub struct Controller {
    pub url: String,
    pub identity: PathBuf,
    pub ca: TestCa,
    pub fake: Fake,
    pub dir: tempfile::TempDir,
}

impl Controller {
    pub fn start(gateway_address: &str) -> Controller {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new("knockgate test ca");
        let server = ca.server();
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = dir.path().join("admin.pem");
        std::fs::write(&identity, identity_pem(&ca.admin("root"), &ca)).expect("identity");
        let fake = Fake {
            events: Arc::new(Mutex::new(vec![
                event(1, "spa.accepted"),
                event(2, "spa.rejected"),
                event(3, "grant.closed"),
            ])),
            gateway_address: gateway_address.to_owned(),
            ..Fake::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
            .client_ca_root(Certificate::from_pem(&ca.cert_pem));
        let service = AdminServer::new(fake.clone());
        // The server lives on its own thread for the rest of the test process.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                Server::builder()
                    .tls_config(tls)
                    .expect("tls config")
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .expect("serve");
            });
        });
        Controller {
            url: format!("https://{addr}"),
            identity,
            ca,
            fake,
            dir,
        }
    }

    pub fn command(&self, identity: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_knockadm"));
        cmd.arg("--controller")
            .arg(&self.url)
            .arg("--identity")
            .arg(identity)
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(&self.identity, args)
            .output()
            .expect("run knockadm")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs and expects `code` with one error line containing `needle`.
    pub fn fails(&self, identity: &Path, args: &[&str], code: i32, needle: &str) {
        let out = self.command(identity, args).output().expect("run knockadm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("knockadm: error: ") && stderr.contains(needle),
            "{args:?}: {stderr} lacks {needle}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
