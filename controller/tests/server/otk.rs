//! One-time keys through the real server: the stock each serving agent
//! holds, Claim deciding one winner (also under a 50-round race, and across
//! two replicas), the withdrawal reaching every agent within a second,
//! offline reports and reuse, and claims the agent may not make.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use knockgate_controller::convert::access_to_api;
use knockgate_proto::scope::gateway_otk;
use knockgate_proto::{Access, api};
use tonic::Code;

use super::harness::*;

/// How long a change may take to reach a live stream (the issue: within a second).
const PROPAGATION: Duration = Duration::from_secs(1);

fn keys_policy(users: &[&str], agents: &str, offline: &str) -> api::PolicySpec {
    api::PolicySpec {
        name: "keys".into(),
        open: vec![access_to_api(Access::tcp(22))],
        users: users.iter().map(|u| (*u).into()).collect(),
        agents: agents.into(),
        timeout_secs: 30,
        otk: true,
        otk_offline: offline.into(),
        ..api::PolicySpec::default()
    }
}

fn claim(user: &str, counter: u64, src: &str, offline: bool) -> api::ClaimRequest {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    api::ClaimRequest {
        user: user.into(),
        counter,
        src: src.into(),
        at_unix_ms: i64::try_from(now.as_millis()).unwrap(),
        offline,
    }
}

/// Asserts `c` stocks exactly alice's keys `counters` for gateway `gw`, derived from
/// `secret` for that gateway alone.
fn assert_stock(
    c: &api::AgentConfig,
    gw: &str,
    secret: &[u8; 32],
    counters: std::ops::RangeInclusive<u64>,
) {
    let got: Vec<u64> = c.one_time_keys.iter().map(|k| k.counter).collect();
    assert_eq!(got, counters.collect::<Vec<_>>());
    for k in &c.one_time_keys {
        assert_eq!(k.user, "alice");
        let mine = gateway_otk(secret, gw, k.counter).unwrap();
        assert_eq!(&k.key[..], &mine.secret()[..]);
        let elsewhere = gateway_otk(secret, "elsewhere", k.counter).unwrap();
        assert_ne!(&k.key[..], &elsewhere.secret()[..]);
    }
}

pub async fn one_time_keys(server: &Server) {
    let mut admin = server.admin();
    let alice = new_user(server, "alice").await;
    new_user(server, "bob").await;
    let gw1 = enrolled_agent(server, "gw1", &[("role", "edge")]).await;
    let gw2 = enrolled_agent(server, "gw2", &[("role", "edge")]).await;
    let gw3 = enrolled_agent(server, "gw3", &[("role", "core")]).await;
    admin
        .add_policy(keys_policy(&["alice"], "role=edge", "local"))
        .await
        .unwrap();
    let secret = rotating_secret(&alice);

    let s1 = SyncStream::open(&gw1, server, "").await;
    let s2 = SyncStream::open(&gw2, server, "").await;
    let mut story = KeyStory {
        server,
        gw1,
        gw2,
        gw3,
        s1,
        s2,
        secret,
    };
    story.both_edge_agents_hold_the_stock().await;
    story.one_claim_wins_and_both_stocks_move().await;
    story.claims_not_allowed_are_refused().await;
    story.a_key_reported_twice_offline_is_reuse().await;
    story.a_stray_offline_key_is_withdrawn().await;
}

/// What the steps of the one-time key story share: gw1 and gw2 (role=edge, where
/// the `keys` policy admits alice) with their live streams, gw3 (role=core, where
/// it does not), and alice's rotating secret.
struct KeyStory<'a> {
    server: &'a Server,
    gw1: AgentCreds,
    gw2: AgentCreds,
    gw3: AgentCreds,
    s1: SyncStream,
    s2: SyncStream,
    secret: [u8; 32],
}

