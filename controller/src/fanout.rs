//! Fan-out to live agent streams: the config version every Sync stream
//! watches, the registry of live streams (so a revoke closes them at once and
//! grant revokes reach them), and, on PostgreSQL, the LISTEN task that turns
//! other replicas' commits into local version bumps.
//!
//! Versions and derived material: `AgentConfig.version` is always the
//! store's config version, never a number of its own. A change that moves
//! material (a one-time key claimed, a policy or user changed) bumps that
//! version in its transaction like any other change, so it reaches every
//! replica. Material that moves with time alone (a rotating window ending)
//! does not touch the store: each Sync stream wakes at the next window
//! boundary of the rotating policies it carries and sends a delta with
//! `material_changed = true`, the recomputed lists and `base_version =
//! version` = the version the agent already holds (nothing else changed), so
//! an agent that applied the last config accepts it and acks the same
//! version again. Agents and `ListAgents` thus keep comparing one version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};

use crate::error::ErrorChain;
use crate::name::AgentName;
use crate::store::{CONFIG_CHANNEL, ConfigVersion, LEASE_RENEWAL, Store, Timestamp};

/// Per-stream queue of pushed messages; a full queue drops the push (the
/// store-backed revoke flags are re-sent on the next version change).
const CONTROL_QUEUE: usize = 64;

/// Revocations travel shared: one allocation however many streams they reach, and
/// a pointer per queue slot (a stream's queue is allocated 32 slots at a time).
type Streams = BTreeMap<AgentName, BTreeMap<u64, mpsc::Sender<Arc<Revocation>>>>;

/// Grants to close at once: by the agent's ref, and every grant of these users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocation {
    pub grant_refs: Vec<String>,
    pub users: Vec<String>,
}

impl Revocation {
    /// Every grant of `user`.
    pub fn user(user: impl Into<String>) -> Self {
        Revocation {
            grant_refs: Vec::new(),
            users: vec![user.into()],
        }
    }
}

/// Shared by every service of one controller process.
#[derive(Debug)]
pub struct Hub {
    version: watch::Sender<i64>,
    shutdown: watch::Sender<bool>,
    streams: Mutex<Streams>,
    next_id: AtomicU64,
}

/// A live stream's place in the registry; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    agent: AgentName,
    id: u64,
    /// Grant revokes pushed to this stream. `None` from `recv` means the
    /// agent was revoked and the stream must end.
    pub pushes: mpsc::Receiver<Arc<Revocation>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut streams = self.hub.lock();
        if let Some(by_id) = streams.get_mut(&self.agent) {
            by_id.remove(&self.id);
            if by_id.is_empty() {
                streams.remove(&self.agent);
            }
        }
    }
}

impl Hub {
    /// A hub starting at config version `initial`.
    pub fn new(initial: ConfigVersion) -> Arc<Self> {
        Arc::new(Self {
            version: watch::Sender::new(initial.0),
            shutdown: watch::Sender::new(false),
            streams: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert or remove.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches the config version.
    pub fn versions(&self) -> watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// Announces a committed version; older or equal versions are ignored.
    pub fn bump(&self, v: ConfigVersion) {
        self.version.send_if_modified(|cur| {
            let newer = v.0 > *cur;
            if newer {
                *cur = v.0;
            }
            newer
        });
    }

    /// Registers a live stream of `agent`.
    pub fn register(self: &Arc<Self>, agent: AgentName) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        self.lock().entry(agent.clone()).or_default().insert(id, tx);
        Registration {
            hub: Arc::clone(self),
            agent,
            id,
            pushes: rx,
        }
    }

    /// Ends every live stream of `agent` (it was revoked); returns how many.
    pub fn close_agent(&self, agent: &AgentName) -> usize {
        self.lock().remove(agent).map_or(0, |s| s.len())
    }

    /// Whether `agent` holds a live stream on this replica.
    pub fn is_connected(&self, agent: &AgentName) -> bool {
        self.lock().contains_key(agent)
    }

    /// The agents holding a live stream on this replica.
    pub fn connected_agents(&self) -> Vec<AgentName> {
        self.lock().keys().cloned().collect()
    }

    /// Pushes `msg` to every live stream.
    pub fn push_all(&self, msg: Revocation) {
        let msg = Arc::new(msg);
        for (agent, by_id) in self.lock().iter() {
            for tx in by_id.values() {
                if tx.try_send(Arc::clone(&msg)).is_err() {
                    tracing::warn!(%agent, "agent stream is not keeping up; grant revoke dropped");
                }
            }
        }
    }

    /// Tells every live stream to end (server shutdown).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes once [`Hub::shutdown`] has been called (at once if it was).
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        // The guard `wait_for` yields is dropped at once: it is not `Send`.
        let _ = rx.wait_for(|s| *s).await.map(|_| ());
    }
}

/// Renews the connection lease of every agent streaming to this replica,
/// every [`LEASE_RENEWAL`], until the hub shuts down. A replica that dies
/// stops renewing, and its agents read as stale once the lease runs out,
/// unless they reconnect elsewhere.
pub async fn renew_leases(store: Store, hub: Arc<Hub>) {
    let mut every = tokio::time::interval(LEASE_RENEWAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = hub.stopped() => return,
        }
        let agents = hub.connected_agents();
        if agents.is_empty() {
            continue;
        }
        if let Err(e) = store.renew_leases(&agents, Timestamp::now()).await {
            tracing::warn!(agents = agents.len(), error = %ErrorChain(&e),
                "failed to renew agent connection leases");
        }
    }
}

/// Follows other replicas' commits through PostgreSQL `LISTEN` until the hub
/// shuts down. Notifications lost while reconnecting are made up for by
/// re-reading the version.
pub async fn listen_postgres(store: Store, hub: Arc<Hub>) {
    let Some(pool) = store.postgres_pool().cloned() else {
        return;
    };
    loop {
        tokio::select! {
            r = follow(&pool, &store, &hub) => {
                let Err(e) = r;
                tracing::warn!(error = %ErrorChain(&e), "config notification listener failed; retrying");
            },
            () = hub.stopped() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = hub.stopped() => return,
        }
    }
}

async fn follow(
    pool: &sqlx::PgPool,
    store: &Store,
    hub: &Hub,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CONFIG_CHANNEL).await?;
    resync(store, hub).await;
    loop {
        match listener.try_recv().await? {
            Some(n) => match n.payload().parse::<i64>() {
                Ok(v) => hub.bump(ConfigVersion(v)),
                Err(_) => resync(store, hub).await,
            },
            // The connection dropped and came back: notifications may be lost.
            None => resync(store, hub).await,
        }
    }
}

async fn resync(store: &Store, hub: &Hub) {
    match store.current_version().await {
        Ok(v) => hub.bump(v),
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "failed to read the config version"),
    }
}
