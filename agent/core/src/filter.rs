//! The capture filter: a BPF expression compiled from the policies, so that only knock
//! ports and ICMP echo requests ever reach user space.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::packet::KnockStep;
use crate::ruleset::Proto;

/// A pcap filter matching exactly the knocks `kinds` can be, and any TCP or UDP knock on
/// the `sealed` port range (inbound direction is set on the capture handle, not here).
pub fn capture_filter<'a>(
    kinds: impl IntoIterator<Item = &'a KnockStep>,
    sealed: Option<RangeInclusive<u16>>,
) -> String {
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::new();
    let mut icmp = false;
    for k in kinds {
        match *k {
            KnockStep::Port {
                proto: Proto::Tcp,
                port,
            } => {
                tcp.insert(port);
            }
            KnockStep::Port {
                proto: Proto::Udp,
                port,
            } => {
                udp.insert(port);
            }
            KnockStep::Icmp => icmp = true,
        }
    }
    let mut terms = Vec::new();
    for (name, ports) in [("tcp", &tcp), ("udp", &udp)] {
        if !ports.is_empty() {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            terms.push(format!("({name} dst port ({}))", list.join(" or ")));
        }
    }
    if let Some(r) = sealed {
        terms.push(format!(
            "((tcp or udp) and dst portrange {}-{})",
            r.start(),
            r.end()
        ));
    }
    if icmp {
        // ICMP type 8 / ICMPv6 type 128: echo requests only, never replies.
        terms.push("(icmp and icmp[icmptype] == icmp-echo)".to_string());
        terms.push("(icmp6 and ip6[40] == 128)".to_string());
    }
    if terms.is_empty() {
        // Nothing to listen for: a filter no packet passes.
        return "less 1".to_string();
    }
    terms.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_one_term_per_protocol() {
        let kinds = [
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 9000,
            },
            KnockStep::Port {
                proto: Proto::Udp,
                port: 8000,
            },
            KnockStep::Icmp,
            KnockStep::Port {
                proto: Proto::Tcp,
                port: 7000,
            },
        ];
        assert_eq!(
            capture_filter(&kinds, None),
            "(tcp dst port (7000 or 9000)) or (udp dst port (8000)) or \
             (icmp and icmp[icmptype] == icmp-echo) or (icmp6 and ip6[40] == 128)"
        );
        assert_eq!(capture_filter(&[], None), "less 1");
        assert_eq!(
            capture_filter(&kinds[..1], Some(20000..=28447)),
            "(tcp dst port (9000)) or ((tcp or udp) and dst portrange 20000-28447)"
        );
    }
}
