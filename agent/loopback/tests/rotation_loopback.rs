//! Rotating knock sequences and one-time SPA keys end to end against the real controller,
//! in process: the material it derives reaches the engine, a user's current sequence
//! (derived here from the secret the admin API handed out, as knocker does) opens once,
//! one-time keys are claimed in the controller's transaction, and a key granted while the
//! controller was away is reported when it is back.

mod support;

use std::time::{Duration, SystemTime};

use knockgate_agent_core::packet::KnockStep;
use knockgate_agent_core::ruleset::Proto;
use knockgate_proto::api;
use knockgate_proto::rotation::{RotationParams, derive_sequence, window_index};
use knockgate_proto::spa::{SpaRequest, seal};
use support::{Agent, Lab, access, api_access, audit, detail, eventually, knock};

fn otk_packet(secret: &[u8; 32], counter: u64, to: &str) -> Vec<u8> {
    let req = SpaRequest {
        timestamp: knockgate_proto::unix_secs(SystemTime::now()),
        nonce: rand_bytes(counter),
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![access(to)],
        duration_secs: 0,
    };
    // The key the controller stocks gw1 with: derived for gw1 alone.
    let key = knockgate_proto::scope::gateway_otk(secret, "gw1", counter).expect("derive");
    seal(&key, &req, [counter as u8; 24]).expect("seal")
}

fn rand_bytes(seed: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seed.to_be_bytes());
    b[8..].copy_from_slice(&knockgate_proto::unix_secs(SystemTime::now()).to_be_bytes());
    b
}

fn spa(agent: &Agent, src: &str, packet: Vec<u8>) {
    let to = KnockStep::Port {
        proto: Proto::Udp,
        port: 62201,
    };
    agent.tx.send(knock(src, to, Some(packet))).expect("spa");
}

/// How many grants are open to `port`.
fn open_to(agent: &Agent, port: u16) -> usize {
    agent.open().iter().filter(|k| k.port == port).count()
}

type Admin = knockgate_proto::api::admin_client::AdminClient<tonic::transport::Channel>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_sequences_and_one_time_keys_with_the_real_controller() {
    let mut lab = Lab::start().await;
    let mut agent = lab.agent().await;
    let mut admin = lab.admin.clone();
    let secret = policies_for_alice(&mut admin, &agent).await;
    a_rotating_sequence_opens_once(&mut admin, &agent, &secret).await;
    one_time_keys_open_once_each(&mut admin, &agent, &secret).await;
    // The controller goes away: the deny policy refuses, the local one grants and queues.
    lab.stop().await;
    eventually("the agent to notice", async || !agent.connected()).await;
    spa(&agent, "10.0.0.6", otk_packet(&secret, 7, "tcp/443"));
    spa(&agent, "10.0.0.7", otk_packet(&secret, 8, "tcp/8443"));
    eventually("the offline grant", async || open_to(&agent, 8443) == 1).await;
    assert_eq!(open_to(&agent, 443), 2, "deny: nothing opened offline");
    assert_eq!(agent.offline.lock().expect("lock").len(), 1);
    lab.restart().await;
    offline_claims_are_delivered(&mut admin, &agent).await;
    agent.stop();
    lab.stop().await;
}

/// alice, and the rotating, one-time-key (deny) and one-time-key (local) policies that
/// admit her, enforced. Returns her rotating secret.
async fn policies_for_alice(admin: &mut Admin, agent: &Agent) -> [u8; 32] {
    let alice = admin
        .add_user(api::AddUserRequest {
            name: "alice".into(),
            groups: vec![],
        })
        .await
        .expect("add user")
        .into_inner();
    let secret: [u8; 32] = alice
        .rotating_secret
        .as_slice()
        .try_into()
        .expect("32 bytes");
    let policy = |name: &str, open: &str| api::PolicySpec {
        name: name.into(),
        open: vec![api_access(open)],
        users: vec!["alice".into()],
        timeout_secs: 60,
        ..Default::default()
    };
    let rot = api::PolicySpec {
        rotating: true,
        ..policy("rot", "tcp/2222")
    };
    let keys = api::PolicySpec {
        otk: true,
        ..policy("keys", "tcp/443")
    };
    let local = api::PolicySpec {
        otk: true,
        otk_offline: "local".into(),
        ..policy("keys-local", "tcp/8443")
    };
    for spec in [rot, keys, local] {
        admin.add_policy(spec).await.expect("add policy");
    }
    let ruleset = || agent.held.lock().expect("lock").ruleset.clone();
    eventually("the policies enforced", async || {
        ruleset().protected.contains(&access("tcp/8443"))
    })
    .await;
    assert!(
        ruleset().knock_ports.iter().all(|a| a.port == 62201),
        "rotating ports are never dropped"
    );
    secret
}

