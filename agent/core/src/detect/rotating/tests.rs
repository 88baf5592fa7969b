use super::*;
use crate::detect::progress::Outcome;
use knockgate_proto::rotation::{RotationParams, derive_sequence, window_index};

const ALICE: [u8; 32] = [1; 32];
const BOB: [u8; 32] = [2; 32];
const T0: u64 = 1_800_000_000; // a window boundary for 30 s windows

fn kinds(secret: &[u8; 32], gw: &str, window: u64) -> Vec<KnockStep> {
    derive_sequence(secret, gw, window, &RotationParams::default())
        .unwrap()
        .into_iter()
        .map(|a| KnockStep::Port {
            proto: a.proto,
            port: a.port,
        })
        .collect()
}

fn policy() -> HashMap<usize, RotatingPolicy> {
    [(
        0,
        RotatingPolicy {
            window_secs: 30,
            sequence_timeout: Duration::from_secs(10),
            tcp_flags: FlagFilter::default(),
        },
    )]
    .into()
}

/// Doors for both users from window w-1 to w+3, as the controller pushes them.
fn detector(w: u64) -> RotatingDetector {
    let mut d = RotatingDetector::new(64);
    let mut doors = Vec::new();
    for (user, secret) in [(0, ALICE), (1, BOB)] {
        for window in w - 1..=w + 3 {
            doors.push(RotatingDoor {
                key: DoorKey {
                    user,
                    policy: 0,
                    window,
                },
                steps: kinds(&secret, "gw1", window),
            });
        }
    }
    d.set(policy(), doors);
    d
}

fn knock_all(
    d: &mut RotatingDetector,
    src: &str,
    seq: &[KnockStep],
    now_unix: u64,
) -> Vec<DoorKey> {
    let t = Instant::now();
    let mut out = Vec::new();
    for k in seq {
        d.handle_knock(src.parse().unwrap(), *k, 0, t, now_unix, &mut out);
    }
    out.into_iter()
        .filter(|(_, o)| *o == Outcome::Completed)
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn the_current_window_opens_and_is_consumed() {
    let w = window_index(T0, 30);
    let mut d = detector(w);
    let done = knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w), T0 + 5);
    assert_eq!(
        done,
        vec![DoorKey {
            user: 0,
            policy: 0,
            window: w
        }]
    );
    // The same knocks again, from the same or another source: nothing.
    assert!(knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w), T0 + 6).is_empty());
    assert!(knock_all(&mut d, "10.240.0.9", &kinds(&ALICE, "gw1", w), T0 + 6).is_empty());
}

#[test]
fn window_edges_and_skew() {
    let w = window_index(T0, 30);
    // At the last second of window w the current sequence works; so does the next
    // window's (a client clock one window ahead).
    let mut d = detector(w);
    assert_eq!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w), T0 + 29).len(),
        1
    );
    assert_eq!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w + 1), T0 + 29).len(),
        1
    );
    // One window behind is accepted at the first second of the next window...
    let mut d = detector(w);
    assert_eq!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w), T0 + 30).len(),
        1
    );
    // ...two windows of skew are refused, in either direction.
    let mut d = detector(w);
    assert!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w - 1), T0 + 30).is_empty(),
        "two behind"
    );
    assert!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w + 2), T0).is_empty(),
        "two ahead"
    );
}

#[test]
fn two_users_with_interleaved_knocks_both_match() {
    let w = window_index(T0, 30);
    let mut d = detector(w);
    let (a, b) = (kinds(&ALICE, "gw1", w), kinds(&BOB, "gw1", w));
    let t = Instant::now();
    let mut out = Vec::new();
    for i in 0..a.len() {
        d.handle_knock("10.240.0.2".parse().unwrap(), a[i], 0, t, T0, &mut out);
        d.handle_knock("10.240.0.3".parse().unwrap(), b[i], 0, t, T0, &mut out);
    }
    let done: Vec<usize> = out
        .iter()
        .filter(|(_, o)| *o == Outcome::Completed)
        .map(|(k, _)| k.user)
        .collect();
    assert_eq!(done, vec![0, 1]);
}

