//! Mutual TLS: the rustls server configuration (ring, the internal CA as the
//! only client trust anchor, client certificates optional so enrolment can
//! work) and the accept loop that hands finished handshakes to tonic. A
//! failed handshake is logged and written to the audit trail.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::pki::Ca;
use crate::store::Store;
use crate::trail::{AUTH_REFUSED, Entry};

/// A handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 256;

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificate is not usable as a trust anchor.
    #[error("the CA certificate cannot be used as a trust anchor")]
    Anchor(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("failed to build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The server certificate or key is unusable.
    #[error("the server certificate or key is unusable")]
    ServerCert(#[source] rustls::Error),
}

/// The server side of mutual TLS: presents `chain`/`key`, verifies any client
/// certificate against `ca` (and only `ca`), lets clients without one in,
/// speaks HTTP/2 only. Uses the ring provider whatever the process default is.
pub fn server_config(
    ca: &Ca,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).map_err(TlsError::Anchor)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(TlsError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ServerCert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::ServerCert)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The stream of established TLS connections on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    store: Store,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), store, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    store: Store,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&handshakes).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let (acceptor, store, tx) = (acceptor.clone(), store.clone(), tx.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match result {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => refused(&store, peer, &e).await,
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Records a failed handshake. Only TLS-level failures (a bad or foreign
/// certificate, a protocol error) reach the trail; a peer that connects and
/// hangs up without a word (a port probe) is only logged at DEBUG.
async fn refused(store: &Store, peer: SocketAddr, e: &io::Error) {
    if e.kind() != io::ErrorKind::InvalidData {
        tracing::debug!(%peer, error = %e, "TLS connection ended during the handshake");
        return;
    }
    tracing::info!(%peer, reason = %e, "TLS handshake refused");
    Entry::new(
        AUTH_REFUSED,
        json!({ "identity": "unverified", "stage": "tls handshake", "reason": e.to_string() }),
    )
    .peer(Some(peer))
    .write(store)
    .await;
}
