//! Grant set elements: the key layout `addr . proto . port` (every field padded to a 4-byte
//! register, the port in network order), the messages that add, delete and look up one
//! grant, and a total, zero-copy reader for dumped elements.

use std::net::IpAddr;
use std::time::Duration;

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{GrantKey, Proto};
use netlink_packet_core::{NLA_TYPE_MASK, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};

use super::layout::{GRANTS4, GRANTS6, TABLE};
use super::socket::Request;
use crate::firewall::Held;

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// nft's user-data record holding an element's comment (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const UDATA_COMMENT: u8 = 0;
const NFTA_DATA_VALUE: u16 = 1;
/// `struct nfgenmsg` in front of a message's attributes.
const NFGENMSG_LEN: usize = 4;

/// A dumped element the kernel should never have produced.
#[derive(Debug, thiserror::Error)]
#[error("malformed set element dump: {0}")]
pub(super) struct Malformed(&'static str);

/// Add `key` to its grant set, expiring `timeout_ms` from now, with `label` as the
/// element's comment.
pub(super) fn add(key: &GrantKey, timeout_ms: u64, label: &GrantLabel, flags: u16) -> Request {
    let (set, bytes) = encode(key);
    let mut attrs = vec![
        SetElementAttribute::Key(DataAttribute::Value(bytes)),
        SetElementAttribute::Timeout(timeout_ms),
    ];
    attrs.extend(comment(label));
    Request {
        what: if set == GRANTS4 {
            "add element grants4"
        } else {
            "add element grants6"
        },
        msg: NfTablesMessage::NewSetElement(element(set, attrs)),
        flags: NLM_F_CREATE | flags,
    }
}

/// Add many grants (key, timeout in ms, label), one message per set: one message per
/// grant would mean one ACK per grant, which can overflow the socket's receive buffer.
pub(super) fn add_all(grants: &[(GrantKey, u64, Option<GrantLabel>)]) -> Vec<Request> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (key, ms, label) in grants {
        let (set, bytes) = encode(key);
        let elements = if set == GRANTS4 { &mut v4 } else { &mut v6 };
        let mut attrs = vec![
            SetElementAttribute::Key(DataAttribute::Value(bytes)),
            SetElementAttribute::Timeout(*ms),
        ];
        attrs.extend(label.as_ref().and_then(comment));
        elements.push(ListAttribute::Element(attrs));
    }
    [
        ((GRANTS4, "add element grants4"), v4),
        ((GRANTS6, "add element grants6"), v6),
    ]
    .into_iter()
    .filter(|(_, elements)| !elements.is_empty())
    .map(|((set, what), elements)| add_elements(set, what, elements))
    .collect()
}

/// One message adding `elements` (already encoded) to `set` of our table: the one shape
/// every batch of elements (grants, ports, forwards) is sent in.
pub(super) fn add_elements(
    set: &str,
    what: &'static str,
    elements: Vec<ListAttribute<SetElementAttribute>>,
) -> Request {
    Request {
        what,
        msg: NfTablesMessage::NewSetElement(elements_message(set, elements)),
        flags: NLM_F_CREATE,
    }
}

pub(super) fn delete(key: &GrantKey) -> Request {
    let (set, bytes) = encode(key);
    Request {
        what: if set == GRANTS4 {
            "delete element grants4"
        } else {
            "delete element grants6"
        },
        msg: NfTablesMessage::DeleteSetElement(element(set, key_only(bytes))),
        flags: 0,
    }
}

/// Look one grant up; the kernel answers ENOENT when it is not held (or has expired).
pub(super) fn get(key: &GrantKey) -> NfTablesMessage {
    let (set, bytes) = encode(key);
    NfTablesMessage::GetSetElement(element(set, key_only(bytes)))
}

/// Every element of one grant set, as a dump request.
pub(super) fn dump(set: &str) -> NfTablesMessage {
    NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.into()),
            SetElementList::Set(set.into()),
        ],
    })
}

