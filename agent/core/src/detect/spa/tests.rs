use super::*;
use crate::config::Config;
use knockgate_proto::Proto;
use knockgate_proto::fwknop::{DigestType, FwknopKeys, FwknopRequest, encode, msg_type};
use knockgate_proto::spa::SpaRequest;
use proptest::prelude::*;

const ALICE_SPA: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const BOB_SPA: &str = "HxweHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";
const ALICE_FW: (&str, &str) = (
    "wBtb3bHHJGV3gdeuR9C5rTBvRvqMtZQwRsGebvm3pQo=",
    "a6v/eJvr/8hNW2tY9aRmn7PEyJqdK9UNEXqKeErHuOgqMXVWtEiNkzlgfxWqnZwOtdwySvzCGQnWYn6cp6E0GA==",
);
const BOB_FW: (&str, &str) = (
    "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
    "aG1hY2htYWNobWFjaG1hY2htYWNobWFjaG1hY2htYWNobWFjaG1hY2htYWNobWFjaG1hYzEyMzQ=",
);
const NOW: u64 = 1_800_000_000;

fn config() -> Config {
    Config::parse(&config_text()).expect("config")
}

fn config_text() -> String {
    format!(
        r#"
[agent]
name = "gw1"
interfaces = ["eth0"]
state_dir = "/tmp"
[spa]
max_age = "120s"
[[user]]
name = "bob"
spa_key = "{BOB_SPA}"
fwknop_key = "{}"
fwknop_hmac_key = "{}"
[[user]]
name = "alice"
spa_key = "{ALICE_SPA}"
fwknop_key = "{}"
fwknop_hmac_key = "{}"
[[policy]]
name = "ssh-spa"
open = ["tcp/22", "udp/53"]
timeout = "30s"
max_timeout = "5m"
users = ["alice"]
spa = true
fwknop = true
"#,
        BOB_FW.0, BOB_FW.1, ALICE_FW.0, ALICE_FW.1
    )
}

fn src() -> IpAddr {
    "10.240.0.2".parse().unwrap()
}

fn native(
    gateway: &str,
    access: &[&str],
    ts: u64,
    nonce: u8,
    duration: u32,
    allow: Option<&str>,
) -> Vec<u8> {
    native_with(ALICE_SPA, gateway, access, ts, nonce, duration, allow)
}

fn native_with(
    key: &str,
    gateway: &str,
    access: &[&str],
    ts: u64,
    nonce: u8,
    duration: u32,
    allow: Option<&str>,
) -> Vec<u8> {
    let key = SpaKey::parse(key).unwrap();
    let req = SpaRequest {
        timestamp: ts,
        nonce: [nonce; 16],
        gateway: gateway.into(),
        allow_ip: allow.map(|a| a.parse().unwrap()),
        access: access.iter().map(|a| a.parse().unwrap()).collect(),
        duration_secs: duration,
    };
    spa::seal(&key, &req, [nonce; 24]).unwrap()
}

fn fw_packet(
    keys: (&str, &str),
    access: &str,
    ts: u64,
    allow: &str,
    timeout: Option<u32>,
    salt: u8,
) -> Vec<u8> {
    let keys = FwknopKeys::from_base64(keys.0, keys.1, DigestType::Sha256).unwrap();
    let req = FwknopRequest {
        rand: "1234567890123456".into(),
        user: "alice".into(),
        timestamp: ts,
        version: "3.0.0".into(),
        msg_type: if timeout.is_some() {
            msg_type::CLIENT_TIMEOUT_ACCESS
        } else {
            msg_type::ACCESS
        },
        allow_ip: allow.parse().unwrap(),
        access: access.split(',').map(|a| a.parse().unwrap()).collect(),
        command: None,
        nat_access: None,
        server_auth: None,
        client_timeout: timeout,
        digest_type: DigestType::Sha256,
    };
    encode(&keys, &req, [salt; 8]).unwrap().into_bytes()
}

fn reason(r: Result<SpaGrant, Rejection>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(e) => e.reason.as_str(),
    }
}

#[test]
fn a_valid_native_packet_opens_the_requested_access_for_the_policy_timeout() {
    let mut d = SpaDetector::new(&config());
    let g = d
        .handle_datagram(src(), &native("gw1", &["tcp/22"], NOW, 1, 0, None), NOW)
        .expect("accepted");
    assert_eq!((g.method, g.user, g.policy), (Method::Native, 1, 0));
    assert_eq!(g.addr, src());
    assert_eq!(
        g.access,
        vec![Access {
            proto: Proto::Tcp,
            port: 22
        }]
    );
    assert_eq!((g.timeout, g.capped), (Duration::from_secs(30), false));
}

