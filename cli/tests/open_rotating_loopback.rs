//! `knocker open --method rotating` and `--method otk` over loopback with a
//! hand-written profile. Rotating knocks are captured with raw sockets (root,
//! like the ICMP knock tests; a run that cannot open them fails) and must be
//! exactly the sequence `derive_sequence` gives for the window knocker names,
//! in order; one-time-key packets must open with gw1's one-time key 0, then
//! 1, and leave the counter file at 2.

use std::io::{ErrorKind, Read as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use knockgate_proto::rotation::{Protos, RotationParams, derive_sequence, window_index};
use knockgate_proto::spa;
use knockgate_proto::{Access, Proto, unix_secs};
use socket2::{Domain, Protocol, Socket, Type};

const SECRET: [u8; 32] = [9; 32];
/// Each test knocks into its own 16 ports, so parallel tests do not see each
/// other's knocks: `lo ..= lo + 15`, with `lo + 3` excluded.
const SPAN: u16 = 15;

fn knocker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(args)
        .output()
        .expect("run knocker")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

/// A profile with the rotating secret and gateway `gw1` at `address` with three
/// rotating entries over the tiny range from `lo`: `udp` (udp only), `mixed`
/// (both) and `short` (udp, 2 s windows).
fn profile(dir: &Path, address: &str, lo: u16) -> PathBuf {
    let entry = |policy: &str, protos: &str, window: u32| {
        format!(
            "\n[[gateway.rotating]]\npolicy = \"{policy}\"\nlength = 4\nprotos = \"{protos}\"\n\
             port_lo = {lo}\nport_hi = {}\nwindow_secs = {window}\nexclude = [22, {}]\n",
            lo + SPAN,
            lo + 3
        )
    };
    let text = format!(
        "[user]\nname = \"alice\"\nrotating_secret = \"{}\"\n\n\
         [[gateway]]\nname = \"gw1\"\naddress = \"{address}\"\n{}{}{}",
        STANDARD.encode(SECRET),
        entry("udp", "udp", 30),
        entry("mixed", "both", 30),
        entry("short", "udp", 2),
    );
    let path = dir.join("alice.toml");
    std::fs::write(&path, text).expect("write profile");
    path
}

fn params(protos: Protos, lo: u16, window_secs: u32) -> RotationParams {
    RotationParams {
        length: 4,
        protos,
        port_lo: lo,
        port_hi: lo + SPAN,
        exclude: vec![22, lo + 3],
        window_secs,
    }
}

/// A raw IPv4 socket that sees every incoming datagram or segment of `proto`.
fn capture(proto: Protocol) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(proto))
        .expect("raw socket (these tests run as root)");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    socket
}

/// The knocks `socket` captured into the tiny range from `lo` from 127.0.0.1, in
/// order: UDP datagrams with knock's one-NUL payload, TCP segments with SYN alone.
fn knocks(socket: &Socket, proto: Proto, lo: u16) -> Vec<Access> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let len = match (&*socket).read(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return seen;
            }
            Err(e) => panic!("capture: {e}"),
        };
        let ip = &buf[..len];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let l4 = &ip[ihl..];
        let port = u16::from_be_bytes([l4[2], l4[3]]);
        if ip[12..16] != [127, 0, 0, 1] || !(lo..=lo + SPAN).contains(&port) {
            continue;
        }
        let knock = match proto {
            Proto::Udp => l4[8..] == [0],
            // SYN set, ACK and RST clear.
            Proto::Tcp => l4[13] & 0x16 == 0x02,
        };
        if knock {
            seen.push(Access { proto, port });
        }
    }
}

/// The window in knocker's `--verbose` header line.
fn window(stdout: &str) -> u64 {
    let header = stdout
        .lines()
        .find(|l| l.starts_with("knocking for alice at gw1 (127.0.0.1)"))
        .unwrap_or_else(|| panic!("no header in {stdout}"));
    let (_, rest) = header.split_once(", window ").expect("window");
    rest.split(':')
        .next()
        .expect("number")
        .parse()
        .expect("u64")
}