/// One element of `set` with `attrs`.
fn elements_message(
    set: &str,
    elements: Vec<ListAttribute<SetElementAttribute>>,
) -> SetElementMessage {
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.into()),
            SetElementList::Set(set.into()),
            SetElementList::Elements(elements),
        ],
    }
}

fn element(set: &'static str, attrs: Vec<SetElementAttribute>) -> SetElementMessage {
    elements_message(set, vec![ListAttribute::Element(attrs)])
}

fn key_only(key: Vec<u8>) -> Vec<SetElementAttribute> {
    vec![SetElementAttribute::Key(DataAttribute::Value(key))]
}

/// The element's user data: nft's comment record holding the label, so `nft list` shows
/// it too. None when there is no label to store.
fn comment(label: &GrantLabel) -> Option<SetElementAttribute> {
    let text = label.to_comment()?;
    let len = u8::try_from(text.len() + 1).ok()?;
    let mut udata = Vec::with_capacity(text.len() + 3);
    udata.extend_from_slice(&[UDATA_COMMENT, len]);
    udata.extend_from_slice(text.as_bytes());
    udata.push(0);
    Some(SetElementAttribute::UserData(udata))
}

/// The label in an element's user data, if it holds one knockgate wrote.
fn label_of(udata: &[u8]) -> Option<GrantLabel> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let (value, next) = tail.split_at_checked(usize::from(*len))?;
        if *kind == UDATA_COMMENT {
            let text = std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value)).ok()?;
            return GrantLabel::from_comment(text);
        }
        rest = next;
    }
    None
}

/// The set a grant belongs in and its key. IPv4-mapped IPv6 addresses are stored as
/// IPv4, which is how their packets arrive.
fn encode(key: &GrantKey) -> (&'static str, Vec<u8>) {
    let mut bytes = Vec::with_capacity(24);
    let set = match key.addr.to_canonical() {
        IpAddr::V4(a) => {
            bytes.extend_from_slice(&a.octets());
            GRANTS4
        }
        IpAddr::V6(a) => {
            bytes.extend_from_slice(&a.octets());
            GRANTS6
        }
    };
    let [hi, lo] = key.port.to_be_bytes();
    bytes.extend_from_slice(&[key.proto.ip_number(), 0, 0, 0, hi, lo, 0, 0]);
    (set, bytes)
}

/// A key of `grants4`/`grants6` read back; `None` if knockgate could not have written it.
fn decode(bytes: &[u8]) -> Option<GrantKey> {
    let (addr, rest): (IpAddr, &[u8]) = match bytes.len() {
        12 => {
            let (a, rest) = bytes.split_first_chunk::<4>()?;
            ((*a).into(), rest)
        }
        24 => {
            let (a, rest) = bytes.split_first_chunk::<16>()?;
            ((*a).into(), rest)
        }
        _ => return None,
    };
    let [proto, 0, 0, 0, hi, lo, 0, 0] = *rest.first_chunk::<8>()? else {
        return None;
    };
    Some(GrantKey {
        addr,
        proto: Proto::from_ip_number(proto)?,
        port: u16::from_be_bytes([hi, lo]),
    })
}

