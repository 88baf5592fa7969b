//! The store's story tests, run for real against both backends: SQLite in a
//! temp dir and a throwaway PostgreSQL cluster (see `store/pg.rs`). Every
//! story is one async fn over `&Store`; `both!` makes a test per backend.

#![allow(clippy::unwrap_used)] // tests unwrap by design

#[path = "store/identity.rs"]
mod identity;
#[path = "store/otk.rs"]
mod otk;
#[path = "store/pg.rs"]
mod pg;
#[path = "store/status.rs"]
mod status;
#[path = "store/trail.rs"]
mod trail;

use knockgate_controller::store::{DEFAULT_SQLITE_FILE, Store, Timestamp};

/// A fixed "now" so stories are deterministic.
pub const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

/// `T0` plus `s` seconds.
pub fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.unix_millis() + s * 1000)
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join(DEFAULT_SQLITE_FILE))
        .await
        .unwrap();
    (store, dir)
}

macro_rules! both {
    ($($module:ident :: $story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$module::$story(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let store = super::pg::fresh_store().await;
                    super::$module::$story(&store).await;
                }
            )*
        }
    };
}

both!(
    identity::user_lifecycle,
    identity::agent_enrols_once,
    identity::concurrent_redeem_has_one_winner,
    identity::policy_lifecycle,
    trail::audit_dedupe_filters_and_paging,
    trail::grants_open_close_and_revoke,
    otk::claim_race_has_one_winner,
    otk::claims_follow_the_stock,
    status::refusals_are_counted_by_kind_and_reason,
);

/// Two controller replicas hold two pools on one database: still exactly one
/// winner per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_across_two_store_handles_have_one_winner() {
    let url = pg::fresh_database().await;
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    identity::add_user(&a, "alice").await;
    otk::race(&a, &b, "alice", 0..50).await;
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_SQLITE_FILE);
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        store.backend(),
        knockgate_controller::store::Backend::Sqlite
    );
    identity::add_user(&store, "alice").await;
    store.close().await;
    drop(store);
    let reopened = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(reopened.list_users().await.unwrap().len(), 1);
    assert_eq!(reopened.current_version().await.unwrap().0, 1);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_open_reports_where_it_failed() {
    let err = Store::open("/nonexistent-dir/knockgate.db")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to open database /nonexistent-dir/knockgate.db"
    );
}

#[tokio::test]
async fn postgres_replicas_hear_version_bumps() {
    let store = pg::fresh_store().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(store.postgres_pool().unwrap())
        .await
        .unwrap();
    listener
        .listen(knockgate_controller::store::CONFIG_CHANNEL)
        .await
        .unwrap();
    identity::add_user(&store, "alice").await;
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.payload(), "1");
}
