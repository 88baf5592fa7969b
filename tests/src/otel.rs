//! A real OTLP receiver for the telemetry tests: rotel (an OpenTelemetry collector, from
//! PyPI, installed once into `/var/cache/knockgate-test/otel-venv`), run in a test host's
//! namespace and printing every span and metric point it receives, and a parser for what
//! it printed. [`export_to`] makes every process the harness starts afterwards export
//! there (the standard `OTEL_*` variables).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::netns::Netns;

/// The rotel release the tests are written against (PyPI version).
pub const ROTEL_VERSION: &str = "0.0.1a15";
const VENV: &str = "/var/cache/knockgate-test/otel-venv";

thread_local! {
    /// Per test thread: the tests of one binary run side by side.
    static EXPORT: std::cell::RefCell<Vec<(String, String)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Where metrics go: a collector's OTLP/gRPC port, or an OTLP/HTTP metrics URL (such as
/// VictoriaMetrics' own `/opentelemetry/v1/metrics`).
#[derive(Clone, Copy, Debug)]
pub enum MetricsTo<'a> {
    Grpc(&'a str),
    Http(&'a str),
}

/// From now on, processes this thread starts through the harness export traces over
/// OTLP/gRPC to `traces` and metrics to `metrics` (the per-signal variables), metrics
/// every half second and spans within 100 ms.
pub fn export_to(traces: &str, metrics: MetricsTo<'_>) {
    let (metrics, protocol) = match metrics {
        MetricsTo::Grpc(url) => (url, "grpc"),
        MetricsTo::Http(url) => (url, "http/protobuf"),
    };
    EXPORT.with(|e| {
        *e.borrow_mut() = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    });
}

/// Adds the variables of [`export_to`], if this thread called it, to `cmd`.
pub fn apply(cmd: &mut Command) {
    EXPORT.with(|e| {
        cmd.envs(e.borrow().iter().map(|(k, v)| (k, v)));
    });
}

/// rotel-agent, installed on first use. A machine that cannot install it fails the
/// test; it never skips.
fn rotel_agent() -> PathBuf {
    let python = Path::new(VENV).join("bin/python");
    if !python.exists() {
        crate::netns::sh(Command::new("python3").args(["-m", "venv", VENV]));
    }
    let wanted = format!("rotel=={ROTEL_VERSION}");
    let have = Command::new(Path::new(VENV).join("bin/pip"))
        .args(["show", "rotel"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("Version: {ROTEL_VERSION}")))
        .unwrap_or(false);
    if !have {
        crate::netns::sh(
            Command::new(Path::new(VENV).join("bin/pip")).args(["install", "-q", &wanted]),
        );
    }
    let out = crate::netns::sh(Command::new(&python).args([
        "-c",
        "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
    ]));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running rotel in a test host's namespace.
pub struct Rotel {
    child: Child,
    out: PathBuf,
}

impl Rotel {
    /// A receiver of traces on OTLP/gRPC port 4317 of every address of `ns`, printing
    /// every span to `out` (the spans go nowhere else).
    pub fn traces(ns: &Netns, out: &Path) -> Rotel {
        Self::start(
            ns,
            out,
            4317,
            &[
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                "--exporter",
                "blackhole",
            ],
        )
    }

    /// A receiver of traces and metrics on OTLP/gRPC port 4317 of every address of `ns`
    /// that keeps nothing (for benches).
    pub fn sink(ns: &Netns, out: &Path) -> Rotel {
        Self::start(ns, out, 4317, &["--exporter", "blackhole"])
    }

    /// A collector of metrics on OTLP/gRPC port 4327 of every address of `ns`, forwarding
    /// them to `store` (VictoriaMetrics' base URL) over OTLP/HTTP, as
    /// `deploy/otel/rotel.env` does.
    pub fn metrics_to(ns: &Netns, out: &Path, store: &str) -> Rotel {
        let endpoint = format!("{store}/opentelemetry");
        Self::start(
            ns,
            out,
            4327,
            &[
                "--exporter",
                "otlp",
                "--otlp-exporter-protocol",
                "http",
                "--otlp-exporter-endpoint",
                &endpoint,
            ],
        )
    }

    fn start(ns: &Netns, out: &Path, port: u16, args: &[&str]) -> Rotel {
        let agent = rotel_agent();
        let file = std::fs::File::create(out).expect("rotel output");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(agent)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("0.0.0.0:{port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", port + 1)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start rotel");
        let rotel = Rotel {
            child,
            out: out.to_path_buf(),
        };
        let listening = listens(ns, port);
        assert!(listening, "rotel did not listen:\n{}", rotel.text());
        rotel
    }

    /// Everything it printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it received so far.
    pub fn received(&self) -> Received {
        Received::parse(&self.text())
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something accepts on 127.0.0.1:`port` in `ns` within 15 s.
fn listens(ns: &Netns, port: u16) -> bool {
    ns.run(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    })
}

/// VictoriaMetrics (a Prometheus-compatible store with OTLP/HTTP ingestion) on port 8428
/// of every address of a test host's namespace, with OpenTelemetry's Prometheus naming.
pub struct VictoriaMetrics {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl VictoriaMetrics {
    /// Fetches it once (`deploy/test/victoria-metrics.sh`) and starts it, its data in `dir`.
    pub fn start(ns: &Netns, dir: &Path) -> VictoriaMetrics {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/test/victoria-metrics.sh");
        let out = crate::netns::sh(Command::new("bash").arg(script));
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let log = dir.join("victoria-metrics.log");
        let file = std::fs::File::create(&log).expect("vm log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .arg(format!(
                "-storageDataPath={}",
                dir.join("vm-data").display()
            ))
            .args([
                "-httpListenAddr=:8428",
                "-search.latencyOffset=0s",
                "-opentelemetry.usePrometheusNaming",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start victoria-metrics");
        let vm = VictoriaMetrics {
            child,
            ns: ns.name.clone(),
            log,
        };
        assert!(
            listens(ns, 8428),
            "victoria-metrics did not listen:\n{}",
            std::fs::read_to_string(&vm.log).unwrap_or_default()
        );
        vm
    }

    /// The base URL the collector sends to (inside the namespace).
    pub fn url(&self) -> &'static str {
        "http://127.0.0.1:8428"
    }

    /// The result of an instant PromQL/MetricsQL query: `(labels, value)` per series.
    pub fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let ns = format!("/run/netns/{}", self.ns);
        let body = std::thread::spawn(move || {
            crate::netns::enter(&ns);
            http_get("127.0.0.1:8428", &path)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {expr}: {e}: {body}"));
        assert_eq!(v["status"], "success", "query {expr}: {body}");
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let labels = s["metric"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let value = s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN);
                        (labels, value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sum of `expr`'s series (0 when it has none).
    pub fn sum(&self, expr: &str) -> f64 {
        self.query(expr).iter().map(|(_, v)| v).sum()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the store");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    resp.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// One span as the receiver printed it.
#[derive(Debug, Clone, Default)]
pub struct SpanRec {
    pub service: String,
    pub instance: Option<String>,
    pub trace: String,
    pub parent: String,
    pub id: String,
    pub name: String,
    pub attrs: BTreeMap<String, String>,
}

/// One data point of a metric: its attributes and its value (the count, for a
/// histogram).
#[derive(Debug, Clone, Default)]
pub struct PointRec {
    pub service: String,
    pub metric: String,
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
}

/// Spans and metric points.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<SpanRec>,
    pub points: Vec<PointRec>,
}

/// `-> key: Type(value)` as `(key, value)`.
fn attr(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("-> ")?;
    let (k, v) = rest.split_once(": ")?;
    let v = v
        .split_once('(')
        .and_then(|(_, v)| v.strip_suffix(')'))
        .unwrap_or(v);
    Some((k.to_owned(), v.to_owned()))
}

#[derive(PartialEq)]
enum In {
    Resource,
    Span,
    Point,
    Other,
}

impl Received {
    /// Parses rotel's detailed debug output.
    pub fn parse(text: &str) -> Received {
        let mut r = Received::default();
        let mut resource: BTreeMap<String, String> = BTreeMap::new();
        let mut metric = String::new();
        let mut at = In::Other;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("ResourceSpans #") || t.starts_with("ResourceMetrics #") {
                resource.clear();
                at = In::Other;
            } else if t == "Resource attributes:" {
                at = In::Resource;
            } else if t.starts_with("Span #") {
                r.spans.push(SpanRec {
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    instance: resource.get("service.instance.id").cloned(),
                    ..SpanRec::default()
                });
                at = In::Span;
            } else if t.contains("DataPoints #") {
                r.points.push(PointRec {
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    metric: metric.clone(),
                    ..PointRec::default()
                });
                at = In::Point;
            } else if t.starts_with("ScopeSpans #")
                || t.starts_with("ScopeMetrics #")
                || t.starts_with("Metric #")
            {
                at = In::Other;
            } else if let Some(name) = t.strip_prefix("-> Name: ") {
                metric = name.to_owned();
            } else if at == In::Resource {
                if let Some((k, v)) = attr(t) {
                    resource.insert(k, v);
                }
            } else if at == In::Span {
                let span = r.spans.last_mut().expect("a span");
                let field = |p: &str| {
                    t.strip_prefix(p)
                        .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
                };
                if let Some(v) = field("Trace ID") {
                    span.trace = v;
                } else if let Some(v) = field("Parent ID") {
                    span.parent = v;
                } else if let Some(v) = field("ID") {
                    span.id = v;
                } else if let Some(v) = field("Name") {
                    span.name = v;
                } else if t.starts_with("Events:") || t.starts_with("Links:") {
                    at = In::Other;
                } else if let Some((k, v)) = attr(t) {
                    span.attrs.insert(k, v);
                }
            } else if at == In::Point {
                let point = r.points.last_mut().expect("a point");
                if let Some(v) = t
                    .strip_prefix("Value: ")
                    .or_else(|| t.strip_prefix("Count: "))
                {
                    point.value = v.trim().parse().unwrap_or(f64::NAN);
                } else if let Some((k, v)) = attr(t) {
                    point.attrs.insert(k, v);
                }
            }
        }
        r
    }

    /// Spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<&SpanRec> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// The children of `parent` (same trace, parent id = its id).
    pub fn children(&self, parent: &SpanRec) -> Vec<&SpanRec> {
        self.spans
            .iter()
            .filter(|s| s.trace == parent.trace && s.parent == parent.id)
            .collect()
    }

    /// The points of `metric`.
    pub fn points(&self, metric: &str) -> Vec<&PointRec> {
        self.points.iter().filter(|p| p.metric == metric).collect()
    }
}
