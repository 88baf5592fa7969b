//! Frames to knocks: a total parser from captured bytes to the few fields detection needs.
//!
//! Never panics on any byte string; anything that is not an IPv4/IPv6 TCP, UDP or ICMP
//! echo request (unfragmented) is simply not a knock.

use std::net::IpAddr;

use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

use crate::ruleset::Proto;

/// How captured frames begin (the pcap link type of the interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// DLT_EN10MB: Ethernet II (also Linux loopback and veth).
    Ethernet,
    /// DLT_LINUX_SLL: the "any" pseudo-device.
    LinuxSll,
    /// DLT_RAW: the frame starts with the IP header (tun devices, WireGuard).
    RawIp,
}

/// A packet a kernel door's rule logged: the rule's log prefix (the door's id) and the
/// packet's source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged<'a> {
    pub prefix: &'a str,
    pub src: IpAddr,
}

/// Read one frame of libpcap's NFLOG link type (an `nflog:GROUP` device): a 4-byte
/// header (address family, version, resource id), then attributes as the kernel sent
/// them, each a length (its 4-byte header included) and a type in host byte order,
/// padded to 4 bytes. `None` for anything malformed or without a prefix and an IP
/// packet of the header's family.
pub fn nflog(frame: &[u8]) -> Option<Logged<'_>> {
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const NFULA_PAYLOAD: u16 = 9;
    const NFULA_PREFIX: u16 = 10;
    let family = *frame.first()?;
    let mut rest = frame.get(4..)?;
    let (mut prefix, mut payload) = (None, None);
    while let Some(&[l0, l1, t0, t1]) = rest.first_chunk::<4>() {
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let value = rest.get(4..len)?;
        match u16::from_ne_bytes([t0, t1]) & 0x3fff {
            NFULA_PREFIX => prefix = Some(value),
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    let prefix = prefix?.split(|b| *b == 0).next()?;
    let prefix = std::str::from_utf8(prefix).ok()?;
    let payload = payload?;
    let version = payload.first()? >> 4;
    let src = match (family, version) {
        (AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(payload.get(12..16)?).ok()?),
        (AF_INET6, 6) => IpAddr::from(<[u8; 16]>::try_from(payload.get(8..24)?).ok()?),
        _ => return None,
    };
    Some(Logged { prefix, src })
}

/// What a knock packet was (the one knock type, shared with policies and clients).
pub use knockgate_proto::KnockStep;

pub use knockgate_proto::knock::tcp_flags;

/// One packet that may be a knock, borrowed from the capture buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knock<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: KnockStep,
    /// TCP flag byte; 0 for UDP and ICMP.
    pub tcp_flags: u8,
    pub ttl: u8,
    /// Transport payload (UDP datagram body for SPA; empty when absent).
    pub payload: &'a [u8],
}

