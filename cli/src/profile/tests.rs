//! Profile round trips, file modes, overwrite refusal, and key errors that
//! never show the key.

use std::os::unix::fs::PermissionsExt as _;

use knockgate_proto::Access;
use knockgate_proto::rotation::{Protos, RotationParams};

use super::*;

const SPA: [u8; 32] = [7; 32];

fn profile() -> Profile {
    Profile {
        user: ProfileUser {
            name: "alice".into(),
            spa_key: Some(encode_key(&SPA)),
            fwknop_key: Some(encode_key(&[1; 32])),
            fwknop_hmac_key: Some(encode_key(&[2; 64])),
            fwknop_hmac: Some("sha256".into()),
            rotating_secret: Some(encode_key(&[3; 32])),
        },
        gateways: vec![
            ProfileGateway {
                name: "gw1".into(),
                address: "203.0.113.7".into(),
                policies: vec![
                    policy("ssh", &["tcp/22"], &["spa", "fwknop", "rotating"]),
                    policy("web", &["tcp/443", "tcp/80"], &["spa", "rotating"]),
                ],
                rotating: vec![rotation("ssh", "both"), rotation("web", "udp")],
            },
            ProfileGateway {
                name: "gw2".into(),
                address: "[2001:db8::2]:4000".into(),
                policies: vec![],
                rotating: vec![],
            },
        ],
    }
}

fn rotation(policy: &str, protos: &str) -> ProfileRotation {
    ProfileRotation {
        policy: policy.into(),
        length: 4,
        protos: protos.into(),
        port_lo: 20000,
        port_hi: 60000,
        window_secs: 30,
        exclude: vec![22, 443],
    }
}

