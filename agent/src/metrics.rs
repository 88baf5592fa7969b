//! The agent's telemetry (see `docs/OBSERVABILITY.md`): metrics, and one trace per
//! reported decision. Both are no-ops unless `knockgate_telemetry::init` found an
//! exporter to send them to.
//!
//! Metrics count every decision by its closed vocabulary (event kind, method, reason)
//! and policy, never by user or address. Traces are made only for decisions the
//! controller is told about, which the gateway already summarizes under a flood, so junk
//! never becomes a flood of spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use knockgate_agent_core::gateway::Notice;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};

use crate::capture::Counters;

/// Bucket bounds of knock-to-open latency, in seconds (the agent opens in about a
/// millisecond; the tail is what an operator looks for).
const OPEN_BOUNDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Values the engine keeps current for gauges read at export time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Grants open now.
    pub grants_open: AtomicU64,
}

/// Events spooled for the controller and not acknowledged yet, set by the spool.
pub static SPOOL_DEPTH: AtomicU64 = AtomicU64::new(0);

/// The controller config version applied last (0 without one), set by the sync task.
pub static CONFIG_VERSION: AtomicU64 = AtomicU64::new(0);

/// The engine's instruments.
pub struct Metrics {
    events: Counter<u64>,
    knock_to_open: Histogram<f64>,
    pub gauges: Arc<Gauges>,
}

impl Metrics {
    /// Instruments from the installed meter (make them after telemetry is set up).
    pub fn new() -> Self {
        let m = knockgate_telemetry::meter();
        Metrics {
            events: m
                .u64_counter("knockgate.events")
                .with_unit("{event}")
                .with_description(
                    "Decisions of the agent, by event kind, method, reason and policy",
                )
                .build(),
            knock_to_open: m
                .f64_histogram("knockgate.knock_to_open.duration")
                .with_unit("s")
                .with_description(
                    "From the capture of the knock or packet that asked to the firewall's grant",
                )
                .with_boundaries(OPEN_BOUNDS.to_vec())
                .build(),
            gauges: Arc::new(Gauges::default()),
        }
    }

    /// Counts `n`. Every refusal is a notice of its own (most of them not logged or
    /// reported under a flood), so a refusal summary counts once, as itself.
    pub fn event(&self, n: &Notice) {
        let e = &n.event;
        let mut attrs = vec![KeyValue::new("event", e.kind().as_str())];
        if let Some(m) = e.method() {
            attrs.push(KeyValue::new("method", m.as_str()));
        }
        if let Some(p) = e.subject().and_then(|s| s.policy.clone()) {
            attrs.push(KeyValue::new("policy", p));
        }
        if let Some(r) = e.reason() {
            attrs.push(KeyValue::new("reason", r.as_str()));
        }
        self.events.add(1, &attrs);
    }

    /// A grant the knock captured at `knocked_at` asked for is in the firewall.
    pub fn opened(&self, knocked_at: Instant) {
        self.knock_to_open
            .record(knocked_at.elapsed().as_secs_f64(), &[]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gauges and counters read when the exporter collects: grants open, the config version,
/// and the capture threads' packet and drop counts.
pub fn observe(gauges: &Arc<Gauges>, capture: &Arc<Counters>) {
    let m = knockgate_telemetry::meter();
    let g = Arc::clone(gauges);
    m.u64_observable_gauge("knockgate.grants.open")
        .with_unit("{grant}")
        .with_description("Grants open now")
        .with_callback(move |o| o.observe(g.grants_open.load(Ordering::Relaxed), &[]))
        .build();
    m.u64_observable_gauge("knockgate.config.version")
        .with_unit("{version}")
        .with_description("The controller config version applied")
        .with_callback(|o| o.observe(CONFIG_VERSION.load(Ordering::Relaxed), &[]))
        .build();
    m.u64_observable_gauge("knockgate.spool.depth")
        .with_unit("{event}")
        .with_description("Events waiting to be delivered to the controller")
        .with_callback(|o| o.observe(SPOOL_DEPTH.load(Ordering::Relaxed), &[]))
        .build();
    let c = Arc::clone(capture);
    m.u64_observable_counter("knockgate.capture.packets")
        .with_unit("{packet}")
        .with_description("Knock and SPA packets captured and handed to the engine")
        .with_callback(move |o| o.observe(c.knocks.load(Ordering::Relaxed), &[]))
        .build();
    let c = Arc::clone(capture);
    m.u64_observable_counter("knockgate.capture.dropped")
        .with_unit("{packet}")
        .with_description("Packets captured but dropped because the engine was behind")
        .with_callback(move |o| o.observe(c.dropped.load(Ordering::Relaxed), &[]))
        .build();
}

/// `at` on the wall clock.
fn wall(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or_else(SystemTime::now)
}

/// The trace of what one input led to: a root span `knock` from the capture of the
/// packet (or from when the input arrived), a child per reported decision and per
/// firewall write. Started lazily, at the first reported decision.
#[derive(Default)]
pub struct DecisionTrace {
    began: Option<Instant>,
    root: Option<opentelemetry::Context>,
}

impl DecisionTrace {
    /// A new input, captured at `at` (when it is a packet).
    pub fn begin(&mut self, at: Option<Instant>) {
        self.finish();
        self.began = at;
    }

    fn root(&mut self) -> &opentelemetry::Context {
        let began = self.began;
        self.root.get_or_insert_with(|| {
            let tracer = knockgate_telemetry::tracer();
            let mut b = tracer.span_builder("knock");
            if let Some(at) = began {
                b = b.with_start_time(wall(at));
            }
            opentelemetry::Context::new().with_span(b.start(&tracer))
        })
    }

    /// A reported decision: a child span named by its kind, with what it was about (never
    /// keys or payloads), also set on the root so the trace says how it ended.
    pub fn decision(&mut self, n: &Notice) {
        let e = &n.event;
        let mut attrs = vec![KeyValue::new("knockgate.event", e.kind().as_str())];
        if let Some(m) = e.method() {
            attrs.push(KeyValue::new("knockgate.method", m.as_str()));
        }
        if let Some(r) = e.reason() {
            attrs.push(KeyValue::new("knockgate.reason", r.as_str()));
        }
        if let Some(s) = e.subject() {
            if let Some(p) = &s.policy {
                attrs.push(KeyValue::new("knockgate.policy", p.clone()));
            }
            if let Some(u) = &s.user {
                attrs.push(KeyValue::new("knockgate.user", u.clone()));
            }
            if let Some(src) = s.src {
                attrs.push(KeyValue::new("client.address", src.to_string()));
            }
        }
        let root = self.root().clone();
        root.span().set_attributes(attrs.clone());
        let tracer = knockgate_telemetry::tracer();
        let mut child = tracer
            .span_builder(e.kind().as_str())
            .with_attributes(attrs)
            .start_with_context(&tracer, &root);
        child.end();
    }

    /// A firewall write that began at `started` and took until now.
    pub fn firewall_write(&mut self, started: Instant, ok: bool) {
        let root = self.root().clone();
        let tracer = knockgate_telemetry::tracer();
        let mut span = tracer
            .span_builder("firewall.open")
            .with_start_time(wall(started))
            .with_attributes([KeyValue::new("knockgate.ok", ok)])
            .start_with_context(&tracer, &root);
        span.end();
    }

    /// Ends the root span, if one was started.
    pub fn finish(&mut self) {
        if let Some(root) = self.root.take() {
            root.span().end();
        }
        self.began = None;
    }
}
