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

/// From now on, processes this thread starts through the harness export to `endpoint`,
/// metrics every half second and spans within 100 ms.
pub fn export_to(endpoint: &str) {
    EXPORT.with(|e| {
        *e.borrow_mut() = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                endpoint.to_owned(),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "500".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ];
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

/// A running rotel receiving OTLP/gRPC on port 4317 of every address of `ns`.
pub struct Rotel {
    child: Child,
    out: PathBuf,
}

impl Rotel {
    /// Starts it in `ns`, printing to `out`, and waits until it listens.
    pub fn start(ns: &Netns, out: &Path) -> Rotel {
        let agent = rotel_agent();
        let file = std::fs::File::create(out).expect("rotel output");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(agent)
            .args([
                "start",
                "--otlp-grpc-endpoint",
                "0.0.0.0:4317",
                "--otlp-http-endpoint",
                "127.0.0.1:4318",
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log-verbosity",
                "detailed",
                "--exporter",
                "blackhole",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start rotel");
        let rotel = Rotel {
            child,
            out: out.to_path_buf(),
        };
        let listening = ns.run(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect("127.0.0.1:4317").is_ok() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            false
        });
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