/// Parse one captured frame. `None` means "not a knock", never an error: junk is normal.
pub fn parse(link: LinkType, frame: &[u8]) -> Option<Knock<'_>> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        LinkType::LinuxSll => SlicedPacket::from_linux_sll(frame),
        LinkType::RawIp => SlicedPacket::from_ip(frame),
    }
    .ok()?;
    let (src, dst, ttl) = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => {
            if v4.is_payload_fragmented() {
                return None;
            }
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
            )
        }
        NetSlice::Ipv6(v6) => {
            if v6.is_payload_fragmented() {
                return None;
            }
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
            )
        }
        NetSlice::Arp(_) => return None,
    };
    let (kind, tcp_flags, payload) = match sliced.transport.as_ref()? {
        TransportSlice::Tcp(tcp) => {
            // Byte 13 of the TCP header holds the eight classic flags.
            let flags = tcp.slice().get(13).copied().unwrap_or(0);
            let kind = KnockStep::Port {
                proto: Proto::Tcp,
                port: tcp.destination_port(),
            };
            (kind, flags, tcp.payload())
        }
        TransportSlice::Udp(udp) => {
            let kind = KnockStep::Port {
                proto: Proto::Udp,
                port: udp.destination_port(),
            };
            (kind, 0, udp.payload())
        }
        TransportSlice::Icmpv4(icmp) => match icmp.icmp_type() {
            Icmpv4Type::EchoRequest(_) => (KnockStep::Icmp, 0, &[][..]),
            _ => return None,
        },
        TransportSlice::Icmpv6(icmp) => match icmp.icmp_type() {
            Icmpv6Type::EchoRequest(_) => (KnockStep::Icmp, 0, &[][..]),
            _ => return None,
        },
        _ => return None,
    };
    Some(Knock {
        src,
        dst,
        kind,
        tcp_flags,
        ttl,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    /// An NFLOG frame as libpcap hands it over: header, then attributes.
    fn nflog_frame(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![family, 0, 0, 0];
        for (kind, value) in attrs {
            let len = u16::try_from(4 + value.len()).expect("short");
            out.extend(len.to_ne_bytes());
            out.extend(kind.to_ne_bytes());
            out.extend(*value);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn nflog_frames_give_the_prefix_and_the_source() {
        let mut ip4 = Vec::new();
        PacketBuilder::ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
            .udp(40000, 8000)
            .write(&mut ip4, &[])
            .expect("build");
        let hw = [0u8; 8];
        let frame = nflog_frame(2, &[(1, &hw), (10, b"kd_0011aabb\0"), (9, &ip4)]);
        assert_eq!(
            nflog(&frame),
            Some(Logged {
                prefix: "kd_0011aabb",
                src: "10.240.0.2".parse().expect("addr"),
            })
        );
        let mut ip6 = Vec::new();
        let src6 = [0xfd, 0, 0x4b, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        PacketBuilder::ipv6(src6, [0; 16], 64)
            .udp(40000, 8000)
            .write(&mut ip6, &[])
            .expect("build");
        let frame = nflog_frame(10, &[(10, b"kd_1\0"), (9, &ip6)]);
        assert_eq!(nflog(&frame).map(|l| l.src), Some(IpAddr::from(src6)));
        // The header's family must match the packet's version; a prefix is required.
        assert_eq!(nflog(&nflog_frame(10, &[(10, b"kd_1\0"), (9, &ip4)])), None);
        assert_eq!(nflog(&nflog_frame(2, &[(9, &ip4)])), None);
        // An attribute longer than the frame.
        assert_eq!(nflog(&[2, 0, 0, 0, 200, 0, 10, 0, b'k']), None);
    }

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn tcp4(dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
            .tcp(40000, dport, 1, 64240);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(7);
        }
        let mut out = Vec::new();
        b.write(&mut out, &[]).expect("build");
        out
    }

    #[test]
    fn tcp_syn_v4_is_a_port_knock_with_flags() {
        let frame = tcp4(7000, true, false);
        let k = parse(LinkType::Ethernet, &frame).expect("knock");
        assert_eq!(k.src, "10.240.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(k.dst, "10.240.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            k.kind,
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 7000
            }
        );
        assert_eq!(k.tcp_flags, tcp_flags::SYN);
        assert_eq!(k.ttl, 64);
        let frame = tcp4(7000, true, true);
        let k = parse(LinkType::Ethernet, &frame).expect("knock");
        assert_eq!(k.tcp_flags, tcp_flags::SYN | tcp_flags::ACK);
    }

    #[test]
    fn udp_v6_carries_its_payload() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(
                [0xfd, 0, 0x4b, 0x47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0xfd; 16],
                50,
            )
            .udp(5000, 62201)
            .write(&mut out, b"hello")
            .expect("build");
        let k = parse(LinkType::Ethernet, &out).expect("knock");
        assert_eq!(
            k.kind,
            KnockStep::Port {
                proto: Proto::Udp,
                port: 62201
            }
        );
        assert_eq!(k.payload, b"hello");
        assert_eq!(k.ttl, 50);
        assert!(k.src.is_ipv6());
    }

    #[test]
    fn icmp_echo_requests_count_and_replies_do_not() {
        let mut req = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut req, &[0; 8])
            .expect("build");
        assert_eq!(
            parse(LinkType::Ethernet, &req).map(|k| k.kind),
            Some(KnockStep::Icmp)
        );
        let mut rep = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
            .icmpv4_echo_reply(1, 1)
            .write(&mut rep, &[0; 8])
            .expect("build");
        assert_eq!(parse(LinkType::Ethernet, &rep), None);
        let mut req6 = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6([1; 16], [2; 16], 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut req6, &[])
            .expect("build");
        assert_eq!(
            parse(LinkType::Ethernet, &req6).map(|k| k.kind),
            Some(KnockStep::Icmp)
        );
    }

    #[test]
    fn raw_ip_frames_parse() {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 240, 0, 2], [10, 240, 0, 1], 64)
            .udp(1, 8000)
            .write(&mut out, &[])
            .expect("build");
        let k = parse(LinkType::RawIp, &out).expect("knock");
        assert_eq!(
            k.kind,
            KnockStep::Port {
                proto: Proto::Udp,
                port: 8000
            }
        );
    }

    #[test]
    fn truncated_frames_are_not_knocks() {
        let frame = tcp4(7000, true, false);
        for len in 0..frame.len() {
            assert_eq!(parse(LinkType::Ethernet, &frame[..len]), None, "len {len}");
        }
    }

    proptest! {
        #[test]
        fn nflog_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = nflog(&frame);
        }

        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(LinkType::Ethernet, &bytes);
            let _ = parse(LinkType::LinuxSll, &bytes);
            let _ = parse(LinkType::RawIp, &bytes);
        }

        #[test]
        fn never_panics_on_mutated_knocks(pos in 0usize..54, val in any::<u8>()) {
            let mut frame = tcp4(7000, true, false);
            if let Some(b) = frame.get_mut(pos) { *b = val; }
            let _ = parse(LinkType::Ethernet, &frame);
        }
    }
}
