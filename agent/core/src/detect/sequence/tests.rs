use super::*;
use crate::packet::tcp_flags::{ACK, SYN};
use proptest::prelude::*;

fn tcp(port: u16) -> KnockStep {
    KnockStep::Port {
        proto: Proto::Tcp,
        port,
    }
}
fn udp(port: u16) -> KnockStep {
    KnockStep::Port {
        proto: Proto::Udp,
        port,
    }
}
fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn door(steps: Vec<KnockStep>) -> Door {
    Door {
        steps,
        sequence_timeout: Duration::from_secs(10),
        min_gap: Duration::ZERO,
        max_gap: None,
        tcp_flags: FlagFilter {
            set: SYN,
            clear: ACK,
        },
    }
}

fn ssh_door() -> Door {
    door(vec![tcp(7000), udp(8000), KnockStep::Icmp, tcp(9000)])
}

struct Run {
    m: SequenceMatcher,
    t0: Instant,
    out: Vec<Decision>,
}

impl Run {
    fn new(doors: Vec<Door>) -> Self {
        Run {
            m: SequenceMatcher::new(doors, 1024).expect("doors"),
            t0: Instant::now(),
            out: Vec::new(),
        }
    }
    /// Knock at `at_ms` after t0; returns the decisions it made.
    fn knock(&mut self, src: &str, kind: KnockStep, at_ms: u64) -> Vec<Decision> {
        self.knock_flags(src, kind, SYN, at_ms)
    }
    fn knock_flags(&mut self, src: &str, kind: KnockStep, flags: u8, at_ms: u64) -> Vec<Decision> {
        self.out.clear();
        self.m
            .handle_knock(ip(src), kind, flags, self.t0 + ms(at_ms), &mut self.out);
        self.out.clone()
    }
    fn completes(&mut self, src: &str, seq: &[(KnockStep, u64)]) -> bool {
        let mut done = false;
        for &(k, at) in seq {
            done = self
                .knock(src, k, at)
                .iter()
                .any(|d| d.outcome == Outcome::Completed);
        }
        done
    }
}

fn good(start: u64, step: u64) -> Vec<(KnockStep, u64)> {
    [tcp(7000), udp(8000), KnockStep::Icmp, tcp(9000)]
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, start + i as u64 * step))
        .collect()
}

#[test]
fn the_right_sequence_completes_and_reports_progress() {
    let mut r = Run::new(vec![ssh_door()]);
    let d = r.knock("10.240.0.2", tcp(7000), 0);
    assert_eq!(
        d,
        vec![Decision {
            door: 0,
            outcome: Outcome::Progressed { stage: 1, of: 4 }
        }]
    );
    assert_eq!(
        r.knock("10.240.0.2", udp(8000), 10)[0].outcome,
        Outcome::Progressed { stage: 2, of: 4 }
    );
    assert_eq!(
        r.knock("10.240.0.2", KnockStep::Icmp, 20)[0].outcome,
        Outcome::Progressed { stage: 3, of: 4 }
    );
    assert_eq!(
        r.knock("10.240.0.2", tcp(9000), 30)[0].outcome,
        Outcome::Completed
    );
    assert_eq!(
        r.m.tracked_sources(),
        0,
        "a completed attempt frees its source"
    );
}

#[test]
fn wrong_order_resets_and_does_not_complete() {
    let mut r = Run::new(vec![ssh_door()]);
    r.knock("10.240.0.2", tcp(7000), 0);
    let d = r.knock("10.240.0.2", KnockStep::Icmp, 10);
    assert_eq!(d[0].outcome, Outcome::Reset(ResetReason::WrongKnock));
    assert!(!r.completes(
        "10.240.0.2",
        &[(udp(8000), 20), (KnockStep::Icmp, 30), (tcp(9000), 40)]
    ));
}

