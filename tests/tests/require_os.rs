//! End to end: a policy that requires the knocking host's OS (`require_os = ["Linux"]`,
//! judged with p0f's own signature database, /etc/p0f/p0f.fp). The client namespace's own
//! Linux SYNs, sent by the Debian `knock` client, open it and the event names the OS; the
//! same sequence from the same address, in SYNs crafted to carry a Windows signature (raw
//! packets), stays closed, refused with reason `os_mismatch`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use etherparse::{PacketBuilder, TcpOptionElement};
use knockgate_tests::agent::{AgentProc, Workdir, ssh_policy};
use knockgate_tests::netns::Lab;
use knockgate_tests::probe::{Listener, can_connect, closes_within, opens_within};
use socket2::{Domain, Protocol, Socket, Type};

fn ssh() -> SocketAddr {
    SocketAddr::new(Lab::GW4.into(), 22)
}

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap, raw sockets (scripts/test.sh runs it)"]
fn linux_syns_open_a_linux_only_policy_and_windows_syns_do_not() {
    assert!(
        std::path::Path::new("/etc/p0f/p0f.fp").exists(),
        "p0f's signatures are missing: apt-get install p0f (deploy/install-deps.sh does)"
    );
    let lab = Lab::new();
    let _listener = Listener::start(&lab.gw, 22);
    let work = Workdir::new();
    let policy =
        ssh_policy("2s", &["tcp/7000", "tcp/8000", "tcp/9000"]) + "require_os = [\"Linux\"]\n";
    let config = work.config(&policy);
    let mut agent = AgentProc::start(&lab, &config, &[]);
    let me = IpAddr::V4(Lab::CLIENT4);
    assert!(
        !can_connect(&lab.client, me, ssh()),
        "closed before knocking"
    );

    // The Debian knock client: this kernel's own SYNs.
    let out = lab
        .client
        .cmd("knock")
        .args(["-d", "20", "10.240.0.1", "7000", "8000", "9000"])
        .output()
        .expect("run knock (package knockd)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        opens_within(&lab.client, me, ssh(), Duration::from_secs(1)),
        "Linux SYNs open it:\n{}",
        agent.log_text()
    );
    let completed = agent
        .wait_event(|e| e["event"] == "knock.completed", Duration::from_secs(1))
        .expect("knock.completed");
    let os = completed["os"].as_str().unwrap_or("");
    assert!(
        os.starts_with("Linux"),
        "the OS travels in the event: {completed}"
    );
    assert!(
        closes_within(&lab.client, me, ssh(), Duration::from_secs(4)),
        "the grant ends"
    );

    // The same sequence from the same address, in SYNs that look like Windows 7.
    lab.client.run(|| {
        for port in [7000, 8000, 9000] {
            send_windows_syn(Lab::CLIENT4, Lab::GW4, port);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let refused = agent.wait_event(
        |e| e["event"] == "knock.rejected" && e["reason"] == "os_mismatch",
        Duration::from_secs(2),
    );
    let refused = refused.unwrap_or_else(|| panic!("os_mismatch:\n{}", agent.log_text()));
    let error = refused["error"].as_str().unwrap_or("");
    assert!(error.contains("Windows"), "{refused}");
    assert!(
        !can_connect(&lab.client, me, ssh()),
        "Windows SYNs open nothing"
    );
    assert_eq!(
        agent.events_named("grant.opened").len(),
        1,
        "only the Linux knock"
    );
}

/// One TCP SYN from `src` to `dst:port` as Windows 7 sends it (p0f: `4:128+0:0:1460:8192,8:
/// mss,nop,ws,nop,nop,sok:df,id+:0`), through a raw socket (IP header included).
fn send_windows_syn(src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    let builder = PacketBuilder::ipv4(src.octets(), dst.octets(), 128)
        .tcp(49_152 + port % 1000, port, 0x1234_5678, 8192)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(8),
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::SelectiveAcknowledgementPermitted,
        ])
        .expect("options fit");
    let mut packet = Vec::with_capacity(builder.size(0));
    builder.write(&mut packet, &[]).expect("build");
    // Don't fragment, and a non-zero IP id (Windows' df,id+).
    packet[6] |= 0x40;
    packet[4] = 0x2b;
    packet[5] = 0x67;
    fix_ipv4_checksum(&mut packet);
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw socket");
    let to = SocketAddr::new(IpAddr::V4(dst), 0);
    sock.send_to(&packet, &to.into()).expect("send");
}

/// Recomputes the IPv4 header checksum after the header was changed.
fn fix_ipv4_checksum(packet: &mut [u8]) {
    let len = usize::from(packet[0] & 0x0f) * 4;
    packet[10] = 0;
    packet[11] = 0;
    let mut sum: u32 = packet[..len]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !(sum as u16);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
}
