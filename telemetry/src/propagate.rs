//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata, so that work which
//! crosses from an agent or knockadm to the controller is one trace. Without an
//! exporting tracer the propagator is the SDK's no-op: nothing is written or read.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct Extract<'a>(&'a MetadataMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|k| match k {
                KeyRef::Ascii(k) => k.as_str(),
                KeyRef::Binary(k) => k.as_str(),
            })
            .collect()
    }
}

/// Writes `cx` into `metadata`.
pub fn inject_context(cx: &Context, metadata: &mut MetadataMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut Inject(metadata));
    });
}

/// `msg` as a request carrying the current span's trace context.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    inject_context(&tracing::Span::current().context(), req.metadata_mut());
    req
}

/// A tonic interceptor that sends the current span's trace context with every call.
pub type Injecting = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// The [`Injecting`] interceptor: `Client::with_interceptor(channel, INJECT)`.
pub const INJECT: Injecting = |mut req| {
    inject_context(&tracing::Span::current().context(), req.metadata_mut());
    Ok(req)
};

/// `cx` as a string map (a carrier inside a message, where there is no metadata).
pub fn to_map(cx: &Context) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut map));
    map
}

/// The current span's trace context as a string map.
pub fn current_to_map() -> std::collections::HashMap<String, String> {
    to_map(&tracing::Span::current().context())
}

/// Makes `span` (new, not entered yet) a child of `parent`; nothing without telemetry.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
}

/// The trace context carried in `map` (empty when none).
pub fn from_map(map: &std::collections::HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(map))
}

/// The trace context a caller sent in `metadata` (empty when none).
pub fn extract(metadata: &MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(metadata)))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_context_survives_the_trip_through_metadata() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let sent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut md = MetadataMap::new();
        inject_context(
            &Context::new().with_remote_span_context(sent.clone()),
            &mut md,
        );
        assert_eq!(
            md.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let got = extract(&md);
        let got = got.span().span_context().clone();
        assert_eq!(
            (got.trace_id(), got.span_id(), got.is_sampled()),
            (sent.trace_id(), sent.span_id(), true)
        );
        assert!(
            !extract(&MetadataMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