/// Append the grants of one dumped `NEWSETELEM` message (`payload` starts at its
/// `nfgenmsg`) to `held`. An element without a timeout, which knockgate never adds, is
/// reported with `remaining == Duration::MAX`; keys knockgate cannot read are skipped.
pub(super) fn read_dump(set: &str, payload: &[u8], held: &mut Vec<Held>) -> Result<(), Malformed> {
    let attrs = payload
        .get(NFGENMSG_LEN..)
        .ok_or(Malformed("message shorter than nfgenmsg"))?;
    for list in Attrs(attrs) {
        let (kind, elements) = list?;
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in Attrs(elements) {
            let (kind, elem) = elem?;
            if kind != NFTA_LIST_ELEM {
                continue;
            }
            let mut key = None;
            let mut remaining = Duration::MAX;
            let mut label = None;
            for attr in Attrs(elem) {
                match attr? {
                    (NFTA_SET_ELEM_KEY, data) => {
                        for value in Attrs(data) {
                            if let (NFTA_DATA_VALUE, bytes) = value? {
                                key = decode(bytes);
                                if key.is_none() {
                                    tracing::warn!(
                                        set,
                                        ?bytes,
                                        "ignoring a grant element knockgate cannot read"
                                    );
                                }
                            }
                        }
                    }
                    (NFTA_SET_ELEM_EXPIRATION, ms) => {
                        let ms = ms.first_chunk::<8>().ok_or(Malformed("short expiration"))?;
                        remaining = Duration::from_millis(u64::from_be_bytes(*ms));
                    }
                    (NFTA_SET_ELEM_USERDATA, udata) => label = label_of(udata),
                    _ => {}
                }
            }
            if let Some(key) = key {
                held.push(Held {
                    key,
                    remaining,
                    label,
                });
            }
        }
    }
    Ok(())
}

/// How many elements one dumped `NEWSETELEM` message (`payload` starts at its `nfgenmsg`)
/// holds, whatever their keys.
pub(super) fn count_elements(payload: &[u8]) -> Result<usize, Malformed> {
    let attrs = payload
        .get(NFGENMSG_LEN..)
        .ok_or(Malformed("message shorter than nfgenmsg"))?;
    let mut n = 0;
    for list in Attrs(attrs) {
        let (kind, elements) = list?;
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in Attrs(elements) {
            if elem?.0 == NFTA_LIST_ELEM {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The value of the first attribute of type `kind` in a message (`payload` starts at its
/// `nfgenmsg`), if there is one.
pub(super) fn attribute(payload: &[u8], kind: u16) -> Option<&[u8]> {
    Attrs(payload.get(NFGENMSG_LEN..)?)
        .map_while(Result::ok)
        .find_map(|(k, v)| (k == kind).then_some(v))
}

/// The netlink attributes of a buffer as `(type, value)`, flags masked off.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let Some(&[l0, l1, t0, t1]) = self.0.first_chunk::<4>() else {
            self.0 = &[];
            return Some(Err(Malformed("truncated attribute header")));
        };
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let Some(value) = self.0.get(4..len) else {
            self.0 = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        };
        self.0 = self.0.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok((u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_padding() {
        let key = GrantKey {
            addr: "10.0.0.1".parse().expect("address"),
            proto: Proto::Tcp,
            port: 22,
        };
        let (set, bytes) = encode(&key);
        assert_eq!(set, GRANTS4);
        assert_eq!(bytes, [10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        assert_eq!(decode(&bytes), Some(key));

        let key = GrantKey {
            addr: "2001:db8::1".parse().expect("address"),
            proto: Proto::Udp,
            port: 8000,
        };
        let (set, bytes) = encode(&key);
        assert_eq!((set, bytes.len()), (GRANTS6, 24));
        assert_eq!(decode(&bytes), Some(key));
    }

    #[test]
    fn foreign_keys_are_refused() {
        assert_eq!(decode(&[10, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]), None); // icmp
        assert_eq!(decode(&[10, 0, 0, 1, 6, 0, 0, 0]), None); // wrong length
        assert_eq!(decode(&[10, 0, 0, 1, 6, 9, 0, 0, 0, 22, 0, 0]), None); // dirty padding
    }

    #[test]
    fn malformed_attributes_are_errors_not_panics() {
        let mut held = Vec::new();
        assert!(read_dump(GRANTS4, &[0, 0], &mut held).is_err());
        // nfgenmsg, then an attribute claiming 200 bytes.
        assert!(read_dump(GRANTS4, &[0, 0, 0, 0, 200, 0, 3, 0x80], &mut held).is_err());
        // An attribute shorter than its own header.
        assert!(read_dump(GRANTS4, &[0, 0, 0, 0, 2, 0, 3, 0], &mut held).is_err());
        assert!(held.is_empty());
    }
}
