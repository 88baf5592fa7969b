//! Matcher throughput on one core: knocks per second through `SequenceMatcher`.
//!
//! `complete_sequences`: many sources each knocking a full 4-step sequence (the work a
//! real knock costs). `junk_flood`: spoofed sources hitting a knock port that is no first
//! step (the cheapest rejection). `new_sources_at_cap`: every knock a new source while
//! the table is full, so each one evicts (the worst case for memory churn).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use knockgate_agent_core::detect::sequence::{Door, FlagFilter, SequenceMatcher};
use knockgate_agent_core::packet::{KnockStep, tcp_flags};
use knockgate_agent_core::ruleset::Proto;

fn door() -> Door {
    Door {
        steps: vec![
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 7000,
            },
            KnockStep::Port {
                proto: Proto::Udp,
                port: 8000,
            },
            KnockStep::Icmp,
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 9000,
            },
        ],
        sequence_timeout: Duration::from_secs(10),
        min_gap: Duration::ZERO,
        max_gap: None,
        tcp_flags: FlagFilter {
            set: tcp_flags::SYN,
            clear: tcp_flags::ACK,
        },
    }
}

fn src(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0af0_0000 | (i & 0xffff)))
}

fn bench(c: &mut Criterion) {
    const N: u32 = 4096;
    let steps = door().steps;
    let mut g = c.benchmark_group("matcher");

    g.throughput(Throughput::Elements(u64::from(N) * 4));
    g.bench_function("complete_sequences", |b| {
        let mut m = SequenceMatcher::new(vec![door()], 65_536).expect("door");
        let mut out = Vec::with_capacity(8);
        let now = Instant::now();
        b.iter(|| {
            for step in &steps {
                for i in 0..N {
                    out.clear();
                    m.handle_knock(src(i), *step, tcp_flags::SYN, now, &mut out);
                }
            }
            black_box(&out);
        });
    });

    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("junk_flood", |b| {
        let mut m = SequenceMatcher::new(vec![door()], 65_536).expect("door");
        let mut out = Vec::with_capacity(8);
        let now = Instant::now();
        let junk = KnockStep::Port {
            proto: Proto::Tcp,
            port: 9000,
        };
        b.iter(|| {
            for i in 0..N {
                out.clear();
                m.handle_knock(src(i), junk, tcp_flags::SYN, now, &mut out);
            }
            black_box(&out);
        });
    });

    g.bench_function("new_sources_at_cap", |b| {
        let mut m = SequenceMatcher::new(vec![door()], 1024).expect("door");
        let mut out = Vec::with_capacity(8);
        let now = Instant::now();
        let mut next = 0u32;
        b.iter(|| {
            for _ in 0..N {
                out.clear();
                next = next.wrapping_add(1);
                m.handle_knock(
                    IpAddr::V4(Ipv4Addr::from(next)),
                    steps[0],
                    tcp_flags::SYN,
                    now,
                    &mut out,
                );
            }
            black_box(&out);
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
