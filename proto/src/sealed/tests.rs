use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

const TS: u32 = 1_767_225_600;

fn keys() -> SealedKeys {
    SealedKeys::derive(&SpaKey::from_secret(std::array::from_fn(|i| i as u8)))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn request(ts: u32, nonce: u16, access: &str, allow_ip: Option<&str>) -> Request {
    Request {
        timestamp: ts,
        nonce,
        access: access.parse().unwrap(),
        allow_ip: allow_ip.map(ip),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The vectors of `proto/sealed.md`, also made by `tests/fixtures/sealed_vectors.py`.
#[test]
fn vectors() {
    let k = keys();
    assert_eq!(
        hex(&k.hint),
        "6df79f5f59fdd54d78a796e4faad65b8227440b0f9ebd24e589639076e1f9c68"
    );
    assert_eq!(
        hex(&k.mac),
        "7cc6598af93e8cfb430ff8eaade90829abaa584897ba7710d556784e82af615b"
    );
    assert_eq!(
        hex(&k.enc),
        "3cd1ca40969850a836f4b911e6387e417eb8ece88a9273b6b5e3fe4180e26890"
    );
    let cases = [
        (
            "gw1",
            "198.51.100.4",
            request(TS, 0xBEEF, "tcp/22", None),
            "41583253155a0efa9a775d46211bb25320",
        ),
        (
            "gw1",
            "198.51.100.4",
            request(TS + 59, 0x0102, "udp/51820", Some("203.0.113.9")),
            "c255cf754f6efaa19342676cc7f208d4f540247579",
        ),
        (
            "edge-fra-1.example.net",
            "2001:db8::77",
            request(TS + 61, 0xFFFF, "tcp/22", Some("2001:db8::10")),
            "58414d7aa742f199b93106b3cacd3f7058631b423e119f58d00bf1594dc48b1667",
        ),
    ];
    for (gw, source, req, want) in cases {
        let sealed = seal(&k, gw, ip(source), &req);
        assert_eq!(hex(sealed.bytes()), want, "{req:?}");
        assert_eq!(open(&k, gw, ip(source), sealed.bytes()), Ok(req));
    }
    let first = seal(&k, "gw1", ip("198.51.100.4"), &cases_first());
    let ports: Vec<u16> = first.ports(20000).collect();
    assert_eq!(&ports[..3], &[20065, 20344, 20562]);
    assert_eq!(ports[16], 24128);
}

fn cases_first() -> Request {
    request(TS, 0xBEEF, "tcp/22", None)
}

#[test]
fn ports_and_indexes_round_trip() {
    let sealed = seal(&keys(), "gw1", ip("10.240.0.3"), &cases_first());
    for (i, port) in sealed.ports(40000).enumerate() {
        assert_eq!(index_of(40000, port), Some((i, sealed.bytes()[i])));
    }
    assert_eq!(index_of(40000, 39999), None);
    assert_eq!(index_of(40000, 40000 + RANGE), None);
    assert_eq!(index_of(40000, 40000 + RANGE - 1), Some((MAX_LEN - 1, 255)));
    assert_eq!(range(40000), Some(40000..=48447));
    assert_eq!(range(u16::MAX - RANGE + 1), Some(57088..=65535));
    assert_eq!(range(u16::MAX - RANGE + 2), None);
    assert_eq!(range(0), None);
}

#[test]
fn the_source_is_bound_unless_an_address_is_carried() {
    let k = keys();
    let me = ip("198.51.100.4");
    let sealed = seal(&k, "gw1", me, &cases_first());
    assert_eq!(
        open(&k, "gw1", ip("198.51.100.5"), sealed.bytes()),
        Err(SealedError::BadTag),
        "replayed from another host"
    );
    assert_eq!(
        open(&k, "gw1", ip("::ffff:198.51.100.4"), sealed.bytes()),
        Err(SealedError::BadTag)
    );
    // A third-party address: the request opens it, whoever sends the knocks.
    let req = request(TS, 7, "tcp/22", Some("203.0.113.9"));
    let sealed = seal(&k, "gw1", me, &req);
    assert_eq!(open(&k, "gw1", ip("192.0.2.200"), sealed.bytes()), Ok(req));
}

#[test]
fn another_gateway_or_key_opens_nothing() {
    let k = keys();
    let me = ip("198.51.100.4");
    let sealed = seal(&k, "gw1", me, &cases_first());
    assert_eq!(
        open(&k, "gw2", me, sealed.bytes()),
        Err(SealedError::BadTag)
    );
    let other = SealedKeys::derive(&SpaKey::from_secret([9; 32]));
    assert!(open(&other, "gw1", me, sealed.bytes()).is_err());
}

#[test]
fn every_changed_byte_and_every_wrong_length_is_refused() {
    let k = keys();
    let me = ip("2001:db8::77");
    for req in [
        cases_first(),
        request(TS, 1, "udp/53", Some("192.0.2.1")),
        request(TS, 2, "tcp/443", Some("2001:db8::1")),
    ] {
        let sealed = seal(&k, "gw1", me, &req);
        let bytes = sealed.bytes();
        for i in 0..bytes.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut changed = bytes.to_vec();
                changed[i] ^= flip;
                assert!(open(&k, "gw1", me, &changed).is_err(), "byte {i} ^ {flip}");
            }
        }
        // A lost knock, or one too many.
        assert!(open(&k, "gw1", me, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(open(&k, "gw1", me, &longer).is_err());
    }
    assert_eq!(open(&k, "gw1", me, &[0; 5]), Err(SealedError::Length(5)));
}

#[test]
fn every_sequence_differs() {
    let k = keys();
    let me = ip("198.51.100.4");
    let a = seal(&k, "gw1", me, &request(TS, 1, "tcp/22", None));
    let b = seal(&k, "gw1", me, &request(TS, 2, "tcp/22", None));
    let c = seal(&k, "gw1", me, &request(TS + 1, 1, "tcp/22", None));
    assert_ne!(a.bytes()[HINT_LEN..], b.bytes()[HINT_LEN..]);
    assert_ne!(a.bytes()[HINT_LEN..], c.bytes()[HINT_LEN..]);
    // The hint changes with the window and the length, and only then.
    let carried = seal(&k, "gw1", me, &request(TS, 1, "tcp/22", Some("192.0.2.1")));
    assert_ne!(a.bytes()[..HINT_LEN], carried.bytes()[..HINT_LEN]);
    assert_eq!(a.bytes()[..HINT_LEN], b.bytes()[..HINT_LEN]);
    let later = seal(&k, "gw1", me, &request(TS + 60, 1, "tcp/22", None));
    assert_ne!(a.bytes()[..HINT_LEN], later.bytes()[..HINT_LEN]);
}

#[test]
fn a_hint_from_another_window_is_refused() {
    // The hint is covered by the tag, so only the key holder can pair a hint
    // with a time; one who does gets a clear error rather than an open.
    let k = keys();
    let me = ip("198.51.100.4");
    let next = k.hint(u64::from(TS) / HINT_WINDOW_SECS + 1, LEN_SOURCE);
    let sealed = seal_hinted(&k, next, "gw1", me, &cases_first());
    assert_eq!(
        open(&k, "gw1", me, sealed.bytes()),
        Err(SealedError::StaleHint)
    );
}

proptest! {
    #[test]
    fn random_bytes_never_open_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let k = keys();
        prop_assert!(open(&k, "gw1", ip("10.0.0.1"), &bytes).is_err());
    }

    #[test]
    fn any_request_round_trips(ts in any::<u32>(), nonce in any::<u16>(), port in 1u16.., udp in any::<bool>(),
                               kind in 0u8..3, v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>()) {
        let k = keys();
        let allow_ip = match kind {
            0 => None,
            1 => Some(IpAddr::from(v4)),
            _ => Some(IpAddr::from(v6)),
        };
        let req = Request {
            timestamp: ts,
            nonce,
            access: Access { proto: if udp { Proto::Udp } else { Proto::Tcp }, port },
            allow_ip,
        };
        let sealed = seal(&k, "gw1", ip("10.0.0.1"), &req);
        let opened = open(&k, "gw1", ip("10.0.0.1"), sealed.bytes());
        match allow_ip {
            Some(a) if a.is_unspecified() || a.is_multicast() || a == IpAddr::from([255, 255, 255, 255]) =>
                prop_assert_eq!(opened, Err(SealedError::BadAddress)),
            _ => prop_assert_eq!(opened, Ok(req)),
        }
    }
}