#[test]
fn native_refusals_have_their_reasons() {
    let mut d = SpaDetector::new(&config());
    assert_eq!(
        reason(d.handle_datagram(src(), &native("gw2", &["tcp/22"], NOW, 2, 0, None), NOW)),
        "wrong_gateway"
    );
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &native("gw1", &["tcp/22"], NOW - 121, 3, 0, None),
            NOW
        )),
        "stale"
    );
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &native("gw1", &["tcp/22"], NOW + 121, 4, 0, None),
            NOW
        )),
        "future"
    );
    assert_eq!(
        reason(d.handle_datagram(src(), &native("gw1", &["tcp/23"], NOW, 5, 0, None), NOW)),
        "access_denied"
    );
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &native_with(BOB_SPA, "gw1", &["tcp/22"], NOW, 6, 0, None),
            NOW
        )),
        "access_denied",
        "bob is a known user but not in the policy"
    );
    let mut bad = native("gw1", &["tcp/22"], NOW, 7, 0, None);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(reason(d.handle_datagram(src(), &bad, NOW)), "bad_tag");
    let mut unknown = native("gw1", &["tcp/22"], NOW, 8, 0, None);
    unknown[2] ^= 0xff;
    assert_eq!(
        reason(d.handle_datagram(src(), &unknown, NOW)),
        "unknown_key"
    );
    assert_eq!(
        reason(d.handle_datagram(src(), &[spa::MAGIC, 1, 2], NOW)),
        "malformed"
    );
}

#[test]
fn a_replayed_packet_is_refused_from_any_source() {
    let mut d = SpaDetector::new(&config());
    let p = native("gw1", &["tcp/22"], NOW, 9, 0, None);
    assert!(d.handle_datagram(src(), &p, NOW).is_ok());
    assert_eq!(reason(d.handle_datagram(src(), &p, NOW + 1)), "replay");
    assert_eq!(
        reason(d.handle_datagram("10.240.0.9".parse().unwrap(), &p, NOW + 1)),
        "replay"
    );
    let f = fw_packet(ALICE_FW, "tcp/22", NOW, "0.0.0.0", None, 1);
    assert!(d.handle_datagram(src(), &f, NOW).is_ok());
    assert_eq!(reason(d.handle_datagram(src(), &f, NOW)), "replay");
}

#[test]
fn durations_are_capped_and_allow_ip_is_honoured() {
    let mut d = SpaDetector::new(&config());
    let g = d
        .handle_datagram(
            src(),
            &native(
                "gw1",
                &["tcp/22", "udp/53"],
                NOW,
                10,
                3600,
                Some("fd00:4b47::9"),
            ),
            NOW,
        )
        .unwrap();
    assert_eq!((g.timeout, g.capped), (Duration::from_secs(300), true));
    assert_eq!(g.addr, "fd00:4b47::9".parse::<IpAddr>().unwrap());
    assert_eq!(g.access.len(), 2);
    let g = d
        .handle_datagram(src(), &native("gw1", &["tcp/22"], NOW, 11, 60, None), NOW)
        .unwrap();
    assert_eq!((g.timeout, g.capped), (Duration::from_secs(60), false));
}

#[test]
fn fwknop_packets_verify_by_hmac_and_map_fields() {
    let mut d = SpaDetector::new(&config());
    let g = d
        .handle_datagram(
            src(),
            &fw_packet(ALICE_FW, "tcp/22", NOW, "0.0.0.0", None, 2),
            NOW,
        )
        .unwrap();
    assert_eq!((g.method, g.user, g.addr), (Method::Fwknop, 1, src()));
    let g = d
        .handle_datagram(
            src(),
            &fw_packet(ALICE_FW, "tcp/22", NOW, "192.0.2.10", Some(900), 3),
            NOW,
        )
        .unwrap();
    assert_eq!(g.addr, "192.0.2.10".parse::<IpAddr>().unwrap());
    assert_eq!((g.timeout, g.capped), (Duration::from_secs(300), true));
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &fw_packet(ALICE_FW, "tcp/23", NOW, "0.0.0.0", None, 4),
            NOW
        )),
        "access_denied"
    );
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &fw_packet(ALICE_FW, "tcp/22", NOW - 500, "0.0.0.0", None, 5),
            NOW
        )),
        "stale"
    );
    // Bob's keys verify (he is a user) but no policy admits him.
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &fw_packet(BOB_FW, "tcp/22", NOW, "0.0.0.0", None, 6),
            NOW
        )),
        "access_denied"
    );
    let stranger = (
        "c3RyYW5nZXJzdHJhbmdlcnN0cmFuZ2Vyc3RyYW5nZXI=",
        "c3RyYW5nZXJzdHJhbmdlcnN0cmFuZ2Vyc3RyYW5nZXI=",
    );
    assert_eq!(
        reason(d.handle_datagram(
            src(),
            &fw_packet(stranger, "tcp/22", NOW, "0.0.0.0", None, 7),
            NOW
        )),
        "no_matching_key"
    );
    assert_eq!(reason(d.handle_datagram(src(), b"hello", NOW)), "malformed");
}

