//! The `inet knockgate` table as nf_tables transactions: its sets and maps, the input
//! chain, the prerouting (nat) and forward chains while a policy forwards, and the batches
//! that create it, adopt an existing one, or rebuild it.

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{Access, GrantKey, Ruleset};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Hook, InetHookNumber, ListAttribute,
    NfTablesMessage, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags, TableMessage,
};

use super::socket::Request;
use super::{doors, forward, grants, rules};

pub(super) const TABLE: &str = "knockgate";
pub(super) const CHAIN: &str = "input";
pub(super) const PROTECTED: &str = "protected";
pub(super) const KNOCKS: &str = "knocks";
pub(super) const GRANTS4: &str = "grants4";
pub(super) const GRANTS6: &str = "grants6";
/// `proto . outer port : inner addr . inner port`, per family of the inner host.
pub(super) const FORWARDS4: &str = "forwards4";
pub(super) const FORWARDS6: &str = "forwards6";
/// `inner addr . proto . inner port`: the services forwarded to.
pub(super) const TARGETS4: &str = "targets4";
pub(super) const TARGETS6: &str = "targets6";
/// The chains that exist only while a policy forwards.
pub(super) const PREROUTING: &str = "prerouting";
pub(super) const FORWARD: &str = "forward";
pub(super) const FORWARD_CHAINS: [&str; 2] = [PREROUTING, FORWARD];

/// `priority filter - 10`: ahead of the usual filter chains, so a drop here wins.
const PRIORITY: i32 = -10;
/// `priority dstnat - 10`: ahead of the usual DNAT chains, so a grant's DNAT wins.
const NAT_PRIORITY: i32 = -110;
const NF_ACCEPT: u32 = 1;

// nft's datatype ids (nftables src/datatype.h); `nft list` prints a set's type from them.
pub(super) const TYPE_NFPROTO: u32 = 2;
pub(super) const TYPE_IPADDR: u32 = 7;
pub(super) const TYPE_IP6ADDR: u32 = 8;
pub(super) const TYPE_INET_PROTOCOL: u32 = 12;
pub(super) const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// One set (or map) of the table.
struct SetDef {
    name: &'static str,
    what: &'static str,
    /// nft's type of a concatenation: the fields' ids, each shifted in by `TYPE_BITS`.
    key_type: u32,
    /// Every field of a concatenation takes a whole 4-byte register.
    key_len: u32,
    timeout: bool,
    /// A map's data type and length.
    data: Option<(u32, u32)>,
}

pub(super) fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t)
}

