//! The claim task against a real tonic server over real mutual TLS on 127.0.0.1 (the
//! stand-in controller, whose first claim of a key wins).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::control::channel;
use crate::control::fake_controller::FakeController;
use crate::control::test_pki::TestPki;
use crate::control::tests::{any_port, eventually, free_port, install_agent_credentials};

fn claim_of(counter: u64, offline: bool) -> Claim {
    Claim {
        user: "alice".into(),
        counter,
        src: "10.0.0.2".parse().expect("ip"),
        at_unix_ms: 1_800_000_000_123,
        offline,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_answered_and_reach_the_engine() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
    let fake = FakeController::start(pki.clone(), any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    install_agent_credentials(&pki, dir.path());
    let ch = channel(&[fake.url()], dir.path()).expect("channel");

    let (engine, answers) = sync_channel(8);
    let (jobs_tx, jobs) = mpsc::channel(8);
    let live = Arc::new(AtomicBool::new(true));
    tokio::spawn(run(
        ch,
        jobs,
        ClaimParams {
            engine,
            live: live.clone(),
            offline: Arc::new(Mutex::new(OfflineClaims::in_memory())),
            offline_added: Arc::new(Notify::new()),
            reconnect_max: Duration::from_millis(300),
        },
    ));
    // The engine's queue is a std channel: wait for it off the runtime's threads.
    let answer = |id| {
        let input = tokio::task::block_in_place(|| answers.recv_timeout(Duration::from_secs(5)))
            .expect("an answer");
        match input {
            Input::Claimed { id: got, outcome } if got == id => outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    let ask = |id, claim| {
        jobs_tx.try_send(ClaimJob { id, claim }).expect("queued");
    };
    ask(1, claim_of(4, false));
    assert_eq!(answer(1), ClaimOutcome::Granted);
    ask(2, claim_of(4, false));
    assert_eq!(answer(2), ClaimOutcome::Refused("used".into()));
    let seen = fake.seen.lock().expect("lock").claims.clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].user.as_str(), seen[0].counter, seen[0].src.as_str()),
        ("alice", 4, "10.0.0.2")
    );
    assert_eq!(seen[0].at_unix_ms, 1_800_000_000_123);

    // Without a sync stream: unreachable at once, no RPC.
    live.store(false, Ordering::Relaxed);
    ask(3, claim_of(5, false));
    let third = answer(3);
    assert!(matches!(third, ClaimOutcome::Unreachable(_)), "{third:?}");
    assert_eq!(fake.seen.lock().expect("lock").claims.len(), 2);

    // A controller that says no with an error status: a refusal, not "unreachable", so
    // no offline rule applies.
    live.store(true, Ordering::Relaxed);
    ask(
        5,
        Claim {
            user: "mallory".into(),
            ..claim_of(7, false)
        },
    );
    let fifth = answer(5);
    assert!(matches!(fifth, ClaimOutcome::Refused(_)), "{fifth:?}");

    // A controller that fails the call: unreachable.
    fake.refuse_reports.store(true, Ordering::Relaxed);
    ask(4, claim_of(6, false));
    let fourth = answer(4);
    assert!(matches!(fourth, ClaimOutcome::Unreachable(_)), "{fourth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_claims_wait_for_the_controller_and_leave_the_queue() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Arc::new(TestPki::new(&["127.0.0.1"]));
    let dir = tempfile::tempdir().expect("tmp");
    install_agent_credentials(&pki, dir.path());
    let addr = free_port();
    let url = format!("https://{addr}");
    let mut queue = OfflineClaims::open(dir.path()).expect("queue");
    queue.push(claim_of(1, true)).expect("push");
    queue.push(claim_of(2, true)).expect("push");
    let queue = Arc::new(Mutex::new(queue));
    let added = Arc::new(Notify::new());
    let (engine, _answers) = sync_channel(8);
    let (_jobs_tx, jobs) = mpsc::channel(8);
    tokio::spawn(run(
        channel(std::slice::from_ref(&url), dir.path()).expect("channel"),
        jobs,
        ClaimParams {
            engine,
            live: Arc::new(AtomicBool::new(false)),
            offline: queue.clone(),
            offline_added: added.clone(),
            reconnect_max: Duration::from_millis(300),
        },
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(queue.lock().expect("lock").len(), 2, "kept while away");

    let fake = FakeController::start(pki.clone(), addr).await;
    let seen = fake.seen.clone();
    eventually("the queue to drain", || {
        queue.lock().expect("lock").is_empty()
    })
    .await;
    // One more, while the controller is there: woken at once.
    queue
        .lock()
        .expect("lock")
        .push(claim_of(3, true))
        .expect("push");
    added.notify_one();
    eventually("the third claim", || {
        seen.lock().expect("lock").claims.len() == 3
    })
    .await;
    let claims = seen.lock().expect("lock").claims.clone();
    assert!(claims.iter().all(|c| c.offline));
    assert_eq!(
        claims.iter().map(|c| c.counter).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    eventually("the queue to drain", || {
        queue.lock().expect("lock").is_empty()
    })
    .await;
    assert!(
        OfflineClaims::open(dir.path()).expect("reopen").is_empty(),
        "removed on disk too"
    );
}
