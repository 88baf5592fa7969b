//! Cost of verifying SPA packets: native open (valid, bad tag, unknown key
//! id) and fwknop with 1 and 1,000 configured users (the match last).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use knockgate_proto::Access;
use knockgate_proto::fwknop::{self, DigestType, FwknopKeys, FwknopRequest, FwknopVerifier};
use knockgate_proto::spa::{self, KeyId, SpaKey, SpaRequest};

fn native(c: &mut Criterion) {
    let key = SpaKey::from_secret([7; 32]);
    let keys: HashMap<KeyId, SpaKey> = (0u8..100)
        .map(|i| SpaKey::from_secret([i; 32]))
        .chain([key.clone()])
        .map(|k| (k.id(), k))
        .collect();
    let req = SpaRequest {
        timestamp: 1_767_225_600,
        nonce: [1; 16],
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![Access::tcp(22)],
        duration_secs: 0,
    };
    let packet = spa::seal(&key, &req, [3; 24]).unwrap_or_default();
    let mut bad_tag = packet.clone();
    if let Some(b) = bad_tag.last_mut() {
        *b ^= 1;
    }
    let mut unknown = packet.clone();
    unknown[2] ^= 1;

    c.bench_function("native/open valid", |b| {
        b.iter(|| spa::open_with(black_box(&packet), |id| keys.get(&id)))
    });
    c.bench_function("native/open bad tag", |b| {
        b.iter(|| spa::open_with(black_box(&bad_tag), |id| keys.get(&id)))
    });
    c.bench_function("native/unknown key id", |b| {
        b.iter(|| spa::open_with(black_box(&unknown), |id| keys.get(&id)))
    });
}

fn user_keys(i: usize) -> FwknopKeys {
    let enc = format!("encryption key {i:05}").into_bytes();
    let hmac =
        format!("hmac key {i:05} padded to sixty four bytes of key material....").into_bytes();
    FwknopKeys {
        enc_key: enc,
        hmac_key: hmac,
        hmac: DigestType::Sha256,
    }
}

fn fwknop_bench(c: &mut Criterion) {
    let req = FwknopRequest {
        rand: "1553317495100086".into(),
        user: "alice".into(),
        timestamp: 1_795_255_807,
        version: "3.0.0".into(),
        msg_type: fwknop::msg_type::ACCESS,
        allow_ip: Ipv4Addr::new(192, 0, 2, 10),
        access: vec![Access::tcp(22)],
        command: None,
        nat_access: None,
        server_auth: None,
        client_timeout: None,
        digest_type: DigestType::Sha256,
    };
    let n = 1000;
    let wire = fwknop::encode(&user_keys(n - 1), &req, [9; 8]).unwrap_or_default();
    let mut one = FwknopVerifier::new();
    let _ = one.push(n - 1, &user_keys(n - 1));
    let mut many = FwknopVerifier::new();
    for i in 0..n {
        let _ = many.push(i, &user_keys(i));
    }
    let mut forged = wire.clone().into_bytes();
    forged[60] = if forged[60] == b'A' { b'B' } else { b'A' };

    c.bench_function("fwknop/valid, 1 user", |b| {
        b.iter(|| one.verify(black_box(wire.as_bytes())))
    });
    c.bench_function("fwknop/valid, 1000 users (match last)", |b| {
        b.iter(|| many.verify(black_box(wire.as_bytes())))
    });
    c.bench_function("fwknop/bad hmac, 1000 users", |b| {
        b.iter(|| many.verify(black_box(&forged)))
    });
    // Baseline without prepared key schedules: one full decode per user.
    let unprepared: Vec<FwknopKeys> = (0..n).map(user_keys).collect();
    c.bench_function("fwknop/bad hmac, 1000 users, unprepared", |b| {
        b.iter(|| {
            unprepared
                .iter()
                .map(|k| fwknop::decode(k, black_box(&forged)))
                .filter(Result::is_ok)
                .count()
        })
    });
    c.bench_function("fwknop/decode one-shot (prepare + verify)", |b| {
        let keys = user_keys(n - 1);
        b.iter(|| fwknop::decode(&keys, black_box(wire.as_bytes())))
    });
}

criterion_group!(benches, native, fwknop_bench);
criterion_main!(benches);
