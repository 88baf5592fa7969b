//! The fleet status story: agents in every state, grants open and not, refusals in the
//! window and before it, counted by the real controller over real mutual TLS.

use std::time::{Duration, Instant};

use knockgate_controller::store::{NewAuditEvent, Timestamp};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use serde_json::json;
use tonic::Code;

use super::harness::*;
use super::story::grant_event;

const HOUR_MS: i64 = 3_600_000;

/// An event gw1 reports, `ago_ms` before now.
fn event(seq: u64, ago_ms: i64, kind: &str, reason: &str) -> api::Event {
    api::Event {
        seq,
        at_unix_ms: Timestamp::now().unix_millis() - ago_ms,
        kind: kind.into(),
        src: "198.51.100.30".into(),
        reason: reason.into(),
        ..api::Event::default()
    }
}

/// A grant event of alice's (story.rs) whose grant expired a second ago.
fn expired_grant(seq: u64, grant_ref: &str) -> api::Event {
    let mut e = grant_event(seq, "grant.opened", "alice", grant_ref);
    if let Some(g) = &mut e.grant {
        g.expires_at_unix_ms = Timestamp::now().unix_millis() - 1_000;
    }
    e
}

fn refusal(kind: &str, reason: &str, count: u64) -> api::RefusalCount {
    api::RefusalCount {
        kind: kind.into(),
        reason: reason.into(),
        count,
    }
}

async fn status(admin: &mut AdminClient<tonic::transport::Channel>) -> api::FleetStatusResponse {
    let since_unix_ms = Timestamp::now().unix_millis() - HOUR_MS;
    admin
        .fleet_status(api::FleetStatusRequest { since_unix_ms })
        .await
        .unwrap()
        .into_inner()
}

/// Polls until `pred` holds (streams start and end asynchronously).
async fn status_until(
    admin: &mut AdminClient<tonic::transport::Channel>,
    pred: impl Fn(&api::FleetStatusResponse) -> bool,
) -> api::FleetStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(admin).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn fleet_status(server: &Server) {
    let mut admin = server.admin();
    new_user(server, "alice").await;
    let gw1 = enrolled_agent(server, "gw1", &[]).await;
    let gw2 = enrolled_agent(server, "gw2", &[]).await;
    enrolled_agent(server, "gw3", &[]).await;
    let gw4 = enrolled_agent(server, "gw4", &[]).await;
    add_agent(server, "gw5", &[]).await;
    admin
        .revoke_agent(api::RevokeAgentRequest { name: "gw2".into() })
        .await
        .unwrap();

    // gw4 applies the current config (gw1 and gw3 have not), hangs up, and then falls
    // behind.
    let mut sync = SyncStream::open(&gw4, server, "").await;
    sync.next_config(Duration::from_secs(5)).await;
    status_until(&mut admin, |s| {
        s.agents_connected == 1 && s.agents_behind == 2
    })
    .await;
    drop(sync);
    status_until(&mut admin, |s| s.agents_stale == 1).await;
    new_user(server, "bob").await;

    // gw1 holds its stream and is current.
    let mut sync = SyncStream::open(&gw1, server, "").await;
    sync.next_config(Duration::from_secs(5)).await;

    // Grants: one open, one closed, one expired.
    let reported = vec![
        grant_event(1, "grant.opened", "alice", "g-1"),
        grant_event(2, "grant.opened", "alice", "g-2"),
        grant_event(3, "grant.closed", "alice", "g-2"),
        expired_grant(4, "g-3"),
        event(5, 60_000, "spa.rejected", "bad_tag"),
        event(6, 50_000, "spa.rejected", "bad_tag"),
        event(7, 40_000, "spa.rejected", "replay"),
        event(8, 2 * HOUR_MS, "spa.rejected", "bad_tag"),
        api::Event {
            detail_json: json!({"port": 62201, "counts": {"bad_tag": 5, "malformed": 7}})
                .to_string(),
            ..event(9, 30_000, "spa.refused_summary", "")
        },
        event(10, 0, "knock.progressed", ""),
    ];
    gw1.client(server)
        .report(api::ReportRequest { events: reported })
        .await
        .unwrap();

    // The controller's own refusals, and one from before the window.
    assert_code(
        gw1.admin_client(server)
            .list_agents(api::ListAgentsRequest {})
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        gw2.client(server)
            .report(api::ReportRequest { events: vec![] })
            .await,
        Code::PermissionDenied,
    );
    let (csr_pem, _) = csr();
    let bad_token = api::EnrollRequest {
        token: "nope".into(),
        csr_pem,
    };
    assert_code(
        server.anonymous_enrollment().enroll(bad_token).await,
        Code::Unauthenticated,
    );
    let old = NewAuditEvent {
        at: Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 2 * HOUR_MS),
        agent: None,
        agent_seq: None,
        kind: "auth.refused".into(),
        user: None,
        src: None,
        detail: json!({"reason": "a client certificate is required", "suppressed": 9}),
    };
    server.store.append_audit(&old).await.unwrap();

    let s = status_until(&mut admin, |s| s.agents_behind == 2).await;
    let current = server.store.current_version().await.unwrap().0;
    assert_eq!(
        s,
        api::FleetStatusResponse {
            agents_connected: 1,
            agents_stale: 1,
            agents_never_connected: 1,
            agents_not_enrolled: 1,
            agents_revoked: 1,
            current_version: u64::try_from(current).unwrap(),
            agents_behind: 2,
            open_grants: 1,
            refusals: vec![
                refusal("spa.refused_summary", "malformed", 7),
                refusal("spa.refused_summary", "bad_tag", 5),
                refusal("spa.rejected", "bad_tag", 2),
                refusal(
                    "auth.refused",
                    "agent certificates may not call the admin service",
                    1
                ),
                refusal("auth.refused", "agent gw2 is revoked", 1),
                refusal("enrol.refused", "enrolment token is unknown", 1),
                refusal("spa.rejected", "replay", 1),
            ],
        }
    );

    // From the start, the old ones count too.
    let ever = admin
        .fleet_status(api::FleetStatusRequest { since_unix_ms: 0 })
        .await
        .unwrap()
        .into_inner()
        .refusals;
    assert!(ever.contains(&refusal("spa.rejected", "bad_tag", 3)));
    assert!(ever.contains(&refusal(
        "auth.refused",
        "a client certificate is required",
        10
    )));
    drop(sync);
}
