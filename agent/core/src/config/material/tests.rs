use std::time::Duration;

use super::*;
use crate::config::{
    DEFAULT_SEQUENCE_TIMEOUT, DEFAULT_TCP_FLAGS, Origin, OtkOffline, PolicyDef, User,
};
use crate::ruleset::Proto;

const BASE: &str = r#"
[agent]
name = "gw1"
interfaces = ["eth0"]
state_dir = "/var/lib/knockgate"
[controller]
url = "https://controller.example:7443"
"#;

fn user(name: &str, spa: Option<u8>) -> User {
    User {
        name: name.into(),
        spa_key: spa.map(|b| SpaKey::from_secret([b; 32])),
        fwknop: None,
    }
}

fn policy(name: &str, users: &[&str]) -> PolicyDef {
    PolicyDef {
        name: name.into(),
        open: vec!["tcp/22".parse().expect("access")],
        timeout: Duration::from_secs(30),
        max_timeout: None,
        sequence: vec![],
        sequence_timeout: None,
        min_gap: None,
        max_gap: None,
        tcp_flags: None,
        users: users.iter().map(|u| (*u).to_string()).collect(),
        spa: false,
        fwknop: false,
        rotating: false,
        window_secs: None,
        otk: None,
        sealed: false,
        require_os: vec![],
        forward: vec![],
    }
}

/// alice (no keys: rotating and one-time keys only) and bob (a static SPA key); "rot"
/// admits both for rotating sequences, "keys" admits alice for one-time keys.
fn config() -> Config {
    let mut rot = policy("rot", &["alice", "bob"]);
    rot.rotating = true;
    rot.window_secs = Some(10);
    rot.sequence_timeout = Some(Duration::from_secs(4));
    let mut keys = policy("keys", &["alice"]);
    keys.open = vec!["tcp/443".parse().expect("access")];
    keys.otk = Some(OtkOffline::Local);
    Config::parse(BASE)
        .expect("base")
        .with_policies(
            Origin::Controller,
            vec![user("alice", None), user("bob", Some(9))],
            vec![rot, keys],
        )
        .expect("valid")
}

fn seq(user: &str, policy: &str, window: u64) -> SequenceDef {
    SequenceDef {
        user: user.into(),
        policy: policy.into(),
        window,
        knocks: vec![
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 31000,
            },
            KnockStep::Port {
                proto: Proto::Udp,
                port: 41000,
            },
        ],
    }
}

fn otk(user: &str, counter: u64, secret: u8) -> OtkDef {
    OtkDef {
        user: user.into(),
        counter,
        key: SpaKey::from_secret([secret; 32]),
    }
}

#[test]
fn rotating_and_otk_policies_are_enforceable() {
    let c = config();
    let r = c.policies[0].rotating.expect("rotating");
    assert_eq!(r.window_secs, 10);
    assert_eq!(r.sequence_timeout, Duration::from_secs(4));
    assert_eq!(r.tcp_flags, DEFAULT_TCP_FLAGS);
    assert!(c.policies[0].door.is_none(), "no fixed sequence");
    assert_eq!(
        c.policies[0].users.len(),
        2,
        "users without keys are admitted"
    );
    assert_eq!(c.policies[1].otk, Some(OtkOffline::Local));
    assert!(c.uses_spa(), "one-time keys arrive on the SPA port");
    assert_eq!(c.rotating_policies().len(), 1);
    assert!(
        c.ruleset().knock_ports.iter().all(|a| a.port == 62201),
        "rotating ports are never in the drop set"
    );

    let base = Config::parse(BASE).expect("base");
    let mut p = policy("rot", &[]);
    p.rotating = true;
    let c = base
        .with_policies(Origin::Controller, vec![], vec![p.clone()])
        .expect("defaults");
    let r = c.policies[0].rotating.expect("rotating");
    assert_eq!(
        (r.window_secs, r.sequence_timeout),
        (30, DEFAULT_SEQUENCE_TIMEOUT)
    );
    let mut bad = p.clone();
    bad.window_secs = Some(0);
    let e = base.with_policies(Origin::Controller, vec![], vec![bad]);
    assert_eq!(
        e.expect_err("zero").to_string(),
        "policy[0].window_secs: must be longer than zero"
    );
    let mut bad = policy("x", &[]);
    bad.spa = true;
    bad.window_secs = Some(30);
    let e = base.with_policies(Origin::Controller, vec![], vec![bad]);
    assert_eq!(
        e.expect_err("stray").to_string(),
        "policy[0].window_secs: set without rotating"
    );
}

#[test]
fn material_resolves_to_indexes() {
    let c = config();
    let m = c
        .material(MaterialDef {
            rotating: vec![seq("bob", "rot", 7), seq("alice", "rot", 7)],
            otks: vec![otk("alice", 3, 1), otk("alice", 4, 2)],
        })
        .expect("valid");
    assert_eq!(
        m.rotating
            .iter()
            .map(|s| (s.user, s.policy, s.window))
            .collect::<Vec<_>>(),
        [(1, 0, 7), (0, 0, 7)]
    );
    assert_eq!(
        m.otks
            .iter()
            .map(|o| (o.user, o.counter))
            .collect::<Vec<_>>(),
        [(0, 3), (0, 4)]
    );
    assert_eq!(
        c.material(MaterialDef::default()).expect("empty"),
        Material::default()
    );
}

#[test]
fn material_that_does_not_fit_the_config_is_refused() {
    let c = config();
    let err = |def: MaterialDef| c.material(def).expect_err("refused").to_string();
    let rot = |s: SequenceDef| MaterialDef {
        rotating: vec![s],
        otks: vec![],
    };
    let keys = |o: Vec<OtkDef>| MaterialDef {
        rotating: vec![],
        otks: o,
    };
    assert_eq!(
        err(rot(seq("carol", "rot", 1))),
        "rotating[0].user: no user named \"carol\""
    );
    assert_eq!(
        err(rot(seq("alice", "keys", 1))),
        "rotating[0].policy: policy \"keys\" is not opened by rotating sequences"
    );
    let mut empty = seq("alice", "rot", 1);
    empty.knocks.clear();
    assert_eq!(err(rot(empty)), "rotating[0].knocks: must be 1-255 knocks");
    assert!(
        err(MaterialDef {
            rotating: vec![seq("alice", "rot", 1), seq("alice", "rot", 1)],
            otks: vec![],
        })
        .starts_with("rotating[1].window: a second sequence")
    );
    assert_eq!(
        err(keys(vec![otk("bob", 1, 1)])),
        "one_time_keys[0].user: no one-time-key policy admits user \"bob\""
    );
    assert_eq!(
        err(keys(vec![otk("alice", 1, 1), otk("alice", 1, 2)])),
        "one_time_keys[1].counter: user \"alice\" has key 1 twice"
    );
    assert_eq!(
        err(keys(vec![otk("alice", 1, 9)])),
        "one_time_keys[0].key: same key id as another key",
        "bob's static key"
    );
}
