//! The engine with the fake firewall and real stores: SPA across config swaps and
//! revocations here; one-time keys (`otk`) and rotating sequences (`rotating`) over the
//! controller-fed rig (`rig`).

mod otk;
mod rig;
mod rotating;

use super::*;
use crate::firewall::fake::FakeFirewall;
use knockgate_agent_core::config::Config;
use knockgate_agent_core::packet::{KnockStep, tcp_flags};
use knockgate_agent_core::ruleset::Proto;

fn knock(e: &mut Engine, at: Instant, kind: KnockStep) {
    let src = "10.240.0.2".parse().expect("ip");
    e.handle_input(Input::Knock(KnockMsg {
        at,
        src,
        kind,
        tcp_flags: tcp_flags::SYN,
        payload: None,
        syn: None,
    }));
}

const SPA_CONFIG: &str = r#"
[agent]
name = "gw1"
interfaces = ["lo"]
state_dir = "/tmp"
[[user]]
name = "alice"
spa_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
[[user]]
name = "bob"
spa_key = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg="
[[policy]]
name = "ssh"
open = ["tcp/22"]
timeout = "30s"
sequence = ["tcp/7000"]
[[policy]]
name = "web"
open = ["tcp/443"]
timeout = "30s"
users = ["alice", "bob"]
spa = true
"#;

struct Rig {
    engine: Engine,
    state: std::sync::Arc<std::sync::Mutex<crate::firewall::fake::FakeState>>,
    spool: std::sync::Arc<std::sync::Mutex<crate::report::spool::Spool>>,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Config::parse(SPA_CONFIG).expect("config");
    let fw = FakeFirewall::default();
    let state = fw.state.clone();
    let mut detector = SpaDetector::new(&c);
    let store = ReplayStore::open(dir.path(), detector.replay_cache(), 0).expect("store");
    let (reporter, spooler) = crate::report::start(dir.path()).expect("spool");
    let engine = Engine::new(&c, Box::new(fw), Some((detector, store)))
        .expect("engine")
        .with_reporter(reporter);
    Rig {
        engine,
        state,
        spool: spooler.spool.clone(),
        _dir: dir,
    }
}

fn spa_from(e: &mut Engine, src: &str, secret: u8, nonce: [u8; 16]) {
    use knockgate_proto::spa::{SpaKey, SpaRequest, seal};
    let req = SpaRequest {
        timestamp: knockgate_proto::unix_secs(std::time::SystemTime::now()),
        nonce,
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec!["tcp/443".parse().expect("access")],
        duration_secs: 0,
    };
    let packet = seal(&SpaKey::from_secret([secret; 32]), &req, [secret; 24]).expect("seal");
    e.handle_input(Input::Knock(KnockMsg {
        at: Instant::now(),
        src: src.parse().expect("ip"),
        kind: KnockStep::Port {
            proto: Proto::Udp,
            port: 62201,
        },
        tcp_flags: 0,
        payload: Some(packet.into()),
        syn: None,
    }));
}

fn open_keys(state: &std::sync::Mutex<crate::firewall::fake::FakeState>) -> Vec<String> {
    state
        .lock()
        .expect("lock")
        .open
        .keys()
        .map(|k| k.to_string())
        .collect()
}

/// The config with `edit` applied to its text, as an update.
fn update(edit: impl Fn(&str) -> String) -> Update {
    Update::build(Config::parse(&edit(SPA_CONFIG)).expect("config")).expect("update")
}

