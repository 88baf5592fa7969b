//! Test vectors (mirrored in `proto/spa.md` and reproduced independently by
//! `proto/tests/fixtures/spa_vectors.py`), round trips, tamper checks and
//! the never-panics property for the native SPA codec.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use rand::SeedableRng as _;

use super::*;
use crate::access::{Access, Proto};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Vector key: secret bytes 0x00..=0x1f.
fn vector_key() -> SpaKey {
    SpaKey::from_secret(std::array::from_fn(|i| i as u8))
}

fn vector_request_1() -> SpaRequest {
    SpaRequest {
        timestamp: 1_767_225_600,
        nonce: std::array::from_fn(|i| 0xa0 + i as u8),
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![Access::tcp(22)],
        duration_secs: 0,
    }
}

fn vector_request_2() -> SpaRequest {
    SpaRequest {
        gateway: "edge-fra-1.example.net".into(),
        allow_ip: Some(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10,
        ))),
        access: vec![Access::tcp(22), Access::udp(51820)],
        duration_secs: 300,
        ..vector_request_1()
    }
}

const VECTOR_NONCE: [u8; NONCE_LEN] = [0x42; NONCE_LEN];

const VECTOR_1: &str = "c50150ebad0e0592f3e1424242424242424242424242424242424242424242424242\
b0a95f9a190665e8219f0cfa9073be1d81439ed6917ef1b8e4b4a15c2f7cac0e1f8650d678757e5c3cc3a1de4b12fd\
dd216e817d54a5";

const VECTOR_2: &str = "c50150ebad0e0592f3e1424242424242424242424242424242424242424242424242\
b0a95f9a190665e8219f0cfa9073be1d81439ed6917ef1b8e4b4a15d0369ae1d49e37cb60a02854e4a116aca29998f\
93699fa1587a6d296183e8d14a02ff3603a3f2564eb6c694fefde7d8d45beee77d966bd4e45b5bfd0d5d953e6e";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn key_derivation_vector() {
    let key = vector_key();
    assert_eq!(
        key.to_string(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    );
    assert_eq!(key.id().to_string(), "50ebad0e0592f3e1");
    assert_eq!(
        hex(key.aead_key()),
        "38a7319183592b3a9b9b7c89fad395c89537a42d4d18d621dd3f53bb44ff68f2"
    );
}

#[test]
fn seal_vectors() {
    let key = vector_key();
    for (req, want) in [
        (vector_request_1(), VECTOR_1),
        (vector_request_2(), VECTOR_2),
    ] {
        let packet = seal(&key, &req, VECTOR_NONCE).unwrap();
        assert_eq!(hex(&packet), want);
        assert_eq!(open(&key, &packet).unwrap(), req);
    }
    assert_eq!(unhex(VECTOR_1).len(), 88);
    assert_eq!(unhex(VECTOR_2).len(), 126);
}

#[test]
fn key_text_round_trips_and_rejects() {
    let key = vector_key();
    let text = key.to_string();
    assert_eq!(SpaKey::parse(&text).unwrap(), key);
    assert_eq!(
        SpaKey::parse(&format!("  {}\n", text.trim_end_matches('='))).unwrap(),
        key
    );
    assert_eq!(SpaKey::parse("not base64!"), Err(SpaKeyError::NotBase64));
    assert_eq!(SpaKey::parse("AAECAwQF"), Err(SpaKeyError::WrongLength(6)));
    assert!(
        !format!("{key:?}").contains(&text),
        "Debug must not leak the secret"
    );
}

#[test]
fn new_request_takes_time_and_nonce_from_arguments() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
    let a = SpaRequest::new(now, "gw1", vec![Access::tcp(22)], &mut rng);
    let b = SpaRequest::new(now, "gw1", vec![Access::tcp(22)], &mut rng);
    assert_eq!(a.timestamp, 1_767_225_600);
    assert_ne!(a.nonce, b.nonce);
    assert_eq!((a.allow_ip, a.duration_secs), (None, 0));
}

#[test]
fn generated_keys_differ_and_parse_back() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let a = SpaKey::generate(&mut rng);
    let b = SpaKey::generate(&mut rng);
    assert_ne!(a.id(), b.id());
    assert_eq!(a.to_string().parse::<SpaKey>().unwrap(), a);
}

