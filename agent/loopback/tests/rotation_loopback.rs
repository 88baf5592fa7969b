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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_sequences_and_one_time_keys_with_the_real_controller() {
    let mut lab = Lab::start().await;
    let mut agent = lab.agent().await;
    let mut admin = lab.admin.clone();
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
    for spec in [
        api::PolicySpec {
            name: "rot".into(),
            open: vec![api_access("tcp/2222")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            rotating: true,
            ..Default::default()
        },
        api::PolicySpec {
            name: "keys".into(),
            open: vec![api_access("tcp/443")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            otk: true,
            ..Default::default()
        },
        api::PolicySpec {
            name: "keys-local".into(),
            open: vec![api_access("tcp/8443")],
            users: vec!["alice".into()],
            timeout_secs: 60,
            otk: true,
            otk_offline: "local".into(),
            ..Default::default()
        },
    ] {
        admin.add_policy(spec).await.expect("add policy");
    }
    eventually("the policies enforced", async || {
        agent
            .held
            .lock()
            .expect("lock")
            .ruleset
            .protected
            .contains(&access("tcp/8443"))
    })
    .await;
    assert!(
        agent
            .held
            .lock()
            .expect("lock")
            .ruleset
            .knock_ports
            .iter()
            .all(|a| a.port == 62201),
        "rotating ports are never dropped"
    );

    // Alice's sequence of the current window, as knocker derives it.
    let params = RotationParams {
        exclude: vec![443, 2222, 8443],
        ..RotationParams::default()
    };
    let now = knockgate_proto::unix_secs(SystemTime::now());
    let seq = derive_sequence(&secret, "gw1", window_index(now, 30), &params).expect("derive");
    let knocks: Vec<KnockStep> = seq
        .iter()
        .map(|a| KnockStep::Port {
            proto: a.proto,
            port: a.port,
        })
        .collect();
    for k in &knocks {
        agent.tx.send(knock("10.0.0.2", *k, None)).expect("knock");
    }
    eventually("the rotating grant", async || open_to(&agent, 2222) == 1).await;
    // The same knocks again, from anywhere: nothing more.
    for k in &knocks {
        agent.tx.send(knock("10.0.0.9", *k, None)).expect("knock");
    }
    eventually("knock.completed in the audit trail", async || {
        !audit(&mut admin, "knock.completed").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        open_to(&agent, 2222),
        1,
        "a consumed sequence opens nothing"
    );
    let done = audit(&mut admin, "knock.completed").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].user, "alice");
    assert_eq!(detail(&done[0])["method"], "rotating");

    // One-time key 0: claimed, granted.
    spa(&agent, "10.0.0.3", otk_packet(&secret, 0, "tcp/443"));
    eventually("the one-time-key grant", async || open_to(&agent, 443) == 1).await;
    eventually("the claim in the audit trail", async || {
        audit(&mut admin, "otk.claimed").await.len() == 1
    })
    .await;
    // The same key again (a new packet): refused, nothing more opens.
    spa(&agent, "10.0.0.4", otk_packet(&secret, 0, "tcp/443"));
    // A client that skipped ahead: key 5 works.
    spa(&agent, "10.0.0.5", otk_packet(&secret, 5, "tcp/443"));
    eventually("the skip-ahead grant", async || open_to(&agent, 443) == 2).await;
    eventually("both claims in the audit trail", async || {
        audit(&mut admin, "otk.claimed").await.len() == 2
    })
    .await;
    assert!(
        agent
            .open()
            .iter()
            .all(|k| k.addr.to_string() != "10.0.0.4")
    );
    let accepted = audit(&mut admin, "spa.accepted").await;
    assert!(
        accepted
            .iter()
            .all(|e| detail(e)["method"] == "otk" && detail(e)["offline"] == false),
        "{accepted:?}"
    );

    // The controller goes away: the deny policy refuses, the local one grants and queues.
    lab.stop().await;
    eventually("the agent to notice", async || !agent.connected()).await;
    spa(&agent, "10.0.0.6", otk_packet(&secret, 7, "tcp/443"));
    spa(&agent, "10.0.0.7", otk_packet(&secret, 8, "tcp/8443"));
    eventually("the offline grant", async || open_to(&agent, 8443) == 1).await;
    assert_eq!(open_to(&agent, 443), 2, "deny: nothing opened offline");
    assert_eq!(agent.offline.lock().expect("lock").len(), 1);

    // Back: the offline claim is delivered and recorded as such.
    lab.restart().await;
    eventually("the offline claim delivered", async || {
        agent.offline.lock().expect("lock").is_empty()
    })
    .await;
    let claimed = audit(&mut admin, "otk.claimed").await;
    assert!(
        claimed
            .iter()
            .any(|e| detail(e)["offline"] == true && detail(e)["counter"] == 8),
        "{claimed:?}"
    );
    eventually("the refusals reported", async || {
        let rejected = audit(&mut admin, "spa.rejected").await;
        let reasons: Vec<String> = rejected
            .iter()
            .map(|e| detail(e)["reason"].as_str().unwrap_or(&e.kind).to_string())
            .collect();
        reasons.iter().any(|r| r == "otk_offline_denied")
    })
    .await;

    agent.stop();
    lab.stop().await;
}
