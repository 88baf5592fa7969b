//! Per-packet cost of SPA verification through the agent's full detector (codec, key
//! lookup, age and replay checks, policy decision), one core.
//!
//! Each valid packet must carry a fresh nonce or the replay cache refuses it, so valid
//! packets are pre-built in a batch and the detector is rebuilt per batch (outside the
//! timing).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use knockgate_agent_core::config::Config;
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_proto::fwknop::{DigestType, FwknopKeys, FwknopRequest, encode, msg_type};
use knockgate_proto::spa::{self, SpaKey, SpaRequest};
use knockgate_proto::{Access, unix_secs};

fn b64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn secret(user: usize, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..8].copy_from_slice(&(user as u64).to_le_bytes());
    s
}

/// A config with `n` users, all with native and fwknop keys, all in the policy.
fn config(n: usize) -> Config {
    let mut text =
        String::from("[agent]\nname = \"gw1\"\ninterfaces = [\"eth0\"]\nstate_dir = \"/tmp\"\n");
    let mut names = Vec::new();
    for u in 0..n {
        text += &format!(
            "[[user]]\nname = \"u{u}\"\nspa_key = \"{}\"\nfwknop_key = \"{}\"\nfwknop_hmac_key = \"{}\"\n",
            b64(&secret(u, 1)),
            b64(&secret(u, 2)),
            b64(&[secret(u, 3), secret(u, 4)].concat())
        );
        names.push(format!("\"u{u}\""));
    }
    text += &format!(
        "[[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\nusers = [{}]\nspa = true\nfwknop = true\n",
        names.join(", ")
    );
    Config::parse(&text).expect("config")
}

fn native_packet(user: usize, nonce: u64, now: u64) -> Vec<u8> {
    let key = SpaKey::from_secret(secret(user, 1));
    let mut n16 = [0u8; 16];
    n16[..8].copy_from_slice(&nonce.to_le_bytes());
    let req = SpaRequest {
        timestamp: now,
        nonce: n16,
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![Access::tcp(22)],
        duration_secs: 0,
    };
    spa::seal(&key, &req, [7; 24]).expect("seal")
}

fn fwknop_packet(user: usize, salt: u64, now: u64) -> Vec<u8> {
    let keys = FwknopKeys::new(
        secret(user, 2).to_vec(),
        [secret(user, 3), secret(user, 4)].concat(),
        DigestType::Sha256,
    )
    .expect("keys");
    let req = FwknopRequest {
        rand: format!("{:016}", salt),
        user: "alice".into(),
        timestamp: now,
        version: "3.0.0".into(),
        msg_type: msg_type::ACCESS,
        allow_ip: "0.0.0.0".parse().expect("ip"),
        access: vec![Access::tcp(22)],
        command: None,
        nat_access: None,
        server_auth: None,
        client_timeout: None,
        digest_type: DigestType::Sha256,
    };
    encode(&keys, &req, salt.to_le_bytes())
        .expect("encode")
        .into_bytes()
}

fn bench(c: &mut Criterion) {
    let now = unix_secs(SystemTime::now());
    let src: IpAddr = "10.240.0.2".parse().expect("ip");
    let mut g = c.benchmark_group("spa_detector");
    g.measurement_time(Duration::from_secs(3));

    let one = config(1);
    let many = config(1000);
    let mut nonce = 0u64;
    g.bench_function("native_valid", |b| {
        b.iter_batched(
            || {
                nonce += 1;
                (SpaDetector::new(&one), native_packet(0, nonce, now))
            },
            |(mut d, p)| black_box(d.handle_datagram(src, &p, now)).is_ok(),
            BatchSize::SmallInput,
        )
    });
    let mut bad = native_packet(0, 1, now);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut d = SpaDetector::new(&one);
    g.bench_function("native_bad_tag", |b| {
        b.iter(|| black_box(d.handle_datagram(src, &bad, now)).is_err())
    });
    let mut unknown = native_packet(0, 1, now);
    unknown[2] ^= 0xff;
    g.bench_function("native_unknown_key", |b| {
        b.iter(|| black_box(d.handle_datagram(src, &unknown, now)).is_err())
    });
    for (name, cfg, user) in [
        ("fwknop_valid_1_user", &one, 0usize),
        ("fwknop_valid_1000_users_last", &many, 999),
    ] {
        let mut salt = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    salt += 1;
                    (SpaDetector::new(cfg), fwknop_packet(user, salt, now))
                },
                |(mut d, p)| black_box(d.handle_datagram(src, &p, now)).is_ok(),
                BatchSize::LargeInput,
            )
        });
    }
    // The same 1,000-user case once the source's user is known (the hint cache).
    let mut d = SpaDetector::new(&many);
    let _ = d.handle_datagram(src, &fwknop_packet(999, u64::MAX, now), now);
    let mut salt = 0u64;
    g.bench_function("fwknop_valid_1000_users_hinted", |b| {
        b.iter_batched(
            || {
                salt += 1;
                fwknop_packet(999, salt, now)
            },
            |p| black_box(d.handle_datagram(src, &p, now)).is_ok(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
