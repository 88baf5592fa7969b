//! `knocker proxy` in process over loopback: its arguments, the wait schedule,
//! the relay with its half-close, and whole runs against a UDP socket standing in
//! for the gateway and a TCP listener for the service.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use knockgate_proto::Access;

use super::*;
use crate::cmd::open::Method;
use crate::resolve::Family;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
const SPA_KEY: [u8; 32] = [42; 32];
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    proxy: ProxyArgs,
}

fn parse(args: &[&str]) -> Result<ProxyArgs, clap::Error> {
    Cli::try_parse_from(["knocker"].iter().chain(args)).map(|c| c.proxy)
}

#[test]
fn arguments_as_ssh_passes_them() {
    let args = parse(&["gw1", "gw1.example.net", "22", "--profile", "alice.toml"]).unwrap();
    assert_eq!(args.open.gateway, "gw1");
    assert_eq!(args.host, "gw1.example.net");
    assert_eq!(args.target_port, 22);
    assert_eq!(args.wait, DEFAULT_WAIT);
    assert_eq!(args.open.profile, PathBuf::from("alice.toml"));
    assert_eq!(args.open.method, Method::Spa);
    assert!(args.open.access.is_empty(), "the profile's policy decides");
    assert_eq!(args.open.family(), Family::Any);
    assert!(!args.open.verbose);

    // Options anywhere, open's options as open takes them.
    let args = parse(&[
        "--profile",
        "p.toml",
        "-m",
        "otk",
        "gw2",
        "-A",
        "tcp/2222",
        "::1",
        "2222",
        "-w",
        "3",
        "-6",
        "-t",
        "1m",
        "-v",
    ])
    .unwrap();
    assert_eq!(
        (args.open.gateway.as_str(), args.host.as_str()),
        ("gw2", "::1")
    );
    assert_eq!(args.target_port, 2222);
    assert_eq!(args.wait, 3 * S);
    assert_eq!(args.open.method, Method::Otk);
    assert_eq!(args.open.access, vec![Access::tcp(2222)]);
    assert_eq!(args.open.timeout, Some(60));
    assert_eq!(args.open.family(), Family::V6);
    assert!(args.open.verbose);
    assert_eq!(
        parse(&["gw1", "h", "22", "-P", "p", "--wait", "2m"])
            .unwrap()
            .wait,
        120 * S
    );
}

