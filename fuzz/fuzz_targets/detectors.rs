//! Fuzz the knock matchers with a script of knocks, time steps and (for the rotating
//! detector) pushes of new sequences between knocks: the fixed-sequence and rotating
//! matchers must never panic, whatever the stream and whatever is pushed.
#![no_main]

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use knockgate_agent_core::detect::rotating::{
    DoorKey, RotatingDetector, RotatingDoor, RotatingPolicy,
};
use knockgate_agent_core::detect::sequence::{Door, FlagFilter, SequenceMatcher};
use knockgate_agent_core::packet::KnockStep;
use knockgate_agent_core::ruleset::Proto;
use libfuzzer_sys::fuzz_target;

fn kind(b: u8) -> KnockStep {
    match b % 3 {
        0 => KnockStep::Port {
            proto: Proto::Tcp,
            port: 7000 + u16::from(b % 8),
        },
        1 => KnockStep::Port {
            proto: Proto::Udp,
            port: 7000 + u16::from(b % 8),
        },
        _ => KnockStep::Icmp,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, script)) = data.split_first() else {
        return;
    };
    // Two fixed doors whose steps come from the first bytes.
    let steps = |n: usize, off: usize| -> Vec<KnockStep> {
        (0..n)
            .map(|i| kind(script.get(off + i).copied().unwrap_or(0)))
            .collect()
    };
    let door = |steps: Vec<KnockStep>, gap: u8| Door {
        steps,
        sequence_timeout: Duration::from_millis(u64::from(head) * 20 + 1),
        min_gap: Duration::from_millis(u64::from(gap % 4)),
        max_gap: (gap % 2 == 0).then(|| Duration::from_millis(u64::from(gap) * 10)),
        tcp_flags: FlagFilter::default(),
    };
    let doors = vec![
        door(steps(1 + usize::from(head % 4), 0), head),
        door(steps(1 + usize::from(head % 3), 4), head.rotate_left(3)),
    ];
    let Ok(mut matcher) = SequenceMatcher::new(doors, 4) else {
        return;
    };
    let mut rotating = RotatingDetector::new(4);
    let mut now = Instant::now();
    let mut unix = 1_800_000_000u64;
    let mut out = Vec::new();
    let mut rot_out = Vec::new();
    for chunk in script.chunks(3) {
        let [op, a, b] = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        match op % 4 {
            0 | 1 => {
                now += Duration::from_millis(u64::from(b));
                let src = IpAddr::from([10, 240, 0, a % 4]);
                out.clear();
                matcher.handle_knock(src, kind(b), a, now, &mut out);
                rot_out.clear();
                rotating.handle_knock(src, kind(b), a, now, unix, &mut rot_out);
            }
            2 => {
                // A push: sequences of any length (empty included) for any window.
                let window = unix / 30 + u64::from(a % 3);
                let doors = (0..(a % 4))
                    .map(|u| RotatingDoor {
                        key: DoorKey {
                            user: usize::from(u % 2),
                            policy: 0,
                            window,
                        },
                        steps: (0..(b % 6)).map(|i| kind(i.wrapping_add(u))).collect(),
                    })
                    .collect();
                let mut policies = HashMap::new();
                if b % 5 != 0 {
                    policies.insert(
                        0,
                        RotatingPolicy {
                            window_secs: 30,
                            sequence_timeout: Duration::from_millis(u64::from(a) * 40 + 1),
                            tcp_flags: FlagFilter::default(),
                        },
                    );
                }
                rotating.set(policies, doors);
            }
            _ => {
                unix += u64::from(a);
                rotating.prune(unix);
            }
        }
    }
});