fn policy(name: &str, open: &[&str], methods: &[&str]) -> ProfileGatewayPolicy {
    ProfileGatewayPolicy {
        name: name.into(),
        open: open.iter().map(|s| (*s).to_owned()).collect(),
        methods: methods.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn write_then_read_round_trips_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.toml");
    let rc = write_profile(&path, &profile()).unwrap();
    assert_eq!(rc, dir.path().join("alice.toml.fwknoprc"));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&rc), 0o600);
    let back = read_profile(&path).unwrap();
    assert_eq!(back, profile());
    assert_eq!(back.spa_key(&path).unwrap(), SpaKey::from_secret(SPA));
    let keys = back.fwknop_keys(&path).unwrap();
    assert_eq!(keys.enc_key, vec![1; 32]);
    assert_eq!(keys.hmac_key, vec![2; 64]);
    assert_eq!(keys.hmac, DigestType::Sha256);

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# knockgate profile for alice"), "{text}");
    assert!(text.contains("[user]\nname = \"alice\""), "{text}");
    assert!(
        text.contains("[[gateway]]\nname = \"gw1\"\naddress = \"203.0.113.7\""),
        "{text}"
    );
    assert!(
        text.contains(
            "[[gateway.rotating]]\npolicy = \"ssh\"\nlength = 4\nprotos = \"both\"\n\
             port_lo = 20000\nport_hi = 60000\nwindow_secs = 30\nexclude = [22, 443]\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches("[[gateway.rotating]]").count(), 2, "{text}");
    assert!(
        text.contains(
            "[[gateway.policy]]\nname = \"web\"\nopen = [\"tcp/443\", \"tcp/80\"]\n\
             methods = [\"spa\", \"rotating\"]\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches("[[gateway.policy]]").count(), 2, "{text}");
}

#[test]
fn policy_entries_say_what_opens_and_how() {
    let p = profile();
    let web = &p.gateways[0].policies[1];
    assert!(web.allows("spa") && web.allows("rotating") && !web.allows("fwknop"));
    assert_eq!(web.access().unwrap(), [Access::tcp(80), Access::tcp(443)]);
    assert_eq!(web.label(), "web (tcp/443, tcp/80)");
    let bad = policy("odd", &["tcp/22", "sctp/9"], &["spa"]);
    let err = bad.access().unwrap_err();
    assert!(err.starts_with("open entry \"sctp/9\""), "{err}");
}

#[test]
fn replace_rewrites_both_files_atomically_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.toml");
    let mut old = profile();
    old.gateways.truncate(1);
    old.gateways[0].policies.clear();
    write_profile(&path, &old).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let rc = replace_profile(&path, &profile()).unwrap();
    assert_eq!(rc, fwknoprc_path(&path));
    assert_eq!(read_profile(&path).unwrap(), profile());
    assert_eq!(mode(&path), 0o600, "the new file, not the old mode");
    assert_eq!(mode(&rc), 0o600);
    assert!(std::fs::read_to_string(&rc).unwrap().contains("\n[gw2]\n"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

    // A missing directory is a write error naming the file.
    let missing = dir.path().join("gone").join("p.toml");
    let err = replace_profile(&missing, &profile()).unwrap_err();
    assert!(matches!(err, ProfileError::Write { .. }), "{err}");
}

#[test]
fn rotating_entries_and_secret_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.toml");
    write_profile(&path, &profile()).unwrap();
    let p = read_profile(&path).unwrap();
    assert_eq!(*p.rotating_secret("x", &path).unwrap(), [3; 32]);
    let gw1 = p.gateway("gw1", &path).unwrap();
    let (entry, params) = p.rotation(gw1, None, &path).unwrap();
    assert_eq!(entry.policy, "ssh", "the first entry by default");
    assert_eq!(
        params,
        RotationParams {
            exclude: vec![22, 443],
            ..RotationParams::default()
        }
    );
    let (entry, params) = p.rotation(gw1, Some("web"), &path).unwrap();
    assert_eq!((entry.policy.as_str(), params.protos), ("web", Protos::Udp));
    let err = p.rotation(gw1, Some("rdp"), &path).unwrap_err().to_string();
    assert!(
        err.starts_with("no rotating policy 'rdp' at gateway 'gw1' in profile '")
            && err.ends_with("(known: ssh, web)"),
        "{err}"
    );
    let gw2 = p.gateway("gw2", &path).unwrap();
    let err = p.rotation(gw2, None, &path).unwrap_err().to_string();
    assert!(
        err.contains("gateway 'gw2' has no rotating policy"),
        "{err}"
    );
}

#[test]
fn profiles_without_rotating_entries_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.toml");
    // As knockadm wrote profiles before the rotating entries existed.
    std::fs::write(
        &path,
        format!(
            "# knockgate profile for alice: keep it secret.\n\n[user]\nname = \"alice\"\n\
             spa_key = \"{}\"\nrotating_secret = \"{}\"\n\n\
             [[gateway]]\nname = \"gw1\"\naddress = \"203.0.113.7\"\n",
            encode_key(&SPA),
            encode_key(&[3; 32])
        ),
    )
    .unwrap();
    let p = read_profile(&path).unwrap();
    let gw1 = p.gateway("gw1", &path).unwrap();
    assert!(gw1.rotating.is_empty() && gw1.policies.is_empty());
    assert!(p.spa_key(&path).is_ok());
    assert!(matches!(
        p.rotation(gw1, None, &path),
        Err(ProfileError::NoRotation { .. })
    ));
    // Written back, the gateway still has no rotating table.
    let again = dir.path().join("again.toml");
    write_profile(&again, &p).unwrap();
    let text = std::fs::read_to_string(&again).unwrap();
    assert!(
        !text.contains("rotating]]") && !text.contains("policy]]"),
        "{text}"
    );
    assert_eq!(read_profile(&again).unwrap(), p);
}

#[test]
fn bad_rotating_entries_name_the_field() {
    let path = Path::new("a.toml");
    for (edit, want) in [
        (
            (|r: &mut ProfileRotation| r.length = 17) as fn(&mut ProfileRotation),
            "length 17 is not in 1..=16",
        ),
        (|r| r.protos = "icmp".into(), "protos \"icmp\""),
        (|r| r.port_lo = 70_000, "port_lo 70000 is not in 1..=65535"),
        (|r| r.port_hi = 100, "port_hi 100 is below port_lo 20000"),
        (|r| r.window_secs = 0, "window_secs must be greater than 0"),
        (|r| r.exclude = vec![0], "exclude 0 is not in 1..=65535"),
    ] {
        let mut p = profile();
        edit(&mut p.gateways[0].rotating[0]);
        let err = p
            .rotation(&p.gateways[0], None, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "profile 'a.toml' has an invalid rotating policy 'ssh' at gateway 'gw1': "
            ) && err.contains(want),
            "{err} (wanted {want})"
        );
    }
}

#[test]
fn rotating_secret_errors_never_show_it() {
    let path = Path::new("a.toml");
    let mut p = profile();
    p.user.rotating_secret = Some(encode_key(&[3; 31]));
    let err = p
        .rotating_secret("--method otk", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid rotating_secret: 31 bytes"), "{err}");
    assert!(!err.contains(&encode_key(&[3; 31])), "{err}");
    p.user.rotating_secret = Some("%%%".into());
    assert!(p.rotating_secret("x", path).is_err());
    p.user.rotating_secret = None;
    let err = p
        .rotating_secret("--method otk", path)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "profile 'a.toml' has no rotating_secret (needed for --method otk)"
    );
}

#[test]
fn fwknoprc_has_one_stanza_per_gateway() {
    let rc = render_fwknoprc(&profile());
    // Each stanza carries the keys derived for its gateway, never the roots, and names no
    // address to open (no `ALLOW_IP source`).
    let derived = |gw: &str| {
        knockgate_proto::scope::gateway_fwknop_keys(
            &[1; 32],
            &[2; 64],
            knockgate_proto::fwknop::DigestType::Sha256,
            gw,
        )
        .unwrap()
    };
    let (k1, h1) = knockgate_proto::scope::fwknop_rc_base64(&derived("gw1"));
    let gw1 = format!(
        "\n[gw1]\nSPA_SERVER 203.0.113.7\nSPOOF_USER alice\nKEY_BASE64 {}\n\
         HMAC_KEY_BASE64 {}\nUSE_HMAC Y\nHMAC_DIGEST_TYPE SHA256\nACCESS tcp/22\n",
        k1.as_str(),
        h1.as_str()
    );
    assert!(rc.contains(&gw1), "{}", rc.as_str());
    let (k2, _) = knockgate_proto::scope::fwknop_rc_base64(&derived("gw2"));
    assert!(rc.contains(&format!("KEY_BASE64 {}\n", k2.as_str())));
    assert!(
        !rc.contains(&encode_key(&[1; 32])),
        "no root key in the file"
    );
    assert!(!rc.contains("ALLOW_IP"), "{}", rc.as_str());
    assert!(
        rc.contains("\n[gw2]\nSPA_SERVER 2001:db8::2\nSPA_SERVER_PORT 4000\n"),
        "{}",
        rc.as_str()
    );
    // ACCESS is what fwknop opens there, never a guess: gw2 admits nothing known.
    assert_eq!(rc.matches("\nACCESS ").count(), 1, "{}", rc.as_str());
    assert!(rc.contains("HMAC_DIGEST_TYPE SHA256\n# no policy known here admits fwknop"));
    // Lines are either comments, blank, a stanza header or `VAR value`.
    for line in rc.lines() {
        assert!(
            line.is_empty()
                || line.starts_with('#')
                || line.starts_with('[')
                || line.split_once(' ').is_some(),
            "{line}"
        );
    }
}

#[test]
fn refuses_to_overwrite_either_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "old").unwrap();
    let err = write_profile(&path, &profile()).unwrap_err();
    assert!(matches!(&err, ProfileError::Exists { path: p } if *p == path));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");

    let other = dir.path().join("q.toml");
    std::fs::write(fwknoprc_path(&other), "old").unwrap();
    let err = write_profile(&other, &profile()).unwrap_err();
    assert!(err.to_string().contains("q.toml.fwknoprc"), "{err}");
    assert!(!other.exists(), "nothing written when the rc file exists");

    // A one-time key counter left from an older secret would skip the new keys.
    let third = dir.path().join("r.toml");
    std::fs::write(crate::otk::counter_path(&third), "7\n").unwrap();
    let err = write_profile(&third, &profile()).unwrap_err();
    assert!(err.to_string().contains("r.toml.otk"), "{err}");
    assert!(!third.exists());
}