/// Spooled events once the writer has caught up.
fn spooled(
    spool: &std::sync::Mutex<crate::report::spool::Spool>,
    want: usize,
) -> Vec<crate::report::Record> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = spool.lock().expect("lock").peek(1000).expect("peek");
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn apply_keeps_grants_and_replay_cache_and_closes_removed_users() {
    let mut r = rig();
    let now = Instant::now();
    spa_from(&mut r.engine, "10.0.0.2", 7, [1; 16]);
    spa_from(&mut r.engine, "10.0.0.3", 8, [2; 16]);
    knock(
        &mut r.engine,
        now,
        KnockStep::Port {
            proto: Proto::Tcp,
            port: 7000,
        },
    );
    assert_eq!(open_keys(&r.state).len(), 3);
    let alice_ref = r
        .engine
        .gateway
        .grants()
        .iter()
        .find(|(_, g)| g.user.as_deref() == Some("alice"))
        .map(|(_, g)| g.grant_ref.clone())
        .expect("alice's grant");

    // bob is gone, and tcp/8443 is protected now.
    let u = update(|t| {
        let t = t.replace("users = [\"alice\", \"bob\"]", "users = [\"alice\"]");
        let cut = t.find("[[user]]\nname = \"bob\"").expect("bob");
        let end = t[cut..].find("[[policy]]").expect("policy") + cut;
        format!("{}{}", &t[..cut], &t[end..])
            .replace("[\"tcp/443\"]", "[\"tcp/443\", \"tcp/8443\"]")
    });
    r.engine.apply(u, r.engine.now()).expect("applies");
    let rs = r
        .state
        .lock()
        .expect("lock")
        .ruleset
        .clone()
        .expect("ruleset");
    assert!(rs.protected.contains(&"tcp/8443".parse().expect("a")));
    assert_eq!(
        open_keys(&r.state),
        ["10.0.0.2 tcp/443", "10.240.0.2 tcp/22"],
        "bob's grant closed, alice's and the sequence grant stay"
    );
    assert_eq!(
        r.engine
            .gateway
            .grants()
            .iter()
            .find(|(_, g)| g.user.as_deref() == Some("alice"))
            .map(|(_, g)| g.grant_ref.clone()),
        Some(alice_ref),
        "a kept grant keeps its ref"
    );

    // The packet alice sent before the swap is still a replay after it.
    spa_from(&mut r.engine, "10.0.0.2", 7, [1; 16]);
    let events = spooled(&r.spool, 8);
    let rejected: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "spa.rejected")
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(rejected, ["replay"]);
    let closed: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind == "grant.closed")
        .map(|e| (e.user.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(closed, [("bob", "user_removed")]);
}

#[test]
fn a_firewall_refusal_leaves_the_old_config_in_force() {
    let mut r = rig();
    r.state.lock().expect("lock").fail_base = true;
    let u = update(|t| t.replace("sequence = [\"tcp/7000\"]", "sequence = [\"tcp/7001\"]"));
    let e = r.engine.apply(u, r.engine.now()).expect_err("refused");
    assert!(e.starts_with("firewall:"), "{e}");
    knock(
        &mut r.engine,
        Instant::now(),
        KnockStep::Port {
            proto: Proto::Tcp,
            port: 7000,
        },
    );
    assert_eq!(
        open_keys(&r.state),
        ["10.240.0.2 tcp/22"],
        "the old door still opens"
    );
}

#[test]
fn revoke_closes_by_ref_and_by_user() {
    let mut r = rig();
    spa_from(&mut r.engine, "10.0.0.2", 7, [1; 16]);
    spa_from(&mut r.engine, "10.0.0.3", 8, [2; 16]);
    knock(
        &mut r.engine,
        Instant::now(),
        KnockStep::Port {
            proto: Proto::Tcp,
            port: 7000,
        },
    );
    let seq_ref = r
        .engine
        .gateway
        .grants()
        .iter()
        .find(|(_, g)| g.user.is_none())
        .map(|(_, g)| g.grant_ref.clone())
        .expect("sequence grant");
    r.engine.handle_input(Input::Revoke {
        grant_refs: vec![seq_ref, "no-such-ref".into()],
        users: vec!["bob".into()],
    });
    assert_eq!(open_keys(&r.state), ["10.0.0.2 tcp/443"]);
    let events = spooled(&r.spool, 8);
    let closed: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind == "grant.closed")
        .map(|e| (e.user.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(closed.len(), 2);
    assert!(closed.iter().all(|(_, reason)| *reason == "revoked"));
}