#[test]
fn a_wrong_knock_that_is_the_first_step_starts_over() {
    let mut r = Run::new(vec![ssh_door()]);
    r.knock("10.240.0.2", tcp(7000), 0);
    r.knock("10.240.0.2", udp(8000), 10);
    let d = r.knock("10.240.0.2", tcp(7000), 20);
    assert_eq!(d[0].outcome, Outcome::Reset(ResetReason::WrongKnock));
    assert_eq!(d[1].outcome, Outcome::Progressed { stage: 1, of: 4 });
    assert!(r.completes(
        "10.240.0.2",
        &[(udp(8000), 30), (KnockStep::Icmp, 40), (tcp(9000), 50)]
    ));
}

#[test]
fn too_slow_stays_closed() {
    let mut r = Run::new(vec![ssh_door()]);
    // 4 knocks 4 s apart: 12 s > 10 s sequence timeout.
    assert!(!r.completes("10.240.0.2", &good(0, 4000)));
    // Just inside the limit works.
    assert!(r.completes("10.240.0.3", &good(0, 3333)));
}

#[test]
fn a_retransmitted_knock_does_not_reset_progress() {
    let mut r = Run::new(vec![ssh_door()]);
    r.knock("10.240.0.2", tcp(7000), 0);
    let d = r.knock("10.240.0.2", tcp(7000), 1000); // SYN retransmit after 1 s
    assert_eq!(d[0].outcome, Outcome::Retransmit { stage: 1 });
    assert!(r.completes(
        "10.240.0.2",
        &[
            (udp(8000), 1100),
            (KnockStep::Icmp, 1200),
            (tcp(9000), 1300)
        ]
    ));
}

#[test]
fn a_repeated_step_in_the_sequence_still_advances() {
    let mut r = Run::new(vec![door(vec![tcp(7000), tcp(7000), tcp(8000)])]);
    assert!(r.completes(
        "10.240.0.2",
        &[(tcp(7000), 0), (tcp(7000), 5), (tcp(8000), 10)]
    ));
}

#[test]
fn one_source_never_advances_another() {
    let mut r = Run::new(vec![ssh_door()]);
    r.knock("10.240.0.2", tcp(7000), 0);
    r.knock("10.240.0.2", udp(8000), 1);
    r.knock("10.240.0.2", KnockStep::Icmp, 2);
    let d = r.knock("10.240.0.3", tcp(9000), 3);
    assert!(d.is_empty(), "B's last step alone does nothing: {d:?}");
    // Interleaved sources both complete.
    let mut r = Run::new(vec![ssh_door()]);
    let (a, b) = (good(0, 10), good(5, 10));
    let mut done = Vec::new();
    for i in 0..4 {
        if r.knock("10.240.0.2", a[i].0, a[i].1)
            .iter()
            .any(|d| d.outcome == Outcome::Completed)
        {
            done.push("a");
        }
        if r.knock("fd00:4b47::2", b[i].0, b[i].1)
            .iter()
            .any(|d| d.outcome == Outcome::Completed)
        {
            done.push("b");
        }
    }
    assert_eq!(done, ["a", "b"]);
}

#[test]
fn tcp_flag_filter_ignores_without_resetting() {
    let mut r = Run::new(vec![ssh_door()]);
    r.knock("10.240.0.2", tcp(7000), 0);
    let d = r.knock_flags("10.240.0.2", tcp(9000), SYN | ACK, 5);
    assert_eq!(d[0].outcome, Outcome::FlagsIgnored);
    assert!(r.completes(
        "10.240.0.2",
        &[(udp(8000), 10), (KnockStep::Icmp, 20), (tcp(9000), 30)]
    ));
}

#[test]
fn gaps_are_enforced() {
    let mut d = ssh_door();
    d.min_gap = ms(100);
    d.max_gap = Some(ms(1000));
    let mut r = Run::new(vec![d]);
    assert!(r.completes("10.240.0.2", &good(0, 200)));
    r.knock("10.240.0.3", tcp(7000), 0);
    assert_eq!(
        r.knock("10.240.0.3", udp(8000), 50)[0].outcome,
        Outcome::Reset(ResetReason::GapTooShort)
    );
    r.knock("10.240.0.4", tcp(7000), 0);
    assert_eq!(
        r.knock("10.240.0.4", udp(8000), 1500)[0].outcome,
        Outcome::Reset(ResetReason::GapTooLong)
    );
}

