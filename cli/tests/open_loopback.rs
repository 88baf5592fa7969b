//! `knocker open` over loopback with a hand-written profile: the datagram a
//! real UDP socket receives opens with the gateway's native codec
//! (`knockgate_proto::spa::open`) or decodes with its fwknop codec
//! (`knockgate_proto::fwknop::decode`). Also its one-line errors (exit 64).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use knockgate_proto::fwknop::{self, DigestType, msg_type};
use knockgate_proto::spa;
use knockgate_proto::{Access, unix_secs};

const SPA_KEY: [u8; 32] = [42; 32];
const ENC_KEY: [u8; 32] = [5; 32];
const HMAC_KEY: [u8; 64] = [6; 64];

fn knocker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(args)
        .output()
        .expect("run knocker")
}

fn receiver(ip: IpAddr) -> (UdpSocket, u16) {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = socket.local_addr().expect("addr").port();
    (socket, port)
}

fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (len, _) = socket.recv_from(&mut buf).expect("datagram");
    buf[..len].to_vec()
}

/// Writes a profile the way knockadm does (the fields by hand) with the given
/// `[[gateway]]` entries.
fn profile(dir: &Path, gateways: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "# written by hand\n[user]\nname = \"alice\"\nspa_key = \"{}\"\nfwknop_key = \"{}\"\n\
         fwknop_hmac_key = \"{}\"\nfwknop_hmac = \"sha256\"\n",
        STANDARD.encode(SPA_KEY),
        STANDARD.encode(ENC_KEY),
        STANDARD.encode(HMAC_KEY)
    );
    for (name, address) in gateways {
        text.push_str(&format!(
            "\n[[gateway]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    let path = dir.join("alice.toml");
    std::fs::write(&path, text).expect("write profile");
    path
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

#[test]
fn native_spa_opens_at_the_gateway() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, port) = receiver(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let path = profile(
        dir.path(),
        &[("gw1", &format!("127.0.0.1:{port}")), ("gw2", "192.0.2.1")],
    );

    let out = knocker(&["open", "gw1", "--profile", p(&path)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    // Sealed with alice's key for gw1 alone, never with her root key.
    let key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw1").expect("derive");
    let req = spa::open(&key, &receive(&socket)).expect("opens with the profile's key");
    assert_eq!(req.gateway, "gw1");
    assert_eq!(req.access, vec![Access::tcp(22)], "tcp/22 by default");
    assert_eq!(
        (req.allow_ip, req.duration_secs),
        (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), 0),
        "the sender's own address is sealed by default"
    );
    let out = knocker(&["open", "gw1", "--profile", p(&path), "--source-any"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let req = spa::open(&key, &receive(&socket)).expect("opens");
    assert_eq!(req.allow_ip, None, "--source-any seals no address");

    let before = unix_secs(SystemTime::now());
    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "-A",
        "udp/53,tcp/443",
        "-A",
        "tcp/22",
        "--timeout",
        "10m",
        "--verbose",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let packet = receive(&socket);
    let req = spa::open(&key, &packet).expect("opens");
    assert_eq!(
        req.access,
        vec![Access::tcp(22), Access::tcp(443), Access::udp(53)]
    );
    assert_eq!(req.duration_secs, 600);
    assert!(req.timestamp >= before);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "sent SPA (key id {}) for alice to gw1 (127.0.0.1:{port}): access tcp/22,tcp/443,udp/53, allow 127.0.0.1, {} bytes\n",
            key.id(),
            packet.len()
        )
    );
}

#[test]
fn native_spa_over_ipv6_and_port_override() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, port) = receiver(IpAddr::V6(Ipv6Addr::LOCALHOST));
    // The profile's port is wrong on purpose: --port wins.
    let path = profile(dir.path(), &[("gw6", "[::1]:9")]);
    let port_arg = port.to_string();
    let out = knocker(&["open", "gw6", "--profile", p(&path), "--port", &port_arg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw6").expect("derive");
    let req = spa::open(&key, &receive(&socket)).expect("opens");
    assert_eq!(req.gateway, "gw6");
}

#[test]
fn fwknop_packet_decodes_at_the_gateway() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, port) = receiver(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let path = profile(dir.path(), &[("gw1", "127.0.0.1")]);
    let keys =
        knockgate_proto::scope::gateway_fwknop_keys(&ENC_KEY, &HMAC_KEY, DigestType::Sha256, "gw1")
            .expect("keys");
    let port_arg = port.to_string();
    let before = unix_secs(SystemTime::now());

    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "--method",
        "fwknop",
        "-p",
        &port_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let wire = receive(&socket);
    let req = fwknop::decode(&keys, &wire).expect("decodes with the profile's keys");
    assert_eq!(req.user, "alice");
    assert_eq!(req.msg_type, msg_type::ACCESS);
    assert_eq!(
        req.allow_ip,
        Ipv4Addr::LOCALHOST,
        "the sender's own address is sealed by default"
    );
    assert_eq!(req.access, vec![Access::tcp(22)]);
    assert_eq!(req.client_timeout, None);
    assert_eq!(req.digest_type, DigestType::Sha256);
    assert_eq!(req.version, "3.0.0");
    assert_eq!(req.rand.len(), 16);
    assert!(req.rand.bytes().all(|b| b.is_ascii_digit()));
    assert!(req.timestamp >= before && req.timestamp <= unix_secs(SystemTime::now()));
    assert!(req.is_access());

    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "-m",
        "fwknop",
        "-p",
        &port_arg,
        "-t",
        "90s",
        "-A",
        "tcp/22,udp/51820",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let second = receive(&socket);
    assert_ne!(second, wire, "fresh rand and salt");
    let req = fwknop::decode(&keys, &second).expect("decodes");
    assert_eq!(req.msg_type, msg_type::CLIENT_TIMEOUT_ACCESS);
    assert_eq!(req.client_timeout, Some(90));
    assert_eq!(req.access, vec![Access::tcp(22), Access::udp(51820)]);
}

/// Asserts exit 64 and one `knocker: error:` line with every needle.
fn assert_usage(args: &[&str], needles: &[&str]) {
    let out = knocker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("knocker: error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {stderr} lacks {needle}");
    }
    let secret = STANDARD.encode(SPA_KEY);
    assert!(!stderr.contains(&secret[..20]), "no key in errors");
    assert!(out.stdout.is_empty());
}

/// A profile with gw1, gw2 and `empty` (no address), in `dir`.
fn three_gateways(dir: &Path) -> PathBuf {
    profile(
        dir,
        &[("gw1", "127.0.0.1"), ("gw2", "127.0.0.1"), ("empty", "")],
    )
}

#[test]
fn unknown_gateways_and_missing_profiles_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    let path = three_gateways(dir.path());
    let prof = p(&path);
    assert_usage(
        &["open", "gw9", "--profile", prof],
        &[
            "no gateway named 'gw9'",
            "alice.toml",
            "known: gw1, gw2, empty",
        ],
    );
    assert_usage(
        &["open", "empty", "--profile", prof],
        &["gateway 'empty' has no address"],
    );
    let missing = dir.path().join("missing.toml");
    assert_usage(
        &["open", "gw1", "--profile", p(&missing)],
        &["cannot read profile", "missing.toml"],
    );
}

