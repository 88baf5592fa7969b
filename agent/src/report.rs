//! Reporting: every decision the engine makes, as a structured event for the controller.
//!
//! The engine hands events to a [`Reporter`] without ever blocking (a bounded channel; if
//! it is full the event is counted and dropped). One std thread appends them to the disk
//! spool (`state_dir/spool`), giving each the next sequence number; a tokio task
//! ([`sender::run`]) delivers the spool to the controller in batches and removes what the
//! controller has stored. Without `[controller]` none of this runs.

pub mod sender;
pub mod spool;

use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knockgate_agent_core::ruleset::GrantKey;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use self::spool::Spool;

/// Events queued between the engine and the spool writer.
const QUEUE: usize = 16_384;
/// Most events the writer appends (and syncs) at once.
const WRITE_BATCH: usize = 1024;
/// Least time between two warnings about dropped events.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One decision, as spooled and reported. `seq` is given by the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportEvent {
    #[serde(default)]
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub src: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantInfo>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
}

/// The grant a `grant.*` event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Empty for a grant that failed to open (it never got one).
    #[serde(default)]
    pub grant_ref: String,
    pub addr: String,
    pub proto: String,
    pub port: u16,
    pub expires_at_ms: i64,
}

impl GrantInfo {
    pub fn new(grant_ref: &str, key: &GrantKey, expires_at_ms: i64) -> Self {
        GrantInfo {
            grant_ref: grant_ref.to_string(),
            addr: key.addr.to_string(),
            proto: key.proto.as_str().to_string(),
            port: key.port,
            expires_at_ms,
        }
    }
}

impl ReportEvent {
    /// An event of `kind` happening now.
    pub fn new(kind: &str) -> Self {
        ReportEvent {
            seq: 0,
            at_ms: unix_ms(SystemTime::now()),
            kind: kind.to_string(),
            user: String::new(),
            src: String::new(),
            policy: String::new(),
            reason: String::new(),
            grant: None,
            detail: Map::new(),
        }
    }

    pub fn src(mut self, src: IpAddr) -> Self {
        self.src = src.to_string();
        self
    }

    pub fn user(mut self, user: Option<&str>) -> Self {
        self.user = user.unwrap_or_default().to_string();
        self
    }

    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = policy.to_string();
        self
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = reason.to_string();
        self
    }

    pub fn grant(mut self, grant: GrantInfo) -> Self {
        self.grant = Some(grant);
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Milliseconds since the epoch (negative before it, saturating).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The wall-clock time of a monotonic instant, relative to `now`.
pub fn wall_ms(at: Instant, now: Instant) -> i64 {
    let wall = SystemTime::now();
    let t = if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    };
    unix_ms(t)
}

/// The engine's end: hands events on without ever blocking.
pub struct Reporter {
    tx: SyncSender<ReportEvent>,
    dropped: u64,
    last_warn: Option<Instant>,
}

impl Reporter {
    pub fn emit(&mut self, event: ReportEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                let now = Instant::now();
                if self
                    .last_warn
                    .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                {
                    self.last_warn = Some(now);
                    tracing::warn!(
                        dropped = self.dropped,
                        "the report spool is not keeping up; events for the controller were dropped"
                    );
                }
            }
            // The writer is gone (it failed); it said so when it stopped.
            Err(TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }
}

/// The spool and its writer thread, shared with the sender task.
pub struct Spooler {
    pub spool: Arc<Mutex<Spool>>,
    /// Woken whenever events were appended.
    pub appended: Arc<Notify>,
    writer: JoinHandle<()>,
}

impl Spooler {
    /// Wait for the writer to finish what the engine sent (after the engine stopped).
    pub fn join(self) {
        let _ = self.writer.join();
    }
}