#[test]
fn open_with_looks_up_by_id() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let keys: HashMap<KeyId, SpaKey> = (0..4)
        .map(|_| SpaKey::generate(&mut rng))
        .map(|k| (k.id(), k))
        .collect();
    let key = keys.values().next().unwrap();
    let packet = seal_with_rng(key, &vector_request_1(), &mut rng).unwrap();
    let (id, req) = open_with(&packet, |id| keys.get(&id)).unwrap();
    assert_eq!((id, req), (key.id(), vector_request_1()));
    let stranger = SpaKey::generate(&mut rng);
    let packet = seal_with_rng(&stranger, &vector_request_1(), &mut rng).unwrap();
    assert_eq!(
        open_with(&packet, |id| keys.get(&id)),
        Err(SpaError::UnknownKey)
    );
}

#[test]
fn cheap_checks_come_first() {
    let key = vector_key();
    let packet = unhex(VECTOR_1);
    assert_eq!(
        peek_key_id(&packet[..MIN_PACKET_LEN - 1]),
        Err(SpaError::TooShort)
    );
    assert_eq!(
        peek_key_id(&[0u8; MAX_PACKET_LEN + 1]),
        Err(SpaError::TooLong)
    );
    let mut p = packet.clone();
    p[0] = b'+';
    assert_eq!(peek_key_id(&p), Err(SpaError::BadMagic));
    let mut p = packet.clone();
    p[1] = 2;
    assert_eq!(open(&key, &p), Err(SpaError::UnsupportedVersion(2)));
    let other = SpaKey::from_secret([9; 32]);
    assert_eq!(open(&other, &packet), Err(SpaError::KeyMismatch));
}

#[test]
fn every_flipped_bit_is_rejected() {
    let key = vector_key();
    let packet = unhex(VECTOR_2);
    for i in 0..packet.len() * 8 {
        let mut p = packet.clone();
        p[i / 8] ^= 1 << (i % 8);
        let err = open(&key, &p).unwrap_err();
        match i / 8 {
            0 => assert_eq!(err, SpaError::BadMagic),
            1 => assert!(matches!(err, SpaError::UnsupportedVersion(_))),
            2..HEADER_LEN => assert_eq!(err, SpaError::KeyMismatch),
            _ => assert_eq!(err, SpaError::BadTag, "bit {i}"),
        }
    }
}

/// Seals an arbitrary (possibly invalid) body, to reach the body checks.
fn seal_raw(key: &SpaKey, body: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    let mut out = vec![MAGIC, VERSION];
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&VECTOR_NONCE);
    let mut ct = body.to_vec();
    let tag = chacha20poly1305::XChaCha20Poly1305::new(key.aead_key().into())
        .encrypt_inout_detached(
            &VECTOR_NONCE.into(),
            &out[..HEADER_LEN],
            ct.as_mut_slice().into(),
        )
        .unwrap();
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    out
}

#[test]
fn authenticated_but_malformed_bodies_are_rejected() {
    let key = vector_key();
    let mut good = Vec::new();
    vector_request_1().encode_into(&mut good);
    assert_eq!(open(&key, &seal_raw(&key, &good)), Ok(vector_request_1()));
    const GW: usize = 1 + 8 + 16 + 4; // offset of the gateway length byte
    type Mutation = fn(&mut Vec<u8>);
    let cases: [(Mutation, BodyError); 11] = [
        (|b| b[0] = 2, BodyError::Version(2)),
        (|b| b.push(0), BodyError::TrailingBytes),
        (|b| b[GW] = 0, BodyError::GatewayLength(0)),
        (|b| b[GW] = 4, BodyError::AddressKind(1)),
        (|b| b[GW + 1] = 0xff, BodyError::GatewayUtf8),
        (|b| b[GW + 4] = 5, BodyError::AddressKind(5)),
        (|b| b[GW + 4] = 4, BodyError::Truncated),
        (|b| b[GW + 5] = 0, BodyError::AccessCount(0)),
        (|b| b[GW + 5] = 2, BodyError::Truncated),
        (|b| b[GW + 6] = 1, BodyError::AccessProto(1)),
        (|b| b[GW + 8] = 0, BodyError::AccessPort),
    ];
    for (mutate, want) in cases {
        let mut body = good.clone();
        mutate(&mut body);
        assert_eq!(
            open(&key, &seal_raw(&key, &body)),
            Err(SpaError::Malformed(want))
        );
    }
}