proptest! {
    #[test]
    fn never_panics_and_never_accepts_junk(bytes in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        let mut d = SpaDetector::new(&config());
        let mut bytes = bytes;
        if magic && !bytes.is_empty() { bytes[0] = spa::MAGIC; }
        prop_assert!(d.handle_datagram(src(), &bytes, NOW).is_err());
    }
}

/// `config()` plus "keys", which one-time keys of alice open (tcp/443), and a stock of
/// alice's keys 5 and 6.
fn with_otks() -> (SpaDetector, [SpaKey; 2]) {
    use crate::config::{Origin, Otk, OtkOffline, PolicyDef};
    let base = config();
    let mut defs: Vec<PolicyDef> = Vec::new();
    defs.push(PolicyDef {
        name: "keys".into(),
        open: vec!["tcp/443".parse().unwrap()],
        timeout: Duration::from_secs(60),
        max_timeout: None,
        sequence: vec![],
        sequence_timeout: None,
        min_gap: None,
        max_gap: None,
        tcp_flags: None,
        users: vec!["alice".into()],
        spa: false,
        fwknop: false,
        rotating: false,
        window_secs: None,
        otk: Some(OtkOffline::Deny),
        sealed: false,
        require_os: vec![],
        forward: vec![],
    });
    let mut ssh = defs[0].clone();
    ssh.name = "ssh-spa".into();
    ssh.open = vec!["tcp/22".parse().unwrap()];
    ssh.otk = None;
    ssh.spa = true;
    defs.push(ssh);
    let c = base
        .with_policies(Origin::Controller, base.users.clone(), defs)
        .unwrap();
    let keys = [SpaKey::from_secret([5; 32]), SpaKey::from_secret([6; 32])];
    let mut d = SpaDetector::new(&c);
    d.set_otks(keys.iter().enumerate().map(|(i, k)| Otk {
        user: 1,
        counter: 5 + i as u64,
        key: k.clone(),
    }));
    (d, keys)
}

fn sealed(key: &SpaKey, access: &str, nonce: u8) -> Vec<u8> {
    let req = SpaRequest {
        timestamp: NOW,
        nonce: [nonce; 16],
        gateway: "gw1".into(),
        allow_ip: None,
        access: vec![access.parse().unwrap()],
        duration_secs: 0,
    };
    spa::seal(key, &req, [nonce; 24]).unwrap()
}

#[test]
fn a_one_time_key_opens_only_otk_policies_and_leaves_the_stock() {
    let (mut d, keys) = with_otks();
    assert_eq!(d.otk_count(), 2);
    // A one-time key cannot open a policy that only takes static keys.
    let r = d
        .handle_datagram(src(), &sealed(&keys[1], "tcp/22", 1), NOW)
        .unwrap_err();
    assert_eq!(
        (r.reason, r.method, r.user),
        (Reason::AccessDenied, Some(Method::Otk), Some(1))
    );
    assert_eq!(d.otk_count(), 2, "a refused packet burns nothing");
    // Nor can alice's static key open the one-time-key policy.
    let r = d
        .handle_datagram(src(), &native("gw1", &["tcp/443"], NOW, 2, 0, None), NOW)
        .unwrap_err();
    assert_eq!(r.reason, Reason::AccessDenied);
    // The later key works first (a client that skipped ahead), and is gone after.
    let g = d
        .handle_datagram(src(), &sealed(&keys[1], "tcp/443", 3), NOW)
        .unwrap();
    assert_eq!(
        (g.method, g.user, g.otk, g.timeout),
        (Method::Otk, 1, Some(6), Duration::from_secs(60))
    );
    assert_eq!(d.otk_count(), 1);
    let r = d
        .handle_datagram(src(), &sealed(&keys[1], "tcp/443", 4), NOW)
        .unwrap_err();
    assert_eq!(r.reason, Reason::UnknownKey, "burned");
    let g = d
        .handle_datagram(src(), &sealed(&keys[0], "tcp/443", 5), NOW)
        .unwrap();
    assert_eq!(g.otk, Some(5));
    // A stale one-time-key packet is refused like any other.
    d.set_otks([crate::config::Otk {
        user: 1,
        counter: 9,
        key: keys[0].clone(),
    }]);
    let r = d
        .handle_datagram(src(), &sealed(&keys[0], "tcp/443", 6), NOW + 500)
        .unwrap_err();
    assert_eq!((r.reason, r.method), (Reason::Stale, Some(Method::Otk)));
}

