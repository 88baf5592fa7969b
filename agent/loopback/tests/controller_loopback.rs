//! The agent's controller client against the real controller, in process, over real
//! mutual TLS on 127.0.0.1 with a real SQLite store: enrolment with the token and pin
//! `knockadm agent add` gives, policies pushed by the admin API reaching the engine,
//! decisions reaching the audit trail, and revocations closing grants. The firewall is a
//! recording stand-in (the nftables edge has its own tests); no privileges needed.

mod support;

use std::time::SystemTime;

use knockgate_agent::control::cache;
use knockgate_agent::control::enroll::enroll;
use knockgate_agent::engine::Input;
use knockgate_agent_core::packet::KnockStep;
use knockgate_proto::api;
use knockgate_proto::spa::{SpaRequest, seal};
use support::{Lab, access, api_access, audit, eventually, knock};

type Admin = knockgate_proto::api::admin_client::AdminClient<tonic::transport::Channel>;
type Held = std::sync::Arc<std::sync::Mutex<support::Held2>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_real_controller() {
    let mut lab = Lab::start().await;
    let mut agent = lab.agent().await;
    // Enrolment with what `knockadm agent add` prints; the token is single-use.
    let e = enroll(&lab.url, &agent.token, agent.pin, "gw1")
        .await
        .expect_err("a token is single-use");
    assert!(
        e.to_string()
            .starts_with("the controller refused the token"),
        "{e}"
    );
    let mut admin = lab.admin.clone();
    let alice = policies_reach_the_firewall(&mut admin, &agent.held).await;
    assert!(
        cache::load(agent.dir.path()).expect("cache").is_some(),
        "what was applied is cached"
    );
    knocks_reach_the_audit_trail(&mut admin, &agent.tx, &alice).await;
    revoking_a_grant_closes_it(&mut admin, &agent.held).await;
    disabling_alice_closes_hers(&mut admin, &agent.held).await;
    agent.stop();
    let _ = agent.tx.send(Input::Shutdown);
    lab.stop().await;
}

/// Policies from the admin API reach the firewall, and the agent reports the version.
async fn policies_reach_the_firewall(admin: &mut Admin, held: &Held) -> api::UserCredentials {
    let alice = admin
        .add_user(api::AddUserRequest {
            name: "alice".into(),
            groups: vec![],
        })
        .await
        .expect("add user")
        .into_inner();
    for spec in [
        api::PolicySpec {
            name: "legacy".into(),
            open: vec![api_access("tcp/22")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            sequence: vec!["tcp/7000".into(), "udp/8000".into()],
            ..Default::default()
        },
        api::PolicySpec {
            name: "web".into(),
            open: vec![api_access("tcp/443")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            spa: true,
            ..Default::default()
        },
    ] {
        admin.add_policy(spec).await.expect("add policy");
    }
    eventually("both policies enforced", async || {
        let h = held.lock().expect("lock");
        h.ruleset.protected.contains(&access("tcp/22"))
            && h.ruleset.protected.contains(&access("tcp/443"))
    })
    .await;
    eventually("the agent to report the version applied", async || {
        let agents = admin
            .list_agents(api::ListAgentsRequest {})
            .await
            .expect("list")
            .into_inner()
            .agents;
        agents
            .iter()
            .any(|a| a.name == "gw1" && a.connected && a.applied_version == a.current_version)
    })
    .await;
    alice
}

/// A sequence knock and an SPA packet with the key the controller issued reach the
/// audit trail.
async fn knocks_reach_the_audit_trail(
    admin: &mut Admin,
    tx: &std::sync::mpsc::SyncSender<Input>,
    alice: &api::UserCredentials,
) {
    tx.send(knock("10.0.0.2", KnockStep::tcp(7000), None))
        .expect("knock");
    tx.send(knock("10.0.0.2", KnockStep::udp(8000), None))
        .expect("knock");
    let key: [u8; 32] = alice.spa_key.as_slice().try_into().expect("32-byte key");
    // alice's key for gw1, as knocker derives it from her root key.
    let packet = seal(
        &knockgate_proto::scope::gateway_spa_key(&key, "gw1").expect("derive"),
        &SpaRequest {
            timestamp: knockgate_proto::unix_secs(SystemTime::now()),
            nonce: [3; 16],
            gateway: "gw1".into(),
            allow_ip: None,
            access: vec![access("tcp/443")],
            duration_secs: 0,
        },
        [4; 24],
    )
    .expect("seal");
    tx.send(knock("10.0.0.3", KnockStep::udp(62201), Some(packet)))
        .expect("spa");
    eventually("both grants in the audit trail", async || {
        audit(admin, "grant.opened").await.len() == 2
    })
    .await;
    assert_eq!(audit(admin, "knock.completed").await.len(), 1);
    let accepted = audit(admin, "spa.accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].user, "alice");
}

/// Revoking one grant by id closes it on the agent.
async fn revoking_a_grant_closes_it(admin: &mut Admin, held: &Held) {
    let grants = admin
        .list_grants(api::ListGrantsRequest {
            agent: "gw1".into(),
            ..Default::default()
        })
        .await
        .expect("grants")
        .into_inner()
        .grants;
    let legacy = grants
        .iter()
        .find(|g| g.policy == "legacy")
        .expect("the sequence grant is recorded");
    admin
        .revoke_grants(api::RevokeGrantsRequest {
            id: legacy.id,
            user: String::new(),
        })
        .await
        .expect("revoke");
    eventually("the revoked grant to close", async || {
        let h = held.lock().expect("lock");
        h.open.len() == 1 && h.open.keys().all(|k| k.port == 443)
    })
    .await;
}

/// Disabling alice takes her grant away at once.
async fn disabling_alice_closes_hers(admin: &mut Admin, held: &Held) {
    admin
        .set_user_disabled(api::SetUserDisabledRequest {
            name: "alice".into(),
            disabled: true,
        })
        .await
        .expect("disable");
    eventually("alice's grant to close", async || {
        held.lock().expect("lock").open.is_empty()
    })
    .await;
    eventually("both closes in the audit trail", async || {
        audit(admin, "grant.closed").await.len() == 2
    })
    .await;
    let mut reasons: Vec<String> = audit(admin, "grant.closed")
        .await
        .iter()
        .map(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap_or_default();
            d["reason"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    reasons.sort();
    // Disabling a user sends both a revocation of her grants and a config without her;
    // whichever reaches the agent first closes the grant.
    assert!(
        reasons == ["revoked", "revoked"] || reasons == ["revoked", "user_removed"],
        "{reasons:?}"
    );
}