#[test]
fn seal_rejects_out_of_bounds_requests() {
    let key = vector_key();
    let mut r = vector_request_1();
    r.gateway = "x".repeat(65);
    assert_eq!(
        seal(&key, &r, VECTOR_NONCE),
        Err(SealError::Invalid(BodyError::GatewayLength(65)))
    );
    r.gateway = String::new();
    assert_eq!(
        seal(&key, &r, VECTOR_NONCE),
        Err(SealError::Invalid(BodyError::GatewayLength(0)))
    );
    let mut r = vector_request_1();
    r.access = vec![Access::tcp(1); 17];
    assert_eq!(
        seal(&key, &r, VECTOR_NONCE),
        Err(SealError::Invalid(BodyError::AccessCount(17)))
    );
    r.access.clear();
    assert_eq!(
        seal(&key, &r, VECTOR_NONCE),
        Err(SealError::Invalid(BodyError::AccessCount(0)))
    );
    r.access = vec![Access::udp(0)];
    assert_eq!(
        seal(&key, &r, VECTOR_NONCE),
        Err(SealError::Invalid(BodyError::AccessPort))
    );
}

#[test]
fn largest_request_fits_the_bounds() {
    let key = vector_key();
    let req = SpaRequest {
        gateway: "g".repeat(MAX_GATEWAY_LEN),
        allow_ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        access: vec![Access::udp(65535); MAX_ACCESS],
        ..vector_request_1()
    };
    let p = seal(&key, &req, VECTOR_NONCE).unwrap();
    assert_eq!(p.len(), MAX_PACKET_LEN);
    assert_eq!(open(&key, &p).unwrap(), req);
}

fn arb_request() -> impl Strategy<Value = SpaRequest> {
    let ip = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|v| Some(IpAddr::V4(Ipv4Addr::from(v)))),
        any::<u128>().prop_map(|v| Some(IpAddr::V6(Ipv6Addr::from(v)))),
    ];
    let access = (any::<bool>(), 1u16..).prop_map(|(tcp, port)| Access {
        proto: if tcp { Proto::Tcp } else { Proto::Udp },
        port,
    });
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        "\\PC{1,16}".prop_filter("fits", |g| g.len() <= MAX_GATEWAY_LEN),
        ip,
        prop::collection::vec(access, 1..=MAX_ACCESS),
        any::<u32>(),
    )
        .prop_map(
            |(timestamp, nonce, gateway, allow_ip, access, duration_secs)| SpaRequest {
                timestamp,
                nonce,
                gateway,
                allow_ip,
                access,
                duration_secs,
            },
        )
}

proptest! {
    #[test]
    fn round_trips(req in arb_request(), nonce in any::<[u8; NONCE_LEN]>()) {
        let key = vector_key();
        let p = seal(&key, &req, nonce).unwrap();
        prop_assert!(p.len() >= MIN_PACKET_LEN && p.len() <= MAX_PACKET_LEN);
        prop_assert_eq!(peek_key_id(&p), Ok(key.id()));
        prop_assert_eq!(open(&key, &p), Ok(req));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let key = vector_key();
        let _ = peek_key_id(&bytes);
        let _ = open(&key, &bytes);
        let _ = open_with(&bytes, |_| Some(&key));
    }

    #[test]
    fn never_panics_on_arbitrary_headered_bytes(tail in prop::collection::vec(any::<u8>(), 0..220)) {
        let key = vector_key();
        let mut p = vec![MAGIC, VERSION];
        p.extend_from_slice(&key.id().0);
        p.extend_from_slice(&tail);
        prop_assert!(open(&key, &p).is_err());
    }

    #[test]
    fn never_panics_on_arbitrary_authenticated_bodies(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let key = vector_key();
        let _ = open(&key, &seal_raw(&key, &body));
    }
}