fn sets() -> [SetDef; 8] {
    let port = concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    let addr4 = concat(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    let addr6 = concat(&[TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    [
        SetDef {
            name: PROTECTED,
            what: "add set protected",
            key_type: port,
            key_len: 8,
            timeout: false,
            data: None,
        },
        SetDef {
            name: KNOCKS,
            what: "add set knocks",
            key_type: port,
            key_len: 8,
            timeout: false,
            data: None,
        },
        SetDef {
            name: GRANTS4,
            what: "add set grants4",
            key_type: addr4,
            key_len: 12,
            timeout: true,
            data: None,
        },
        SetDef {
            name: GRANTS6,
            what: "add set grants6",
            key_type: addr6,
            key_len: 24,
            timeout: true,
            data: None,
        },
        // Always present, empty without forwards: a forward added later needs no new set,
        // and the input chain's rules are always the same.
        SetDef {
            name: FORWARDS4,
            what: "add map forwards4",
            key_type: port,
            key_len: 8,
            timeout: false,
            data: Some((concat(&[TYPE_IPADDR, TYPE_INET_SERVICE]), 8)),
        },
        SetDef {
            name: FORWARDS6,
            what: "add map forwards6",
            key_type: port,
            key_len: 8,
            timeout: false,
            data: Some((concat(&[TYPE_IP6ADDR, TYPE_INET_SERVICE]), 20)),
        },
        SetDef {
            name: TARGETS4,
            what: "add set targets4",
            key_type: addr4,
            key_len: 12,
            timeout: false,
            data: None,
        },
        SetDef {
            name: TARGETS6,
            what: "add set targets6",
            key_type: addr6,
            key_len: 24,
            timeout: false,
            data: None,
        },
    ]
}

/// The sets whose elements come from the ruleset (everything but the grant sets): what
/// `adopt` flushes and refills, and what `intact` counts.
pub(super) fn static_sets(ruleset: &Ruleset) -> Vec<(String, usize)> {
    let (forwards4, forwards6) = forward::count(ruleset);
    let (targets4, targets6) = forward::count_targets(ruleset);
    let mut sets: Vec<(String, usize)> = [
        (PROTECTED, ruleset.protected.len()),
        (KNOCKS, ruleset.knock_ports.len()),
        (FORWARDS4, forwards4),
        (FORWARDS6, forwards6),
        (TARGETS4, targets4),
        (TARGETS6, targets6),
    ]
    .map(|(s, n)| (s.to_string(), n))
    .into();
    sets.extend(doors::static_sets(ruleset));
    sets
}

/// The input chain's rules: the jumps to the kernel doors, then the fixed rules.
fn input_rules(ruleset: &Ruleset) -> Vec<rules::Exprs> {
    let mut all = doors::input_jumps(ruleset);
    all.extend(rules::all());
    all
}

/// Install `ruleset` over whatever knockgate table exists, or none: create what is
/// missing, replace the rules and the static sets' elements, leave the grant sets'
/// elements alone. `stale` names forward chains that exist although `ruleset` forwards
/// nothing, `stale_doors` the chains and sets of kernel doors it no longer has: they are
/// removed.
pub(super) fn adopt(
    ruleset: &Ruleset,
    stale: &[&'static str],
    stale_doors: &(Vec<String>, Vec<String>),
) -> Vec<Request> {
    let forwarding = !ruleset.forwards.is_empty();
    let mut reqs = skeleton(ruleset);
    reqs.push(flush_chain(CHAIN));
    reqs.extend(doors::flush(ruleset));
    reqs.extend(doors::remove_stale(&stale_doors.0, &stale_doors.1));
    if forwarding {
        reqs.extend(FORWARD_CHAINS.map(flush_chain));
    } else {
        for chain in stale {
            reqs.push(flush_chain(chain));
            reqs.push(Request {
                what: "delete a forward chain",
                msg: NfTablesMessage::DeleteChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(TABLE.into()),
                        ChainAttribute::Name((*chain).into()),
                    ],
                }),
                flags: 0,
            });
        }
    }
    for (set, _) in static_sets(ruleset) {
        reqs.push(Request {
            what: "flush a set",
            msg: NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(TABLE.into()),
                    SetElementList::Set(set),
                ],
            }),
            flags: 0,
        });
    }
    reqs.extend(ports_and_rules(ruleset));
    reqs
}

/// Delete every rule of `chain`.
pub(super) fn flush_chain(chain: &str) -> Request {
    Request {
        what: "flush a chain",
        msg: NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(chain.into()),
            ],
        }),
        flags: 0,
    }
}

/// Delete any knockgate table and build it anew, carrying `grants` (key, timeout in ms)
/// over. For a table whose sets or chain cannot be adopted in place.
pub(super) fn rebuild(
    ruleset: &Ruleset,
    carried: &[(GrantKey, u64, Option<GrantLabel>)],
) -> Vec<Request> {
    // Adding the table first makes the delete succeed whether or not it existed.
    let mut reqs = vec![new_table(), delete_table()];
    reqs.extend(skeleton(ruleset));
    reqs.extend(grants::add_all(carried));
    reqs.extend(ports_and_rules(ruleset));
    reqs
}

/// Every rule of `chain`, as a dump request.
pub(super) fn dump_rules(chain: &str) -> NfTablesMessage {
    NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.into()),
            RuleAttribute::Chain(chain.into()),
        ],
    })
}

/// Every chain of the table, as a dump request.
pub(super) fn dump_chains() -> NfTablesMessage {
    NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![ChainAttribute::Table(TABLE.into())],
    })
}

/// Every set of the table, as a dump request.
pub(super) fn dump_sets() -> NfTablesMessage {
    NfTablesMessage::GetSet(SetMessage {
        attributes: vec![SetAttribute::Table(TABLE.into())],
    })
}

/// Look one chain up; the kernel answers ENOENT when it (or the table) is missing.
pub(super) fn get_chain(chain: &'static str) -> NfTablesMessage {
    NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.into()),
            ChainAttribute::Name(chain.into()),
        ],
    })
}

