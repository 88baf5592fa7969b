//! Logs, traces and metrics of every knockgate binary, set up in one place.
//!
//! Log lines go to stderr as they always did (text or JSON, level from the flag or
//! `RUST_LOG`). When the standard OpenTelemetry variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the per-signal `…_TRACES_ENDPOINT` /
//! `…_METRICS_ENDPOINT`), the same `tracing` spans become OTLP traces and the
//! instruments made with [`meter`] become OTLP metrics, sent over gRPC. Unset, no
//! exporter exists, no connection is tried, and every instrument is a no-op.
//!
//! The exporters run on a thread of their own with its own small runtime, so they work
//! the same under the agent's engine thread, the controller's runtime and knockadm,
//! and [`Telemetry::shutdown`] can flush from anywhere without waiting on the caller's
//! runtime. See `docs/OBSERVABILITY.md`.

#![forbid(unsafe_code)]

mod env;
pub mod propagate;
pub mod rpc;

use std::io::IsTerminal;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use env::{Protocol, Signals};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// What a binary says about itself.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service: &'static str,
    /// Log line format.
    pub format: LogFormat,
    /// Log level directive when `RUST_LOG` is unset, such as `info`.
    pub level: String,
    /// `service.instance.id` (the agent's enrolled name), when it has one.
    pub instance: Option<String>,
}

/// Why telemetry could not be set up. All are configuration errors (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` or the level flag does not parse.
    #[error("bad log level: {0}")]
    Level(String),
    /// An `OTEL_*` variable has a value this build cannot honour.
    #[error("{var}={value:?}: {why}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An exporter could not be built from the variables.
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
    /// A global logger was already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    exporting: Option<Exporting>,
}

#[derive(Debug)]
struct Exporting {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    /// Ends the exporter thread's runtime when dropped.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Crates whose spans and events may become telemetry: ours. The exporter's own
/// transport (h2, hyper, tonic, tower) must never feed back into it.
const OWN_TARGETS: &[&str] = &[
    "knockgate",
    "knockgate_agent",
    "knockgate_agent_core",
    "knockgate_controller",
    "knockgate_cli",
    "knockgate_telemetry",
];

/// The meter every knockgate instrument is made from: a no-op until [`init`] has
/// installed an exporting meter provider, so make instruments after `init`.
pub fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("knockgate")
}

/// A tracer for spans built directly (with explicit start times), such as the agent's
/// decision traces; a no-op until [`init`] installed an exporting tracer provider.
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer("knockgate")
}

/// Installs logging, and OTLP traces and metrics when the environment asks for them.
///
/// # Errors
/// A bad level, an `OTEL_*` variable this build cannot honour, or a logger already
/// installed.
pub fn init(setup: &Setup) -> Result<Telemetry, TelemetryError> {
    init_from(setup, &env::Env::process())
}

fn init_from(setup: &Setup, vars: &env::Env) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&setup.level),
    }
    .map_err(|e| TelemetryError::Level(e.to_string()))?;
    let signals = Signals::from_env(vars)?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match setup.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    }
    .with_filter(filter);
    let exporting = if signals.any() {
        Some(start_exporting(setup, signals, vars)?)
    } else {
        None
    };
    let otel = exporting
        .as_ref()
        .and_then(|e| e.tracer.as_ref())
        .map(|provider| {
            let own = OWN_TARGETS.iter().fold(Targets::new(), |t, target| {
                t.with_target(*target, LevelFilter::INFO)
            });
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("knockgate"))
                .with_filter(own)
        });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    Ok(Telemetry { exporting })
}

/// The resource every signal carries: `service.name` (ours, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`, the last winning), and
/// `service.instance.id` when known.
fn resource(setup: &Setup, vars: &env::Env) -> Resource {
    let mut b = Resource::builder_empty().with_service_name(setup.service);
    if let Some(id) = &setup.instance {
        b = b.with_attribute(KeyValue::new("service.instance.id", id.clone()));
    }
    b = b.with_detectors(&[
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ]);
    if let Some(name) = vars.get("OTEL_SERVICE_NAME") {
        b = b.with_service_name(name.to_owned());
    }
    b.build()
}

fn start_exporting(
    setup: &Setup,
    signals: Signals,
    vars: &env::Env,
) -> Result<Exporting, TelemetryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("cannot start its runtime: {e}")))?;
    let resource = resource(setup, vars);
    // gRPC channels spawn onto the runtime current when they are built; the HTTP client
    // runs its own thread and must be built outside any runtime.
    let grpc = |p: env::Protocol| p == env::Protocol::Grpc;
    let tracer = if signals.traces {
        let exporter = if grpc(signals.traces_protocol) {
            let _in = rt.enter();
            span_exporter(signals.traces_protocol)
        } else {
            span_exporter(signals.traces_protocol)
        }?;
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    let meter = if signals.metrics {
        let exporter = if grpc(signals.metrics_protocol) {
            let _in = rt.enter();
            metric_exporter(signals.metrics_protocol)
        } else {
            metric_exporter(signals.metrics_protocol)
        }?;
        Some(
            SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| TelemetryError::Exporter(format!("cannot start its thread: {e}")))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(t) = &tracer {
        opentelemetry::global::set_tracer_provider(t.clone());
    }
    if let Some(m) = &meter {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    Ok(Exporting {
        tracer,
        meter,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn exporter_error(e: opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
    TelemetryError::Exporter(e.to_string())
}

/// The span exporter for `protocol`; endpoints, headers and timeouts from the variables.
fn span_exporter(
    protocol: env::Protocol,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
    match protocol {
        env::Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
        env::Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
    }
    .map_err(exporter_error)
}

/// The metric exporter for `protocol`; endpoints, headers and timeouts from the variables.
fn metric_exporter(
    protocol: env::Protocol,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    use opentelemetry_otlp::{MetricExporter, WithExportConfig as _};
    match protocol {
        env::Protocol::Grpc => MetricExporter::builder().with_tonic().build(),
        env::Protocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
    }
    .map_err(exporter_error)
}

impl Telemetry {
    /// Whether anything is exported.
    pub fn exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// Flushes and stops the exporters (at most a few seconds each); does nothing when
    /// nothing is exported. Blocking: call it from a plain thread or `spawn_blocking`.
    pub fn shutdown(mut self) {
        if let Some(e) = self.exporting.take() {
            e.finish();
        }
    }
}

impl Exporting {
    fn finish(mut self) {
        if let Some(t) = self.tracer.take()
            && let Err(e) = t.shutdown()
        {
            eprintln!("knockgate: OpenTelemetry traces: {e}");
        }
        if let Some(m) = self.meter.take()
            && let Err(e) = m.shutdown()
        {
            eprintln!("knockgate: OpenTelemetry metrics: {e}");
        }
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(e) = self.exporting.take() {
            e.finish();
        }
    }
}
