//! The controller's metrics (OpenTelemetry instruments, no-ops unless exporting; see
//! `docs/OBSERVABILITY.md`). RPC counts and durations come from
//! `knockgate_telemetry::rpc::RpcLayer`; the rest is here. Every attribute has a bounded
//! set of values: no agent, user or address is ever a label.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::fanout::Hub;

struct Instruments {
    store: Histogram<f64>,
    claims: Counter<u64>,
    claim_duration: Histogram<f64>,
    audit_rows: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    I.get_or_init(|| {
        let m = knockgate_telemetry::meter();
        Instruments {
            store: m
                .f64_histogram("knockgate.store.duration")
                .with_unit("s")
                .with_description("Time of the store's hot operations, by operation")
                .with_boundaries(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0,
                ])
                .build(),
            claims: m
                .u64_counter("knockgate.otk.claims")
                .with_unit("{claim}")
                .with_description("One-time key claims decided, by outcome")
                .build(),
            claim_duration: m
                .f64_histogram("knockgate.otk.claim.duration")
                .with_unit("s")
                .with_description("Time to decide a one-time key claim")
                .with_boundaries(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .build(),
            audit_rows: m
                .u64_counter("knockgate.audit.rows")
                .with_unit("{row}")
                .with_description("Audit trail rows written, by kind")
                .build(),
        }
    })
}

/// Times one store operation named `op` until it is dropped.
pub struct StoreTimer {
    op: &'static str,
    started: std::time::Instant,
}

impl StoreTimer {
    /// Starts timing `op` (`snapshot.load`, `audit.append`, …).
    pub fn start(op: &'static str) -> Self {
        StoreTimer {
            op,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        instruments().store.record(
            self.started.elapsed().as_secs_f64(),
            &[KeyValue::new("operation", self.op)],
        );
    }
}

/// A claim was decided: `outcome` is `granted` or the refusal's reason.
pub fn claim_decided(outcome: &str, took: Duration) {
    let i = instruments();
    let attrs = [KeyValue::new("outcome", outcome.to_owned())];
    i.claims.add(1, &attrs);
    i.claim_duration.record(took.as_secs_f64(), &attrs);
}

/// An audit row of `kind` was written.
pub fn audit_row(kind: &str) {
    instruments()
        .audit_rows
        .add(1, &[KeyValue::new("kind", kind.to_owned())]);
}

/// Gauges read from the live state when the exporter collects: agents holding a sync
/// stream on this replica, and the config version it serves.
pub fn observe(hub: &Arc<Hub>) {
    let m = knockgate_telemetry::meter();
    let h = Arc::clone(hub);
    m.u64_observable_gauge("knockgate.agents.connected")
        .with_unit("{agent}")
        .with_description("Agents holding a sync stream on this replica")
        .with_callback(move |o| o.observe(h.connected_agents().len() as u64, &[]))
        .build();
    let h = Arc::clone(hub);
    m.i64_observable_gauge("knockgate.config.version")
        .with_unit("{version}")
        .with_description("The config version this replica serves")
        .with_callback(move |o| o.observe(*h.versions().borrow(), &[]))
        .build();
}
