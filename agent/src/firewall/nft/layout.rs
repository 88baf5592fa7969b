//! The `inet knockgate` table as nf_tables transactions: its four sets, the input chain,
//! and the batches that create it, adopt an existing one, or rebuild it.

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{Access, GrantKey, Ruleset};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Hook, InetHookNumber, ListAttribute,
    NfTablesMessage, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags, TableMessage,
};

use super::socket::Request;
use super::{grants, rules};

pub(super) const TABLE: &str = "knockgate";
pub(super) const CHAIN: &str = "input";
pub(super) const PROTECTED: &str = "protected";
pub(super) const KNOCKS: &str = "knocks";
pub(super) const GRANTS4: &str = "grants4";
pub(super) const GRANTS6: &str = "grants6";

/// `priority filter - 10`: ahead of the usual filter chains, so a drop here wins.
const PRIORITY: i32 = -10;
const NF_ACCEPT: u32 = 1;

// nft's datatype ids (nftables src/datatype.h); `nft list` prints a set's type from them.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// One set of the table.
struct SetDef {
    name: &'static str,
    what: &'static str,
    /// nft's type of a concatenation: the fields' ids, each shifted in by `TYPE_BITS`.
    key_type: u32,
    /// Every field of a concatenation takes a whole 4-byte register.
    key_len: u32,
    timeout: bool,
}

fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t)
}

fn sets() -> [SetDef; 4] {
    let port = concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    [
        SetDef {
            name: PROTECTED,
            what: "add set protected",
            key_type: port,
            key_len: 8,
            timeout: false,
        },
        SetDef {
            name: KNOCKS,
            what: "add set knocks",
            key_type: port,
            key_len: 8,
            timeout: false,
        },
        SetDef {
            name: GRANTS4,
            what: "add set grants4",
            key_type: concat(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 12,
            timeout: true,
        },
        SetDef {
            name: GRANTS6,
            what: "add set grants6",
            key_type: concat(&[TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            key_len: 24,
            timeout: true,
        },
    ]
}

/// Install `ruleset` over whatever knockgate table exists, or none: create what is
/// missing, replace the rules and the port sets, leave the grant sets' elements alone.
pub(super) fn adopt(ruleset: &Ruleset) -> Vec<Request> {
    let mut reqs = skeleton();
    reqs.push(Request {
        what: "flush chain input",
        msg: NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(CHAIN.into()),
            ],
        }),
        flags: 0,
    });
    for (set, what) in [
        (PROTECTED, "flush set protected"),
        (KNOCKS, "flush set knocks"),
    ] {
        reqs.push(Request {
            what,
            msg: NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(TABLE.into()),
                    SetElementList::Set(set.into()),
                ],
            }),
            flags: 0,
        });
    }
    reqs.extend(ports_and_rules(ruleset));
    reqs
}

/// Delete any knockgate table and build it anew, carrying `grants` (key, timeout in ms)
/// over. For a table whose sets or chain cannot be adopted in place.
pub(super) fn rebuild(
    ruleset: &Ruleset,
    carried: &[(GrantKey, u64, Option<GrantLabel>)],
) -> Vec<Request> {
    // Adding the table first makes the delete succeed whether or not it existed.
    let mut reqs = vec![new_table(), delete_table()];
    reqs.extend(skeleton());
    reqs.extend(grants::add_all(carried));
    reqs.extend(ports_and_rules(ruleset));
    reqs
}

/// Every rule of the input chain, as a dump request.
pub(super) fn dump_rules() -> NfTablesMessage {
    NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.into()),
            RuleAttribute::Chain(CHAIN.into()),
        ],
    })
}

/// How many rules the input chain holds when it is whole.
pub(super) fn rule_count() -> usize {
    rules::all().len()
}

pub(super) fn delete_table() -> Request {
    Request {
        what: "delete table",
        msg: NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
        flags: 0,
    }
}

fn new_table() -> Request {
    Request {
        what: "add table",
        msg: NfTablesMessage::NewTable(TableMessage {
            attributes: vec![
                TableAttribute::Name(TABLE.into()),
                TableAttribute::Flags(TableFlags::empty()),
            ],
        }),
        flags: NLM_F_CREATE,
    }
}

/// Table, sets and chain. Without NLM_F_EXCL, one that exists with the same definition
/// is kept as it is, elements included.
fn skeleton() -> Vec<Request> {
    let mut reqs = vec![new_table()];
    for (id, set) in (1..).zip(sets()) {
        let flags = if set.timeout {
            SetFlags::Timeout
        } else {
            SetFlags::empty()
        };
        reqs.push(Request {
            what: set.what,
            msg: NfTablesMessage::NewSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(TABLE.into()),
                    SetAttribute::Name(set.name.into()),
                    SetAttribute::Flags(flags),
                    SetAttribute::KeyType(set.key_type),
                    SetAttribute::KeyLen(set.key_len),
                    // Mandatory, though every reference here is by name.
                    SetAttribute::Id(id),
                ],
            }),
            flags: NLM_F_CREATE,
        });
    }
    reqs.push(Request {
        what: "add chain input",
        msg: NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(CHAIN.into()),
                ChainAttribute::Hook(vec![
                    Hook::Number(InetHookNumber::LocalIn.into()),
                    Hook::Priority(PRIORITY.cast_unsigned()),
                ]),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Type("filter".into()),
            ],
        }),
        flags: NLM_F_CREATE,
    });
    reqs
}

/// The elements of `protected` and `knocks`, then the chain's rules.
fn ports_and_rules(ruleset: &Ruleset) -> Vec<Request> {
    let mut reqs = Vec::with_capacity(6);
    let port_sets = [
        (PROTECTED, "add element protected", &ruleset.protected),
        (KNOCKS, "add element knocks", &ruleset.knock_ports),
    ];
    for (set, what, ports) in port_sets {
        // The kernel refuses an element list without elements.
        if ports.is_empty() {
            continue;
        }
        let elements = ports
            .iter()
            .map(|p| {
                ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
                    port_key(*p),
                ))])
            })
            .collect();
        reqs.push(Request {
            what,
            msg: NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(TABLE.into()),
                    SetElementList::Set(set.into()),
                    SetElementList::Elements(elements),
                ],
            }),
            flags: NLM_F_CREATE,
        });
    }
    for expressions in rules::all() {
        reqs.push(Request {
            what: "add rule",
            msg: NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.into()),
                    RuleAttribute::Chain(CHAIN.into()),
                    RuleAttribute::Expressions(expressions),
                ],
            }),
            flags: NLM_F_CREATE | NLM_F_APPEND,
        });
    }
    reqs
}

/// `proto . port`: each field padded to a 4-byte register, the port in network order.
fn port_key(p: Access) -> Vec<u8> {
    let [hi, lo] = p.port.to_be_bytes();
    vec![p.proto.ip_number(), 0, 0, 0, hi, lo, 0, 0]
}
