//! Which signals the standard OpenTelemetry variables turn on, and the values this build
//! refuses rather than ignore. The exporters read the rest themselves (endpoints,
//! headers, timeouts, compression, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_RESOURCE_ATTRIBUTES`).

use std::collections::BTreeMap;

use crate::TelemetryError;

/// The variables, read once (a map in tests).
#[derive(Debug, Default, Clone)]
pub(crate) struct Env(BTreeMap<String, String>);

impl Env {
    /// The process environment's `OTEL_*` variables.
    pub(crate) fn process() -> Self {
        Env(std::env::vars()
            .filter(|(k, _)| k.starts_with("OTEL_"))
            .collect())
    }

    /// A set value; empty counts as unset (as the SDK has it).
    pub(crate) fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Self {
        Env(pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect())
    }
}

/// How a signal travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (the default).
    #[default]
    Grpc,
    /// OTLP over HTTP, protobuf bodies.
    HttpProtobuf,
}

/// The signals exported, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// Traces go out.
    pub traces: bool,
    /// Metrics go out.
    pub metrics: bool,
    /// How traces travel.
    pub traces_protocol: Protocol,
    /// How metrics travel.
    pub metrics_protocol: Protocol,
}

impl Signals {
    /// Whether anything goes out.
    pub fn any(self) -> bool {
        self.traces || self.metrics
    }

    /// A signal is on when an endpoint names where it goes (the generic one or its
    /// own), unless `OTEL_SDK_DISABLED=true` or its `OTEL_*_EXPORTER` says `none`.
    pub(crate) fn from_env(env: &Env) -> Result<Signals, TelemetryError> {
        if env
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(Signals::default());
        }
        let generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let on = |signal: &str, exporter_var: &'static str| -> Result<bool, TelemetryError> {
            let endpoint = generic
                || env
                    .get(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
                    .is_some();
            match env.get(exporter_var) {
                None | Some("otlp") => Ok(endpoint),
                Some("none") => Ok(false),
                Some(other) => Err(TelemetryError::Env {
                    var: exporter_var,
                    value: other.to_owned(),
                    why: "this build exports otlp or none",
                }),
            }
        };
        let protocol = |var: &'static str| -> Result<Option<Protocol>, TelemetryError> {
            match env.get(var) {
                None => Ok(None),
                Some("grpc") => Ok(Some(Protocol::Grpc)),
                Some("http/protobuf") => Ok(Some(Protocol::HttpProtobuf)),
                Some(other) => Err(TelemetryError::Env {
                    var,
                    value: other.to_owned(),
                    why: "this build speaks grpc or http/protobuf",
                }),
            }
        };
        let generic = protocol("OTEL_EXPORTER_OTLP_PROTOCOL")?.unwrap_or_default();
        Ok(Signals {
            traces: on("TRACES", "OTEL_TRACES_EXPORTER")?,
            metrics: on("METRICS", "OTEL_METRICS_EXPORTER")?,
            traces_protocol: protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?.unwrap_or(generic),
            metrics_protocol: protocol("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")?.unwrap_or(generic),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(pairs: &[(&str, &str)]) -> Result<Signals, TelemetryError> {
        Signals::from_env(&Env::of(pairs))
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(signals(&[]).unwrap(), Signals::default());
        assert_eq!(
            signals(&[
                ("OTEL_SERVICE_NAME", "gw"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
            ])
            .unwrap(),
            Signals::default(),
            "an empty endpoint is unset"
        );
    }

    #[test]
    fn endpoints_turn_signals_on() {
        let both = Signals {
            traces: true,
            metrics: true,
            ..Signals::default()
        };
        assert_eq!(
            signals(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap(),
            both
        );
        assert_eq!(
            signals(&[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://127.0.0.1:4317"
            )])
            .unwrap(),
            Signals {
                traces: false,
                metrics: true,
                ..Signals::default()
            }
        );
        assert_eq!(
            signals(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ])
            .unwrap(),
            Signals {
                traces: false,
                metrics: true,
                ..Signals::default()
            }
        );
        assert_eq!(
            signals(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ])
            .unwrap(),
            Signals::default()
        );
    }

    #[test]
    fn protocols_are_chosen_per_signal() {
        let s = signals(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(
            (s.traces_protocol, s.metrics_protocol),
            (Protocol::Grpc, Protocol::HttpProtobuf)
        );
    }

    #[test]
    fn values_this_build_cannot_honour_are_errors() {
        let e = signals(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\": this build speaks grpc or http/protobuf"
        );
        let e = signals(&[("OTEL_METRICS_EXPORTER", "prometheus")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("OTEL_METRICS_EXPORTER=\"prometheus\"")
        );
    }
}