#[test]
#[ignore = "needs root: a raw socket sees the knocks (scripts/test.sh runs it)"]
fn rotating_sends_exactly_the_derived_sequence_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let lo = 41000;
    let path = profile(dir.path(), "127.0.0.1:62201", lo);
    let udp = capture(Protocol::UDP);
    let before = window_index(unix_secs(SystemTime::now()), 30);

    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "--method",
        "rotating",
        "--verbose",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let w = window(&stdout);
    assert!(w == before || w == before + 1, "{w} vs {before}: {stdout}");
    let want = derive_sequence(&SECRET, "gw1", w, &params(Protos::Udp, lo, 30)).expect("derives");
    assert_eq!(
        knocks(&udp, Proto::Udp, lo),
        want,
        "the first entry (udp) by default"
    );
    let mut lines: Vec<String> = want
        .iter()
        .map(|a| format!("knocked {a} on 127.0.0.1"))
        .collect();
    lines.insert(
        0,
        format!(
            "knocking for alice at gw1 (127.0.0.1), policy udp, window {w}: {}",
            want.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let printed: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.contains("waiting for window"))
        .collect();
    assert_eq!(printed, lines, "{stdout}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
#[ignore = "needs root: a raw socket sees the knocks (scripts/test.sh runs it)"]
fn rotating_with_tcp_and_udp_by_policy_name() {
    let dir = tempfile::tempdir().expect("dir");
    let lo = 41020;
    let path = profile(dir.path(), "127.0.0.1", lo);
    let (udp, tcp) = (capture(Protocol::UDP), capture(Protocol::TCP));
    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "-m",
        "rotating",
        "--policy",
        "mixed",
        "--delay",
        "5ms",
        "-v",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let w = window(&String::from_utf8_lossy(&out.stdout));
    let want = derive_sequence(&SECRET, "gw1", w, &params(Protos::Both, lo, 30)).expect("derives");
    // Two captures cannot order knocks across protocols: each one's in order.
    for (socket, proto) in [(&udp, Proto::Udp), (&tcp, Proto::Tcp)] {
        let of_proto: Vec<Access> = want.iter().copied().filter(|a| a.proto == proto).collect();
        assert_eq!(knocks(socket, proto, lo), of_proto, "{proto:?} of {want:?}");
    }
}

#[test]
#[ignore = "needs root: a raw socket sees the knocks (scripts/test.sh runs it)"]
fn rotating_waits_for_the_next_window_near_a_boundary() {
    let dir = tempfile::tempdir().expect("dir");
    let lo = 41080;
    let path = profile(dir.path(), "127.0.0.1", lo);
    let udp = capture(Protocol::UDP);
    // 2 s windows always end within 2 s plus the knocks: knocker waits, every time.
    let before = unix_secs(SystemTime::now());
    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "-m",
        "rotating",
        "--policy",
        "short",
        "-v",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let w = window(&stdout);
    let first = stdout.lines().next().expect("a line");
    assert!(
        first.starts_with(&format!("window {} ends in ", w - 1))
            && first.ends_with(&format!(" ms: waiting for window {w}")),
        "{stdout}"
    );
    assert!(w * 2 > before, "a later window than the one it started in");
    assert!(
        unix_secs(SystemTime::now()) >= w * 2,
        "sent once window {w} began"
    );
    let want = derive_sequence(&SECRET, "gw1", w, &params(Protos::Udp, lo, 2)).expect("derives");
    assert_eq!(knocks(&udp, Proto::Udp, lo), want);
}

#[test]
fn rotating_errors_are_one_line_and_exit_64() {
    let dir = tempfile::tempdir().expect("dir");
    let path = profile(dir.path(), "127.0.0.1", 41040);
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        format!(
            "[user]\nname = \"bob\"\nrotating_secret = \"{}\"\n\n\
             [[gateway]]\nname = \"gw1\"\naddress = \"127.0.0.1\"\n",
            STANDARD.encode(SECRET)
        ),
    )
    .expect("write");
    for (args, needle) in [
        (
            vec!["open", "gw1", "--profile", p(&bare), "-m", "rotating"],
            "gateway 'gw1' has no rotating policy in profile",
        ),
        (
            vec![
                "open",
                "gw1",
                "--profile",
                p(&path),
                "-m",
                "rotating",
                "--policy",
                "ssh",
            ],
            "no rotating policy 'ssh' at gateway 'gw1' in profile",
        ),
        (
            vec![
                "open",
                "gw1",
                "--profile",
                p(&path),
                "-m",
                "rotating",
                "-t",
                "1m",
            ],
            "--timeout does not apply to --method rotating",
        ),
    ] {
        let out = knocker(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr} lacks {needle}");
        assert!(!stderr.contains(&STANDARD.encode(SECRET)[..20]), "{stderr}");
    }
}

fn receiver() -> (UdpSocket, u16) {
    let socket =
        UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).expect("bind");
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

#[test]
fn otk_uses_key_0_then_1_and_moves_the_counter_first() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, port) = receiver();
    let path = profile(dir.path(), &format!("127.0.0.1:{port}"), 41060);
    let counter = dir.path().join("alice.toml.otk");
    let otk = |c| knockgate_proto::scope::gateway_otk(&SECRET, "gw1", c).expect("derive");
    let (key0, key1) = (otk(0), otk(1));

    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "--method",
        "otk",
        "-v",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let first = receive(&socket);
    let req = spa::open(&key0, &first).expect("opens with one-time key 0");
    assert_eq!(req.gateway, "gw1");
    assert_eq!((req.access, req.duration_secs), (vec![Access::tcp(22)], 0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "sent one-time SPA (key 0, key id {}) for alice to gw1 (127.0.0.1:{port}): \
             access tcp/22, allow 127.0.0.1, {} bytes\n",
            key0.id(),
            first.len()
        )
    );
    assert_eq!(std::fs::read_to_string(&counter).expect("counter"), "1\n");
    let mode = std::fs::metadata(&counter)
        .expect("counter")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = knocker(&[
        "open",
        "gw1",
        "--profile",
        p(&path),
        "-m",
        "otk",
        "--access",
        "udp/53",
        "--timeout",
        "60s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let second = receive(&socket);
    assert!(
        spa::open(&key0, &second).is_err(),
        "key 0 is never used twice"
    );
    let req = spa::open(&key1, &second).expect("opens with one-time key 1");
    assert_eq!((req.access, req.duration_secs), (vec![Access::udp(53)], 60));
    assert_eq!(std::fs::read_to_string(&counter).expect("counter"), "2\n");

    // A counter that is not a number is refused, not guessed, and nothing is sent.
    std::fs::write(&counter, "two\n").expect("write");
    let out = knocker(&["open", "gw1", "--profile", p(&path), "-m", "otk"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("alice.toml.otk' is not a number"),
        "{stderr}"
    );
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(socket.recv_from(&mut buf).is_err(), "nothing sent");
    assert_eq!(std::fs::read_to_string(&counter).expect("counter"), "two\n");
}
