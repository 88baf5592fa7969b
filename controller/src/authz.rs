//! Authorization by certificate identity, decided in one place: a tower layer
//! in front of every gRPC service. It reads the verified client certificate
//! from the TLS connection, decides by the called service, and either
//! refuses (a gRPC status, an `auth.refused` audit event) or hands the
//! handler a [`Principal`] in the request extensions.
//!
//! | service        | who may call                                                    |
//! |----------------|-----------------------------------------------------------------|
//! | `Enrollment`   | anyone (the one-time token is the credential)                   |
//! | `AgentControl` | an agent certificate whose agent exists, is not revoked, and    |
//! |                | is the very certificate issued at enrolment (fingerprint pinned) |
//! | `Admin`        | an admin certificate                                            |

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use serde_json::json;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;

use crate::error::ServiceError;
use crate::name::{AdminName, AgentName};
use crate::pki::{
    ADMIN_URI_PREFIX, AGENT_URI_PREFIX, Identity, cert_fingerprint, identity_from_cert_der,
};
use crate::store::{Store, StoreError};
use crate::trail::{AUTH_REFUSED, Entry};

/// Who is calling, as established by [`AuthzLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No client certificate (enrolment only).
    Anonymous,
    /// An enrolled, unrevoked agent holding its pinned certificate.
    Agent {
        /// The agent.
        name: AgentName,
        /// Fingerprint of the certificate it presented.
        fingerprint: String,
    },
    /// An administrator.
    Admin(AdminName),
}

impl Principal {
    /// The principal of an authorized request; absent only if a service was
    /// mounted without the layer, which is a bug.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Self, ServiceError> {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .ok_or(ServiceError::Internal(
                "request reached a service without authorization",
            ))
    }
}

/// The services of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Enrollment,
    AgentControl,
    Admin,
}

fn api_of(service: &str) -> Option<Api> {
    match service {
        "knockgate.v1.Enrollment" => Some(Api::Enrollment),
        "knockgate.v1.AgentControl" => Some(Api::AgentControl),
        "knockgate.v1.Admin" => Some(Api::Admin),
        _ => None,
    }
}

/// A refusal: what the caller gets and what the trail records.
struct Refusal {
    status: Status,
    identity: String,
    agent: Option<AgentName>,
}

/// The decision, independent of tower.
#[derive(Clone, Debug)]
pub struct Authz {
    store: Store,
}

impl Authz {
    /// Decides with the agents in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn decide(
        &self,
        api: Api,
        leaf: Option<&CertificateDer<'_>>,
    ) -> Result<Principal, Refusal> {
        let identity = leaf.map(|der| identity_from_cert_der(der));
        let described = match &identity {
            None => "anonymous".to_owned(),
            Some(Some(Identity::Agent(a))) => format!("{AGENT_URI_PREFIX}{a}"),
            Some(Some(Identity::Admin(a))) => format!("{ADMIN_URI_PREFIX}{a}"),
            Some(None) => "certificate without a knockgate identity".to_owned(),
        };
        let refuse = |status: Status, agent: Option<&AgentName>| Refusal {
            status,
            identity: described.clone(),
            agent: agent.cloned(),
        };
        match (api, identity, leaf) {
            (Api::Enrollment | Api::Admin, Some(Some(Identity::Admin(a))), Some(der)) => {
                let pinned = self.store.get_admin(&a).await.map(|r| Pinned {
                    revoked: r.revoked_at.is_some(),
                    fingerprint: Some(r.cert_fingerprint),
                });
                match check_pin("admin", a.as_str(), pinned, &cert_fingerprint(der)) {
                    Ok(()) => Ok(Principal::Admin(a)),
                    Err(status) => Err(refuse(status, None)),
                }
            }
            (Api::Enrollment, _, _) => Ok(Principal::Anonymous),
            (_, None, _) | (_, _, None) => Err(refuse(
                Status::unauthenticated("a client certificate is required"),
                None,
            )),
            (_, Some(None), _) => Err(refuse(
                Status::permission_denied("the certificate carries no knockgate identity"),
                None,
            )),
            (Api::Admin, Some(Some(Identity::Agent(a))), _) => Err(refuse(
                Status::permission_denied("agent certificates may not call the admin service"),
                Some(&a),
            )),
            (Api::AgentControl, Some(Some(Identity::Admin(_))), _) => Err(refuse(
                Status::permission_denied("admin certificates may not call the agent service"),
                None,
            )),
            (Api::AgentControl, Some(Some(Identity::Agent(name))), Some(der)) => {
                let fingerprint = cert_fingerprint(der);
                let pinned = self.store.get_agent(&name).await.map(|a| Pinned {
                    revoked: a.revoked_at.is_some(),
                    fingerprint: a.cert_fingerprint,
                });
                match check_pin("agent", name.as_str(), pinned, &fingerprint) {
                    Ok(()) => Ok(Principal::Agent { name, fingerprint }),
                    Err(status) => Err(refuse(status, Some(&name))),
                }
            }
        }
    }

    async fn check(&self, call: Call) -> Result<Principal, Status> {
        let Call {
            api,
            service,
            method,
            peer,
            certs,
        } = call;
        let leaf = certs.as_deref().and_then(|c| c.first());
        match self.decide(api, leaf).await {
            Ok(p) => Ok(p),
            Err(r) if r.status.code() == tonic::Code::Internal => Err(r.status),
            Err(r) => {
                tracing::info!(identity = %r.identity, %service, %method, peer = ?peer, reason = r.status.message(), "call refused");
                Entry::new(
                    AUTH_REFUSED,
                    json!({
                        "identity": r.identity,
                        "service": service,
                        "method": method,
                        "reason": r.status.message(),
                    }),
                )
                .agent(r.agent.as_ref())
                .peer(peer)
                .write(&self.store)
                .await;
                Err(r.status)
            }
        }
    }
}

