//! The knocks really leave: each knock kind is sent over loopback (IPv4 and
//! IPv6) to a real socket that must see it, and the built `knocker` binary is
//! checked for its exit codes and one-line errors.
//!
//! ICMP needs root (raw sockets) or a gid in `net.ipv4.ping_group_range`; CI
//! runs these as root, and a run that cannot send ICMP fails rather than skips.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use knockgate_cli::icmp::{ECHO_PAYLOAD, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST};
use knockgate_cli::{send_knock, send_sequence};
use knockgate_proto::KnockStep;
use socket2::{Domain, Protocol, Socket, Type};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(5);

fn udp_delivers(ip: IpAddr) {
    let receiver = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp receiver");
    receiver.set_read_timeout(Some(WAIT)).expect("set timeout");
    let port = receiver.local_addr().expect("local addr").port();

    send_knock(ip, &KnockStep::udp(port)).expect("udp knock sent");

    let mut buf = [0u8; 64];
    let (len, from) = receiver.recv_from(&mut buf).expect("udp knock received");
    assert_eq!(from.ip(), ip);
    assert_eq!(&buf[..len], &[0], "knock's one-NUL payload");
}

/// With a listener on the port, the kernel answers the SYN before the client
/// socket is closed on loopback, so the connection shows up in accept().
fn tcp_delivers(ip: IpAddr) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind tcp listener");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let port = listener.local_addr().expect("local addr").port();

    send_knock(ip, &KnockStep::tcp(port)).expect("tcp knock sent");

    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((_, peer)) => {
                assert_eq!(peer.ip(), ip);
                return;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("no connection from the tcp knock on {ip}: {err}"),
        }
    }
}

/// A raw ICMP socket sees every echo request on the host, including ours on
/// loopback; ours is the one carrying knocker's payload.
fn icmp_delivers(ip: IpAddr) {
    let (domain, protocol, echo_type, header_len): (_, _, _, fn(&[u8]) -> usize) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, ICMP_ECHO_REQUEST, |b| {
            usize::from(b[0] & 0x0f) * 4
        }),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, ICMPV6_ECHO_REQUEST, |_| 0),
    };
    let mut sniffer = Socket::new(domain, Type::RAW, Some(protocol))
        .expect("raw ICMP sniffer (run the tests as root)");
    sniffer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set timeout");

    send_knock(ip, &KnockStep::Icmp).expect("icmp knock sent");

    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let len = match sniffer.read(&mut buf) {
            Ok(len) => len,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            Err(err) => panic!("reading the ICMP sniffer: {err}"),
        };
        let icmp = &buf[header_len(&buf[..len]).min(len)..len];
        if icmp.len() >= 16 && icmp[0] == echo_type && icmp[1] == 0 && &icmp[8..16] == ECHO_PAYLOAD
        {
            return;
        }
    }
    panic!("no echo request from the icmp knock on {ip}");
}

#[test]
fn udp_knock_arrives_v4() {
    udp_delivers(V4);
}

#[test]
fn udp_knock_arrives_v6() {
    udp_delivers(V6);
}

#[test]
fn tcp_knock_arrives_v4() {
    tcp_delivers(V4);
}

#[test]
fn tcp_knock_arrives_v6() {
    tcp_delivers(V6);
}

#[test]
#[ignore = "needs root: a raw socket to see the echo request (scripts/test.sh runs it)"]
fn icmp_knock_arrives_v4() {
    icmp_delivers(V4);
}

#[test]
#[ignore = "needs root: a raw socket to see the echo request (scripts/test.sh runs it)"]
fn icmp_knock_arrives_v6() {
    icmp_delivers(V6);
}

#[test]
fn tcp_knock_on_closed_port_is_ok() {
    // Bind then drop to get a port nobody listens on: the RST is not an error.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    send_knock(V4, &KnockStep::tcp(port)).expect("tcp knock to a closed port");
}

#[test]
fn sequence_arrives_in_order_with_delay() {
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp receiver");
    receiver.set_read_timeout(Some(WAIT)).expect("set timeout");
    let port = receiver.local_addr().expect("local addr").port();
    let knocks = [
        KnockStep::udp(port),
        KnockStep::udp(port),
        KnockStep::udp(port),
    ];
    let delay = Duration::from_millis(20);

    let start = Instant::now();
    let mut sent = Vec::new();
    send_sequence(V4, &knocks, delay, |k| sent.push(*k)).expect("sequence sent");
    assert!(
        start.elapsed() >= delay * 2,
        "two delays between three knocks"
    );
    assert_eq!(sent, knocks);

    // Each knock comes from its own socket, so from a distinct source port.
    let mut sources = Vec::new();
    for _ in 0..knocks.len() {
        let (_, from) = receiver.recv_from(&mut [0u8; 8]).expect("knock received");
        sources.push(from.port());
    }
    sources.dedup();
    assert_eq!(sources.len(), knocks.len());
}

fn knocker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knocker"))
        .args(args)
        .output()
        .expect("run knocker")
}

/// Asserts `knocker` failed with `code` and exactly one `knocker: error:` line
/// on stderr that contains `needle`.
fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = knocker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(stderr.starts_with("knocker: error: "), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr} lacks {needle}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

#[test]
fn binary_rejects_bad_specs_with_exit_64() {
    assert_fails(
        &["knock", "127.0.0.1", "tcp/7000", "sctp/1"],
        64,
        "'sctp/1'",
    );
    assert_fails(&["knock", "127.0.0.1", "65536"], 64, "'65536'");
    assert_fails(&["knock", "127.0.0.1", "tcp/"], 64, "'tcp/'");
    assert_fails(&["knock", "127.0.0.1", "icmp/5"], 64, "'icmp/5'");
}

#[test]
fn binary_rejects_bad_flags_and_hosts_with_exit_64() {
    assert_fails(&["knock", "--delay", "5x", "127.0.0.1", "1"], 64, "'5x'");
    assert_fails(&["knock", "127.0.0.1"], 64, "<SPEC>");
    assert_fails(&["knock", "-6", "127.0.0.1", "1"], 64, "'127.0.0.1'");
    assert_fails(
        &["knock", "no-such-host.invalid", "1"],
        64,
        "'no-such-host.invalid'",
    );
    assert_fails(&["frob"], 64, "'frob'");
}

#[test]
fn binary_send_failure_exits_1() {
    // Linux refuses a UDP connect to broadcast without SO_BROADCAST (EACCES).
    assert_fails(&["knock", "255.255.255.255", "udp/9"], 1, "udp/9");
}

#[test]
fn binary_knocks_verbosely() {
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp receiver");
    receiver.set_read_timeout(Some(WAIT)).expect("set timeout");
    let port = receiver.local_addr().expect("local addr").port();
    let spec = format!("{port}:udp");

    let out = knocker(&[
        "knock",
        "-4",
        "--verbose",
        "--delay",
        "1ms",
        "localhost",
        &spec,
        &spec,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = format!("knocked udp/{port} on 127.0.0.1\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), line.repeat(2));
    for _ in 0..2 {
        receiver.recv_from(&mut [0u8; 8]).expect("knock received");
    }
}

#[test]
fn binary_help_is_useful() {
    let out = knocker(&["knock", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "tcp/PORT",
        "udp/PORT",
        "icmp",
        "--delay",
        "-4",
        "-6",
        "--verbose",
    ] {
        assert!(help.contains(needle), "knock --help lacks {needle}: {help}");
    }
    let out = knocker(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("knock"));
}
