//! The gateway with stepped time and a shell of plain values: a firewall that is a map,
//! stores that can be told to fail, and every notice kept.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use knockgate_proto::event::{Event, Kind, Reason};

use super::guard::CHECK_EVERY;
use super::*;
use crate::grants::Held;
use crate::packet::tcp_flags;
use crate::ruleset::Proto;

/// A policy behind a sequence the gateway's own matcher handles.
fn config(open: &str) -> Config {
    kernel_config(open).userspace_sequences()
}

/// The same policy with its sequence matched by the firewall (the default).
fn kernel_config(open: &str) -> Config {
    Config::parse(&format!(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = \"/tmp\"\n\
         [[policy]]\nname = \"ssh\"\nopen = [\"{open}\", \"udp/60001\"]\ntimeout = \"30s\"\n\
         sequence = [\"tcp/7000\", \"udp/8000\"]\n"
    ))
    .expect("config")
}

fn access(s: &str) -> Access {
    s.parse().expect("access")
}

/// The shell: carries out every action at once, on values.
struct Shell {
    gw: Gateway,
    /// The firewall's base (None: flushed) and grants with the time they were given.
    base: Option<Ruleset>,
    open: BTreeMap<GrantKey, Duration>,
    fail_open: bool,
    fail_base: bool,
    fail_persist: bool,
    persisted: Vec<Persist>,
    claims: Vec<ClaimJob>,
    notices: Vec<Notice>,
    t0: Instant,
}

impl Shell {
    fn new(config: &Config) -> Shell {
        let t0 = Instant::now();
        let gw = Gateway::new(config, None, "run", at(t0, 0)).expect("gateway");
        let mut s = Shell {
            gw,
            base: None,
            open: BTreeMap::new(),
            fail_open: false,
            fail_base: false,
            fail_persist: false,
            persisted: Vec::new(),
            claims: Vec::new(),
            notices: Vec::new(),
            t0,
        };
        s.base = Some(s.gw.ruleset());
        let rs = s.gw.ruleset();
        s.gw.installed(&rs);
        s.drain(0);
        s
    }

    fn now(&self, ms: u64) -> Time {
        at(self.t0, ms)
    }

    fn drain(&mut self, ms: u64) {
        let now = self.now(ms);
        while let Some(a) = self.gw.poll_action() {
            match a {
                Action::Open(o) => {
                    let r = if self.fail_open {
                        Err("refused".to_string())
                    } else {
                        self.open.insert(o.key, o.timeout);
                        Ok(())
                    };
                    self.gw.handle_opened(o, r, now);
                }
                Action::Close(k) => {
                    self.open.remove(&k);
                }
                Action::Persist(ticket, p) => {
                    let r = if self.fail_persist {
                        Err("disk full".into())
                    } else {
                        Ok(())
                    };
                    self.persisted.push(p);
                    if let Some(t) = ticket {
                        self.gw.handle_recorded(t, r, now);
                    }
                }
                Action::Claim(job) => self.claims.push(job),
                Action::Check(rs) => {
                    let intact = self.base.as_ref() == Some(&rs);
                    self.gw.handle_checked(Ok(intact), now);
                }
                Action::Install(rs) => {
                    let r = if self.fail_base {
                        Err("refused".to_string())
                    } else {
                        self.base = Some(rs);
                        Ok(())
                    };
                    self.gw.handle_installed(r, now);
                }
                Action::List => {
                    let keys = self.open.keys().copied().collect();
                    self.gw.handle_listed(Ok(keys), now);
                }
                Action::Retune { .. } => {}
                Action::Notice(n) => self.notices.push(n),
            }
        }
    }

