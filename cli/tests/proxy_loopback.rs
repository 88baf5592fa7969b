//! The built `knocker proxy` as ssh runs it: a child whose standard output must
//! carry the service's bytes and nothing else, whose errors are one line on
//! standard error, with exit codes 0, 1 and 64. Over loopback, with a UDP socket
//! standing in for the gateway.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const SPA_KEY: [u8; 32] = [7; 32];
const LIMIT: Duration = Duration::from_secs(20);

/// A profile with gateway gw1 at `gateway`, and the socket standing in for it.
fn gateway(dir: &Path) -> (UdpSocket, PathBuf) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let text = format!(
        "[user]\nname = \"alice\"\nspa_key = \"{}\"\n\n[[gateway]]\nname = \"gw1\"\naddress = \"{}\"\n",
        STANDARD.encode(SPA_KEY),
        socket.local_addr().expect("addr")
    );
    let path = dir.join("alice.toml");
    std::fs::write(&path, text).expect("write profile");
    (socket, path)
}

/// How many packets for gw1 the gateway socket has received.
fn packets(socket: &UdpSocket) -> usize {
    let key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw1").expect("derive");
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(len) = socket.recv(&mut buf) {
        knockgate_proto::spa::open(&key, &buf[..len]).expect("sealed for gw1");
        n += 1;
    }
    n
}

/// A service that greets like sshd, reads to end of file, then sends back what
/// it read in capitals and closes (so it answers only if the proxy half-closes).
fn service() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.write_all(b"SSH-2.0-test\r\n");
            let mut got = Vec::new();
            if s.read_to_end(&mut got).is_ok() {
                let _ = s.write_all(&got.to_ascii_uppercase());
            }
        }
    });
    addr
}

/// Runs knocker with `input` on its standard input (then closed), killed after [`LIMIT`].
fn knocker(args: &[&str], input: &[u8]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn knocker");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
        let _ = Command::new("kill")
            .args(["-KILL", &id.to_string()])
            .status();
        panic!("knocker {args:?} still running after {LIMIT:?}")
    });
    (out.expect("wait for knocker"), started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn stdout_carries_the_connection_and_nothing_else() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, profile) = gateway(dir.path());
    let profile = profile.to_str().expect("utf-8");
    for verbose in [false, true] {
        let port = service().port().to_string();
        let mut args = vec!["proxy", "gw1", "127.0.0.1", &port, "--profile", profile];
        if verbose {
            args.push("--verbose");
        }
        let (out, _) = knocker(&args, b"ping\n");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(text(&out.stdout), "SSH-2.0-test\r\nPING\n");
        let said = text(&out.stderr);
        if verbose {
            let lines: Vec<&str> = said.lines().collect();
            assert_eq!(lines.len(), 2, "{said}");
            assert!(lines[0].starts_with("sent SPA (key id "), "{said}");
            assert_eq!(lines[1], format!("connected to 127.0.0.1:{port}"));
        } else {
            assert_eq!(said, "", "silent on success");
        }
        assert_eq!(packets(&gw), 1, "one knock");
    }
}

#[test]
fn no_connection_is_one_line_on_stderr_and_exit_1() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, profile) = gateway(dir.path());
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = closed.local_addr().expect("addr").port().to_string();
    drop(closed);
    let args = [
        "proxy",
        "gw1",
        "127.0.0.1",
        &port,
        "--profile",
        profile.to_str().expect("utf-8"),
        "--wait",
        "2s",
    ];
    let (out, took) = knocker(&args, b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "knocker: error: 127.0.0.1:{port} accepted no connection within 2s of asking gateway gw1: "
        )),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(packets(&gw), 2, "asked again once");
}

#[test]
fn usage_errors_exit_64_before_any_knock() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, profile) = gateway(dir.path());
    let profile = profile.to_str().expect("utf-8");
    for (args, needle) in [
        (
            &["proxy", "gw1", "127.0.0.1", "0", "--profile", profile][..],
            "'0'",
        ),
        (
            &["proxy", "gw1", "::1", "22", "-4", "--profile", profile],
            "is not an IPv4 address",
        ),
        (
            &["proxy", "gw9", "127.0.0.1", "22", "--profile", profile],
            "gw9",
        ),
    ] {
        let (out, _) = knocker(args, b"");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("knocker: error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    assert_eq!(packets(&gw), 0);
}