#[test]
fn doors_sharing_ports_are_independent() {
    let a = door(vec![tcp(7000), tcp(8000)]);
    let b = door(vec![tcp(8000), tcp(7000)]);
    let mut r = Run::new(vec![a, b]);
    let d1 = r.knock("10.240.0.2", tcp(7000), 0);
    assert_eq!(
        d1,
        vec![Decision {
            door: 0,
            outcome: Outcome::Progressed { stage: 1, of: 2 }
        }]
    );
    let d2 = r.knock("10.240.0.2", tcp(8000), 1);
    assert!(d2.contains(&Decision {
        door: 0,
        outcome: Outcome::Completed
    }));
    assert!(d2.contains(&Decision {
        door: 1,
        outcome: Outcome::Progressed { stage: 1, of: 2 }
    }));
    let d3 = r.knock("10.240.0.2", tcp(7000), 2);
    assert!(d3.contains(&Decision {
        door: 1,
        outcome: Outcome::Completed
    }));
}

#[test]
fn source_state_is_bounded_and_evicts_the_oldest() {
    let mut m = SequenceMatcher::new(vec![ssh_door()], 100).expect("doors");
    let t0 = Instant::now();
    let mut out = Vec::new();
    for i in 0..10_000u32 {
        let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        m.handle_knock(src, tcp(7000), SYN, t0, &mut out);
    }
    assert_eq!(m.tracked_sources(), 100);
    // A recent source kept its progress; the first one was evicted.
    out.clear();
    m.handle_knock(
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 9_999)),
        udp(8000),
        0,
        t0,
        &mut out,
    );
    assert_eq!(out[0].outcome, Outcome::Progressed { stage: 2, of: 4 });
    out.clear();
    m.handle_knock(
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000)),
        udp(8000),
        0,
        t0,
        &mut out,
    );
    assert!(
        out.is_empty(),
        "evicted source starts from nothing: {out:?}"
    );
}

#[test]
fn a_one_step_door_completes_at_once() {
    let mut r = Run::new(vec![door(vec![udp(8000)])]);
    assert_eq!(
        r.knock("10.240.0.2", udp(8000), 0)[0].outcome,
        Outcome::Completed
    );
    assert_eq!(r.m.tracked_sources(), 0);
}

#[test]
fn empty_doors_are_refused() {
    assert_eq!(
        SequenceMatcher::new(vec![door(vec![])], 10).err(),
        Some(DoorError::Empty(0))
    );
}

proptest! {
    /// Whatever knocks arrive, the matcher never panics, stays within its cap, and only
    /// completes a door after its last step.
    #[test]
    fn arbitrary_knock_streams(knocks in proptest::collection::vec((0u8..4, 0u8..6, any::<u8>(), 0u64..3000), 0..300)) {
        let kinds = [tcp(7000), udp(8000), KnockStep::Icmp, tcp(9000), tcp(1), udp(7000)];
        let mut m = SequenceMatcher::new(vec![ssh_door(), door(vec![udp(8000), udp(8000)])], 3).expect("doors");
        let t0 = Instant::now();
        let mut t = t0;
        let mut out = Vec::new();
        for (src, k, flags, dt) in knocks {
            t += ms(dt);
            out.clear();
            let kind = kinds[k as usize];
            m.handle_knock(IpAddr::from([10, 240, 0, src]), kind, flags, t, &mut out);
            prop_assert!(m.tracked_sources() <= 3);
            for d in &out {
                if d.outcome == Outcome::Completed {
                    let door_last = if d.door == 0 { tcp(9000) } else { udp(8000) };
                    prop_assert_eq!(kind, door_last);
                }
            }
        }
    }
}
