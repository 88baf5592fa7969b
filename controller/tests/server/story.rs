//! The sync story (enrol, snapshot, deltas on admin changes, revokes pushed)
//! and Report de-duplication.

use std::time::{Duration, Instant};

use knockgate_controller::convert::access_to_api;
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::{Access, api};
use tonic::Code;
use tonic::transport::Channel;

use super::harness::*;

/// How long a change may take to reach a live stream (the issue: within a second).
const PROPAGATION: Duration = Duration::from_secs(1);

fn ssh_policy(users: &[&str], groups: &[&str], agents: &str) -> api::PolicySpec {
    api::PolicySpec {
        name: "ssh".into(),
        open: vec![access_to_api(Access::tcp(22))],
        users: users.iter().map(|u| (*u).into()).collect(),
        groups: groups.iter().map(|g| (*g).into()).collect(),
        agents: agents.into(),
        timeout_secs: 30,
        spa: true,
        ..api::PolicySpec::default()
    }
}

async fn add_user(server: &Server, name: &str, groups: &[&str]) -> api::UserCredentials {
    server
        .admin()
        .add_user(api::AddUserRequest {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn names<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| f(x).to_owned()).collect()
}

pub fn grant_event(seq: u64, kind: &str, user: &str, grant_ref: &str) -> api::Event {
    api::Event {
        seq,
        at_unix_ms: Timestamp::now().unix_millis(),
        kind: kind.into(),
        user: user.into(),
        src: "198.51.100.20".into(),
        policy: "ssh".into(),
        reason: if kind == "grant.closed" {
            "expired".into()
        } else {
            String::new()
        },
        grant: Some(api::GrantInfo {
            grant_ref: grant_ref.into(),
            addr: "198.51.100.20".into(),
            access: Some(access_to_api(Access::tcp(22))),
            expires_at_unix_ms: Timestamp::now().unix_millis() + 60_000,
        }),
        detail_json: String::new(),
    }
}

use knockgate_controller::store::Timestamp;

pub async fn sync_story(server: &Server) {
    let admin = server.admin();
    let alice = add_user(server, "alice", &[]).await;
    assert_eq!(alice.spa_key.len(), 32);
    assert_eq!(alice.fwknop_hmac_key.len(), 64);
    assert!(alice.gateways.is_empty());
    add_user(server, "bob", &["ops"]).await;
    let gw = enrolled_agent(server, "gw1", &[("role", "edge")]).await;
    enrolled_agent(server, "gw2", &[("role", "core")]).await;

    let sync = SyncStream::open(&gw, server, "").await;
    let mut story = Story {
        server,
        admin,
        gw,
        sync,
    };
    let full = story.first_config_is_empty().await;
    story.policy_arrives_as_a_delta(&alice, &full).await;
    let rotated = story.rotated_keys_arrive(&alice).await;
    story.agent_is_listed_current(&rotated).await;
    let disabled = story.disabling_alice_removes_her().await;
    story.revoking_bobs_grants_reaches_the_agent().await;
    story.revoking_one_grant_reaches_its_agent().await;
    story.other_agents_policy_is_an_empty_delta(&disabled).await;
    let removed = story.removing_the_policy_removes_its_users().await;
    story.refused_config_is_recorded(&removed).await;
    story.hanging_up_disconnects().await;
}

/// What the steps of the sync story share: the admin client, gw1 (role=edge) and
/// its live Sync stream.
struct Story<'a> {
    server: &'a Server,
    admin: AdminClient<Channel>,
    gw: AgentCreds,
    sync: SyncStream,
}