#[test]
fn another_gateways_sequence_opens_nothing() {
    let w = window_index(T0, 30);
    let mut d = detector(w);
    assert!(knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw2", w), T0).is_empty());
}

#[test]
fn a_push_keeps_progress_and_consumption() {
    let w = window_index(T0, 30);
    let mut d = detector(w);
    let seq = kinds(&ALICE, "gw1", w);
    assert!(knock_all(&mut d, "10.240.0.2", &seq[..2], T0).is_empty());
    // The controller pushes the same windows again (and more) mid-knock.
    let mut fresh = detector(w);
    let doors: Vec<RotatingDoor> = fresh
        .doors
        .drain()
        .map(|(key, steps)| RotatingDoor { key, steps })
        .collect();
    d.set(policy(), doors);
    assert_eq!(
        knock_all(&mut d, "10.240.0.2", &seq[2..], T0 + 1).len(),
        1,
        "progress survived the push"
    );
    let doors: Vec<RotatingDoor> = detector(w)
        .doors
        .drain()
        .map(|(key, steps)| RotatingDoor { key, steps })
        .collect();
    d.set(policy(), doors);
    assert!(
        knock_all(&mut d, "10.240.0.2", &seq, T0 + 2).is_empty(),
        "still consumed after a push"
    );
    d.prune(T0 + 120);
    assert!(d.consumed.is_empty(), "old windows are forgotten");
}

#[test]
fn live_knocks_are_those_of_accepted_unconsumed_windows() {
    let w = window_index(T0, 30);
    let mut d = detector(w);
    let want = |windows: &[u64]| -> BTreeSet<KnockStep> {
        windows
            .iter()
            .flat_map(|&win| {
                let mut k = kinds(&ALICE, "gw1", win);
                k.extend(kinds(&BOB, "gw1", win));
                k
            })
            .collect()
    };
    assert_eq!(d.live_knocks(T0), want(&[w - 1, w, w + 1]));
    assert_eq!(d.live_knocks(T0 + 60), want(&[w + 1, w + 2, w + 3]));
    assert_eq!(d.len(), 10);
    // Alice's current sequence, once used, is no longer listened for.
    assert_eq!(
        knock_all(&mut d, "10.240.0.2", &kinds(&ALICE, "gw1", w), T0).len(),
        1
    );
    let mut left = want(&[w - 1, w + 1]);
    left.extend(kinds(&BOB, "gw1", w));
    assert_eq!(d.live_knocks(T0), left);
}

mod changing_policies {
    use proptest::prelude::*;

    use super::*;

    fn port(p: u16) -> KnockStep {
        KnockStep::Port {
            proto: Proto::Udp,
            port: 40_000 + p,
        }
    }

    /// Between two knocks the controller may push anything: longer, shorter or empty
    /// sequences for the same key, another timeout, no policy at all.
    #[derive(Debug, Clone)]
    enum Step {
        Knock {
            src: u8,
            port: u16,
            after_ms: u16,
        },
        /// The first `upto` knocks of the sequence in order, as a real client sends them.
        Run {
            src: u8,
            upto: u16,
        },
        Push {
            lens: Vec<usize>,
            policy: bool,
            timeout_ms: u16,
        },
        Prune {
            after_s: u8,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (0u8..4, 0u16..6, 0u16..3000)
                .prop_map(|(src, port, after_ms)| Step::Knock { src, port, after_ms }),
            2 => (0u8..2, 1u16..6).prop_map(|(src, upto)| Step::Run { src, upto }),
            1 => (proptest::collection::vec(0usize..6, 0..4), any::<bool>(), 1u16..5000)
                .prop_map(|(lens, policy, timeout_ms)| Step::Push { lens, policy, timeout_ms }),
            1 => (0u8..90).prop_map(|after_s| Step::Prune { after_s }),
        ]
    }

    proptest! {
        #[test]
        fn no_push_between_knocks_makes_the_detector_panic(
            steps in proptest::collection::vec(step(), 1..80)
        ) {
            let mut d = RotatingDetector::new(4);
            let mut now = Instant::now();
            let mut unix = T0;
            let mut out = Vec::new();
            for s in steps {
                match s {
                    Step::Knock { src, port: p, after_ms } => {
                        now += Duration::from_millis(u64::from(after_ms));
                        let src = IpAddr::from([10, 240, 0, src]);
                        d.handle_knock(src, port(p), 0, now, unix, &mut out);
                    }
                    Step::Run { src, upto } => {
                        let src = IpAddr::from([10, 240, 0, src]);
                        for p in 0..upto {
                            d.handle_knock(src, port(p), 0, now, unix, &mut out);
                        }
                    }
                    Step::Push { lens, policy: with_policy, timeout_ms } => {
                        let w = window_index(unix, 30);
                        let doors = lens
                            .iter()
                            .enumerate()
                            .map(|(user, len)| RotatingDoor {
                                key: DoorKey { user: user % 2, policy: 0, window: w },
                                steps: (0..*len as u16).map(port).collect(),
                            })
                            .collect();
                        let mut policies = policy();
                        if let Some(p) = policies.get_mut(&0) {
                            p.sequence_timeout = Duration::from_millis(u64::from(timeout_ms));
                        }
                        if !with_policy {
                            policies.clear();
                        }
                        d.set(policies, doors);
                    }
                    Step::Prune { after_s } => {
                        unix += u64::from(after_s);
                        d.prune(unix);
                    }
                }
            }
            // Whatever happened, completions only name doors that exist.
            for (key, _) in &out {
                prop_assert_eq!(key.policy, 0);
            }
        }
    }
}
