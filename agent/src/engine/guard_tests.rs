//! The guard with the fake firewall and stepped time: repair after the table is lost,
//! the protected floor, and adoption of grants knockgate did not make.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knockgate_agent_core::config::Config;
use knockgate_agent_core::packet::{KnockKind, tcp_flags};
use knockgate_agent_core::ruleset::{Access, GrantKey, Proto};

use super::guard::CHECK_EVERY;
use super::{Engine, Update};
use crate::capture::KnockMsg;
use crate::firewall::fake::{FakeFirewall, FakeState};

fn config(open: &str) -> Config {
    Config::parse(&format!(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = \"/tmp\"\n\
         [[policy]]\nname = \"ssh\"\nopen = [\"{open}\"]\ntimeout = \"30s\"\n\
         sequence = [\"tcp/7000\", \"udp/8000\"]\n"
    ))
    .expect("config")
}

fn access(s: &str) -> Access {
    s.parse().expect("access")
}

fn open_by_knocking(e: &mut Engine, at: Instant) {
    for (proto, port) in [(Proto::Tcp, 7000), (Proto::Udp, 8000)] {
        e.handle_input(KnockMsg {
            at,
            src: "10.240.0.2".parse().expect("ip"),
            kind: KnockKind::Port { proto, port },
            tcp_flags: tcp_flags::SYN,
            payload: None,
        });
    }
}

/// An engine over the fake firewall, installed, with one 30 s grant opened at `t0`.
fn granted() -> (Engine, Arc<Mutex<FakeState>>, Instant) {
    let fw = FakeFirewall::default();
    let state = fw.state.clone();
    let mut e = Engine::new(&config("tcp/22"), Box::new(fw), None).expect("engine");
    e.install().expect("install");
    let t0 = Instant::now();
    open_by_knocking(&mut e, t0);
    (e, state, t0)
}

#[test]
fn a_lost_table_and_its_grants_come_back_at_the_next_check() {
    let (mut e, state, t0) = granted();
    assert_eq!(state.lock().expect("lock").open.len(), 1);

    // Nothing wrong: a check changes nothing.
    e.poll_guard(t0 + CHECK_EVERY);
    assert_eq!(state.lock().expect("lock").open.len(), 1);

    // `nft flush ruleset`: the base and the grant are gone.
    {
        let mut s = state.lock().expect("lock");
        s.ruleset = None;
        s.open.clear();
    }
    let t1 = t0 + CHECK_EVERY + Duration::from_millis(10);
    e.handle_firewall_changed(t1);
    e.poll_guard(t1 + Duration::from_millis(5));
    assert!(
        state.lock().expect("lock").ruleset.is_none(),
        "the check waits for the burst to settle"
    );
    e.poll_guard(t1 + Duration::from_millis(50));
    let s = state.lock().expect("lock");
    let rs = s.ruleset.as_ref().expect("base restored");
    assert!(rs.protected.contains(&access("tcp/22")));
    let left = s.open.values().next().copied().expect("grant restored");
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(28),
        "restored for what it had left: {left:?}"
    );
}

#[test]
fn a_grant_about_to_expire_is_not_put_back() {
    let (mut e, state, t0) = granted();
    state.lock().expect("lock").open.clear();
    e.poll_guard(t0 + Duration::from_millis(29_950));
    assert!(state.lock().expect("lock").open.is_empty());
}

#[test]
fn the_floor_stays_protected_until_an_explicit_config_and_is_recorded() {
    let dir = tempfile::tempdir().expect("dir");
    let fw = FakeFirewall::default();
    let state = fw.state.clone();
    let floor: BTreeSet<Access> = [access("tcp/443"), access("tcp/7000")].into();
    let mut e = Engine::new(&config("tcp/22"), Box::new(fw), None)
        .expect("engine")
        .with_protected_record(dir.path().to_path_buf())
        .with_protected_floor(floor);
    e.install().expect("install");
    let protected = |s: &std::sync::Mutex<crate::firewall::fake::FakeState>| {
        s.lock()
            .expect("lock")
            .ruleset
            .as_ref()
            .expect("ruleset")
            .protected
            .clone()
    };
    // tcp/7000 is a knock port of this config: it stays a knock port.
    assert_eq!(
        protected(&state),
        [access("tcp/22"), access("tcp/443")].into()
    );
    assert_eq!(
        crate::state::load_protected(dir.path()).expect("record"),
        Some([access("tcp/22"), access("tcp/443")].into())
    );

    // The same config again (a material push) keeps nothing beyond it: it is explicit.
    let update = Update::build(config("tcp/22")).expect("update");
    e.apply(update, Instant::now()).expect("apply");
    assert_eq!(protected(&state), [access("tcp/22")].into());
    assert_eq!(
        crate::state::load_protected(dir.path()).expect("record"),
        Some([access("tcp/22")].into())
    );
}

#[test]
fn a_grant_without_a_timeout_is_left_alone_not_adopted() {
    let fw = FakeFirewall::default();
    let key = GrantKey {
        addr: "10.240.0.9".parse().expect("ip"),
        proto: Proto::Tcp,
        port: 22,
    };
    fw.state
        .lock()
        .expect("lock")
        .open
        .insert(key, Duration::MAX);
    let mut e = Engine::new(&config("tcp/22"), Box::new(fw), None).expect("engine");
    assert_eq!(e.adopt_existing(Instant::now()).expect("adopt"), 0);
    assert!(e.grants.is_empty());
    e.poll_guard(Instant::now() + CHECK_EVERY);
}