impl Story<'_> {
    /// The first config is a full one, and empty: no policy selects gw1 yet.
    async fn first_config_is_empty(&mut self) -> api::AgentConfig {
        let (full, _) = self.sync.next_config(Duration::from_secs(5)).await;
        assert!(full.full);
        assert!(full.policies.is_empty() && full.users.is_empty());
        full
    }

    /// A policy selecting gw1 arrives as a delta with the policy and its users,
    /// each with keys for gw1 only; one naming an unknown user is refused.
    async fn policy_arrives_as_a_delta(
        &mut self,
        alice: &api::UserCredentials,
        full: &api::AgentConfig,
    ) {
        let started = Instant::now();
        let bad = self
            .admin
            .add_policy(ssh_policy(&["carol"], &[], "role=edge"))
            .await;
        assert_eq!(
            assert_code(bad, Code::InvalidArgument).message(),
            "users[0]: unknown user carol"
        );
        self.admin
            .add_policy(ssh_policy(&["alice"], &["ops"], "role=edge"))
            .await
            .unwrap();
        let (delta, _) = self.sync.next_config(PROPAGATION).await;
        let took = started.elapsed();
        assert!(!delta.full);
        assert_eq!(delta.base_version, full.version);
        assert_eq!(names(&delta.policies, |p| &p.name), ["ssh"]);
        assert_eq!(delta.policies[0].users, ["alice", "bob"]);
        assert_eq!(names(&delta.users, |u| &u.name), ["alice", "bob"]);
        // The agent holds alice's key for gw1 only, never her root key.
        let root: [u8; 32] = alice.spa_key.clone().try_into().unwrap();
        let for_gw1 = knockgate_proto::scope::gateway_spa_key(&root, "gw1").unwrap();
        assert_eq!(delta.users[0].spa_key, for_gw1.secret().to_vec());
        assert_ne!(delta.users[0].spa_key, alice.spa_key);
        assert!(
            delta.users[0].fwknop_key.is_empty(),
            "no fwknop policy: no fwknop key"
        );
        eprintln!("policy delta arrived in {took:?}");
    }

    /// Rotating alice's keys names the one gateway that holds them and pushes
    /// her new keys there.
    async fn rotated_keys_arrive(&mut self, alice: &api::UserCredentials) -> api::AgentConfig {
        let gateways = self
            .admin
            .rotate_user_keys(api::RotateUserKeysRequest {
                name: "alice".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .gateways;
        assert_eq!(gateways.len(), 1);
        assert_eq!(
            (gateways[0].name.as_str(), gateways[0].address.as_str()),
            ("gw1", "127.0.0.1")
        );
        let (rotated, _) = self.sync.next_config(PROPAGATION).await;
        assert_eq!(names(&rotated.users, |u| &u.name), ["alice"]);
        assert_ne!(rotated.users[0].spa_key, alice.spa_key);
        rotated
    }

    /// The agent acked: ListAgents shows it connected and current.
    async fn agent_is_listed_current(&mut self, rotated: &api::AgentConfig) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let agents = self
            .admin
            .list_agents(api::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let gw1 = agents.iter().find(|a| a.name == "gw1").unwrap();
        assert!(gw1.connected && gw1.enrolled && !gw1.revoked);
        assert_eq!(gw1.address, "127.0.0.1");
        assert_eq!(
            (gw1.applied_version, gw1.current_version),
            (rotated.version, rotated.version)
        );
    }

    /// Disabling alice removes her from the agent and revokes her grants by name.
    async fn disabling_alice_removes_her(&mut self) -> api::AgentConfig {
        let started = Instant::now();
        self.admin
            .set_user_disabled(api::SetUserDisabledRequest {
                name: "alice".into(),
                disabled: true,
            })
            .await
            .unwrap();
        let (delta, revokes) = self.sync.next_config(PROPAGATION).await;
        eprintln!("disable delta arrived in {:?}", started.elapsed());
        assert_eq!(delta.removed_users, ["alice"]);
        assert_eq!(delta.policies[0].users, ["bob"]);
        let by_name = match revokes.into_iter().find(|r| r.users == ["alice"]) {
            Some(r) => r,
            None => {
                self.sync
                    .revoke_where(PROPAGATION, |r| r.users == ["alice"])
                    .await
            }
        };
        assert!(by_name.grant_refs.is_empty());
        delta
    }

    /// A grant bob opened, revoked by user: the agent hears of it by name and ref.
    async fn revoking_bobs_grants_reaches_the_agent(&mut self) {
        self.gw
            .client(self.server)
            .report(api::ReportRequest {
                events: vec![grant_event(1, "grant.opened", "bob", "g-1")],
            })
            .await
            .unwrap();
        let started = Instant::now();
        let revoked = self
            .admin
            .revoke_grants(api::RevokeGrantsRequest {
                id: 0,
                user: "bob".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .revoked;
        assert_eq!(revoked, 1);
        // Two pushes, in either order: by name at once, by ref on the version bump.
        let (mut by_name, mut by_ref) = (false, false);
        while !(by_name && by_ref) {
            let r = self.sync.revoke_where(PROPAGATION, |_| true).await;
            by_name |= r.users == ["bob"] && r.grant_refs.is_empty();
            by_ref |= r.grant_refs == ["g-1"] && r.users.is_empty();
        }
        eprintln!("grant revoke arrived in {:?}", started.elapsed());
    }

    /// One grant by id: only its agent's stream hears of it, by ref; an unknown
    /// id is refused; both revokes are audited.
    async fn revoking_one_grant_reaches_its_agent(&mut self) {
        self.gw
            .client(self.server)
            .report(api::ReportRequest {
                events: vec![grant_event(2, "grant.opened", "bob", "g-2")],
            })
            .await
            .unwrap();
        let open = self
            .admin
            .list_grants(api::ListGrantsRequest {
                user: "bob".into(),
                ..api::ListGrantsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .grants;
        // g-1 is still open too (flagged, its close not reported yet): g-2 is the newer.
        assert_eq!(open.len(), 2);
        let g2 = open.iter().max_by_key(|g| g.id).unwrap();
        let missing = self
            .admin
            .revoke_grants(api::RevokeGrantsRequest {
                id: 9999,
                user: String::new(),
            })
            .await;
        assert_eq!(
            assert_code(missing, Code::NotFound).message(),
            "grant 9999 not found or not open"
        );
        self.admin
            .revoke_grants(api::RevokeGrantsRequest {
                id: g2.id,
                user: String::new(),
            })
            .await
            .unwrap();
        self.sync
            .revoke_where(PROPAGATION, |r| r.grant_refs == ["g-2"])
            .await;
        audit_until(self.server, "admin.grant.revoke", |e| e.user == "bob").await;
        audit_until(self.server, "admin.user.disable", |e| {
            e.user == "alice" && detail(e)["admin"] == "admin"
        })
        .await;
    }

    /// A policy for other agents still moves the version: an empty delta to ack.
    async fn other_agents_policy_is_an_empty_delta(&mut self, before: &api::AgentConfig) {
        let mut other = ssh_policy(&["bob"], &[], "role=core");
        other.name = "core-ssh".into();
        self.admin.add_policy(other).await.unwrap();
        let (empty, _) = self.sync.next_config(PROPAGATION).await;
        assert!(
            empty.policies.is_empty()
                && empty.users.is_empty()
                && empty.removed_policies.is_empty()
        );
        assert!(empty.version > before.version);
    }

    /// Removing the policy removes it and its users.
    async fn removing_the_policy_removes_its_users(&mut self) -> api::AgentConfig {
        self.admin
            .remove_policy(api::RemovePolicyRequest { name: "ssh".into() })
            .await
            .unwrap();
        let (removed, _) = self.sync.next_config(PROPAGATION).await;
        assert_eq!(removed.removed_policies, ["ssh"]);
        assert_eq!(removed.removed_users, ["bob"]);
        removed
    }

    /// Refused configs are recorded.
    async fn refused_config_is_recorded(&mut self, refused: &api::AgentConfig) {
        self.sync
            .tx
            .send(msg(api::agent_message::Msg::Refused(api::Refused {
                version: refused.version,
                reason: "cannot apply".into(),
            })))
            .await
            .unwrap();
        audit_until(self.server, "config.refused", |e| e.agent == "gw1").await;
    }

    /// Hanging up marks the agent disconnected.
    async fn hanging_up_disconnects(self) {
        let Story {
            mut admin, sync, ..
        } = self;
        drop(sync);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let agents = admin
                .list_agents(api::ListAgentsRequest {})
                .await
                .unwrap()
                .into_inner()
                .agents;
            if !agents.iter().find(|a| a.name == "gw1").unwrap().connected {
                break;
            }
            assert!(Instant::now() < deadline, "gw1 still shown connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn report_is_deduplicated(server: &Server) {
    let gw = enrolled_agent(server, "gw1", &[]).await;
    let mut client = gw.client(server);
    let page = reported_twice_stored_once(server, &mut client).await;
    after_id_returns_only_newer(server, &page).await;
    bad_events_are_kept_or_refused(server, &mut client).await;
}

/// The same batch reported twice leaves one audit row per event and one grant.
/// Returns gw1's audit page.
async fn reported_twice_stored_once(
    server: &Server,
    client: &mut AgentControlClient<Channel>,
) -> api::AuditPage {
    let events = vec![
        api::Event {
            seq: 1,
            at_unix_ms: Timestamp::now().unix_millis(),
            kind: "spa.rejected".into(),
            src: "203.0.113.5".into(),
            reason: "bad mac".into(),
            ..api::Event::default()
        },
        grant_event(2, "grant.opened", "alice", "g-1"),
        grant_event(3, "grant.closed", "alice", "g-1"),
    ];
    for _ in 0..2 {
        let resp = client
            .report(api::ReportRequest {
                events: events.clone(),
            })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().stored_through_seq, 3);
    }
    let page = server
        .admin()
        .query_audit(api::AuditQuery {
            agent: "gw1".into(),
            ..api::AuditQuery::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = page
        .events
        .iter()
        .map(|e| e.kind.as_str())
        .filter(|k| !k.starts_with("enrol") && !k.starts_with("admin."))
        .collect();
    assert_eq!(kinds, ["spa.rejected", "grant.opened", "grant.closed"]);
    let grants = server
        .admin()
        .list_grants(api::ListGrantsRequest {
            include_closed: true,
            ..api::ListGrantsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0].user.as_str(), grants[0].close_reason.as_str()),
        ("alice", "expired")
    );
    assert_ne!(grants[0].closed_at_unix_ms, 0);
    page
}

/// --follow paging: after_id returns only newer events.
async fn after_id_returns_only_newer(server: &Server, page: &api::AuditPage) {
    let last = page.events.last().unwrap().id;
    let next = server
        .admin()
        .query_audit(api::AuditQuery {
            after_id: last,
            ..api::AuditQuery::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.events.iter().all(|e| e.id > last));
}

/// An unusable grant keeps its audit row (refusing would stall delivery);
/// a malformed event is refused as a whole, naming it.
async fn bad_events_are_kept_or_refused(server: &Server, client: &mut AgentControlClient<Channel>) {
    let bad = api::Event {
        grant: None,
        ..grant_event(4, "grant.opened", "alice", "g-2")
    };
    client
        .report(api::ReportRequest { events: vec![bad] })
        .await
        .unwrap();
    let row = audit_until(server, "grant.opened", |e| {
        detail(e)["grant_error"].is_string()
    })
    .await;
    assert_eq!(
        detail(&row)["grant_error"],
        "event 4: grant.opened without grant"
    );
    let bad = api::Event {
        kind: "No Such Kind".into(),
        ..grant_event(5, "x", "alice", "g-3")
    };
    let status = assert_code(
        client
            .report(api::ReportRequest { events: vec![bad] })
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("event 5: kind"), "{status:?}");
}

/// Two replicas on one PostgreSQL database: a change made through one
/// reaches an agent streaming from the other (LISTEN/NOTIFY), and so does a
/// revoke.
pub async fn replicas_propagate(a: &Server, b: &Server) {
    add_user(b, "alice", &[]).await;
    let gw = enrolled_agent(a, "gw1", &[]).await;
    let mut sync = SyncStream::open(&gw, a, "192.0.2.1").await;
    sync.next_config(Duration::from_secs(5)).await;
    let started = Instant::now();
    b.admin()
        .add_policy(ssh_policy(&["alice"], &[], ""))
        .await
        .unwrap();
    let (delta, _) = sync.next_config(PROPAGATION).await;
    eprintln!("cross-replica delta arrived in {:?}", started.elapsed());
    assert_eq!(names(&delta.users, |u| &u.name), ["alice"]);
    let creds = b
        .admin()
        .rotate_user_keys(api::RotateUserKeysRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        creds.gateways[0].address, "192.0.2.1",
        "the reported address"
    );
    b.admin()
        .revoke_agent(api::RevokeAgentRequest { name: "gw1".into() })
        .await
        .unwrap();
    let status = loop {
        match sync.next(PROPAGATION).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied);
}