#[test]
fn unknown_gateway_lists_the_known_ones() {
    let p = profile();
    let err = p.gateway("gw9", Path::new("a.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no gateway named 'gw9' in profile 'a.toml' (known: gw1, gw2)"
    );
    let empty = Profile {
        gateways: vec![],
        ..profile()
    };
    let err = empty.gateway("gw1", Path::new("a.toml")).unwrap_err();
    assert!(err.to_string().ends_with("(known: none)"), "{err}");
}

#[test]
fn missing_and_bad_keys_are_named_not_shown() {
    let path = Path::new("a.toml");
    let mut p = profile();
    p.user.spa_key = None;
    p.user.fwknop_hmac_key = Some("  ".into());
    let err = p.spa_key(path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "profile 'a.toml' has no spa_key (needed for native spa)"
    );
    let err = p.fwknop_keys(path).unwrap_err();
    assert!(err.to_string().contains("no fwknop_hmac_key"), "{err}");

    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0";
    p.user.spa_key = Some(secret.into());
    let err = p.spa_key(path).unwrap_err().to_string();
    assert!(
        err.contains("invalid spa_key") && !err.contains(secret),
        "{err}"
    );

    let mut p = profile();
    p.user.fwknop_hmac = Some("whirlpool".into());
    let err = p.fwknop_keys(path).unwrap_err().to_string();
    assert!(err.contains("invalid fwknop_hmac"), "{err}");
}

#[test]
fn hand_written_profile_with_only_what_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        format!(
            "[user]\nname = \"bob\"\nspa_key = \"{}\"\nfuture_field = 1\n\n\
             [[gateway]]\nname = \"edge\"\naddress = \"127.0.0.1\"\n",
            encode_key(&SPA)
        ),
    )
    .unwrap();
    let p = read_profile(&path).unwrap();
    assert_eq!(p.user.name, "bob");
    assert_eq!(p.gateway("edge", &path).unwrap().address, "127.0.0.1");
    assert!(p.spa_key(&path).is_ok());
    assert!(matches!(
        p.fwknop_keys(&path),
        Err(ProfileError::MissingKey {
            field: "fwknop_key",
            ..
        })
    ));
}