/// `config()` with sealed sequences opening the policy instead of fwknop.
fn sealed_detector() -> SpaDetector {
    let text = config_text().replace("fwknop = true", "sealed = true");
    SpaDetector::new(&Config::parse(&text).expect("config"))
}

fn sealed_bytes(key: &str, gateway: &str, ts: u64, nonce: u16, allow: Option<&str>) -> Vec<u8> {
    use knockgate_proto::sealed::{self, Request, SealedKeys};
    let keys = SealedKeys::derive(&SpaKey::parse(key).unwrap());
    let req = Request {
        timestamp: u32::try_from(ts).unwrap(),
        nonce,
        access: "tcp/22".parse().unwrap(),
        allow_ip: allow.map(|a| a.parse().unwrap()),
    };
    sealed::seal(&keys, gateway, src(), &req).bytes().to_vec()
}

#[test]
fn sealed_sequences_are_judged_like_packets() {
    let mut d = sealed_detector();
    let bytes = sealed_bytes(ALICE_SPA, "gw1", NOW, 1, None);
    let grant = d
        .handle_sealed(src(), &bytes, NOW)
        .unwrap()
        .expect("a grant");
    assert_eq!(grant.method, Method::Sealed);
    assert_eq!(grant.user, 1, "alice");
    assert_eq!(grant.addr, src());
    assert_eq!(grant.access, ["tcp/22".parse().unwrap()]);
    assert_eq!(grant.timeout, Duration::from_secs(30));
    let why = |r: Result<Option<SpaGrant>, Rejection>| r.unwrap_err().reason.as_str();
    assert_eq!(why(d.handle_sealed(src(), &bytes, NOW)), "replay");
    // Another source: the tag binds the sender's address.
    let elsewhere: IpAddr = "10.240.0.9".parse().unwrap();
    let fresh = sealed_bytes(ALICE_SPA, "gw1", NOW, 2, None);
    assert_eq!(why(d.handle_sealed(elsewhere, &fresh, NOW)), "bad_tag");
    // Sealed for another gateway, by an unknown key, too old, too new.
    let gw2 = sealed_bytes(ALICE_SPA, "gw2", NOW, 3, None);
    assert_eq!(why(d.handle_sealed(src(), &gw2, NOW)), "bad_tag");
    let stranger = sealed_bytes(
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "gw1",
        NOW,
        4,
        None,
    );
    assert_eq!(why(d.handle_sealed(src(), &stranger, NOW)), "unknown_key");
    // Stale: older than max_age (120 s), though its hint window is still looked up.
    let old = sealed_bytes(ALICE_SPA, "gw1", NOW - 100, 5, None);
    assert_eq!(why(d.handle_sealed(src(), &old, NOW + 30)), "stale");
    // bob holds an SPA key but no sealed policy admits him: his hint is unknown here.
    let bob = sealed_bytes(BOB_SPA, "gw1", NOW, 6, None);
    assert_eq!(why(d.handle_sealed(src(), &bob, NOW)), "unknown_key");
}

#[test]
fn a_longer_sealed_sequence_is_waited_for() {
    let mut d = sealed_detector();
    let bytes = sealed_bytes(ALICE_SPA, "gw1", NOW, 1, Some("203.0.113.9"));
    assert_eq!(bytes.len(), 21);
    // Its first 17 knocks: the hint says 21, so this is not judged yet.
    assert_eq!(d.handle_sealed(src(), &bytes[..17], NOW), Ok(None));
    let grant = d
        .handle_sealed(src(), &bytes, NOW)
        .unwrap()
        .expect("a grant");
    assert_eq!(grant.addr, "203.0.113.9".parse::<IpAddr>().unwrap());
}