impl KeyStory<'_> {
    /// Each edge agent's first config stocks alice's keys 0..=15 for it alone.
    async fn both_edge_agents_hold_the_stock(&mut self) {
        let (full, _) = self.s1.next_config(Duration::from_secs(5)).await;
        assert_stock(&full, "gw1", &self.secret, 0..=15);
        let keys = &full.policies[0];
        assert!(keys.otk && !keys.rotating);
        assert_eq!(keys.otk_offline, "local");
        assert_stock(
            &self.s2.next_config(Duration::from_secs(5)).await.0,
            "gw2",
            &self.secret,
            0..=15,
        );
    }

    /// Key 3: gw1 wins, gw2 loses; both stocks move past it within a second.
    async fn one_claim_wins_and_both_stocks_move(&mut self) {
        let server = self.server;
        let started = Instant::now();
        let won = self
            .gw1
            .client(server)
            .claim(claim("alice", 3, "198.51.100.1", false))
            .await;
        assert!(won.unwrap().into_inner().granted);
        let lost = self
            .gw2
            .client(server)
            .claim(claim("alice", 3, "198.51.100.2", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((lost.granted, lost.reason.as_str()), (false, "used"));
        for (sync, gw) in [(&mut self.s1, "gw1"), (&mut self.s2, "gw2")] {
            let delta = sync.next_material(PROPAGATION).await;
            assert!(!delta.full);
            assert_stock(&delta, gw, &self.secret, 4..=19);
        }
        eprintln!("withdrawal reached both agents in {:?}", started.elapsed());
        let claimed = audit_until(server, "otk.claimed", |e| e.user == "alice").await;
        assert_eq!(
            (claimed.agent.as_str(), claimed.src.as_str()),
            ("gw1", "198.51.100.1")
        );
        assert_eq!(detail(&claimed)["counter"], 3);
        let refused = audit_until(server, "otk.refused", |e| e.agent == "gw2").await;
        assert_eq!(detail(&refused)["reason"], "used");
        assert_eq!(detail(&refused)["first"]["agent"], "gw1");
    }

    /// Claims the agent's policies do not allow: refused and audited; a bad
    /// source is an invalid request; a key beyond the stock is unknown.
    async fn claims_not_allowed_are_refused(&mut self) {
        let server = self.server;
        let bob = self
            .gw1
            .client(server)
            .claim(claim("bob", 0, "198.51.100.1", false))
            .await;
        assert_eq!(
            bob.expect("an answer, not an error").into_inner().reason,
            "not_admitted"
        );
        audit_until(server, "otk.refused", |e| {
            e.user == "bob" && detail(e)["reason"] == "not admitted"
        })
        .await;
        let elsewhere = self
            .gw3
            .client(server)
            .claim(claim("alice", 4, "198.51.100.3", false))
            .await;
        let elsewhere = elsewhere.expect("an answer").into_inner();
        assert!(!elsewhere.granted);
        assert_eq!(elsewhere.reason, "not_admitted");
        let bad = self
            .gw1
            .client(server)
            .claim(claim("alice", 4, "not-an-ip", false))
            .await;
        assert_code(bad, Code::InvalidArgument);
        let far = self
            .gw1
            .client(server)
            .claim(claim("alice", 100, "198.51.100.1", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((far.granted, far.reason.as_str()), (false, "unknown"));
    }

    /// Offline: the first report is recorded, a second of the same key is reuse.
    async fn a_key_reported_twice_offline_is_reuse(&mut self) {
        let server = self.server;
        let first = self
            .gw1
            .client(server)
            .claim(claim("alice", 5, "198.51.100.1", true))
            .await;
        assert!(first.unwrap().into_inner().granted);
        let second = self
            .gw2
            .client(server)
            .claim(claim("alice", 5, "198.51.100.2", true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((second.granted, second.reason.as_str()), (false, "used"));
        let reuse = audit_until(server, "otk.reuse", |e| e.user == "alice").await;
        let d = detail(&reuse);
        assert_eq!(d["flagged"], true);
        assert_eq!(d["counter"], 5);
        assert_eq!(
            (d["first"]["agent"].as_str(), d["first"]["src"].as_str()),
            (Some("gw1"), Some("198.51.100.1"))
        );
        assert_eq!(
            (d["second"]["agent"].as_str(), d["second"]["src"].as_str()),
            (Some("gw2"), Some("198.51.100.2"))
        );
        for (sync, gw) in [(&mut self.s1, "gw1"), (&mut self.s2, "gw2")] {
            assert_stock(
                &sync.next_material(PROPAGATION).await,
                gw,
                &self.secret,
                6..=21,
            );
        }
    }

    /// An agent whose policies do not admit the user reports a key it burned offline:
    /// refused, flagged, and the key is withdrawn fleet-wide all the same.
    async fn a_stray_offline_key_is_withdrawn(&mut self) {
        let server = self.server;
        let stray = self
            .gw3
            .client(server)
            .claim(claim("alice", 6, "198.51.100.3", true))
            .await
            .expect("an answer")
            .into_inner();
        assert_eq!(
            (stray.granted, stray.reason.as_str()),
            (false, "not_admitted")
        );
        let flagged = audit_until(server, "otk.refused", |e| {
            e.agent == "gw3" && detail(e)["flagged"] == true
        })
        .await;
        assert_eq!(detail(&flagged)["counter"], 6);
        let after = self
            .gw1
            .client(server)
            .claim(claim("alice", 6, "198.51.100.1", false))
            .await
            .expect("an answer")
            .into_inner();
        assert_eq!((after.granted, after.reason.as_str()), (false, "used"));
    }
}

/// 50 rounds of gw1 (on `a`) and gw2 (on `b`) claiming the same key at once:
/// exactly one is granted each round.
pub async fn claim_race(a: &Server, b: &Server) {
    new_user(a, "alice").await;
    let gw1 = enrolled_agent(a, "gw1", &[]).await;
    let gw2 = enrolled_agent(a, "gw2", &[]).await;
    a.admin()
        .add_policy(keys_policy(&["alice"], "", ""))
        .await
        .unwrap();
    let clients = [gw1.client(a), gw2.client(b)];
    for counter in 0..50 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = clients
            .iter()
            .map(|client| {
                let (mut client, barrier) = (client.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let req = claim("alice", counter, "198.51.100.9", false);
                    client.claim(req).await.unwrap().into_inner()
                })
            })
            .collect();
        let mut granted = 0;
        for r in racers {
            let resp = r.await.unwrap();
            if resp.granted {
                granted += 1;
            } else {
                assert_eq!(resp.reason, "used", "round {counter}");
            }
        }
        assert_eq!(granted, 1, "round {counter}");
    }
}

pub async fn claim_race_one_server(server: &Server) {
    claim_race(server, server).await;
}
