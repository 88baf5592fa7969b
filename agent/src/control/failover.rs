//! The controller as one gRPC transport over its replicas (`[controller] url = [...]`):
//! every call goes to the current replica; a call that cannot reach it (connect refused,
//! TLS failure, timeout: a transport error, not a gRPC status) moves the current replica
//! on to the next, so the caller's retry, after its backoff, reaches another one. The
//! replicas share one database, so any of them serves sync, reports, claims and renewal.
//! With one URL this is that URL's channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::Channel;

/// The replicas, in the order the config lists them, and which one calls go to.
#[derive(Clone)]
pub struct ControllerChannel {
    inner: Arc<Inner>,
}

struct Inner {
    replicas: Vec<(String, Channel)>,
    current: AtomicUsize,
}

impl ControllerChannel {
    /// Calls go to the first replica until it cannot be reached. `None` for no replica.
    pub fn new(replicas: Vec<(String, Channel)>) -> Option<ControllerChannel> {
        (!replicas.is_empty()).then(|| ControllerChannel {
            inner: Arc::new(Inner {
                replicas,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// The URL of the replica calls go to now (for log lines).
    pub fn url(&self) -> &str {
        let at = self.inner.current.load(Ordering::Acquire);
        &self.inner.replicas[at % self.inner.replicas.len()].0
    }
}

impl std::fmt::Debug for ControllerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self
            .inner
            .replicas
            .iter()
            .map(|(u, _)| u.as_str())
            .collect();
        f.debug_struct("ControllerChannel")
            .field("replicas", &urls)
            .field("current", &self.url())
            .finish()
    }
}

impl Inner {
    /// The replica at `from` failed: move on, unless another call already did.
    fn move_on(&self, from: usize) {
        let next = (from + 1) % self.replicas.len();
        if next != from
            && self
                .current
                .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(failed = %self.replicas[from].0, next = %self.replicas[next].0,
                "controller replica unreachable; moving to the next");
        }
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

impl Service<http::Request<Body>> for ControllerChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    /// Always ready: each call waits for its replica's channel itself.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let at = self.inner.current.load(Ordering::Acquire) % self.inner.replicas.len();
        let mut channel = self.inner.replicas[at].1.clone();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                inner.move_on(at);
            }
            result
        })
    }
}
