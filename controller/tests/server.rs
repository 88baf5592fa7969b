//! The gRPC server against the real thing: a data dir from `init`, the
//! server on 127.0.0.1:0 with its own mutual-TLS accept loop, tonic clients
//! with real certificates. Every story runs on SQLite and on a throwaway
//! PostgreSQL (`store/pg.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap by design

#[path = "server/harness.rs"]
mod harness;
#[path = "server/otk.rs"]
mod otk;
#[path = "store/pg.rs"]
mod pg;
#[path = "server/profile.rs"]
mod profile;
#[path = "server/rotation.rs"]
mod rotation;
#[path = "server/security.rs"]
mod security;
#[path = "server/status.rs"]
mod status;
#[path = "server/story.rs"]
mod story;

use harness::Server;
use knockgate_controller::store::{DEFAULT_SQLITE_FILE, Store};

async fn sqlite_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join(DEFAULT_SQLITE_FILE))
        .await
        .unwrap();
    (Server::start(store).await, dir)
}

async fn postgres_server() -> Server {
    Server::start(pg::fresh_store().await).await
}

macro_rules! both {
    ($($module:ident :: $story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let (server, _dir) = super::sqlite_server().await;
                    super::$module::$story(&server).await;
                    server.shutdown().await.unwrap();
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let server = super::postgres_server().await;
                    super::$module::$story(&server).await;
                    server.shutdown().await.unwrap();
                }
            )*
        }
    };
}

both!(
    security::no_client_certificate,
    security::foreign_ca_certificate,
    security::wrong_service_for_identity,
    security::revoked_agent,
    security::renewed_and_expired_certificates,
    security::reused_and_expired_tokens,
    story::sync_story,
    story::report_is_deduplicated,
    rotation::rotating_sequences,
    otk::one_time_keys,
    otk::claim_race_one_server,
    status::fleet_status,
    profile::user_gateways,
);

/// Two replicas on one PostgreSQL database: agents claiming through
/// different replicas still get exactly one winner per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_claim_race() {
    let url = pg::fresh_database().await;
    let a = Server::start(Store::open(&url).await.unwrap()).await;
    let b = a.replica(Store::open(&url).await.unwrap()).await;
    otk::claim_race(&a, &b).await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Replicas started together on a fresh database race to pin the initial admin
/// identity: every one of them starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_start_together() {
    harness::install_provider();
    let url = pg::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    knockgate_controller::datadir::init(&data, &[]).unwrap();
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (url, data) = (url.clone(), data.clone());
        starts.spawn(async move {
            let store = Store::open(&url).await.unwrap();
            let certs = knockgate_controller::datadir::load(&data).unwrap();
            knockgate_controller::server::Controller::new(store, certs)
                .await
                .map(|_| ())
        });
    }
    while let Some(started) = starts.join_next().await {
        started.unwrap().expect("every replica starts");
    }
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.list_admins().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_propagate_changes() {
    let url = pg::fresh_database().await;
    let a = Server::start(Store::open(&url).await.unwrap()).await;
    let b = a.replica(Store::open(&url).await.unwrap()).await;
    story::replicas_propagate(&a, &b).await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Shutdown ends live agent streams instead of waiting for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_streams() {
    let (server, _dir) = sqlite_server().await;
    let gw = harness::enrolled_agent(&server, "gw1", &[]).await;
    let mut sync = harness::SyncStream::open(&gw, &server, "").await;
    sync.next_config(std::time::Duration::from_secs(5)).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown hung on a live stream")
        .unwrap();
    let end = sync.next(std::time::Duration::from_secs(5)).await;
    assert!(matches!(end, Err(_) | Ok(None)), "{end:?}");
}
