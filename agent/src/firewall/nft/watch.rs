//! Notices when something other than the agent changes `table inet knockgate`: `nft flush
//! ruleset` (every `systemctl reload nftables` on Debian), a firewalld reload, a hand-run
//! `nft delete table` or `nft flush set`. It listens to nf_tables' netlink notifications
//! and only says *that* the table changed; the engine then checks it and repairs what is
//! missing. Lost notifications count as a change, so an overflow cannot hide one.

use std::io;
use std::thread::JoinHandle;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::grants::attribute;
use super::layout::TABLE;
use super::socket::{NFNL_SUBSYS_NFTABLES, split_first};

/// `NFNLGRP_NFTABLES`: the multicast group nf_tables announces every change on.
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFPROTO_INET`: the family of knockgate's table.
const NFPROTO_INET: u8 = 1;
/// The name attribute of a table and the table attribute of a chain, rule, set or
/// element list are all attribute 1.
const TABLE_ATTR: u16 = 1;
/// A burst of notifications (a whole ruleset flushed) should fit without overflowing.
const RCV_BUF: usize = 1 << 20;
const RX_BUF: usize = 64 * 1024;

/// Start a thread that calls `changed` whenever a change to knockgate's table arrives
/// from a netlink port other than `own_port` (the agent's own firewall socket). It stops
/// when `changed` returns false.
pub fn watch(
    own_port: u32,
    mut changed: impl FnMut() -> bool + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    if let Err(e) = sock.set_rx_buf_sz(RCV_BUF) {
        tracing::debug!(error = %e, "could not enlarge the notification buffer");
    }
    std::thread::Builder::new()
        .name("nft-watch".into())
        .spawn(move || {
            let mut buf = Vec::with_capacity(RX_BUF);
            loop {
                buf.clear();
                let foreign = match sock.recv(&mut buf, 0) {
                    Ok(n) => touches_table(&buf[..n.min(buf.len())], own_port),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The kernel dropped notifications: assume one of them mattered.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => true,
                    Err(e) => {
                        tracing::warn!(error = %e,
                            "nftables notifications lost; the periodic check still repairs the table");
                        return;
                    }
                };
                if foreign && !changed() {
                    return;
                }
            }
        })
}

/// Whether a datagram of notifications holds a change to knockgate's table made by
/// another port than `own_port`.
fn touches_table(datagram: &[u8], own_port: u32) -> bool {
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok((bytes, next)) = split_first(rest) else {
            // Unreadable: treat it as a change rather than miss one.
            return true;
        };
        rest = next;
        let msg = NetlinkBuffer::new(bytes);
        if msg.port_number() == own_port {
            continue;
        }
        let [subsys, kind] = msg.message_type().to_be_bytes();
        if u16::from(subsys) != NFNL_SUBSYS_NFTABLES || !is_change(kind) {
            continue;
        }
        let payload = msg.payload();
        if payload.first() != Some(&NFPROTO_INET) {
            continue;
        }
        let named = attribute(payload, TABLE_ATTR)
            .map(|v| v.strip_suffix(&[0]).unwrap_or(v) == TABLE.as_bytes());
        if named == Some(true) {
            return true;
        }
    }
    false
}

/// The nf_tables message types that announce a change to a table, chain, rule, set or
/// element (`NFT_MSG_NEW*`, `NFT_MSG_DEL*`, `NFT_MSG_DESTROY*`), not a lookup or a new
/// generation.
fn is_change(kind: u8) -> bool {
    matches!(kind, 0 | 2 | 3 | 5 | 6 | 8 | 9 | 11 | 12 | 14 | 26..=30)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkMessage;
    use netlink_packet_netfilter::nftables::{NfTablesMessage, TableAttribute, TableMessage};
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

    use super::*;

    fn del_table(name: &str, family: NetfilterProtoFamily, port: u32) -> Vec<u8> {
        let mut msg = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(name.into())],
            }),
        ));
        msg.header.port_number = port;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn only_other_ports_changing_our_table_count() {
        let ours = del_table(TABLE, NetfilterProtoFamily::Inet, 4242);
        assert!(touches_table(&ours, 1));
        assert!(!touches_table(&ours, 4242), "our own change");
        assert!(!touches_table(
            &del_table("filter", NetfilterProtoFamily::Inet, 9),
            1
        ));
        assert!(!touches_table(
            &del_table(TABLE, NetfilterProtoFamily::IPv4, 9),
            1
        ));
        let mut two = del_table("filter", NetfilterProtoFamily::Inet, 9);
        two.extend(ours);
        assert!(touches_table(&two, 1), "the second message of a datagram");
        assert!(
            touches_table(&[1, 2, 3], 1),
            "unreadable counts as a change"
        );
    }
}