/// What the store pins for an agent or an admin.
struct Pinned {
    revoked: bool,
    fingerprint: Option<String>,
}

/// The one pin check agents and admins share: the identity must be known, not revoked,
/// and presenting the very certificate issued to it.
fn check_pin(
    kind: &str,
    name: &str,
    pinned: Result<Pinned, StoreError>,
    presented: &str,
) -> Result<(), Status> {
    let denied = |why: String| Err(Status::permission_denied(why));
    match pinned {
        Ok(p) if p.revoked => denied(format!("{kind} {name} is revoked")),
        Ok(p) if p.fingerprint.as_deref() != Some(presented) => denied(format!(
            "this is not the certificate issued to {kind} {name}"
        )),
        Ok(_) => Ok(()),
        Err(StoreError::NotFound { .. }) => denied(format!("{kind} {name} is not known")),
        Err(e) => Err(Status::from(ServiceError::from(e))),
    }
}

/// What the decision needs from an HTTP request, taken out before any await
/// (the request body need not be `Sync`).
struct Call {
    api: Api,
    service: String,
    method: String,
    peer: Option<SocketAddr>,
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Call {
    fn of<B>(req: &http::Request<B>) -> Result<Self, Status> {
        let path = req.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let Some(api) = api_of(service) else {
            return Err(Status::unimplemented(format!("unknown service {service}")));
        };
        let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        Ok(Self {
            api,
            service: service.to_owned(),
            method: method.to_owned(),
            peer: info.and_then(|i| i.get_ref().remote_addr()),
            certs: info.and_then(TlsConnectInfo::peer_certs),
        })
    }
}

/// The tower layer applying [`Authz`] to every call.
#[derive(Clone, Debug)]
pub struct AuthzLayer(Arc<Authz>);

impl AuthzLayer {
    /// A layer deciding with `authz`.
    pub fn new(authz: Authz) -> Self {
        Self(Arc::new(authz))
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthzService {
            inner,
            authz: Arc::clone(&self.0),
        }
    }
}

/// [`AuthzLayer`]'s service.
#[derive(Clone, Debug)]
pub struct AuthzService<S> {
    inner: S,
    authz: Arc<Authz>,
}

impl<S, B, R> Service<http::Request<B>> for AuthzService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is not ready; the original (polled ready) serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authz = Arc::clone(&self.authz);
        let call = Call::of(&req);
        Box::pin(async move {
            let decided = match call {
                Ok(call) => authz.check(call).await,
                Err(status) => Err(status),
            };
            match decided {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
