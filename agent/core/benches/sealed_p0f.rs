//! Per-packet cost of the two conditions issue 12 added, on one core.
//!
//! - `sealed/junk_knock`: a random knock on the sealed range from one of 4,096 sources
//!   (the flood a sealed range invites): the collection update only.
//! - `sealed/junk_sequence`: a whole sequence whose hint belongs to nobody, judged (a
//!   table lookup).
//! - `sealed/genuine_sequence`: a valid 17-knock sequence judged and accepted (hint, tag,
//!   age, replay cache, policy), with 100 sealed users.
//! - `p0f/syn_fields` and `p0f/classify`: reading a SYN's fields from a captured frame,
//!   and matching them against Debian's p0f database (/etc/p0f/p0f.fp), for a Linux SYN.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::{PacketBuilder, TcpOptionElement as Opt};
use knockgate_agent_core::config::Config;
use knockgate_agent_core::detect::sealed::Assembler;
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::p0f::{self, Database};
use knockgate_agent_core::packet::{KnockStep, LinkType, tcp_flags};
use knockgate_agent_core::ruleset::Proto;
use knockgate_proto::sealed::{self, Request, SealedKeys};
use knockgate_proto::spa::SpaKey;

const NOW: u64 = 1_800_000_000;

fn src(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0af0_0000 | (i & 0xffff)))
}

/// 100 users admitted by one sealed policy.
fn config() -> Config {
    let mut text = String::from(
        "[agent]\nname = \"gw1\"\ninterfaces = [\"eth0\"]\nstate_dir = \"/tmp\"\n\n\
         [[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\nsealed = true\nusers = [",
    );
    let names: Vec<String> = (0..100).map(|i| format!("\"u{i}\"")).collect();
    text.push_str(&names.join(", "));
    text.push_str("]\n");
    for i in 0..100u8 {
        let key = SpaKey::from_secret([i; 32]);
        text.push_str(&format!("[[user]]\nname = \"u{i}\"\nspa_key = \"{key}\"\n"));
    }
    Config::parse(&text).expect("config")
}

fn sealed_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealed");
    g.throughput(Throughput::Elements(1));
    g.bench_function("junk_knock", |b| {
        let mut a = Assembler::new(20_000, 65_536);
        let now = Instant::now();
        let mut x: u32 = 0x9e37_79b9;
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let kind = KnockStep::Port {
                proto: Proto::Tcp,
                port: 20_000 + (x % u32::from(sealed::RANGE)) as u16,
            };
            black_box(a.handle_knock(src(x >> 20), kind, tcp_flags::SYN, now));
        });
    });
    let mut d = SpaDetector::new(&config());
    g.bench_function("junk_sequence", |b| {
        let junk = [0x5au8; sealed::LEN_SOURCE];
        b.iter(|| black_box(d.handle_sealed(src(1), black_box(&junk), NOW)));
    });
    let key = SpaKey::from_secret([57; 32]); // user u57
    let keys = SealedKeys::derive(&key);
    let mut nonce = 0u16;
    g.bench_function("genuine_sequence", |b| {
        b.iter_batched(
            || {
                nonce = nonce.wrapping_add(1);
                let req = Request {
                    timestamp: NOW as u32,
                    nonce,
                    access: "tcp/22".parse().expect("access"),
                    allow_ip: None,
                };
                sealed::seal(&keys, "gw1", src(2), &req)
            },
            |s| black_box(d.handle_sealed(src(2), s.bytes(), NOW)),
            criterion::BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn linux_syn() -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
        .tcp(40_000, 7000, 1, 64_240)
        .syn()
        .options(&[
            Opt::MaximumSegmentSize(1460),
            Opt::SelectiveAcknowledgementPermitted,
            Opt::Timestamp(123_456, 0),
            Opt::Noop,
            Opt::WindowScale(7),
        ])
        .expect("options");
    let mut frame = Vec::new();
    b.write(&mut frame, &[]).expect("build");
    // DF, as Linux sets it.
    frame[14 + 6] |= 0x40;
    frame
}

fn p0f_benches(c: &mut Criterion) {
    let text =
        std::fs::read_to_string("/etc/p0f/p0f.fp").expect("p0f's signatures: apt-get install p0f");
    let db = Database::parse(&text).expect("p0f.fp parses");
    let frame = linux_syn();
    let syn = p0f::syn(LinkType::Ethernet, &frame).expect("a SYN");
    assert_eq!(
        db.classify(&syn).map(|m| m.name().to_owned()).as_deref(),
        Some("Linux")
    );
    let mut g = c.benchmark_group("p0f");
    g.throughput(Throughput::Elements(1));
    g.bench_function("syn_fields", |b| {
        b.iter(|| black_box(p0f::syn(LinkType::Ethernet, black_box(&frame))));
    });
    g.bench_function("classify", |b| {
        b.iter(|| black_box(db.classify(black_box(&syn)).map(|m| m.label_id())));
    });
    g.finish();
}

criterion_group!(benches, sealed_benches, p0f_benches);
criterion_main!(benches);