    fn knock_sequence(&mut self, ms: u64) {
        for (proto, port) in [(Proto::Tcp, 7000), (Proto::Udp, 8000)] {
            let k = KnockMsg {
                at: self.now(ms).mono,
                src: "10.240.0.2".parse().expect("ip"),
                kind: KnockStep::Port { proto, port },
                tcp_flags: tcp_flags::SYN,
                payload: None,
                syn: None,
            };
            self.gw.handle_packet(&k, self.now(ms));
            self.drain(ms);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.gw.handle_timeout(self.now(ms));
        self.drain(ms);
    }

    /// The notices of `kind`, reported or not.
    fn told(&self, kind: Kind) -> Vec<&Notice> {
        self.notices
            .iter()
            .filter(|n| n.event.kind() == kind)
            .collect()
    }

    fn open_keys(&self) -> Vec<String> {
        self.open.keys().map(ToString::to_string).collect()
    }
}

/// `ms` after `t0`, with the wall clock in step.
fn at(t0: Instant, ms: u64) -> Time {
    Time {
        mono: t0 + Duration::from_millis(ms),
        unix_ms: 1_800_000_000_000 + ms as i64,
    }
}

#[test]
fn a_kernel_door_is_in_the_ruleset_and_its_completions_are_told_and_taken_over() {
    let c = kernel_config("tcp/22");
    let mut s = Shell::new(&c);
    let rs = s.gw.ruleset();
    assert_eq!(rs.doors.len(), 1);
    let door = rs.doors[0].clone();
    assert_eq!(door.policy, "ssh");
    assert_eq!(door.open, [access("tcp/22"), access("udp/60001")]);
    // The door's ports are dropped like any knock port, but never captured.
    assert!(rs.knock_ports.contains(&access("tcp/7000")));
    assert_eq!(c.capture_filter(&[]), "less 1");
    // Knocks the shell might still hand over are not matched in user space.
    s.knock_sequence(0);
    assert!(s.open.is_empty() && s.told(Kind::KnockCompleted).is_empty());

    let src = "10.240.0.2".parse().expect("ip");
    s.gw.handle_kernel_completed(&door.id(), src, s.now(10).mono, s.now(10));
    s.drain(10);
    assert_eq!(s.told(Kind::KnockCompleted).len(), 1);
    // The grants the kernel added are opened again, with their label and timeout.
    assert_eq!(s.open_keys(), ["10.240.0.2 tcp/22", "10.240.0.2 udp/60001"]);
    assert_eq!(s.told(Kind::GrantOpened).len(), 2);
    assert_eq!(s.gw.grants().len(), 2);

    // A door the config does not have (replaced since) opens nothing more.
    s.gw.handle_kernel_completed("kd_00000000", src, s.now(20).mono, s.now(20));
    s.drain(20);
    let rejected = s.told(Kind::KnockRejected);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].level, Level::Warn);
    assert_eq!(s.told(Kind::GrantOpened).len(), 2);
}

#[test]
fn a_completed_sequence_opens_every_port_of_the_policy_and_expiry_closes() {
    let mut s = Shell::new(&config("tcp/22"));
    s.knock_sequence(0);
    assert_eq!(s.open_keys(), ["10.240.0.2 tcp/22", "10.240.0.2 udp/60001"]);
    assert_eq!(s.gw.grants().len(), 2);
    let opened = s.told(Kind::GrantOpened);
    assert_eq!(opened.len(), 2);
    assert!(opened.iter().all(|n| n.report && n.level == Level::Info));
    assert_eq!(s.told(Kind::KnockCompleted).len(), 1);
    assert_eq!(s.told(Kind::KnockProgressed).len(), 1);
    assert!(
        !s.told(Kind::KnockProgressed)[0].report,
        "progress is not reported"
    );
    // Due exactly when the grants expire.
    assert_eq!(
        s.gw.poll_timeout(),
        s.now(1000).mono,
        "the guard checks first"
    );
    s.tick(29_999);
    assert_eq!(s.gw.grants().len(), 2);
    s.tick(30_000);
    assert!(s.open.is_empty(), "expiry closes through the firewall");
    assert!(s.gw.grants().is_empty());
    let closed = s.told(Kind::GrantClosed);
    assert!(
        closed
            .iter()
            .all(|n| n.event.reason() == Some(Reason::Expired))
    );
    assert_eq!(closed.len(), 2);
}

#[test]
fn a_firewall_error_records_no_grant() {
    let mut s = Shell::new(&config("tcp/22"));
    s.fail_open = true;
    s.knock_sequence(0);
    assert!(
        s.gw.grants().is_empty(),
        "fail closed: nothing believed open"
    );
    let failed = s.told(Kind::GrantFailed);
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|n| n.report && n.level == Level::Warn));
    assert!(s.told(Kind::GrantOpened).is_empty());
}

#[test]
fn a_lost_table_and_its_grants_come_back_at_the_next_check() {
    let mut s = Shell::new(&config("tcp/22"));
    s.knock_sequence(0);
    assert_eq!(s.open.len(), 2);
    // Nothing wrong: a check changes nothing and tells nothing.
    s.tick(CHECK_EVERY.as_millis() as u64);
    assert!(s.told(Kind::FirewallRepaired).is_empty());
    // `nft flush ruleset`: the base and the grants are gone.
    s.base = None;
    s.open.clear();
    s.gw.handle_firewall_changed(s.now(1010));
    s.tick(1015);
    assert!(s.base.is_none(), "the check waits for the burst to settle");
    s.tick(1060);
    let base = s.base.as_ref().expect("base restored");
    assert!(base.protected.contains(&access("tcp/22")));
    let left = s.open.values().next().copied().expect("grant restored");
    assert!(
        left <= Duration::from_millis(28_940) && left > Duration::from_secs(28),
        "{left:?}"
    );
    let repaired = s.told(Kind::FirewallRepaired);
    assert_eq!(repaired.len(), 1);
    assert_eq!(
        repaired[0].event,
        Event::FirewallRepaired {
            base: true,
            grants: 2
        }
    );
}

