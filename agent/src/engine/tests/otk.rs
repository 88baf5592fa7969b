use std::sync::atomic::Ordering;
use std::time::Duration;

use super::rig::{ALICE, BOB, Rig, T0, material, rig, update, users_and_policies, w0};
use crate::engine::{ClaimJob, ClaimOutcome};
use crate::otk_store::BurnedKeys;

/// The claim the engine handed to the claim task, if any.
fn job(r: &mut Rig) -> Option<ClaimJob> {
    r.jobs.try_recv().ok()
}

#[test]
fn a_granted_claim_opens_the_grant() {
    let mut r = rig();
    r.otk_spa("10.0.0.2", &ALICE, 0, "tcp/443");
    let j = job(&mut r).expect("a claim");
    assert_eq!((j.claim.user.as_str(), j.claim.counter), ("alice", 0));
    assert_eq!(j.claim.src.to_string(), "10.0.0.2");
    assert_eq!(j.claim.at_unix_ms, ((T0 + 5) * 1000) as i64);
    assert!(!j.claim.offline);
    assert!(
        r.open().is_empty(),
        "nothing opens before the controller answers"
    );
    r.claimed(j.id, ClaimOutcome::Granted);
    assert_eq!(r.open(), ["10.0.0.2 tcp/443"]);
    let e = &r.events("spa.accepted", 1)[0];
    assert_eq!((e.user.as_str(), e.policy.as_str()), ("alice", "keys"));
    assert_eq!(e.detail["method"], "otk");
    assert_eq!(e.detail["counter"], 0);
    assert_eq!(e.detail["offline"], false);
}

#[test]
fn a_lost_claim_is_refused_and_the_key_stays_burned() {
    let mut r = rig();
    r.otk_spa("10.0.0.2", &ALICE, 1, "tcp/443");
    let j = job(&mut r).expect("a claim");
    r.claimed(j.id, ClaimOutcome::Refused("used".into()));
    assert!(r.open().is_empty());
    let e = &r.events("spa.rejected", 1)[0];
    assert_eq!((e.reason.as_str(), e.user.as_str()), ("otk_used", "alice"));
    assert_eq!(e.detail["controller_reason"], "used");
    // A resend (a new packet with the same key) is refused here, without a claim.
    r.otk_spa("10.0.0.2", &ALICE, 1, "tcp/443");
    assert!(job(&mut r).is_none(), "no round trip for a burned key");
    // Also after the controller restocks it (it has not heard yet) and after a restart.
    let (users, policies) = users_and_policies();
    let again = update(
        r.dir.path(),
        users,
        policies,
        material(w0()..=w0() + 3, 0..=3),
    );
    r.apply(again).expect("applies");
    r.otk_spa("10.0.0.2", &ALICE, 1, "tcp/443");
    assert!(job(&mut r).is_none(), "still burned after a push");
    let reloaded = BurnedKeys::open(r.dir.path()).expect("reload");
    assert!(reloaded.contains("alice", 1));
    assert!(r.open().is_empty());
}

#[test]
fn without_the_controller_a_deny_policy_refuses() {
    let mut r = rig();
    r.live.store(false, Ordering::Relaxed);
    r.otk_spa("10.0.0.2", &ALICE, 2, "tcp/443");
    assert!(job(&mut r).is_none(), "no sync stream: no claim attempted");
    assert!(r.open().is_empty());
    assert_eq!(r.events("spa.rejected", 1)[0].reason, "otk_offline_denied");
    // A claim that gets no answer in time counts as unreachable too; its late answer
    // changes nothing.
    r.live.store(true, Ordering::Relaxed);
    r.otk_spa("10.0.0.2", &ALICE, 3, "tcp/443");
    let j = job(&mut r).expect("a claim");
    r.tick_after(Duration::from_secs(4));
    r.claimed(j.id, ClaimOutcome::Granted);
    assert!(r.open().is_empty());
    let rejected = r.events("spa.rejected", 2);
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[1].reason, "otk_offline_denied");
    assert!(r.offline.lock().expect("lock").is_empty());
}

#[test]
fn without_the_controller_a_local_policy_grants_and_queues_an_offline_claim() {
    let mut r = rig();
    r.live.store(false, Ordering::Relaxed);
    r.otk_spa("10.0.0.3", &BOB, 0, "tcp/8443");
    assert!(job(&mut r).is_none());
    assert_eq!(r.open(), ["10.0.0.3 tcp/8443"]);
    let e = &r.events("spa.accepted", 1)[0];
    assert_eq!(e.detail["offline"], true);
    assert_eq!(e.detail["method"], "otk");
    let queued = r.offline.lock().expect("lock").pending();
    assert_eq!(queued.len(), 1);
    let c = &queued[0];
    assert_eq!((c.user.as_str(), c.counter, c.offline), ("bob", 0, true));
    // A failed claim RPC is the same as no stream: granted, queued.
    r.live.store(true, Ordering::Relaxed);
    r.otk_spa("10.0.0.4", &BOB, 1, "tcp/8443");
    let j = job(&mut r).expect("a claim");
    r.claimed(j.id, ClaimOutcome::Unreachable("claim timed out".into()));
    assert_eq!(r.open(), ["10.0.0.3 tcp/8443", "10.0.0.4 tcp/8443"]);
    assert_eq!(r.offline.lock().expect("lock").len(), 2);
    // The queue is on disk for the next run.
    let reopened = crate::otk_store::OfflineClaims::open(r.dir.path()).expect("reopen");
    assert_eq!(reopened.len(), 2);
}

#[test]
fn a_client_that_skipped_ahead_is_accepted_and_lower_keys_still_work() {
    let mut r = rig();
    r.otk_spa("10.0.0.2", &ALICE, 3, "tcp/443");
    let j = job(&mut r).expect("a claim");
    assert_eq!(j.claim.counter, 3);
    r.claimed(j.id, ClaimOutcome::Granted);
    assert_eq!(r.open(), ["10.0.0.2 tcp/443"]);
    // Until the controller withdraws them, lower keys of the stock still count.
    r.otk_spa("10.0.0.9", &ALICE, 0, "tcp/443");
    let j = job(&mut r).expect("a claim");
    assert_eq!(j.claim.counter, 0);
    r.claimed(j.id, ClaimOutcome::Granted);
    assert_eq!(r.open().len(), 2);
}

#[test]
fn a_one_time_key_opens_only_what_its_policy_admits() {
    let mut r = rig();
    // bob's keys are for keys-local only; alice's rotating-only policy takes none.
    r.otk_spa("10.0.0.2", &BOB, 0, "tcp/443");
    r.otk_spa("10.0.0.2", &ALICE, 0, "tcp/2222");
    assert!(job(&mut r).is_none());
    let rejected = r.events("spa.rejected", 2);
    assert!(
        rejected.iter().all(|e| e.reason == "access_denied"),
        "{rejected:?}"
    );
    // Refused packets burn nothing: the right request with the same key still works.
    r.otk_spa("10.0.0.2", &ALICE, 0, "tcp/443");
    assert!(job(&mut r).is_some());
}
