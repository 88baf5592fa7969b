//! Stories about what happened: the audit trail and grants.

use std::net::IpAddr;

use knockgate_controller::name::{AgentName, PolicyName, UserName};
use knockgate_controller::store::{
    AppendOutcome, AuditFilter, AuditId, GrantFilter, GrantId, NewAuditEvent, NewGrant,
    RevokeTarget, Store, StoreError,
};
use serde_json::json;

use super::{T0, at};

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

fn event(
    agent_name: Option<&str>,
    seq: Option<u64>,
    s: i64,
    kind: &str,
    user: Option<&str>,
) -> NewAuditEvent {
    NewAuditEvent {
        at: at(s),
        agent: agent_name.map(agent),
        agent_seq: seq,
        kind: kind.into(),
        user: user.map(Into::into),
        src: Some("198.51.100.7".into()),
        detail: json!({"seq": seq, "note": "ok"}),
    }
}

fn inserted(outcome: AppendOutcome) -> AuditId {
    match outcome {
        AppendOutcome::Inserted(id) => id,
        AppendOutcome::Duplicate => panic!("expected an insert"),
    }
}

pub async fn audit_dedupe_filters_and_paging(store: &Store) {
    let (id1, first) = appends_dedupe_by_agent_and_seq(store).await;
    let all = store.query_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0].id, id1);
    assert_eq!(all[0].event, first);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    filters_select_by_kind_user_agent_and_time(store).await;
    follow_pages_cover_the_trail(store, &all).await;
}

