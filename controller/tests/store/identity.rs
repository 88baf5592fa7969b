//! Stories about who exists: users, agents and their enrolment, policies.

use std::collections::BTreeMap;
use std::sync::Arc;

use knockgate_controller::name::{AgentName, PolicyName, UserName};
use knockgate_controller::store::{
    AgentState, CONNECTION_LEASE, ConfigVersion, NewAgent, NewUser, Store, StoreError, TokenError,
    TokenHash, UserKeys,
};
use serde_json::json;

use super::{T0, at};

fn keys(seed: u8) -> UserKeys {
    UserKeys {
        spa_key: [seed; 32],
        fwknop_key: [seed.wrapping_add(1); 32],
        fwknop_hmac_key: [seed.wrapping_add(2); 64],
        fwknop_hmac: "sha256".into(),
        rotating_secret: [seed.wrapping_add(3); 32],
    }
}

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

pub async fn add_user(store: &Store, name: &str) -> ConfigVersion {
    let new = NewUser {
        name: user(name),
        groups: ["ops".to_string(), "admins".to_string()].into(),
        keys: keys(7),
        created_at: T0,
    };
    store.add_user(&new).await.unwrap()
}

async fn add_agent(store: &Store, name: &str) {
    let new = NewAgent {
        name: agent(name),
        labels: BTreeMap::from([("role".into(), "web".into())]),
        address: Some("198.51.100.7".into()),
        created_at: T0,
    };
    store.add_agent(&new).await.unwrap();
}

pub async fn user_lifecycle(store: &Store) {
    assert_eq!(store.current_version().await.unwrap(), ConfigVersion(0));
    assert_eq!(add_user(store, "alice").await, ConfigVersion(1));
    alice_is_stored_as_added(store).await;
    a_user_name_is_taken_once(store).await;
    assert_eq!(add_user(store, "bob").await, ConfigVersion(2));
    let names: Vec<_> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, [user("alice"), user("bob")]);
    disabling_and_rotating_alice_bump_the_version(store).await;
    a_removed_user_is_gone(store).await;
}

/// alice reads back as added, and her Debug form hides her keys.
async fn alice_is_stored_as_added(store: &Store) {
    let alice = store.get_user(&user("alice")).await.unwrap();
    assert_eq!(alice.name, user("alice"));
    assert_eq!(alice.groups.iter().collect::<Vec<_>>(), ["admins", "ops"]);
    assert!(!alice.disabled);
    assert_eq!(alice.created_at, T0);
    assert_eq!(alice.keys, keys(7));
    assert_eq!(alice.key_version, 1);
    assert!(
        !format!("{alice:?}").contains("7, 7"),
        "Debug must not print keys"
    );
}

/// A name is taken once; the failed transaction bumps nothing.
async fn a_user_name_is_taken_once(store: &Store) {
    let dup = NewUser {
        name: user("alice"),
        groups: Default::default(),
        keys: keys(1),
        created_at: T0,
    };
    let err = store.add_user(&dup).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { entity: "user", .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "user alice already exists");
    assert_eq!(store.current_version().await.unwrap(), ConfigVersion(1));
}

/// Disabling, enabling and rotating keys each change what agents hold: versions 3 to 5.
async fn disabling_and_rotating_alice_bump_the_version(store: &Store) {
    assert_eq!(
        store.set_user_disabled(&user("alice"), true).await.unwrap(),
        ConfigVersion(3)
    );
    assert!(store.get_user(&user("alice")).await.unwrap().disabled);
    assert_eq!(
        store
            .set_user_disabled(&user("alice"), false)
            .await
            .unwrap(),
        ConfigVersion(4)
    );
    assert!(!store.get_user(&user("alice")).await.unwrap().disabled);

    assert_eq!(
        store
            .rotate_user_keys(&user("alice"), &keys(42))
            .await
            .unwrap(),
        ConfigVersion(5)
    );
    let alice = store.get_user(&user("alice")).await.unwrap();
    assert_eq!((alice.key_version, alice.keys), (2, keys(42)));
}