#[test]
fn bad_arguments_are_named() {
    for (args, needle) in [
        (&["gw1", "h", "0", "-P", "p"][..], "'0'"),
        (&["gw1", "h", "ssh", "-P", "p"], "'ssh'"),
        (&["gw1", "h", "-P", "p"], "<PORT>"),
        (&["gw1", "h", "22"], "--profile"),
        (
            &["gw1", "h", "22", "-P", "p", "--wait", "0"],
            "at least one second",
        ),
        (
            &["gw1", "h", "22", "-P", "p", "--wait", "1500ms"],
            "whole seconds",
        ),
        (&["gw1", "h", "22", "-P", "p", "-w", "soon"], "'soon'"),
        (&["gw1", "h", "22", "-P", "p", "-m", "knock"], "'knock'"),
        (&["gw1", "h", "22", "23", "-P", "p"], "'23'"),
    ] {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn attempts_back_off_and_stop_at_the_deadline() {
    let t0 = Instant::now();
    let mut wait = Wait::new(t0, 10 * S);
    let mut at = t0;
    let mut slots = Vec::new();
    while let Some(slot) = wait.poll_attempt(at) {
        assert!(!slot.is_zero());
        slots.push(slot);
        at += slot;
    }
    assert_eq!(
        slots,
        [
            100 * MS,
            200 * MS,
            400 * MS,
            800 * MS,
            1600 * MS,
            2 * S,
            2 * S,
            2 * S,
            900 * MS
        ]
    );
    assert_eq!(at, t0 + 10 * S, "the attempts fill the wait exactly");
    assert_eq!(wait.poll_attempt(t0 + 11 * S), None);
}

#[test]
fn the_gateway_is_asked_again_once() {
    let t0 = Instant::now();
    let mut wait = Wait::new(t0, 10 * S);
    assert!(!wait.poll_resend(t0));
    assert!(!wait.poll_resend(t0 + 2999 * MS));
    assert!(wait.poll_resend(t0 + 3 * S));
    assert!(!wait.poll_resend(t0 + 4 * S), "only once");
    // A short wait asks again half way; none after the deadline.
    let mut wait = Wait::new(t0, 2 * S);
    assert!(!wait.poll_resend(t0 + 999 * MS));
    assert!(wait.poll_resend(t0 + S));
    let mut wait = Wait::new(t0, 2 * S);
    assert!(!wait.poll_resend(t0 + 2 * S));
    // Absurd waits do not overflow.
    let mut wait = Wait::new(t0, Duration::MAX);
    assert_eq!(wait.poll_attempt(t0), Some(FIRST_STEP));
}

/// A loopback service: runs `serve` on the first connection, on a thread.
fn service(serve: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind((LOCAL, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
        let _ = done_tx.send(());
    });
    (addr, done)
}

/// Greets like sshd, reads everything to end of file, answers with what it read
/// in capitals, and closes. It answers only after end of file: the relay must
/// half-close for it to answer at all.
fn shouting(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(5 * S));
    let _ = stream.write_all(b"SSH-2.0-test\r\n");
    let mut got = Vec::new();
    if stream.read_to_end(&mut got).is_ok() {
        let _ = stream.write_all(&got.to_ascii_uppercase());
    }
}

/// `relay` on a thread, so a hang fails the test instead of stalling it.
fn relay_bounded(
    stream: TcpStream,
    input: impl Read + Send + 'static,
) -> (io::Result<()>, Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let result = relay::relay(stream, input, &mut out);
        let _ = tx.send((result, out));
    });
    rx.recv_timeout(10 * S).expect("relay returned")
}

#[test]
fn relay_half_closes_at_end_of_input_and_reads_on() {
    let (addr, done) = service(shouting);
    let stream = TcpStream::connect(addr).expect("connect");
    let (result, out) = relay_bounded(stream, Cursor::new(b"ping\npong".to_vec()));
    result.expect("relay ends cleanly when the peer closes");
    assert_eq!(out, b"SSH-2.0-test\r\nPING\nPONG");
    done.recv_timeout(5 * S).expect("service done");
}

#[test]
fn relay_ends_when_the_peer_closes_though_input_goes_on() {
    let (addr, _done) = service(|mut s| {
        let _ = s.write_all(b"bye\n");
    });
    let stream = TcpStream::connect(addr).expect("connect");
    // A terminal that never ends: the writer stays open for the whole test.
    let (reader, _writer) = io::pipe().expect("pipe");
    let (result, out) = relay_bounded(stream, reader);
    result.expect("peer closed: done");
    assert_eq!(out, b"bye\n");
}

#[test]
fn relay_carries_a_megabyte_each_way_at_once() {
    let (addr, _done) = service(|mut s| {
        let mut back = s.try_clone().expect("clone");
        let _ = io::copy(&mut s, &mut back);
    });
    let stream = TcpStream::connect(addr).expect("connect");
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (result, out) = relay_bounded(stream, Cursor::new(data.clone()));
    result.expect("relay");
    assert!(
        out == data,
        "echoed {} of {} bytes intact",
        out.len(),
        data.len()
    );
}

#[test]
fn relay_reports_a_broken_output() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (addr, _done) = service(|mut s| {
        let _ = s.write_all(b"hello");
    });
    let stream = TcpStream::connect(addr).expect("connect");
    let err = relay::relay(stream, io::empty(), &mut Broken).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

/// A profile as knockadm writes it, with one gateway `gw1` at `gateway`.
fn profile(dir: &Path, gateway: SocketAddr) -> PathBuf {
    let text = format!(
        "[user]\nname = \"alice\"\nspa_key = \"{}\"\n\n[[gateway]]\nname = \"gw1\"\naddress = \"{gateway}\"\n",
        STANDARD.encode(SPA_KEY)
    );
    let path = dir.join("alice.toml");
    std::fs::write(&path, text).expect("write profile");
    path
}