/// Open the spool under `state_dir` and start its writer thread.
pub fn start(state_dir: &Path) -> std::io::Result<(Reporter, Spooler)> {
    let spool = Arc::new(Mutex::new(Spool::open(&state_dir.join("spool"))?));
    let appended = Arc::new(Notify::new());
    let (tx, rx) = sync_channel(QUEUE);
    let writer = {
        let spool = spool.clone();
        let appended = appended.clone();
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || write_loop(&rx, &spool, &appended))?
    };
    let reporter = Reporter {
        tx,
        dropped: 0,
        last_warn: None,
    };
    Ok((
        reporter,
        Spooler {
            spool,
            appended,
            writer,
        },
    ))
}

/// Events waiting for the controller at most; beyond, the oldest are dropped (and the
/// drop is reported), so a controller away for long cannot fill the agent's disk.
pub const SPOOL_MAX: usize = 100_000;

/// Append what arrives, in batches, until the engine drops its [`Reporter`].
fn write_loop(rx: &Receiver<ReportEvent>, spool: &Mutex<Spool>, appended: &Notify) {
    write_loop_capped(rx, spool, appended, SPOOL_MAX);
}

fn write_loop_capped(
    rx: &Receiver<ReportEvent>,
    spool: &Mutex<Spool>,
    appended: &Notify,
    max: usize,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut dropped_total = 0u64;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = match spool.lock() {
            Ok(mut s) => s.append(&mut batch).and_then(|()| {
                let dropped = s.shed(max)?;
                if dropped > 0 {
                    dropped_total += dropped;
                    tracing::warn!(
                        dropped,
                        dropped_total,
                        max,
                        "report spool full: the oldest events were dropped"
                    );
                    let mut note = [ReportEvent::new("spool.dropped")
                        .detail("dropped", dropped)
                        .detail("dropped_total", dropped_total)];
                    s.append(&mut note)?;
                }
                Ok(())
            }),
            Err(_) => return,
        };
        match result {
            Ok(()) => appended.notify_one(),
            Err(e) => tracing::error!(error = %e, lost = batch.len(),
                "cannot write the report spool; these events will not reach the controller"),
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spool_drops_the_oldest_and_says_so() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Mutex::new(Spool::open(dir.path()).expect("spool"));
        let (tx, rx) = sync_channel(64);
        for i in 0..12u64 {
            tx.send(ReportEvent::new("knock.completed").detail("i", i))
                .expect("send");
        }
        drop(tx);
        write_loop_capped(&rx, &spool, &Notify::new(), 5);
        let mut s = spool.lock().expect("lock");
        let left = s.peek(100).expect("peek");
        assert!(left.len() <= 6, "{} left", left.len());
        let note = left.last().expect("the note");
        assert_eq!(note.kind, "spool.dropped");
        let kinds: Vec<&str> = left.iter().map(|e| e.kind.as_str()).collect();
        assert!(
            kinds[..kinds.len() - 1]
                .iter()
                .all(|k| *k == "knock.completed")
        );
        let first_kept = left[0].detail["i"].as_u64().expect("i");
        assert!(first_kept >= 7, "the oldest went: {first_kept}");
    }

    #[test]
    fn events_round_trip_as_json_lines_without_empty_fields() {
        let key = GrantKey {
            addr: "10.0.0.2".parse().expect("ip"),
            proto: knockgate_agent_core::ruleset::Proto::Tcp,
            port: 22,
        };
        let e = ReportEvent::new("grant.opened")
            .src(key.addr)
            .user(Some("alice"))
            .policy("ssh")
            .grant(GrantInfo::new("b-1", &key, 1234))
            .detail("timeout_s", 30);
        let line = serde_json::to_string(&e).expect("json");
        assert!(!line.contains("reason"), "{line}");
        let back: ReportEvent = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, e);
    }

    #[test]
    fn the_writer_spools_what_the_reporter_emits() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut reporter, spooler) = start(dir.path()).expect("start");
        for i in 0..3 {
            reporter.emit(ReportEvent::new("knock.completed").detail("i", i));
        }
        drop(reporter);
        let spool = spooler.spool.clone();
        spooler.join();
        let got = spool.lock().expect("lock").peek(10).expect("peek");
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