/// The chains `ruleset` needs and how many rules each holds when it is whole.
pub(super) fn rule_counts(ruleset: &Ruleset) -> Vec<(String, usize)> {
    let mut counts = vec![(CHAIN.to_string(), input_rules(ruleset).len())];
    if !ruleset.forwards.is_empty() {
        counts.push((PREROUTING.to_string(), rules::prerouting().len()));
        counts.push((FORWARD.to_string(), rules::forward().len()));
    }
    counts.extend(doors::rule_counts(ruleset));
    counts
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

/// Table, sets and chains (the forward chains only when `ruleset` forwards, a chain and
/// sets per kernel door). Without NLM_F_EXCL, one that exists with the same definition
/// is kept as it is, elements included.
fn skeleton(ruleset: &Ruleset) -> Vec<Request> {
    let forwarding = !ruleset.forwards.is_empty();
    let mut reqs = vec![new_table()];
    for (id, set) in (1..).zip(sets()) {
        // The grant sets take elements from the kernel doors' rules too (`Eval`).
        let mut flags = if set.timeout {
            SetFlags::Timeout | SetFlags::Eval
        } else {
            SetFlags::empty()
        };
        let mut attributes = vec![
            SetAttribute::Table(TABLE.into()),
            SetAttribute::Name(set.name.into()),
            SetAttribute::KeyType(set.key_type),
            SetAttribute::KeyLen(set.key_len),
            // Mandatory, though every reference here is by name.
            SetAttribute::Id(id),
        ];
        if let Some((data_type, data_len)) = set.data {
            flags |= SetFlags::Map;
            attributes.push(SetAttribute::DataType(data_type));
            attributes.push(SetAttribute::DataLen(data_len));
        }
        attributes.push(SetAttribute::Flags(flags));
        reqs.push(Request {
            what: set.what,
            msg: NfTablesMessage::NewSet(SetMessage { attributes }),
            flags: NLM_F_CREATE,
        });
    }
    reqs.push(base_chain(
        "add chain input",
        CHAIN,
        InetHookNumber::LocalIn,
        PRIORITY,
        "filter",
    ));
    reqs.extend(doors::base());
    if forwarding {
        // A nat chain needs the kernel's NAT support: only a config that forwards asks
        // for it, so an agent that does not forward runs without it.
        reqs.push(base_chain(
            "add chain prerouting (nat)",
            PREROUTING,
            InetHookNumber::PreRouting,
            NAT_PRIORITY,
            "nat",
        ));
        reqs.push(base_chain(
            "add chain forward",
            FORWARD,
            InetHookNumber::Forward,
            PRIORITY,
            "filter",
        ));
    }
    reqs.extend(doors::skeleton(ruleset));
    reqs
}

/// A base chain with policy accept: knockgate's chains only ever remove traffic (or, in
/// prerouting, redirect a granted source's).
fn base_chain(
    what: &'static str,
    name: &'static str,
    hook: InetHookNumber,
    priority: i32,
    kind: &str,
) -> Request {
    Request {
        what,
        msg: NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(name.into()),
                ChainAttribute::Hook(vec![
                    Hook::Number(hook.into()),
                    Hook::Priority(priority.cast_unsigned()),
                ]),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Type(kind.into()),
            ],
        }),
        flags: NLM_F_CREATE,
    }
}

/// The elements of the static sets, then the chains' rules.
fn ports_and_rules(ruleset: &Ruleset) -> Vec<Request> {
    let mut reqs = Vec::with_capacity(16);
    let port_sets = [
        (PROTECTED, "add element protected", &ruleset.protected),
        (KNOCKS, "add element knocks", &ruleset.knock_ports),
    ];
    for (set, what, ports) in port_sets {
        reqs.extend(add_ports(set, what, ports));
    }
    reqs.extend(forward::elements(ruleset));
    reqs.extend(doors::elements_and_rules(ruleset));
    let mut chains = vec![(CHAIN, input_rules(ruleset))];
    if !ruleset.forwards.is_empty() {
        chains.push((PREROUTING, Vec::from(rules::prerouting())));
        chains.push((FORWARD, Vec::from(rules::forward())));
    }
    for (chain, rules) in chains {
        reqs.extend(rules.into_iter().map(|e| rule(chain, e)));
    }
    reqs
}

/// Add `ports` to the `proto . port` set `set`; nothing for none (the kernel refuses an
/// element list without elements).
pub(super) fn add_ports(
    set: &str,
    what: &'static str,
    ports: &std::collections::BTreeSet<Access>,
) -> Option<Request> {
    if ports.is_empty() {
        return None;
    }
    let elements = ports
        .iter()
        .map(|p| {
            ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
                port_key(*p),
            ))])
        })
        .collect();
    Some(grants::add_elements(set, what, elements))
}

/// One rule appended to `chain`.
pub(super) fn rule(chain: &str, expressions: rules::Exprs) -> Request {
    Request {
        what: "add rule",
        msg: NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(expressions),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_APPEND,
    }
}

/// `proto . port`: each field padded to a 4-byte register, the port in network order.
pub(super) fn port_key(p: Access) -> Vec<u8> {
    let [hi, lo] = p.port.to_be_bytes();
    vec![p.proto.ip_number(), 0, 0, 0, hi, lo, 0, 0]
}
