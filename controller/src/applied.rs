//! Agents' acknowledgements of config versions (`Applied` on the sync stream), written to
//! the store in batches. When one change reaches thousands of agents, their answers arrive
//! within milliseconds of each other: one statement for all that are waiting, instead of
//! one each (with SQLite, each a hop to its connection's thread and a WAL commit), keeps
//! the store off the fan-out's path. The applied version is what `knockadm agent list` and
//! `status` show, a few milliseconds late at most; one lost in a crash is sent again, since
//! an agent acknowledges the full config it gets when it reconnects.

use tokio::sync::mpsc;

use crate::name::AgentName;
use crate::store::{ConfigVersion, Store};

/// Acknowledgements waiting at most; a sender waits when the writer is this far behind.
const QUEUE: usize = 65_536;
/// Acknowledgements written in one statement at most.
const BATCH: usize = 4_096;

/// The sending side; the writer task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct AppliedLog {
    tx: mpsc::Sender<(AgentName, ConfigVersion)>,
}

impl AppliedLog {
    /// Starts the writer on the current runtime.
    pub fn start(store: Store) -> AppliedLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, rx));
        AppliedLog { tx }
    }

    /// Records that `agent` applied `version` (soon).
    pub async fn record(&self, agent: AgentName, version: ConfigVersion) {
        // Closed only when the controller is going away.
        let _ = self.tx.send((agent, version)).await;
    }
}

/// Writes whatever has queued up, as one statement, until every sender is gone.
async fn write(store: Store, mut rx: mpsc::Receiver<(AgentName, ConfigVersion)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Several answers of one agent in a batch: the store keeps the highest.
        if let Err(e) = store.set_applied_versions(&batch).await {
            tracing::warn!(agents = batch.len(), error = %crate::error::ErrorChain(&e),
                "failed to record applied config versions");
        }
        batch.clear();
    }
}