#[test]
fn a_failed_repair_is_told_and_retried_soon() {
    let mut s = Shell::new(&config("tcp/22"));
    s.base = None;
    s.fail_base = true;
    s.tick(1000);
    assert!(s.base.is_none());
    assert_eq!(s.told(Kind::FirewallRepairFailed).len(), 1);
    s.fail_base = false;
    assert!(
        s.gw.poll_timeout() <= s.now(1200).mono,
        "retried before the next backstop"
    );
    s.tick(1200);
    assert!(s.base.is_some());
}

#[test]
fn a_grant_about_to_expire_is_not_put_back() {
    let mut s = Shell::new(&config("tcp/22"));
    s.knock_sequence(0);
    s.open.clear();
    s.gw.handle_firewall_changed(s.now(29_900));
    s.tick(29_950);
    assert!(s.open.is_empty());
}

#[test]
fn the_floor_stays_protected_until_an_explicit_config_and_is_recorded() {
    let c = config("tcp/22");
    let mut gw = Gateway::new(&c, None, "run", at(Instant::now(), 0)).expect("gateway");
    gw.keep_floor([access("tcp/443"), access("tcp/7000")].into());
    // tcp/7000 is a knock port of this config: it stays a knock port.
    let rs = gw.ruleset();
    let want: BTreeSet<Access> = [access("tcp/22"), access("tcp/443"), access("udp/60001")].into();
    assert_eq!(rs.protected, want);
    gw.installed(&rs);
    assert_eq!(
        gw.poll_action(),
        Some(Action::Persist(None, Persist::Protected(want)))
    );
    // The same config again (a material push) keeps nothing beyond it: it is explicit.
    let now = at(Instant::now(), 0);
    let Ok(Apply::Install(rs)) = gw.handle_config(Update::build(c).expect("update"), now) else {
        panic!("a floor makes even the same config an explicit change");
    };
    gw.handle_installed_config(Ok(()), now).expect("in force");
    let want: BTreeSet<Access> = [access("tcp/22"), access("udp/60001")].into();
    assert_eq!(rs.protected, want);
    assert_eq!(gw.ruleset().protected, want);
    assert_eq!(
        gw.poll_action(),
        Some(Action::Persist(None, Persist::Protected(want)))
    );
}

#[test]
fn a_refused_config_leaves_the_old_one_in_force() {
    let mut s = Shell::new(&config("tcp/22"));
    let next = Update::build(config("tcp/2222")).expect("update");
    let now = s.now(0);
    assert!(matches!(
        s.gw.handle_config(next, now),
        Ok(Apply::Install(_))
    ));
    let e =
        s.gw.handle_installed_config(Err("busy".into()), now)
            .expect_err("refused");
    assert_eq!(e, "firewall: busy");
    s.knock_sequence(0);
    assert_eq!(s.open_keys(), ["10.240.0.2 tcp/22", "10.240.0.2 udp/60001"]);
}

#[test]
fn a_grant_without_a_timeout_is_left_alone_not_adopted() {
    let mut s = Shell::new(&config("tcp/22"));
    let key = GrantKey {
        addr: "10.240.0.9".parse().expect("ip"),
        proto: Proto::Tcp,
        port: 22,
    };
    let held = vec![
        Held {
            key,
            remaining: Duration::MAX,
            label: None,
        },
        Held {
            key: GrantKey {
                port: 60001,
                proto: Proto::Udp,
                ..key
            },
            remaining: Duration::from_secs(5),
            label: GrantLabel::from_comment("ref=old-3 user=alice policy=ssh"),
        },
    ];
    assert_eq!(s.gw.handle_adopt(held, s.now(0)), 1);
    s.drain(0);
    let adopted = s.told(Kind::GrantAdopted);
    assert_eq!(adopted.len(), 1);
    let g = adopted[0].event.grant().expect("grant");
    assert_eq!((g.grant_ref.as_str(), g.access.port), ("old-3", 60001));
    s.tick(5_000);
    assert_eq!(
        s.told(Kind::GrantClosed).len(),
        1,
        "the adopted grant expires on time"
    );
}

