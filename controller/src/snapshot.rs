//! What every agent's config is computed from, read from the store once per config version
//! and shared by all sync streams.
//!
//! Every change that affects agents bumps the config version (`store.rs`), and every
//! stream wakes on the bump (`fanout.rs`). Each used to read the store itself, so a bump
//! cost the store five queries per connected agent. Now the first stream to wake reads
//! the rows once, and the others, waiting on the same lock, share that [`Snapshot`].
//! The version is read before the rows, so a snapshot is never labelled newer than what it
//! holds (a change made meanwhile bumps again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::ServiceError;
use crate::name::{AgentName, UserName};
use crate::policy::PolicyDef;
use crate::store::{Agent, GrantFilter, Store, Timestamp, User};

/// The store rows an agent's config is computed from, at one config version.
#[derive(Debug)]
pub struct Snapshot {
    /// The config version read before the rows.
    pub version: u64,
    /// Every agent (labels, certificate, revocation), by name.
    pub agents: HashMap<AgentName, Agent>,
    /// Every valid policy (an invalid stored one is logged and left out).
    pub policies: Vec<PolicyDef>,
    /// Every user.
    pub users: Vec<User>,
    /// The highest one-time key counter claimed per user.
    pub claimed: BTreeMap<UserName, u64>,
    /// Per agent, the refs of its live grants an admin asked to revoke.
    pub revoke_requested: HashMap<AgentName, Vec<String>>,
    /// The policies as agents enforce them, built once for all of them.
    pub shared: crate::desired::Shared,
}

impl Snapshot {
    /// Reads a snapshot: the version first, then the rows.
    ///
    /// # Errors
    /// The store's.
    pub async fn load(store: &Store) -> Result<Snapshot, ServiceError> {
        Self::load_after(store, None).await
    }

    /// [`Snapshot::load`], sharing with `previous` the policies that did not change.
    ///
    /// # Errors
    /// The store's.
    pub async fn load_after(
        store: &Store,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ServiceError> {
        let _timer = crate::metrics::StoreTimer::start("snapshot.load");
        let version = u64::try_from(store.current_version().await?.0).unwrap_or(0);
        let agents = store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        let live = GrantFilter {
            active_at: Some(Timestamp::now()),
            ..GrantFilter::default()
        };
        let mut revoke_requested: HashMap<AgentName, Vec<String>> = HashMap::new();
        for g in store.list_grants(&live).await? {
            if g.revoke_requested {
                revoke_requested
                    .entry(g.agent)
                    .or_default()
                    .push(g.agent_ref);
            }
        }
        let policies = crate::service::load_policies(store).await?;
        let users = store.list_users().await?;
        let shared = crate::desired::Shared::new(&policies, &users, previous.map(|p| &p.shared));
        Ok(Snapshot {
            version,
            agents,
            policies,
            users,
            claimed: store.otk_highest_claims().await?,
            revoke_requested,
            shared,
        })
    }
}

/// The latest snapshot, shared.
#[derive(Debug, Default)]
pub struct Snapshots {
    latest: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// A snapshot at config version `version` or later: the shared one, or a fresh read
    /// (one at a time: streams that wake together wait for the first one's read).
    ///
    /// # Errors
    /// The store's.
    pub async fn at_least(
        &self,
        store: &Store,
        version: u64,
    ) -> Result<Arc<Snapshot>, ServiceError> {
        let mut latest = self.latest.lock().await;
        if let Some(s) = latest.as_ref().filter(|s| s.version >= version) {
            return Ok(Arc::clone(s));
        }
        let fresh = Arc::new(Snapshot::load_after(store, latest.as_deref()).await?);
        *latest = Some(Arc::clone(&fresh));
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::applied::AppliedLog;
    use crate::store::{ConfigVersion, NewAgent};

    async fn store_with_agent(dir: &std::path::Path) -> (Store, AgentName) {
        let store = Store::open_sqlite(&dir.join("k.db")).await.expect("store");
        let name = AgentName::new("gw1").expect("name");
        store
            .add_agent(&NewAgent {
                name: name.clone(),
                labels: BTreeMap::new(),
                address: None,
                created_at: Timestamp::now(),
            })
            .await
            .expect("agent");
        (store, name)
    }

    #[tokio::test]
    async fn one_read_per_config_version_is_shared() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, gw1) = store_with_agent(dir.path()).await;
        let snapshots = Snapshots::default();
        let first = snapshots.at_least(&store, 0).await.expect("load");
        assert!(first.agents.contains_key(&gw1));
        let again = snapshots
            .at_least(&store, first.version)
            .await
            .expect("cached");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same version is not read again"
        );

        let labels = BTreeMap::from([("role".to_owned(), "edge".to_owned())]);
        let bumped = store.set_agent_labels(&gw1, &labels).await.expect("labels");
        let newer = u64::try_from(bumped.0).expect("version");
        assert!(newer > first.version);
        let fresh = snapshots.at_least(&store, newer).await.expect("reload");
        assert_eq!(fresh.version, newer);
        assert_eq!(
            fresh.agents[&gw1].labels, labels,
            "a newer version is read afresh"
        );
    }

    #[tokio::test]
    async fn acknowledgements_reach_the_store_in_batches() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, gw1) = store_with_agent(dir.path()).await;
        let log = AppliedLog::start(store.clone());
        for v in [3, 7, 5] {
            log.record(gw1.clone(), ConfigVersion(v)).await;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let applied = store.get_agent(&gw1).await.expect("agent").applied_version;
            if applied == ConfigVersion(7) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "applied {applied:?}, want 7"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Never backwards: an older acknowledgement arriving late changes nothing.
        log.record(gw1.clone(), ConfigVersion(2)).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            store.get_agent(&gw1).await.expect("agent").applied_version,
            ConfigVersion(7)
        );
    }
}