/// Appends seven events: a redelivery of (agent, seq) is a no-op, the same seq
/// from another agent is another event, events without (agent, seq) are never
/// de-duplicated; a seq out of the database's range is refused. Returns the first
/// event and its id.
async fn appends_dedupe_by_agent_and_seq(store: &Store) -> (AuditId, NewAuditEvent) {
    let first = event(Some("web-1"), Some(1), 0, "knock.completed", Some("alice"));
    let id1 = inserted(store.append_audit(&first).await.unwrap());
    // Redelivery of (web-1, 1), even with other content, is a no-op.
    let mut redelivered = first.clone();
    redelivered.detail = json!({"different": true});
    assert_eq!(
        store.append_audit(&redelivered).await.unwrap(),
        AppendOutcome::Duplicate
    );
    // The same seq from another agent is another event.
    inserted(
        store
            .append_audit(&event(
                Some("web-2"),
                Some(1),
                1,
                "spa.rejected",
                Some("mallory"),
            ))
            .await
            .unwrap(),
    );
    inserted(
        store
            .append_audit(&event(
                Some("web-1"),
                Some(2),
                2,
                "grant.opened",
                Some("alice"),
            ))
            .await
            .unwrap(),
    );
    // Without (agent, seq) nothing is de-duplicated.
    for _ in 0..2 {
        inserted(
            store
                .append_audit(&event(None, None, 3, "auth.refused", None))
                .await
                .unwrap(),
        );
        inserted(
            store
                .append_audit(&event(Some("web-1"), None, 3, "enrol.refused", None))
                .await
                .unwrap(),
        );
    }
    let err = store
        .append_audit(&event(Some("web-1"), Some(u64::MAX), 4, "x", None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
    (id1, first)
}

fn kinds(events: Vec<knockgate_controller::store::AuditEvent>) -> Vec<String> {
    events.into_iter().map(|e| e.event.kind).collect()
}

/// The kind (a prefix), user, agent and since filters each select what they name.
async fn filters_select_by_kind_user_agent_and_time(store: &Store) {
    let by_kind = AuditFilter {
        kind: Some("spa.rejected".into()),
        ..Default::default()
    };
    assert_eq!(
        kinds(store.query_audit(&by_kind).await.unwrap()),
        ["spa.rejected"]
    );
    // The kind filter is a prefix match (as the API documents it).
    for (prefix, expected) in [
        ("spa", &["spa.rejected"][..]),
        ("spa.rej", &["spa.rejected"][..]),
        ("grant", &["grant.opened"][..]),
        ("enrol.refused", &["enrol.refused", "enrol.refused"][..]),
        ("spa.rejected.x", &[][..]),
        ("spa_", &[][..]),
    ] {
        let filter = AuditFilter {
            kind: Some(prefix.into()),
            ..Default::default()
        };
        assert_eq!(
            kinds(store.query_audit(&filter).await.unwrap()),
            expected,
            "{prefix}"
        );
    }
    let by_user = AuditFilter {
        user: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(
        kinds(store.query_audit(&by_user).await.unwrap()),
        ["knock.completed", "grant.opened"]
    );
    let by_agent = AuditFilter {
        agent: Some(agent("web-2")),
        ..Default::default()
    };
    assert_eq!(
        kinds(store.query_audit(&by_agent).await.unwrap()),
        ["spa.rejected"]
    );
    let since = AuditFilter {
        since: Some(at(2)),
        agent: Some(agent("web-1")),
        ..Default::default()
    };
    assert_eq!(
        kinds(store.query_audit(&since).await.unwrap()),
        ["grant.opened", "enrol.refused", "enrol.refused"]
    );
}

/// --follow paging: pages of 3 after the last id seen, until empty, cover `all`;
/// newest first gives the last two.
async fn follow_pages_cover_the_trail(
    store: &Store,
    all: &[knockgate_controller::store::AuditEvent],
) {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .query_audit(&AuditFilter {
                after_id: after,
                limit: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        assert!(page.len() <= 3);
        seen.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(seen, all.iter().map(|e| e.id).collect::<Vec<_>>());
    let newest = store
        .query_audit(&AuditFilter {
            newest_first: true,
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.id).collect::<Vec<_>>(),
        [all[6].id, all[5].id]
    );
}

fn grant(
    agent_ref: &str,
    user: Option<&str>,
    src: &str,
    proto: &str,
    port: u16,
    expires: i64,
) -> NewGrant {
    NewGrant {
        agent: agent("web-1"),
        agent_ref: agent_ref.into(),
        user: user.map(|u| UserName::new(u).unwrap()),
        src: src.parse::<IpAddr>().unwrap(),
        proto: proto.into(),
        port,
        policy: PolicyName::new("ssh").unwrap(),
        opened_at: T0,
        expires_at: at(expires),
    }
}

pub async fn grants_open_close_and_revoke(store: &Store) {
    let [id1, id2, id3] = opens_are_recorded_once(store).await;
    filters_select_by_user_time_and_agent(store, id1, id2).await;
    closes_are_recorded_once(store, id1, id2).await;
    revokes_reach_only_open_grants(store, id2, id3).await;
}

fn ids(grants: Vec<knockgate_controller::store::Grant>) -> Vec<GrantId> {
    grants.into_iter().map(|g| g.id).collect()
}

/// Grant 1 (alice, tcp/22), 2 (bob, udp over IPv6) and 3 (no user, expiring after
/// 1 s) are recorded in order, a redelivered open once. Returns their ids.
async fn opens_are_recorded_once(store: &Store) -> [GrantId; 3] {
    let g1 = grant("1", Some("alice"), "198.51.100.7", "tcp", 22, 60);
    let id1 = store.record_grant_open(&g1).await.unwrap();
    assert_eq!(
        store.record_grant_open(&g1).await.unwrap(),
        id1,
        "a redelivered open is idempotent"
    );
    let id2 = store
        .record_grant_open(&grant("2", Some("bob"), "2001:db8::7", "udp", 51820, 60))
        .await
        .unwrap();
    let id3 = store
        .record_grant_open(&grant("3", None, "203.0.113.1", "tcp", 443, 1))
        .await
        .unwrap();
    assert!(id1 < id2 && id2 < id3);

    let all = store.list_grants(&GrantFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        (
            all[0].src,
            all[0].port,
            all[0].user.as_ref().map(UserName::as_str)
        ),
        (g1.src, 22, Some("alice"))
    );
    assert_eq!(
        (all[1].src.to_string().as_str(), all[1].proto.as_str()),
        ("2001:db8::7", "udp")
    );
    assert_eq!(
        (
            all[2].user.clone(),
            all[2].closed_at,
            all[2].revoke_requested
        ),
        (None, None, false)
    );
    [id1, id2, id3]
}

/// The user, active-at and agent filters each select what they name.
async fn filters_select_by_user_time_and_agent(store: &Store, id1: GrantId, id2: GrantId) {
    let alice = GrantFilter {
        user: Some(UserName::new("alice").unwrap()),
        ..Default::default()
    };
    assert_eq!(ids(store.list_grants(&alice).await.unwrap()), [id1]);
    let active = GrantFilter {
        active_at: Some(at(2)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_grants(&active).await.unwrap()), [id1, id2]);
    let other = GrantFilter {
        agent: Some(agent("web-9")),
        ..Default::default()
    };
    assert!(store.list_grants(&other).await.unwrap().is_empty());
}

/// The first close of grant 2 is the one kept; closing an unknown grant is
/// NotFound; a closed grant is no longer active.
async fn closes_are_recorded_once(store: &Store, id1: GrantId, id2: GrantId) {
    assert_eq!(
        store
            .record_grant_close(&agent("web-1"), "2", at(5), "closed")
            .await
            .unwrap(),
        id2
    );
    store
        .record_grant_close(&agent("web-1"), "2", at(9), "expired")
        .await
        .unwrap();
    let closed = store
        .list_grants(&GrantFilter::default())
        .await
        .unwrap()
        .remove(1);
    assert_eq!(
        (closed.closed_at, closed.close_reason.as_deref()),
        (Some(at(5)), Some("closed"))
    );
    let err = store
        .record_grant_close(&agent("web-1"), "404", at(5), "x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "grant",
                ..
            }
        ),
        "{err:?}"
    );
    let active = GrantFilter {
        active_at: Some(at(2)),
        ..Default::default()
    };
    assert_eq!(ids(store.list_grants(&active).await.unwrap()), [id1]);
}

/// Revoke requests reach only grants still open, and bump the version only then.
async fn revokes_reach_only_open_grants(store: &Store, id2: GrantId, id3: GrantId) {
    let v0 = store.current_version().await.unwrap();
    assert_eq!(
        store
            .request_grant_revoke(&RevokeTarget::User(UserName::new("alice").unwrap()), at(10))
            .await
            .unwrap(),
        1
    );
    let v1 = store.current_version().await.unwrap();
    assert_eq!(v1.0, v0.0 + 1);
    assert_eq!(
        store
            .request_grant_revoke(&RevokeTarget::Grant(id2), at(10))
            .await
            .unwrap(),
        0,
        "closed"
    );
    assert_eq!(
        store
            .request_grant_revoke(&RevokeTarget::Grant(id3), at(10))
            .await
            .unwrap(),
        0,
        "expired"
    );
    assert_eq!(
        store
            .request_grant_revoke(&RevokeTarget::Grant(GrantId(9999)), at(10))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.current_version().await.unwrap(), v1);
    let flags: Vec<_> = store
        .list_grants(&GrantFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|g| g.revoke_requested)
        .collect();
    assert_eq!(flags, [true, false, false]);
}