/// A UDP socket standing in for gw1, and a profile pointing at it.
fn gateway(dir: &Path) -> (UdpSocket, PathBuf) {
    let socket = UdpSocket::bind((LOCAL, 0)).expect("bind");
    socket.set_read_timeout(Some(2 * S)).expect("timeout");
    let path = profile(dir, socket.local_addr().expect("addr"));
    (socket, path)
}

/// The native SPA requests that reached the gateway so far.
fn requests(socket: &UdpSocket) -> Vec<knockgate_proto::spa::SpaRequest> {
    let key = knockgate_proto::scope::gateway_spa_key(&SPA_KEY, "gw1").expect("derive");
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    socket.set_read_timeout(Some(200 * MS)).expect("timeout");
    while let Ok(len) = socket.recv(&mut buf) {
        got.push(knockgate_proto::spa::open(&key, &buf[..len]).expect("opens with gw1's key"));
    }
    got
}

fn proxy_args(profile: &Path, host: &str, port: u16, extra: &[&str]) -> ProxyArgs {
    let port = port.to_string();
    let mut args = vec![
        "gw1",
        host,
        &port,
        "--profile",
        profile.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    parse(&args).expect("args")
}

#[test]
fn knocks_then_relays() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, path) = gateway(dir.path());
    let (addr, done) = service(shouting);
    let args = proxy_args(&path, "localhost", addr.port(), &["-4", "-v"]);
    let (mut out, mut messages) = (Vec::new(), Vec::new());
    args.run(Cursor::new(b"hi".to_vec()), &mut out, &mut messages)
        .expect("proxy");
    assert_eq!(out, b"SSH-2.0-test\r\nHI", "only the relayed bytes");
    let said = String::from_utf8(messages).expect("utf-8");
    assert!(said.starts_with("sent SPA (key id "), "{said}");
    assert!(said.ends_with(&format!("connected to {addr}\n")), "{said}");
    done.recv_timeout(5 * S).expect("service done");
    let sent = requests(&gw);
    assert_eq!(sent.len(), 1, "connected at once: asked once");
    assert_eq!(sent[0].gateway, "gw1");
    assert_eq!(sent[0].access, vec![Access::tcp(22)], "as open asks");
    assert_eq!(sent[0].allow_ip, Some(LOCAL));
}

#[test]
fn no_connection_within_the_wait_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, path) = gateway(dir.path());
    let closed = TcpListener::bind((LOCAL, 0)).expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let args = proxy_args(&path, "127.0.0.1", port, &["--wait", "1"]);
    let (mut out, mut messages) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let err = args.run(io::empty(), &mut out, &mut messages).unwrap_err();
    let took = started.elapsed();
    assert!((S..3 * S).contains(&took), "gave up after {took:?}");
    assert_eq!(err.exit_code(), EXIT_FAILURE);
    let line = format!("{:#}", anyhow::Error::new(err));
    assert!(
        line.starts_with(&format!(
            "127.0.0.1:{port} accepted no connection within 1s of asking gateway gw1: "
        )),
        "{line}"
    );
    assert!(
        line.contains("refused"),
        "the last attempt's reason: {line}"
    );
    assert_eq!(line.lines().count(), 1);
    assert!(out.is_empty() && messages.is_empty());
    assert_eq!(requests(&gw).len(), 2, "asked again half way");
}

#[test]
fn a_bad_host_fails_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("dir");
    let (gw, path) = gateway(dir.path());
    for host in ["", "::1"] {
        let args = proxy_args(&path, host, 22, &["-4"]);
        let err = args
            .run(io::empty(), &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, ProxyCmdError::Resolve(_)), "{err:?}");
        assert_eq!(err.exit_code(), EXIT_USAGE);
    }
    assert!(requests(&gw).is_empty());
    // And open's own refusals keep their exit codes.
    let args = proxy_args(&path, "127.0.0.1", 22, &["-m", "rotating", "-A", "tcp/22"]);
    let err = args
        .run(io::empty(), &mut Vec::new(), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--access does not apply to --method rotating"
    );
    assert_eq!(err.exit_code(), EXIT_USAGE);
}