/// Removing bob is version 6; afterwards every operation on him is NotFound and
/// bumps nothing.
async fn a_removed_user_is_gone(store: &Store) {
    assert_eq!(
        store.remove_user(&user("bob")).await.unwrap(),
        ConfigVersion(6)
    );
    let err = store.get_user(&user("bob")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { entity: "user", .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "user bob not found");
    assert!(matches!(
        store.remove_user(&user("bob")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.set_user_disabled(&user("bob"), true).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.rotate_user_keys(&user("bob"), &keys(1)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.current_version().await.unwrap(), ConfigVersion(6));
}

pub async fn agent_enrols_once(store: &Store) {
    add_agent(store, "web-1").await;
    web1_is_added_once(store).await;
    a_token_works_once_before_it_expires(store).await;
    enrolment_and_sightings_are_recorded(store).await;
    an_unpinned_address_follows_reports(store).await;
    a_connection_is_believed_while_its_lease_is_renewed(store).await;
    acknowledgements_are_written_as_one_batch(store).await;
    labels_and_revocation_bump_the_version(store).await;
    a_revoked_agent_cannot_enrol_again(store).await;
    add_agent(store, "db-1").await;
    let names: Vec<_> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, [agent("db-1"), agent("web-1")]);
    assert!(matches!(
        store.touch_agent(&agent("ghost"), T0, true, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.revoke_agent(&agent("ghost"), T0).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// web-1 reads back as added, not yet enrolled or seen; its name is taken once.
async fn web1_is_added_once(store: &Store) {
    let web1 = store.get_agent(&agent("web-1")).await.unwrap();
    assert_eq!(web1.labels["role"], "web");
    assert_eq!(web1.address.as_deref(), Some("198.51.100.7"));
    assert_eq!(
        (
            web1.enrolled_at,
            web1.cert_fingerprint,
            web1.revoked_at,
            web1.last_seen
        ),
        (None, None, None, None)
    );
    assert_eq!(
        (web1.applied_version, web1.connected),
        (ConfigVersion(0), false)
    );
    let err = store
        .add_agent(&NewAgent {
            name: agent("web-1"),
            labels: BTreeMap::new(),
            address: None,
            created_at: T0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "agent",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A token works once, and only before it expires; unknown tokens and agents are
/// told apart.
async fn a_token_works_once_before_it_expires(store: &Store) {
    let token = TokenHash::of("kg-enrol-secret-1");
    store
        .create_token(&agent("web-1"), &token, at(600), T0)
        .await
        .unwrap();
    assert_eq!(
        store.redeem_token(&token, at(1)).await.unwrap(),
        agent("web-1")
    );
    assert!(matches!(
        store.redeem_token(&token, at(2)).await,
        Err(TokenError::Used)
    ));
    let short = TokenHash::of("kg-enrol-secret-2");
    store
        .create_token(&agent("web-1"), &short, at(10), T0)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem_token(&short, at(10)).await,
        Err(TokenError::Expired)
    ));
    assert!(matches!(
        store.redeem_token(&short, at(11)).await,
        Err(TokenError::Expired)
    ));
    assert!(matches!(
        store.redeem_token(&TokenHash::of("nope"), T0).await,
        Err(TokenError::Unknown)
    ));
    let err = store
        .create_token(&agent("ghost"), &TokenHash::of("x"), at(60), T0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "agent",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Enrolment, sightings and applied versions are recorded; the admin's address
/// stays pinned and the applied version never moves back.
async fn enrolment_and_sightings_are_recorded(store: &Store) {
    store
        .set_agent_enrolled(&agent("web-1"), "ab12", at(1))
        .await
        .unwrap();
    store
        .touch_agent(&agent("web-1"), at(3), true, Some("203.0.113.9"))
        .await
        .unwrap();
    store
        .touch_agent(&agent("web-1"), at(4), true, None)
        .await
        .unwrap();
    store
        .set_applied_versions(&[(agent("web-1"), ConfigVersion(5))])
        .await
        .unwrap();
    store
        .set_applied_versions(&[(agent("web-1"), ConfigVersion(3))])
        .await
        .unwrap();
    let web1 = store.get_agent(&agent("web-1")).await.unwrap();
    assert_eq!(
        (web1.enrolled_at, web1.cert_fingerprint.as_deref()),
        (Some(at(1)), Some("ab12"))
    );
    assert_eq!((web1.last_seen, web1.connected), (Some(at(4)), true));
    assert_eq!(
        (web1.address.as_deref(), web1.address_pinned),
        (Some("198.51.100.7"), true),
        "an address the admin set is not replaced by the reported one"
    );
    assert_eq!(
        web1.applied_version,
        ConfigVersion(5),
        "applied version never moves back"
    );
}

/// Once the admin clears the address, the reported one is used and kept.
async fn an_unpinned_address_follows_reports(store: &Store) {
    store
        .set_agent_address(&agent("web-1"), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(&agent("web-1")).await.unwrap().address,
        None
    );
    store
        .touch_agent(&agent("web-1"), at(5), true, Some("203.0.113.9"))
        .await
        .unwrap();
    store
        .touch_agent(&agent("web-1"), at(6), true, None)
        .await
        .unwrap();
    let web1 = store.get_agent(&agent("web-1")).await.unwrap();
    assert_eq!(
        (web1.address.as_deref(), web1.address_pinned),
        (Some("203.0.113.9"), false),
        "unpinned, the reported address is used and kept"
    );
}

/// `connected` counts only while the replica holding the stream renews the
/// lease; one that died without clearing it leaves the agent stale, not
/// connected. A lease is never renewed for an agent recorded as disconnected.
async fn a_connection_is_believed_while_its_lease_is_renewed(store: &Store) {
    let web1 = agent("web-1");
    let lease = CONNECTION_LEASE.as_secs() as i64;
    store.touch_agent(&web1, at(10), true, None).await.unwrap();
    let a = store.get_agent(&web1).await.unwrap();
    assert_eq!(a.state(at(10 + lease - 1)), AgentState::Connected);
    assert_eq!(a.state(at(10 + lease)), AgentState::Stale, "lease ran out");
    store
        .renew_leases(&[web1.clone(), agent("ghost")], at(10 + lease))
        .await
        .unwrap();
    let a = store.get_agent(&web1).await.unwrap();
    assert_eq!(a.last_seen, Some(at(10 + lease)));
    assert_eq!(
        a.state(at(10 + lease + 1)),
        AgentState::Connected,
        "renewed"
    );
    store
        .touch_agent(&web1, at(200), false, None)
        .await
        .unwrap();
    store
        .renew_leases(std::slice::from_ref(&web1), at(201))
        .await
        .unwrap();
    let a = store.get_agent(&web1).await.unwrap();
    assert_eq!(
        (a.last_seen, a.state(at(201))),
        (Some(at(200)), AgentState::Stale),
        "a disconnected agent's lease is not renewed"
    );
}

/// A batch of acknowledgements, in one statement: each agent's applied version moves to
/// the highest it acknowledged, never back; a name with no agent changes nothing.
async fn acknowledgements_are_written_as_one_batch(store: &Store) {
    let web1 = agent("web-1");
    let before = store.get_agent(&web1).await.unwrap().applied_version;
    let ahead = ConfigVersion(before.0 + 7);
    store
        .set_applied_versions(&[
            (web1.clone(), ahead),
            (agent("ghost"), ConfigVersion(9)),
            (web1.clone(), ConfigVersion(before.0 + 2)),
        ])
        .await
        .unwrap();
    assert_eq!(store.get_agent(&web1).await.unwrap().applied_version, ahead);
    store
        .set_applied_versions(&[(web1.clone(), ConfigVersion(before.0 + 5))])
        .await
        .unwrap();
    store.set_applied_versions(&[]).await.unwrap();
    assert_eq!(
        store.get_agent(&web1).await.unwrap().applied_version,
        ahead,
        "never backwards"
    );
    assert!(
        store.get_agent(&agent("ghost")).await.is_err(),
        "no row made"
    );
}

/// Labels and revocation change what agents enforce: both bump the version; the
/// first revocation time stays.
async fn labels_and_revocation_bump_the_version(store: &Store) {
    let v0 = store.current_version().await.unwrap();
    let labels = BTreeMap::from([("role".to_string(), "db".to_string())]);
    assert_eq!(
        store
            .set_agent_labels(&agent("web-1"), &labels)
            .await
            .unwrap(),
        ConfigVersion(v0.0 + 1)
    );
    assert_eq!(
        store.revoke_agent(&agent("web-1"), at(20)).await.unwrap(),
        ConfigVersion(v0.0 + 2)
    );
    store.revoke_agent(&agent("web-1"), at(30)).await.unwrap();
    let web1 = store.get_agent(&agent("web-1")).await.unwrap();
    assert_eq!((web1.labels, web1.revoked_at), (labels, Some(at(20))));
}

/// A revoked agent cannot enrol again, even with a fresh token.
async fn a_revoked_agent_cannot_enrol_again(store: &Store) {
    let again = TokenHash::of("kg-enrol-secret-3");
    store
        .create_token(&agent("web-1"), &again, at(600), at(21))
        .await
        .unwrap();
    assert!(
        matches!(store.redeem_token(&again, at(22)).await, Err(TokenError::Revoked(a)) if a == agent("web-1"))
    );
}

pub async fn concurrent_redeem_has_one_winner(store: &Store) {
    add_agent(store, "edge").await;
    for round in 0..16 {
        let token = TokenHash::of(&format!("race-{round}"));
        store
            .create_token(&agent("edge"), &token, at(600), T0)
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.redeem_token(&token, at(1)).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for racer in racers {
            results.push(racer.await.unwrap());
        }
        let winners = results.iter().filter(|r| r.is_ok()).count();
        let used = results
            .iter()
            .filter(|r| matches!(r, Err(TokenError::Used)))
            .count();
        assert_eq!((winners, used), (1, 1), "round {round}: {results:?}");
    }
}

pub async fn policy_lifecycle(store: &Store) {
    let ssh = PolicyName::new("ssh").unwrap();
    let spec = json!({"agents": {"role": "web"}, "groups": ["ops"], "ports": [{"proto": "tcp", "port": 22}]});
    let v1 = store.add_policy(&ssh, &spec, T0).await.unwrap();
    let got = store.get_policy(&ssh).await.unwrap();
    assert_eq!(
        (got.spec, got.created_at, got.updated_at),
        (spec.clone(), T0, T0)
    );
    let err = store.add_policy(&ssh, &spec, T0).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "policy",
                ..
            }
        ),
        "{err:?}"
    );

    let changed = json!({"ports": [{"proto": "tcp", "port": 2222}]});
    let v2 = store.update_policy(&ssh, &changed, at(5)).await.unwrap();
    assert_eq!(v2.0, v1.0 + 1);
    let got = store.get_policy(&ssh).await.unwrap();
    assert_eq!(
        (got.spec, got.created_at, got.updated_at),
        (changed, T0, at(5))
    );

    let vpn = PolicyName::new("vpn").unwrap();
    store.add_policy(&vpn, &json!({}), T0).await.unwrap();
    let names: Vec<_> = store
        .list_policies()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, [ssh.clone(), vpn]);

    let v4 = store.remove_policy(&ssh).await.unwrap();
    assert_eq!(v4.0, v2.0 + 2);
    assert!(matches!(
        store.get_policy(&ssh).await,
        Err(StoreError::NotFound {
            entity: "policy",
            ..
        })
    ));
    assert!(matches!(
        store.remove_policy(&ssh).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update_policy(&ssh, &json!({}), T0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.current_version().await.unwrap(), v4);
}
