use std::collections::BTreeSet;

use knockgate_agent_core::packet::KnockStep;

use super::rig::{
    ALICE, BOB, Rig, T0, material, rig, rig_in, sequence, update, users_and_policies, w0,
};

#[test]
fn a_completed_rotating_sequence_opens_for_its_user_and_says_so() {
    let mut r = rig();
    let seq = sequence(&ALICE, w0());
    r.knock("10.0.0.2", &seq[..3]);
    assert!(r.open().is_empty(), "not yet");
    r.knock("10.0.0.2", &seq[3..]);
    assert_eq!(r.open(), ["10.0.0.2 tcp/2222"]);
    let (_, g) = r.engine.gateway.grants().iter().next().expect("grant");
    assert_eq!(
        (g.policy.as_str(), g.user.as_deref()),
        ("rot", Some("alice"))
    );
    let done = r.events("knock.completed", 1);
    assert_eq!(done.len(), 1);
    let e = &done[0];
    assert_eq!((e.user.as_str(), e.policy.as_str()), ("alice", "rot"));
    assert_eq!(e.detail["method"], "rotating");
    assert_eq!(e.detail["window"], w0());
}

#[test]
fn a_consumed_sequence_opens_nothing_again_from_anywhere() {
    let mut r = rig();
    let seq = sequence(&ALICE, w0());
    r.knock("10.0.0.2", &seq);
    assert_eq!(r.open().len(), 1);
    r.knock("10.0.0.9", &seq);
    r.knock("10.0.0.2", &seq);
    assert_eq!(r.open(), ["10.0.0.2 tcp/2222"], "replays open nothing");
    // Another window's sequence still works; a window two ahead does not yet.
    r.knock("10.0.0.3", &sequence(&ALICE, w0() + 1));
    r.knock("10.0.0.4", &sequence(&ALICE, w0() + 2));
    assert_eq!(r.open(), ["10.0.0.2 tcp/2222", "10.0.0.3 tcp/2222"]);
    // Knocked in the window of another user, nothing is opened for anyone else.
    let grants: Vec<Option<&str>> = r
        .engine
        .gateway
        .grants()
        .iter()
        .map(|(_, g)| g.user.as_deref())
        .collect();
    assert_eq!(grants, [Some("alice"), Some("alice")]);
}

#[test]
fn a_restarted_agent_still_refuses_a_used_sequence() {
    let mut r = rig();
    let seq = sequence(&ALICE, w0());
    r.knock("10.0.0.2", &seq);
    assert_eq!(r.open().len(), 1);
    let Rig { engine, dir, .. } = r;
    drop(engine);
    let mut again = rig_in(dir);
    again.knock("10.0.0.9", &seq);
    assert!(
        again.open().is_empty(),
        "the used sequence stays used after a restart"
    );
    again.knock("10.0.0.3", &sequence(&ALICE, w0() + 1));
    assert_eq!(
        again.open(),
        ["10.0.0.3 tcp/2222"],
        "an unused one still works"
    );
}

#[test]
fn a_material_push_mid_knock_keeps_progress_and_consumption() {
    let mut r = rig();
    let dir = r.dir.path().to_path_buf();
    let (users, policies) = users_and_policies();
    let alice = sequence(&ALICE, w0());
    let bob = sequence(&BOB, w0());
    r.knock("10.0.0.2", &alice);
    r.knock("10.0.0.3", &bob[..2]);
    // The next boundary: the controller pushes windows w0 ..= w0+4.
    r.set_time(T0 + 30);
    let next = update(
        &dir,
        users.clone(),
        policies.clone(),
        material(w0()..=w0() + 4, 0..=3),
    );
    r.apply(next).expect("applies");
    r.knock("10.0.0.3", &bob[2..]);
    assert_eq!(
        r.open(),
        ["10.0.0.2 tcp/2222", "10.0.0.3 tcp/2222"],
        "bob's knock in flight survived the push"
    );
    // A config change that lists the users the other way round: alice's used sequence
    // stays used (ids are names, not positions).
    let swapped: Vec<_> = users.into_iter().rev().collect();
    let next = update(&dir, swapped, policies, material(w0()..=w0() + 4, 0..=3));
    r.apply(next).expect("applies");
    r.knock("10.0.0.7", &alice);
    r.knock("10.0.0.8", &bob);
    assert_eq!(r.open().len(), 2, "both still consumed");
    r.knock("10.0.0.7", &sequence(&BOB, w0() + 1));
    assert_eq!(r.open().len(), 3, "and a fresh one still opens");
}

/// Every number in a capture filter.
fn ports(filter: &str) -> BTreeSet<u16> {
    filter
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn port(k: &KnockStep) -> u16 {
    match k {
        KnockStep::Port { port, .. } => *port,
        KnockStep::Icmp => 0,
    }
}

fn listens(filter: &str, seq: &[KnockStep]) -> bool {
    let p = ports(filter);
    seq.iter().all(|k| p.contains(&port(k)))
}

#[test]
fn the_capture_filter_follows_the_accepted_sequences_only() {
    let mut r = rig();
    let f = r.filter();
    assert!(ports(&f).contains(&62201), "the SPA port: {f}");
    for w in [w0() - 1, w0(), w0() + 1] {
        assert!(listens(&f, &sequence(&ALICE, w)), "window {w} in {f}");
        assert!(listens(&f, &sequence(&BOB, w)), "window {w} in {f}");
    }
    let later = sequence(&ALICE, w0() + 3);
    assert!(!listens(&f, &later), "pushed but not accepted yet");
    assert!(!f.contains("portrange"), "{f}");
    // Rotating ports never reach the drop set.
    let rs = r.fw.lock().expect("lock").ruleset.clone();
    assert!(rs.is_none_or(|rs| rs.knock_ports.iter().all(|a| a.port == 62201)));
    // Two windows on, the filter has moved by itself (no push needed).
    r.set_time(T0 + 60);
    r.tick();
    let f = r.filter();
    assert!(listens(&f, &later), "{f}");
    // A used sequence is not listened for any more (unless another shares a port).
    let seq = sequence(&BOB, w0() + 2);
    r.knock("10.0.0.5", &seq);
    assert_eq!(r.open().len(), 1);
    let f = r.filter();
    let mut others = Vec::new();
    for w in w0() + 1..=w0() + 3 {
        others.extend(sequence(&ALICE, w));
        if w != w0() + 2 {
            others.extend(sequence(&BOB, w));
        }
    }
    assert!(listens(&f, &others), "{f}");
    let gone: Vec<u16> = seq
        .iter()
        .filter(|k| !others.iter().any(|o| port(o) == port(k)))
        .map(port)
        .collect();
    assert!(!gone.is_empty());
    assert!(gone.iter().all(|p| !ports(&f).contains(p)), "{f}");
}
