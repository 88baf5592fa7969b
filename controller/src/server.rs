//! The gRPC server: shared state and [`serve`], which runs the three
//! services behind mutual TLS and the authorization layer on a listener it
//! is handed, until `shutdown` completes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use knockgate_proto::api::admin_server::AdminServer;
use knockgate_proto::api::agent_control_server::AgentControlServer;
use knockgate_proto::api::enrollment_server::EnrollmentServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::authz::{Authz, AuthzLayer};
use crate::datadir::Loaded;
use crate::fanout::{self, Hub};
use crate::pki::Ca;
use crate::service::{AdminService, AgentService, EnrollService};
use crate::store::{Store, StoreError};
use crate::tls::{self, TlsError};
use crate::trail::Throttle;

/// How long agent certificates are valid unless `--agent-cert-lifetime` says otherwise.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS configuration could not be built.
    #[error("failed to configure TLS")]
    Tls(#[source] TlsError),
    /// The store could not be read at startup.
    #[error("failed to read the store")]
    Store(#[source] StoreError),
    /// The server stopped with an error.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Everything the services share.
#[derive(Debug)]
pub struct Controller {
    /// The database.
    pub store: Store,
    /// The internal CA.
    pub ca: Ca,
    /// Live streams and the config version they follow.
    pub hub: Arc<Hub>,
    /// Aggregates refusals of unauthenticated peers (handshakes, enrolment tokens).
    pub refusals: Arc<Throttle>,
    /// How long the agent certificates it signs are valid.
    pub agent_cert_lifetime: Duration,
    /// What agents' configs are computed from, shared by the sync streams.
    pub snapshots: crate::snapshot::Snapshots,
    /// Agents' acknowledgements, written in batches.
    pub applied: crate::applied::AppliedLog,
    tls: Arc<ServerConfig>,
}

impl Controller {
    /// State for a controller with `store` and the data dir's certificates, signing agent
    /// certificates for [`DEFAULT_AGENT_CERT_LIFETIME`].
    pub async fn new(store: Store, certs: Loaded) -> Result<Arc<Self>, ServerError> {
        Self::with_agent_cert_lifetime(store, certs, DEFAULT_AGENT_CERT_LIFETIME).await
    }

    /// The same, signing agent certificates valid for `lifetime`.
    pub async fn with_agent_cert_lifetime(
        store: Store,
        certs: Loaded,
        lifetime: Duration,
    ) -> Result<Arc<Self>, ServerError> {
        let Loaded {
            ca,
            server_chain,
            server_key,
            initial_admin,
        } = certs;
        // The first run pins the data dir's admin identity; later admins are added with
        // `knockadm admin add`.
        if let Some((name, fingerprint)) = initial_admin
            && store
                .list_admins()
                .await
                .map_err(ServerError::Store)?
                .is_empty()
        {
            match store
                .add_admin(&name, &fingerprint, crate::store::Timestamp::now())
                .await
            {
                Ok(()) => tracing::info!(admin = %name, "pinned the initial admin identity"),
                // Replicas starting together on a fresh database race to pin the
                // same identity: the loser accepts it only if it is the same one.
                Err(StoreError::AlreadyExists { .. })
                    if store
                        .list_admins()
                        .await
                        .map_err(ServerError::Store)?
                        .iter()
                        .any(|a| a.name == name && a.cert_fingerprint == fingerprint) => {}
                Err(e) => return Err(ServerError::Store(e)),
            }
        }
        let tls = tls::server_config(&ca, server_chain, server_key).map_err(ServerError::Tls)?;
        let hub = Hub::new(store.current_version().await.map_err(ServerError::Store)?);
        let applied = crate::applied::AppliedLog::start(store.clone());
        Ok(Arc::new(Self {
            store,
            ca,
            hub,
            refusals: Arc::default(),
            agent_cert_lifetime: lifetime,
            snapshots: crate::snapshot::Snapshots::default(),
            applied,
            tls,
        }))
    }
}

/// Serves the API on `listener` until `shutdown` completes, then ends every
/// agent stream and waits for connections to close.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Controller>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listen_task = tokio::spawn(fanout::listen_postgres(
        state.store.clone(),
        Arc::clone(&state.hub),
    ));
    let lease_task = tokio::spawn(fanout::renew_leases(
        state.store.clone(),
        Arc::clone(&state.hub),
    ));
    let incoming = tls::incoming(
        listener,
        Arc::clone(&state.tls),
        state.store.clone(),
        Arc::clone(&state.refusals),
    );
    let hub = Arc::clone(&state.hub);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        hub.shutdown();
    };
    crate::metrics::observe(&state.hub);
    let result = Server::builder()
        // Notices a vanished agent within half a minute, so its stream ends.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(knockgate_telemetry::rpc::RpcLayer::new())
        .layer(AuthzLayer::new(Authz::new(state.store.clone())))
        .add_service(EnrollmentServer::new(EnrollService::new(Arc::clone(
            &state,
        ))))
        .add_service(AgentControlServer::new(AgentService::new(Arc::clone(
            &state,
        ))))
        .add_service(AdminServer::new(AdminService::new(Arc::clone(&state))))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(ServerError::Serve);
    state.hub.shutdown();
    listen_task.abort();
    lease_task.abort();
    result
}
