//! The elements of the forward maps and target sets: `forwards4`/`forwards6` map an outer
//! `proto . port` to the inner `addr . port` (which the prerouting chain DNATs a granted
//! source's new connections to), and `targets4`/`targets6` hold the inner `addr . proto .
//! port` (which the forward chain protects from connections nobody was granted). A forward
//! grant itself is an ordinary element of `grants4`/`grants6` on the outer port, so it
//! expires, is listed and is adopted like any other.

use std::net::{IpAddr, SocketAddr};

use knockgate_agent_core::ruleset::{Access, Proto, Ruleset};
use netlink_packet_netfilter::nftables::{DataAttribute, ListAttribute, SetElementAttribute};

use super::layout::{FORWARDS4, FORWARDS6, TARGETS4, TARGETS6, port_key};
use super::socket::Request;

/// How many forwards lead to IPv4 and to IPv6 hosts.
pub(super) fn count(ruleset: &Ruleset) -> (usize, usize) {
    let v4 = ruleset.forwards.values().filter(|to| to.is_ipv4()).count();
    (v4, ruleset.forwards.len() - v4)
}

/// How many distinct inner services are IPv4 and IPv6.
pub(super) fn count_targets(ruleset: &Ruleset) -> (usize, usize) {
    let targets = ruleset.forward_targets();
    let v4 = targets.iter().filter(|(a, ..)| a.is_ipv4()).count();
    (v4, targets.len() - v4)
}

/// The elements of the four forward sets, one message per set that has any (the kernel
/// refuses an empty element list).
pub(super) fn elements(ruleset: &Ruleset) -> Vec<Request> {
    let (mut maps4, mut maps6) = (Vec::new(), Vec::new());
    for (outer, to) in &ruleset.forwards {
        let element = ListAttribute::Element(vec![
            SetElementAttribute::Key(DataAttribute::Value(port_key(*outer))),
            SetElementAttribute::Data(DataAttribute::Value(target_data(to))),
        ]);
        if to.is_ipv4() {
            maps4.push(element);
        } else {
            maps6.push(element);
        }
    }
    let (mut targets4, mut targets6) = (Vec::new(), Vec::new());
    for (addr, proto, port) in ruleset.forward_targets() {
        let element = ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
            target_key(addr, proto, port),
        ))]);
        if addr.is_ipv4() {
            targets4.push(element);
        } else {
            targets6.push(element);
        }
    }
    [
        (FORWARDS4, "add element forwards4", maps4),
        (FORWARDS6, "add element forwards6", maps6),
        (TARGETS4, "add element targets4", targets4),
        (TARGETS6, "add element targets6", targets6),
    ]
    .into_iter()
    .filter(|(_, _, elements)| !elements.is_empty())
    .map(|(set, what, elements)| super::grants::add_elements(set, what, elements))
    .collect()
}

/// A map's data, `addr . port`: the port padded to a 4-byte register after the address,
/// in network order (what the nat expression reads from the registers it is given).
fn target_data(to: &SocketAddr) -> Vec<u8> {
    let mut bytes = addr_bytes(to.ip());
    let [hi, lo] = to.port().to_be_bytes();
    bytes.extend_from_slice(&[hi, lo, 0, 0]);
    bytes
}

/// A target set's key, `addr . proto . port`, laid out like a grant's.
fn target_key(addr: IpAddr, proto: Proto, port: u16) -> Vec<u8> {
    let mut bytes = addr_bytes(addr);
    bytes.extend_from_slice(&port_key(Access { proto, port }));
    bytes
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_keys_are_padded_to_registers() {
        let to: SocketAddr = "10.240.2.2:22".parse().expect("addr");
        assert_eq!(target_data(&to), [10, 240, 2, 2, 0, 22, 0, 0]);
        assert_eq!(
            target_key(to.ip(), Proto::Tcp, 22),
            [10, 240, 2, 2, 6, 0, 0, 0, 0, 22, 0, 0]
        );
        let to6: SocketAddr = "[fd00::5]:51820".parse().expect("addr");
        assert_eq!(target_data(&to6).len(), 20, "the map's data length");
        assert_eq!(target_key(to6.ip(), Proto::Udp, 51820).len(), 24);
    }

    #[test]
    fn one_message_per_set_with_elements() {
        let mut rs = Ruleset::default();
        assert!(elements(&rs).is_empty());
        rs.forwards
            .insert(Access::tcp(2222), "10.0.0.5:22".parse().expect("addr"));
        rs.forwards
            .insert(Access::tcp(2223), "10.0.0.5:22".parse().expect("addr"));
        let reqs = elements(&rs);
        let what: Vec<_> = reqs.iter().map(|r| r.what).collect();
        assert_eq!(what, ["add element forwards4", "add element targets4"]);
        assert_eq!(count(&rs), (2, 0));
        assert_eq!(count_targets(&rs), (1, 0), "one service, two outer ports");
    }
}