#[test]
fn what_a_method_cannot_use_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let path = three_gateways(dir.path());
    let prof = p(&path);
    for method in ["rotating", "otk"] {
        assert_usage(
            &["open", "gw1", "--profile", prof, "--method", method],
            &[&format!(
                "has no rotating_secret (needed for --method {method})"
            )],
        );
    }
    assert_usage(
        &["open", "gw1", "--profile", prof, "--policy", "ssh"],
        &["--policy does not apply to --method spa"],
    );
    assert_usage(
        &[
            "open",
            "gw1",
            "--profile",
            prof,
            "-m",
            "fwknop",
            "-t",
            "20h",
        ],
        &["at most 65536 seconds"],
    );
    assert_usage(
        &["open", "gw1", "--profile", prof, "-A", "icmp"],
        &["'icmp'"],
    );
}

#[test]
fn profiles_without_keys_or_broken_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[user]\nname = \"bob\"\n\n[[gateway]]\nname = \"gw1\"\naddress = \"127.0.0.1\"\n",
    )
    .expect("write");
    assert_usage(
        &["open", "gw1", "--profile", p(&bare)],
        &["has no spa_key", "bare.toml"],
    );
    assert_usage(
        &["open", "gw1", "--profile", p(&bare), "-m", "fwknop"],
        &["has no fwknop_key"],
    );

    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "[user]\nname = \"a\"\nspa_key = {}\n",
            STANDARD.encode(SPA_KEY)
        ),
    )
    .expect("write");
    assert_usage(
        &["open", "gw1", "--profile", p(&broken)],
        &["invalid profile", "broken.toml"],
    );
}

#[test]
fn without_access_the_profile_says_what_to_ask_for() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, port) = receiver(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let path = profile(dir.path(), &[("gw1", &format!("127.0.0.1:{port}"))]);
    let mut text = std::fs::read_to_string(&path).expect("profile");
    text.push_str(
        "\n[[gateway.policy]]\nname = \"web\"\nopen = [\"tcp/443\", \"tcp/80\"]\n\
         methods = [\"spa\"]\n\n[[gateway.policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\n\
         methods = [\"fwknop\", \"rotating\"]\n",
    );
    std::fs::write(&path, text).expect("write");
    let key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw1").expect("derive");

    // One policy allows spa: everything it opens.
    let out = knocker(&["open", "gw1", "--profile", p(&path)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let req = spa::open(&key, &receive(&socket)).expect("opens");
    assert_eq!(req.access, vec![Access::tcp(80), Access::tcp(443)]);
    // --access still wins.
    let out = knocker(&["open", "gw1", "--profile", p(&path), "-A", "udp/53"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let req = spa::open(&key, &receive(&socket)).expect("opens");
    assert_eq!(req.access, vec![Access::udp(53)]);
    // No policy allows otk: named, nothing sent, no key reserved.
    assert_usage(
        &["open", "gw1", "--profile", p(&path), "-m", "otk"],
        &[
            "gateway gw1: no policy in the profile allows otk (policies: web (tcp/443, tcp/80) by spa, ssh (tcp/22) by fwknop, rotating): pass --access",
        ],
    );
    assert!(!dir.path().join("alice.toml.otk").exists());
}
