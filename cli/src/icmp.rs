//! ICMP and ICMPv6 echo-request messages as bytes: the header layout and the
//! Internet checksum. Pure; the sockets that send them live in [`crate::knock`].

/// Payload carried by every echo request knocker sends, so captures show who sent it.
pub const ECHO_PAYLOAD: &[u8; 8] = b"knockgte";

/// Length of an echo request built here: the 8-byte ICMP header plus [`ECHO_PAYLOAD`].
pub const ECHO_LEN: usize = 8 + ECHO_PAYLOAD.len();

/// ICMP (IPv4) echo request type.
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// ICMPv6 echo request type.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;

/// An ICMP (IPv4) echo request with a valid checksum, as a raw socket must send it.
pub fn echo_request_v4(id: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut msg = echo_request(ICMP_ECHO_REQUEST, id, seq);
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// An ICMPv6 echo request with a zero checksum: the kernel fills it in for both
/// ping and raw ICMPv6 sockets, because it covers the IPv6 pseudo-header.
pub fn echo_request_v6(id: u16, seq: u16) -> [u8; ECHO_LEN] {
    echo_request(ICMPV6_ECHO_REQUEST, id, seq)
}

fn echo_request(kind: u8, id: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut msg = [0u8; ECHO_LEN];
    msg[0] = kind;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(ECHO_PAYLOAD);
    msg
}

/// The Internet checksum (RFC 1071): one's complement of the one's-complement
/// sum of big-endian 16-bit words, an odd last byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves at most 16 significant bits.
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words sum to 0xddf2, so the checksum is !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn v4_echo_request_verifies() {
        let msg = echo_request_v4(0x1234, 7);
        assert_eq!(msg[0], ICMP_ECHO_REQUEST);
        assert_eq!(msg[1], 0);
        assert_eq!(&msg[4..8], &[0x12, 0x34, 0x00, 0x07]);
        assert_eq!(&msg[8..], ECHO_PAYLOAD);
        // A message including its own checksum sums to zero.
        assert_eq!(checksum(&msg), 0);
    }

    #[test]
    fn v4_echo_request_matches_ping() {
        // `ping` on Linux: type 8, id 0x0001, seq 1, no payload, checksum 0xf7fd.
        let mut msg = [8, 0, 0, 0, 0, 1, 0, 1];
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(sum, 0xf7fd);
        assert_eq!(checksum(&msg), 0);
    }

    #[test]
    fn v6_echo_request_leaves_checksum_to_kernel() {
        let msg = echo_request_v6(1, 2);
        assert_eq!(msg[0], ICMPV6_ECHO_REQUEST);
        assert_eq!(&msg[2..4], &[0, 0]);
        assert_eq!(&msg[4..8], &[0, 1, 0, 2]);
    }
}