#[test]
fn unreadable_and_invalid_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let err = read_profile(&missing).unwrap_err();
    assert!(matches!(err, ProfileError::Read { .. }));
    assert!(err.to_string().contains("missing.toml"), "{err}");

    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0";
    for (name, text) in [
        (
            "syntax.toml",
            format!("[user]\nname = \"a\"\nspa_key = {secret}\n"),
        ),
        ("noname.toml", format!("[user]\nspa_key = \"{secret}\"\n")),
        ("nouser.toml", "[[gateway]]\nname = \"gw\"\n".to_owned()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = read_profile(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ProfileError::Parse { .. }), "{name}: {msg}");
        assert!(msg.contains(name), "{msg}");
        assert!(!msg.contains(secret), "{name}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }
}

#[test]
fn addresses_split_into_host_and_port() {
    for (address, host, port) in [
        ("203.0.113.7", "203.0.113.7", None),
        ("203.0.113.7:4000", "203.0.113.7", Some(4000)),
        ("gw.example.net", "gw.example.net", None),
        ("gw.example.net:62201", "gw.example.net", Some(62201)),
        ("2001:db8::1", "2001:db8::1", None),
        ("[2001:db8::1]", "2001:db8::1", None),
        ("[2001:db8::1]:9", "2001:db8::1", Some(9)),
        (" host ", "host", None),
        ("host:0", "host:0", None),
    ] {
        assert_eq!(split_address(address), (host, port), "{address}");
    }
}

#[test]
fn debug_never_shows_keys() {
    let p = profile();
    let debug = format!("{p:?}");
    assert!(!debug.contains(&encode_key(&SPA)), "{debug}");
    assert!(debug.contains("alice"));
}

#[test]
fn fwknoprc_access_is_what_the_policies_open_with_fwknop() {
    let mut p = profile();
    p.gateways[0].policies = vec![
        policy("rdp", &["tcp/3389"], &["spa"]),
        policy("web", &["tcp/443", "tcp/80"], &["fwknop"]),
        policy("vpn", &["udp/51820"], &["fwknop", "spa"]),
    ];
    let rc = render_fwknoprc(&p);
    assert!(
        rc.contains("ACCESS tcp/443,tcp/80\n# also here, policy vpn: -A udp/51820\n"),
        "{}",
        rc.as_str()
    );
    assert!(!rc.contains("3389"), "rdp does not admit fwknop");
}
