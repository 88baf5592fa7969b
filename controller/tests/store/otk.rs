//! One-time key claims: exactly one winner per key under concurrency (one
//! store, and two store handles on one PostgreSQL database as two replicas
//! hold them), the stock window, retries, offline reports and key rotation.

use std::sync::Arc;

use knockgate_controller::name::{AgentName, UserName};
use knockgate_controller::store::{
    ClaimOutcome, ConfigVersion, NewOtkClaim, Store, StoreError, UserKeys,
};

use super::identity::add_user;
use super::{T0, at};

const STOCK: u64 = 16;

pub fn claim(user: &str, counter: u64, agent: &str, offline: bool) -> NewOtkClaim {
    NewOtkClaim {
        user: UserName::new(user).unwrap(),
        counter,
        agent: AgentName::new(agent).unwrap(),
        src: format!("198.51.100.{}", agent.len()),
        at: at(counter as i64),
        offline,
    }
}

/// Two claims of each key in `rounds`, one per store, at once: exactly one
/// wins, and the loser is told who.
pub async fn race(a: &Store, b: &Store, user: &str, rounds: std::ops::Range<u64>) {
    for counter in rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = [(a, "gw-a"), (b, "gw-bb")]
            .into_iter()
            .map(|(store, agent)| {
                let (store, barrier) = (store.clone(), Arc::clone(&barrier));
                let c = claim(user, counter, agent, false);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (
                        c.agent.clone(),
                        store.claim_otk(&c, STOCK, T0).await.unwrap(),
                    )
                })
            })
            .collect();
        let mut results = Vec::new();
        for r in racers {
            results.push(r.await.unwrap());
        }
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, o)| matches!(o, ClaimOutcome::Won(_)))
            .map(|(agent, _)| agent.clone())
            .collect();
        assert_eq!(winners.len(), 1, "counter {counter}: {results:?}");
        let loser = results
            .iter()
            .find_map(|(_, o)| match o {
                ClaimOutcome::Used(Some(first)) => Some(first.claim.agent.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("counter {counter}: no loser told who: {results:?}"));
        assert_eq!(loser, winners[0], "counter {counter}");
    }
}

pub async fn claim_race_has_one_winner(store: &Store) {
    add_user(store, "alice").await;
    race(store, store, "alice", 0..50).await;
    let highest = store.otk_highest_claims().await.unwrap();
    assert_eq!(highest[&UserName::new("alice").unwrap()], 49);
}

pub async fn claims_follow_the_stock(store: &Store) {
    let v0 = add_user(store, "alice").await;
    assert!(store.otk_highest_claims().await.unwrap().is_empty());
    the_first_claim_of_a_stocked_key_wins(store, v0).await;
    withdrawn_keys_lose_online_and_are_recorded_offline(store).await;
    the_stock_moves_past_the_highest_claim(store).await;
    a_second_offline_report_names_the_first(store).await;
    unknown_users_cannot_claim_and_new_keys_restart(store).await;
}

/// Nothing claimed: keys 0..=15 are stocked, 16 is not. The first claim of key 3
/// wins and bumps the version past `v0`; a retry of it is still the winner;
/// another agent loses, told who won, and bumps nothing.
async fn the_first_claim_of_a_stocked_key_wins(store: &Store, v0: ConfigVersion) {
    assert_eq!(
        store
            .claim_otk(&claim("alice", 16, "gw1", false), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Unknown
    );
    let ClaimOutcome::Won(v1) = store
        .claim_otk(&claim("alice", 3, "gw1", false), STOCK, T0)
        .await
        .unwrap()
    else {
        panic!("first claim of key 3 must win");
    };
    assert!(v1 > v0, "a win bumps the config version");
    assert_eq!(store.current_version().await.unwrap(), v1);
    // A retry of the very same claim is still the winner; another agent loses.
    assert_eq!(
        store
            .claim_otk(&claim("alice", 3, "gw1", false), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Repeated
    );
    let ClaimOutcome::Used(Some(first)) = store
        .claim_otk(&claim("alice", 3, "gw2", false), STOCK, T0)
        .await
        .unwrap()
    else {
        panic!("second claim of key 3 must lose");
    };
    assert_eq!(first.claim, claim("alice", 3, "gw1", false));
    assert_eq!(
        store.current_version().await.unwrap(),
        v1,
        "losers bump nothing"
    );
}

/// Keys below the highest claimed were withdrawn: online claims lose,
/// an offline report (granted already) is recorded.
async fn withdrawn_keys_lose_online_and_are_recorded_offline(store: &Store) {
    assert_eq!(
        store
            .claim_otk(&claim("alice", 1, "gw2", false), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Used(None)
    );
    assert!(matches!(
        store
            .claim_otk(&claim("alice", 1, "gw2", true), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Won(_)
    ));
}

/// The stock moved past the highest claim (3): 4..=19.
async fn the_stock_moves_past_the_highest_claim(store: &Store) {
    let alice = UserName::new("alice").unwrap();
    assert_eq!(store.otk_highest_claims().await.unwrap()[&alice], 3);
    assert!(matches!(
        store
            .claim_otk(&claim("alice", 19, "gw1", false), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Won(_)
    ));
    assert_eq!(
        store
            .claim_otk(&claim("alice", 36, "gw1", false), STOCK, T0)
            .await
            .unwrap(),
        ClaimOutcome::Unknown
    );
}

/// A second offline report of a claimed key loses and names the first; the
/// offline report of key 1 was kept as made.
async fn a_second_offline_report_names_the_first(store: &Store) {
    let alice = UserName::new("alice").unwrap();
    let ClaimOutcome::Used(Some(first)) = store
        .claim_otk(&claim("alice", 19, "gw2", true), STOCK, T0)
        .await
        .unwrap()
    else {
        panic!("reuse must lose");
    };
    assert_eq!(first.claim.agent.as_str(), "gw1");
    assert_eq!(
        store.get_otk_claim(&alice, 1).await.unwrap().unwrap().claim,
        claim("alice", 1, "gw2", true)
    );
}

/// Unknown users cannot claim; new keys restart the counter; a removed user's
/// claims go with them.
async fn unknown_users_cannot_claim_and_new_keys_restart(store: &Store) {
    let alice = UserName::new("alice").unwrap();
    assert!(matches!(
        store
            .claim_otk(&claim("nobody", 0, "gw1", false), STOCK, T0)
            .await,
        Err(StoreError::NotFound { entity: "user", .. })
    ));
    let keys = UserKeys {
        spa_key: [1; 32],
        fwknop_key: [2; 32],
        fwknop_hmac_key: [3; 64],
        fwknop_hmac: "sha256".into(),
        rotating_secret: [4; 32],
    };
    store.rotate_user_keys(&alice, &keys).await.unwrap();
    assert!(store.otk_highest_claims().await.unwrap().is_empty());
    store.remove_user(&alice).await.unwrap();
    assert_eq!(store.get_otk_claim(&alice, 1).await.unwrap(), None);
}
