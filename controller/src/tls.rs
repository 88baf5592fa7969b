//! Mutual TLS: the rustls server configuration (ring, the internal CA as the
//! only client trust anchor, client certificates optional so enrolment can
//! work) and the accept loop that hands finished handshakes to tonic. A
//! failed handshake is logged and written to the audit trail.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::pki::Ca;
use crate::store::Store;
use crate::trail::{AUTH_REFUSED, Entry, Throttle};

/// A handshake must finish within this: a peer that connects and says nothing holds a
/// slot no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once; a connection beyond is closed at once, so the accept
/// loop never waits for a slot and the backlog never fills with idle peers.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one address: one source cannot take every slot.
const MAX_HANDSHAKES_PER_SOURCE: usize = 16;

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
    throttle: Arc<Throttle>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        store,
        throttle,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    store: Store,
    throttle: Arc<Throttle>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    let slots = Slots::default();
    loop {
        // Accept first, always: whatever the peers already connected are doing, a new
        // one is looked at at once.
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
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(%peer, "too many handshakes in progress; connection closed");
            continue;
        };
        // gRPC writes small frames one after another (headers, data, trailers): without
        // TCP_NODELAY, Nagle holds each behind the peer's delayed ACK (up to 40 ms a call).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let (acceptor, store, tx) = (acceptor.clone(), store.clone(), tx.clone());
        let throttle = Arc::clone(&throttle);
        tokio::spawn(async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match result {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => refused(&store, &throttle, peer, &e).await,
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Handshakes in progress, in all and per source address.
#[derive(Debug, Default, Clone)]
struct Slots(Arc<Mutex<SlotCounts>>);

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One handshake in progress; its slot is free again when this is dropped.
struct Slot {
    slots: Slots,
    source: IpAddr,
}

impl Slots {
    /// A slot for a handshake from `source`, if one is free for it.
    fn take(&self, source: IpAddr) -> Option<Slot> {
        let mut c = self.0.lock().ok()?;
        let mine = c.by_source.get(&source).copied().unwrap_or(0);
        if c.total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        c.total += 1;
        c.by_source.insert(source, mine + 1);
        Some(Slot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut c) = self.slots.0.lock() else {
            return;
        };
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// Records a failed handshake. Only TLS-level failures (a bad or foreign
/// certificate, a protocol error) reach the trail; a peer that connects and
/// hangs up without a word (a port probe) is only logged at DEBUG.
/// The same refusal from the same address is written once per [`Throttle`] window,
/// with how many were left out since.
async fn refused(store: &Store, throttle: &Throttle, peer: SocketAddr, e: &io::Error) {
    if e.kind() != io::ErrorKind::InvalidData {
        tracing::debug!(%peer, error = %e, "TLS connection ended during the handshake");
        return;
    }
    let reason = e.to_string();
    let Some(suppressed) = throttle.admit(AUTH_REFUSED, peer.ip(), &reason) else {
        tracing::debug!(%peer, %reason, "TLS handshake refused (aggregated)");
        return;
    };
    tracing::info!(%peer, %reason, suppressed, "TLS handshake refused");
    Entry::new(
        AUTH_REFUSED,
        json!({ "identity": "unverified", "stage": "tls handshake", "reason": reason,
                "suppressed": suppressed }),
    )
    .peer(Some(peer))
    .write(store)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot_and_slots_come_back() {
        let slots = Slots::default();
        let a: IpAddr = [10, 240, 0, 9].into();
        let b: IpAddr = [10, 240, 0, 10].into();
        let held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .map(|_| slots.take(a).expect("slot"))
            .collect();
        assert!(slots.take(a).is_none(), "per-source cap");
        assert!(slots.take(b).is_some(), "another source still gets in");
        drop(held);
        assert!(slots.take(a).is_some(), "slots are returned on drop");
        let c = slots.0.lock().expect("lock");
        assert_eq!(c.total, 0);
        assert!(c.by_source.is_empty());
    }
}
