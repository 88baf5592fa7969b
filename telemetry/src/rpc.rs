//! A tower layer in front of a tonic server: every call becomes a span `rpc` (named
//! `service/method`, its parent the trace context the caller sent) and counts in the
//! histogram `rpc.server.call.duration` by service, method and gRPC status code.
//!
//! A streaming call (the agents' `Sync`) is measured until its response starts, not for
//! its whole life; its status is the one the response starts with.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::Extractor;
use tonic::codegen::Service;
use tonic::codegen::http;
use tower_layer::Layer;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Bucket bounds of RPC durations, in seconds.
const DURATION_BOUNDS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Adds [`RpcService`] in front of a server's services.
#[derive(Clone, Debug)]
pub struct RpcLayer {
    duration: Histogram<f64>,
}

impl RpcLayer {
    /// Make it after [`crate::init`], so the histogram is a real one when exporting.
    pub fn new() -> Self {
        let duration = crate::meter()
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls handled, until the response starts")
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build();
        RpcLayer { duration }
    }
}

impl Default for RpcLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// See [`RpcLayer`].
#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    duration: Histogram<f64>,
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// `(service, method)` of a gRPC path `/pkg.Service/Method`; names outside the API's
/// shape are one bucket, so a scanner cannot grow the label set.
fn split_path(path: &str) -> (String, String) {
    let well_formed = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((svc, m)) if well_formed(svc) && well_formed(m) && svc.starts_with("knockgate.") => {
            (svc.to_owned(), m.to_owned())
        }
        _ => ("other".to_owned(), "other".to_owned()),
    }
}

/// The gRPC status a response starts with: its `grpc-status` header (a trailers-only
/// error), else OK (a later status travels in trailers).
fn status_of<B>(resp: &http::Response<B>) -> i64 {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        let span = tracing::info_span!(
            target: "knockgate_telemetry",
            "rpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let duration = self.duration.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let result = fut.await;
                let code = result.as_ref().map_or(2, status_of);
                tracing::Span::current().record("rpc.grpc.status_code", code);
                duration.record(
                    started.elapsed().as_secs_f64(),
                    &[
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", service),
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", code),
                    ],
                );
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_api_share_one_label() {
        assert_eq!(
            split_path("/knockgate.v1.Admin/AddUser"),
            ("knockgate.v1.Admin".to_owned(), "AddUser".to_owned())
        );
        for junk in [
            "/",
            "",
            "/x/y",
            "/knockgate.v1.Admin/",
            "/knockgate.v1.Admin/a b",
            "/knockgate.v1/x/y",
        ] {
            assert_eq!(
                split_path(junk),
                ("other".to_owned(), "other".to_owned()),
                "{junk:?}"
            );
        }
    }
}