#[test]
fn stopping_closes_grants_only_where_the_firewall_cannot_expire_them() {
    let mut s = Shell::new(&config("tcp/22"));
    s.knock_sequence(0);
    s.gw.handle_stop(true, s.now(10));
    s.drain(10);
    assert_eq!(s.open.len(), 2);
    assert_eq!(
        s.told(Kind::AgentStopped)[0].event,
        Event::AgentStopped { grants_kept: 2 }
    );
    s.gw.handle_stop(false, s.now(20));
    s.drain(20);
    assert!(s.open.is_empty());
    let closed = s.told(Kind::GrantClosed);
    assert!(
        closed
            .iter()
            .all(|n| n.event.reason() == Some(Reason::AgentStopped))
    );
}

const SPA: &str = r#"
[agent]
name = "gw1"
interfaces = ["lo"]
state_dir = "/tmp"
[[user]]
name = "alice"
spa_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
[[policy]]
name = "web"
open = ["tcp/443"]
timeout = "30s"
users = ["alice"]
spa = true
"#;

fn spa_packet(unix_secs: u64, nonce: [u8; 16]) -> Box<[u8]> {
    use knockgate_proto::spa::{SpaKey, SpaRequest, seal};
    let req = SpaRequest {
        timestamp: unix_secs,
        nonce,
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![access("tcp/443")],
        duration_secs: 0,
    };
    seal(&SpaKey::from_secret([7; 32]), &req, [7; 24])
        .expect("seal")
        .into()
}

fn spa_shell() -> Shell {
    let c = Config::parse(SPA).expect("config");
    let mut s = Shell::new(&c);
    s.gw = Gateway::new(&c, Some(SpaDetector::new(&c)), "run", s.now(0)).expect("gateway");
    s
}

/// A datagram from `src` to the SPA port at `now`.
fn datagram(src: &str, now: Time, payload: Box<[u8]>) -> KnockMsg {
    KnockMsg {
        at: now.mono,
        src: src.parse().expect("ip"),
        kind: KnockStep::udp(62201),
        tcp_flags: 0,
        payload: Some(payload),
        syn: None,
    }
}

fn send_spa(s: &mut Shell, ms: u64, nonce: [u8; 16]) {
    let now = s.now(ms);
    let k = datagram("10.240.0.2", now, spa_packet(now.unix_secs(), nonce));
    s.gw.handle_packet(&k, now);
    s.drain(ms);
}

#[test]
fn a_packet_opens_only_once_its_replay_entry_is_durable() {
    let mut s = spa_shell();
    s.fail_persist = true;
    send_spa(&mut s, 0, [1; 16]);
    assert!(
        s.open.is_empty(),
        "fail closed: the replay entry is not on disk"
    );
    let refused = s.told(Kind::SpaRejected);
    assert_eq!(refused[0].event.reason(), Some(Reason::ReplayStore));
    assert!(
        s.persisted
            .iter()
            .any(|p| matches!(p, Persist::Replay { .. }))
    );
    // The disk is back: a fresh packet opens, the same one again is a replay.
    s.fail_persist = false;
    send_spa(&mut s, 10, [2; 16]);
    assert_eq!(s.open_keys(), ["10.240.0.2 tcp/443"]);
    send_spa(&mut s, 20, [2; 16]);
    let reasons: Vec<_> = s
        .told(Kind::SpaRejected)
        .iter()
        .map(|n| n.event.reason())
        .collect();
    assert_eq!(reasons, [Some(Reason::ReplayStore), Some(Reason::Replay)]);
}

#[test]
fn refusals_of_junk_are_counted_and_summarized_not_told_one_by_one() {
    let mut s = spa_shell();
    for i in 0..150u64 {
        let now = s.now(i);
        let k = datagram("10.240.0.66", now, vec![0u8; 40].into());
        s.gw.handle_packet(&k, now);
    }
    s.drain(150);
    let refused = s.told(Kind::SpaRejected);
    assert_eq!(refused.len(), 150, "every refusal is logged");
    let reported = refused.iter().filter(|n| n.report).count();
    assert!(
        (100..=104).contains(&reported),
        "a burst of 100 is reported: {reported}"
    );
    assert!(refused.iter().all(|n| n.level == Level::Debug));
    s.tick(10_000);
    let summary = s.told(Kind::SpaRefusedSummary);
    assert_eq!(summary.len(), 1);
    let Event::SpaRefusedSummary { counts, .. } = &summary[0].event else {
        panic!()
    };
    assert_eq!(counts, &[(Reason::Malformed, 150)]);
}
