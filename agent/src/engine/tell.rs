//! The log line of a decision, derived from its [`Event`]: target `knockgate::event`,
//! field `event` = its kind, then who it is about and everything else it says, each as a
//! field of its own.

use knockgate_agent_core::gateway::{Level, Notice};
use knockgate_proto::event::{Event, Kind};
use serde_json::Value;
use tracing::field::display;

macro_rules! at_level {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            Level::Trace => tracing::trace!(target: "knockgate::event", $($rest)*),
            Level::Debug => tracing::debug!(target: "knockgate::event", $($rest)*),
            Level::Info => tracing::info!(target: "knockgate::event", $($rest)*),
            Level::Warn => tracing::warn!(target: "knockgate::event", $($rest)*),
        }
    };
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "knockgate::event", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "knockgate::event", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "knockgate::event", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "knockgate::event", tracing::Level::WARN),
    }
}

/// Log `n` (its detail is only built when its level is enabled).
pub fn log(n: &Notice) {
    if !enabled(n.level) {
        return;
    }
    let e = &n.event;
    let d = e.detail();
    let text = |k: &str| d.get(k).and_then(Value::as_str);
    let num = |k: &str| d.get(k).and_then(Value::as_u64);
    let flag = |k: &str| d.get(k).and_then(Value::as_bool);
    let subject = e.subject();
    let src = subject.and_then(|s| s.src).map(display);
    let user = subject.and_then(|s| s.user.as_deref());
    let policy = subject.and_then(|s| s.policy.as_deref());
    let grant = e.grant();
    let counts = d.get("counts").and_then(Value::as_object).map(|m| {
        let v: Vec<String> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
        v.join(" ")
    });
    at_level!(
        n.level,
        event = e.kind().as_str(),
        src,
        user,
        policy,
        reason = e.reason().map(|r| r.as_str()),
        method = text("method"),
        stage = num("stage"),
        of = num("of"),
        window = num("window"),
        os = text("os"),
        counter = num("counter"),
        offline = flag("offline"),
        allow_ip = text("allow_ip"),
        access = text("access"),
        timeout_s = num("timeout_s"),
        capped = flag("capped"),
        latency_us = num("latency_us"),
        grant_ref = grant
            .map(|g| g.grant_ref.as_str())
            .filter(|r| !r.is_empty()),
        proto = grant.map(|g| g.access.proto.as_str()),
        port = grant
            .map(|g| g.access.port)
            .or(num("port").and_then(|p| u16::try_from(p).ok())),
        remaining_ms = num("remaining_ms"),
        base = flag("base"),
        grants = num("grants"),
        grants_kept = num("grants_kept"),
        counts = counts.as_deref(),
        controller_reason = text("controller_reason"),
        error = text("error"),
        "{}",
        message(e)
    );
}

/// The human words of a log line.
fn message(e: &Event) -> &'static str {
    match e.kind() {
        Kind::KnockProgressed => "knock progressed",
        Kind::KnockRetransmit => "retransmitted knock ignored",
        Kind::KnockReset => "knock sequence reset",
        Kind::KnockIgnored => "knock ignored",
        Kind::KnockCompleted => "knock sequence completed",
        Kind::KnockRejected => {
            "completed sequence refused: it could not be recorded as used (fail closed)"
        }
        Kind::SpaAccepted => "SPA packet accepted",
        Kind::SpaRejected => "SPA packet refused",
        Kind::SpaRefusedSummary => "SPA packets refused in the last interval",
        Kind::GrantOpened => "grant opened",
        Kind::GrantExtended => "grant extended",
        Kind::GrantFailed => "firewall refused the grant; the port stays closed",
        Kind::GrantClosed => "grant closed",
        Kind::GrantCloseFailed => "could not close grant",
        Kind::GrantAdopted => "grant adopted from the firewall",
        Kind::FirewallRepaired => {
            "the firewall was changed by something else; knockgate's table is restored"
        }
        Kind::FirewallRepairFailed => "could not restore the firewall; retrying",
        Kind::AgentStopped => "agent stopping; the firewall keeps protecting",
        Kind::SpoolDropped => "report spool full: the oldest events were dropped",
    }
}
