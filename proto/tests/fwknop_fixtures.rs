//! Packets made by the real fwknop 2.6.10 client (`fixtures/regen.sh`) and
//! by fwknop's own test suite: each must decode to the fields the client
//! printed, and re-encoding the decoded request with the packet's salt must
//! give back the exact wire bytes.

#![allow(clippy::unwrap_used)] // tests unwrap by design

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use knockgate_proto::fwknop::{
    DigestType, FwknopKeys, FwknopPacket, FwknopVerifier, decode, encode, msg_type,
};

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fwknop")
}

fn load(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn keys(f: &BTreeMap<String, String>) -> FwknopKeys {
    let hmac: DigestType = f["hmac_type"].parse().unwrap();
    match f["key_kind"].as_str() {
        "base64" => FwknopKeys::from_base64(&f["enc_key"], &f["hmac_key"], hmac).unwrap(),
        "raw" => FwknopKeys::new(
            f["enc_key"].clone().into_bytes(),
            f["hmac_key"].clone().into_bytes(),
            hmac,
        )
        .unwrap(),
        other => panic!("key_kind {other}"),
    }
}

fn fixtures() -> Vec<BTreeMap<String, String>> {
    let mut paths: Vec<_> = fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fixture"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

#[test]
fn client_fixtures_decode_to_what_the_client_printed() {
    let all = fixtures();
    assert!(all.len() >= 20, "fixtures missing: run regen.sh");
    for f in &all {
        let name = &f["name"];
        let wire = f["wire"].as_bytes();
        let req = decode(&keys(f), wire).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(req.rand, f["rand"], "{name}");
        assert_eq!(req.user, f["user"], "{name}");
        assert_eq!(req.timestamp.to_string(), f["timestamp"], "{name}");
        assert_eq!(req.version, f["version"], "{name}");
        assert_eq!(req.msg_type.to_string(), f["msg_type"], "{name}");
        assert_eq!(req.digest_type.name(), f["digest_type"], "{name}");
        let message = match &req.command {
            Some(cmd) => format!("{},{cmd}", req.allow_ip),
            None => std::iter::once(req.allow_ip.to_string())
                .chain(req.access.iter().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(","),
        };
        assert_eq!(message, f["message"], "{name}");
        let or_null = |o: &Option<String>| o.clone().unwrap_or_else(|| "<NULL>".into());
        assert_eq!(or_null(&req.nat_access), f["nat_access"], "{name}");
        assert_eq!(or_null(&req.server_auth), f["server_auth"], "{name}");
        assert_eq!(
            req.client_timeout.unwrap_or(0).to_string(),
            f["client_timeout"],
            "{name}"
        );
        let salt = FwknopPacket::parse(wire).unwrap().salt().unwrap();
        assert_eq!(
            encode(&keys(f), &req, salt).unwrap(),
            f["wire"],
            "{name}: re-encoding differs"
        );
    }
}

#[test]
fn client_fixture_specifics() {
    let by_name: BTreeMap<String, _> = fixtures()
        .into_iter()
        .map(|f| (f["name"].clone(), f))
        .collect();
    let get = |n: &str| decode(&keys(&by_name[n]), by_name[n]["wire"].as_bytes()).unwrap();
    assert_eq!(get("source").explicit_ip(), None);
    assert_eq!(get("allow_ip").explicit_ip(), Some([192, 0, 2, 10].into()));
    let t = get("client_timeout");
    assert_eq!(
        (t.msg_type, t.client_timeout, t.is_access()),
        (msg_type::CLIENT_TIMEOUT_ACCESS, Some(60), true)
    );
    assert_eq!(
        get("time_offset_plus").timestamp,
        get("allow_ip").timestamp + 300
    );
    assert_eq!(get("multi_port").access.len(), 2);
    assert_eq!(get("many_ports").access.len(), 7);
    assert!(!get("command").is_access());
    assert!(!get("nat_timeout").is_access());
}

#[test]
fn hmac_type_is_a_per_user_setting() {
    // A packet only verifies under the HMAC type it was made with.
    let all = fixtures();
    let mut v = FwknopVerifier::new();
    for f in &all {
        v.push(f["name"].clone(), &keys(f)).unwrap();
    }
    for f in all.iter().filter(|f| f["name"].starts_with("hmac_")) {
        let (who, _) = v.verify(f["wire"].as_bytes()).unwrap();
        let who = &all.iter().find(|g| &g["name"] == who).unwrap()["hmac_type"];
        assert_eq!(who, &f["hmac_type"], "{}", f["name"]);
    }
}

#[test]
fn fwknop_test_suite_packets_decode_byte_exact() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fwknop_test_suite.txt"),
    )
    .unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let [detail, kind, key, hmac, wire] = line.split('|').collect::<Vec<_>>()[..] else {
            panic!("bad line {line}");
        };
        let keys = match kind {
            "base64" => FwknopKeys::from_base64(key, hmac, DigestType::Sha256).unwrap(),
            _ => FwknopKeys::new(key.into(), hmac.into(), DigestType::Sha256).unwrap(),
        };
        let req = decode(&keys, wire.as_bytes()).unwrap_or_else(|e| panic!("{detail}: {e:?}"));
        assert!(req.is_access() && !req.access.is_empty(), "{detail}");
        let salt = FwknopPacket::parse(wire.as_bytes())
            .unwrap()
            .salt()
            .unwrap();
        assert_eq!(encode(&keys, &req, salt).unwrap(), wire, "{detail}");
        n += 1;
    }
    assert_eq!(n, 13);
}