/// Alice's sequence of the current window, as knocker derives it, opens once; the same
/// knocks again, from anywhere, open nothing more.
async fn a_rotating_sequence_opens_once(admin: &mut Admin, agent: &Agent, secret: &[u8; 32]) {
    let params = RotationParams {
        exclude: vec![443, 2222, 8443],
        ..RotationParams::default()
    };
    let now = knockgate_proto::unix_secs(SystemTime::now());
    let seq = derive_sequence(secret, "gw1", window_index(now, 30), &params).expect("derive");
    let knocks: Vec<KnockStep> = seq.iter().map(|a| KnockStep::from(*a)).collect();
    for k in &knocks {
        agent.tx.send(knock("10.0.0.2", *k, None)).expect("knock");
    }
    eventually("the rotating grant", async || open_to(agent, 2222) == 1).await;
    for k in &knocks {
        agent.tx.send(knock("10.0.0.9", *k, None)).expect("knock");
    }
    eventually("knock.completed in the audit trail", async || {
        !audit(admin, "knock.completed").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open_to(agent, 2222), 1, "a consumed sequence opens nothing");
    let done = audit(admin, "knock.completed").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].user, "alice");
    assert_eq!(detail(&done[0])["method"], "rotating");
}

/// Key 0 is claimed and granted; key 0 again is refused; a client that skipped ahead
/// (key 5) is granted.
async fn one_time_keys_open_once_each(admin: &mut Admin, agent: &Agent, secret: &[u8; 32]) {
    spa(agent, "10.0.0.3", otk_packet(secret, 0, "tcp/443"));
    eventually("the one-time-key grant", async || open_to(agent, 443) == 1).await;
    eventually("the claim in the audit trail", async || {
        audit(admin, "otk.claimed").await.len() == 1
    })
    .await;
    spa(agent, "10.0.0.4", otk_packet(secret, 0, "tcp/443"));
    spa(agent, "10.0.0.5", otk_packet(secret, 5, "tcp/443"));
    eventually("the skip-ahead grant", async || open_to(agent, 443) == 2).await;
    eventually("both claims in the audit trail", async || {
        audit(admin, "otk.claimed").await.len() == 2
    })
    .await;
    assert!(
        agent
            .open()
            .iter()
            .all(|k| k.addr.to_string() != "10.0.0.4")
    );
    let accepted = audit(admin, "spa.accepted").await;
    assert!(
        accepted
            .iter()
            .all(|e| detail(e)["method"] == "otk" && detail(e)["offline"] == false),
        "{accepted:?}"
    );
}

/// Back: the offline claim is delivered and recorded as such, and the offline refusal
/// is reported.
async fn offline_claims_are_delivered(admin: &mut Admin, agent: &Agent) {
    eventually("the offline claim delivered", async || {
        agent.offline.lock().expect("lock").is_empty()
    })
    .await;
    let claimed = audit(admin, "otk.claimed").await;
    assert!(
        claimed
            .iter()
            .any(|e| detail(e)["offline"] == true && detail(e)["counter"] == 8),
        "{claimed:?}"
    );
    eventually("the refusals reported", async || {
        let rejected = audit(admin, "spa.rejected").await;
        let reasons: Vec<String> = rejected
            .iter()
            .map(|e| detail(e)["reason"].as_str().unwrap_or(&e.kind).to_string())
            .collect();
        reasons.iter().any(|r| r == "otk_offline_denied")
    })
    .await;
}
