//! Reporting: every decision the engine makes, as a structured event for the controller.
//!
//! The engine hands events to a [`Reporter`] without ever blocking (a bounded channel; if
//! it is full the event is counted and dropped). One std thread appends them to the disk
//! spool (`state_dir/spool`), giving each the next sequence number; a tokio task
//! ([`sender::run`]) delivers the spool to the controller in batches and removes what the
//! controller has stored. Without `[controller]` none of this runs.

pub mod sender;
pub mod spool;

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knockgate_proto::event::Kind;
use tokio::sync::Notify;

use self::spool::Spool;

/// Events queued between the engine and the spool writer.
const QUEUE: usize = 16_384;
/// Most events the writer appends (and syncs) at once.
const WRITE_BATCH: usize = 1024;
/// Least time between two warnings about dropped events.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub use knockgate_proto::event::Record;

/// Milliseconds since the epoch (negative before it, saturating).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The engine's end: hands events on without ever blocking.
pub struct Reporter {
    tx: SyncSender<Record>,
    dropped: u64,
    last_warn: Option<Instant>,
}

impl Reporter {
    pub fn emit(&mut self, event: Record) {
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
fn write_loop(rx: &Receiver<Record>, spool: &Mutex<Spool>, appended: &Notify) {
    write_loop_capped(rx, spool, appended, SPOOL_MAX);
}

fn write_loop_capped(rx: &Receiver<Record>, spool: &Mutex<Spool>, appended: &Notify, max: usize) {
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
                    let mut note = [Record::new(Kind::SpoolDropped, unix_ms(SystemTime::now()))
                        .with_detail("dropped", dropped)
                        .with_detail("dropped_total", dropped_total)];
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
            tx.send(Record::new(Kind::KnockCompleted, 0).with_detail("i", i))
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
    fn the_writer_spools_what_the_reporter_emits() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut reporter, spooler) = start(dir.path()).expect("start");
        for i in 0..3 {
            reporter.emit(Record::new(Kind::KnockCompleted, 0).with_detail("i", i));
        }
        drop(reporter);
        let spool = spooler.spool.clone();
        spooler.join();
        let got = spool.lock().expect("lock").peek(10).expect("peek");
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
