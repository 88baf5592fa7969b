//! Knock sequences matched in the kernel (docs/KERNEL_SEQUENCES.md): per door, a chain
//! and, per family, a set of the sources at each stage plus a timer set holding each
//! source's start; the last knock adds the grants to the grant sets itself and reports
//! the completion on an nflog group. The agent never sees the knocks.
//!
//! Door `d` with steps `P1..Pn`, for one family (`S_k`: sources `k` knocks in, `T`: the
//! sources whose sequence started less than the sequence timeout ago), from the highest
//! stage down, each rule ending the chain when it acts:
//!
//! ```text
//! ip saddr != @T <P1>                 delete @S_2.., update @T, add @S_1   return
//! ip saddr != @T                      (no sequence under way: junk)       return
//! ip saddr @S_k ip saddr @T <P(k+1)>  delete @S_k, add @S_(k+1)           return
//!     (last stage: meta nfproto @alive, delete @S_k @T, add @grants, log   return)
//! ip saddr @S_k ip saddr @T <P(k)>    (a retransmission)                  return
//! ip saddr @S_k                       delete @S_k      (a wrong knock, or too late)
//! <P1>                                update @T, add @S_1                  return
//! ```
//!
//! Stage sets time out after `max_gap` (or the sequence timeout), the timer after the
//! sequence timeout; every set holds at most `max_sources`, and a full set refuses new
//! sources (a refused add ends the rule) rather than dropping anyone's progress or grant.
//! The completing rule also needs `@alive`, whose elements the agent refreshes with a
//! short timeout while it watches the firewall: an agent that dies or stops leaves no
//! sequence that opens unseen.

use knockgate_agent_core::ruleset::{KernelDoor, KnockStep, Ruleset};
use netlink_packet_core::{DefaultNla, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, DataAttribute, Expressions, Immediate, ListAttribute,
    NfTablesMessage, Operator, Register, SetAttribute, SetDescription, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, Verdict, VerdictAttribute,
};

use super::layout::{
    GRANTS4, GRANTS6, TABLE, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_IP6ADDR, TYPE_IPADDR,
    TYPE_NFPROTO, add_ports, concat, flush_chain, rule,
};
use super::rules::{
    Exprs, NFPROTO_IPV4, NFPROTO_IPV6, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER,
    cmp, lookup, meta, payload, proto_port,
};
use super::socket::Request;
use super::timeout_ms as ms;
use netlink_packet_netfilter::nftables::MetaKey;

/// The chain the input chain sends every kernel door's knocks to.
pub(super) const DOORS: &str = "doors";
/// `proto . port` of every kernel door's TCP and UDP knocks.
pub(super) const DOOR_PORTS: &str = "door_ports";
/// `meta nfproto` values while the agent is alive (elements with a short timeout).
pub(super) const ALIVE: &str = "alive";
/// Every door's chain and sets start so; anything else so named in the table is a door a
/// config had before.
pub(super) const PREFIX: &str = "kd_";

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFT_DYNSET_OP_ADD: u32 = 0;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_DYNSET_OP_DELETE: u32 = 2;
const NFTA_LOG_GROUP: u16 = 1;
const NFTA_LOG_PREFIX: u16 = 2;
const NFTA_LOG_QTHRESHOLD: u16 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
/// Set ids in a transaction only need to differ; the table's own sets use 1-8.
const FIRST_SET_ID: u32 = 100;

/// One address family's view of a door's rules.
#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }

    fn nfproto(self) -> u8 {
        match self {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }
    }

    /// The source address: offset and length in the network header, and its set type.
    fn saddr(self) -> (u32, u32, u32) {
        match self {
            Family::V4 => (12, 4, TYPE_IPADDR),
            Family::V6 => (8, 16, TYPE_IP6ADDR),
        }
    }

    /// The grant set, and the registers its key's protocol and port go to (after the
    /// address, which fills registers from reg 1 on).
    fn grants(self) -> (&'static str, Register, Register) {
        match self {
            Family::V4 => (GRANTS4, Register::Reg32_01, Register::Reg32_02),
            Family::V6 => (GRANTS6, Register::Reg2, Register::Reg32_05),
        }
    }
}

fn timer(d: &KernelDoor, f: Family) -> String {
    format!("{}_t{}", d.id(), f.suffix())
}

fn stage(d: &KernelDoor, k: usize, f: Family) -> String {
    format!("{}_s{k}_{}", d.id(), f.suffix())
}

fn ports(d: &KernelDoor) -> String {
    format!("{}_p", d.id())
}

/// The sets of source addresses a door's rules fill, with their timeouts in ms.
fn source_sets(d: &KernelDoor) -> Vec<(String, Family, u64)> {
    let mut sets = Vec::new();
    for f in Family::BOTH {
        sets.push((timer(d, f), f, ms(d.sequence_timeout)));
        for k in 1..d.steps.len() {
            sets.push((stage(d, k, f), f, ms(d.stage_timeout)));
        }
    }
    sets
}

/// The names of every chain and set `ruleset`'s doors need: what is not among them and
/// starts with [`PREFIX`] is stale.
pub(super) fn wanted(ruleset: &Ruleset) -> Vec<String> {
    let mut names = Vec::new();
    for d in &ruleset.doors {
        names.push(d.id());
        names.push(ports(d));
        names.extend(source_sets(d).into_iter().map(|(n, _, _)| n));
    }
    names
}

/// The sets that must exist whatever their content (dynamic ones), for `intact`.
pub(super) fn dynamic_sets(ruleset: &Ruleset) -> Vec<String> {
    let mut names = vec![ALIVE.to_string()];
    for d in &ruleset.doors {
        names.extend(source_sets(d).into_iter().map(|(n, _, _)| n));
    }
    names
}

/// The static sets of the doors and how many elements each holds.
pub(super) fn static_sets(ruleset: &Ruleset) -> Vec<(String, usize)> {
    let mut sets = vec![(DOOR_PORTS.to_string(), ruleset.door_ports().len())];
    for d in &ruleset.doors {
        sets.push((ports(d), d.ports().len()));
    }
    sets
}

/// The chains of the doors and how many rules each holds.
pub(super) fn rule_counts(ruleset: &Ruleset) -> Vec<(String, usize)> {
    let mut counts = vec![(DOORS.to_string(), dispatch(ruleset).len())];
    for d in &ruleset.doors {
        counts.push((d.id(), door_rules(d, ruleset.nflog_group).len()));
    }
    counts
}

/// The door chain and sets every table has (empty without doors).
pub(super) fn base() -> Vec<Request> {
    let port = concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    vec![
        new_set(DOOR_PORTS, port, 8, SetFlags::empty(), None, FIRST_SET_ID),
        new_set(
            ALIVE,
            TYPE_NFPROTO,
            1,
            SetFlags::Timeout,
            None,
            FIRST_SET_ID + 1,
        ),
        chain(DOORS),
    ]
}

/// Each door's chain and sets; an existing one with the same definition is kept as it
/// is, elements (progress) included.
pub(super) fn skeleton(ruleset: &Ruleset) -> Vec<Request> {
    let port = concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
    let mut reqs = Vec::new();
    let mut id = FIRST_SET_ID + 1;
    let mut next_id = || {
        id += 1;
        id
    };
    for d in &ruleset.doors {
        reqs.push(new_set(
            &ports(d),
            port,
            8,
            SetFlags::empty(),
            None,
            next_id(),
        ));
        for (name, f, timeout) in source_sets(d) {
            let (_, len, kind) = f.saddr();
            reqs.push(new_set(
                &name,
                kind,
                len,
                SetFlags::Timeout | SetFlags::Eval,
                Some((timeout, d.max_sources)),
                next_id(),
            ));
        }
        reqs.push(chain(&d.id()));
    }
    reqs
}

/// Empty the door chains (before their rules are added again).
pub(super) fn flush(ruleset: &Ruleset) -> Vec<Request> {
    let mut reqs = vec![flush_chain(DOORS)];
    reqs.extend(ruleset.doors.iter().map(|d| flush_chain(&d.id())));
    reqs
}

/// Remove the chains and sets of doors the config no longer has (the door dispatch
/// chain, which jumped to them, is flushed first).
pub(super) fn remove_stale(chains: &[String], sets: &[String]) -> Vec<Request> {
    let mut reqs: Vec<Request> = chains.iter().map(|c| flush_chain(c)).collect();
    for c in chains {
        reqs.push(Request {
            what: "delete a door chain",
            msg: NfTablesMessage::DeleteChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.into()),
                    ChainAttribute::Name(c.clone()),
                ],
            }),
            flags: 0,
        });
    }
    for s in sets {
        reqs.push(Request {
            what: "delete a door set",
            msg: NfTablesMessage::DeleteSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(TABLE.into()),
                    SetAttribute::Name(s.clone()),
                ],
            }),
            flags: 0,
        });
    }
    reqs
}

/// The elements of the doors' port sets, then the rules of the door chains.
pub(super) fn elements_and_rules(ruleset: &Ruleset) -> Vec<Request> {
    let mut reqs = Vec::new();
    let port_sets = std::iter::once((DOOR_PORTS.to_string(), ruleset.door_ports()))
        .chain(ruleset.doors.iter().map(|d| (ports(d), d.ports())));
    for (set, ports) in port_sets {
        reqs.extend(add_ports(&set, "add element to a door's ports", &ports));
    }
    let chains = std::iter::once((DOORS.to_string(), dispatch(ruleset))).chain(
        ruleset
            .doors
            .iter()
            .map(|d| (d.id(), door_rules(d, ruleset.nflog_group))),
    );
    for (chain, rules) in chains {
        for expressions in rules {
            reqs.push(rule(&chain, expressions));
        }
    }
    reqs
}

/// The input chain's jumps to the door chain, ahead of everything else: one for the
/// doors' TCP and UDP knocks, and one per family for ICMP echo requests when a door
/// knocks with them. None without doors.
pub(super) fn input_jumps(ruleset: &Ruleset) -> Vec<Exprs> {
    if ruleset.doors.is_empty() {
        return Vec::new();
    }
    let mut rules = vec![port_jump(DOOR_PORTS, DOORS)];
    if ruleset.doors.iter().any(KernelDoor::uses_icmp) {
        rules.extend(Family::BOTH.map(|f| icmp_jump(f, DOORS)));
    }
    rules
}

/// Refresh `@alive` to expire in `ttl_ms` (0: empty it, so no door opens).
pub(super) fn alive(ttl_ms: u64) -> Vec<Request> {
    let mut reqs = vec![Request {
        what: "flush set alive",
        msg: NfTablesMessage::DeleteSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(TABLE.into()),
                SetElementList::Set(ALIVE.into()),
            ],
        }),
        flags: 0,
    }];
    if ttl_ms > 0 {
        let elements = Family::BOTH
            .map(|f| {
                ListAttribute::Element(vec![
                    SetElementAttribute::Key(DataAttribute::Value(vec![f.nfproto()])),
                    SetElementAttribute::Timeout(ttl_ms),
                ])
            })
            .into();
        reqs.push(super::grants::add_elements(
            ALIVE,
            "add element alive",
            elements,
        ));
    }
    reqs
}

/// The door chain: each door's knocks to its own chain.
fn dispatch(ruleset: &Ruleset) -> Vec<Exprs> {
    let mut rules = Vec::new();
    for d in &ruleset.doors {
        if !d.ports().is_empty() {
            rules.push(port_jump(&ports(d), &d.id()));
        }
        if d.uses_icmp() {
            rules.extend(Family::BOTH.map(|f| icmp_jump(f, &d.id())));
        }
    }
    rules
}

/// One door's chain (see the module's documentation).
fn door_rules(d: &KernelDoor, group: u16) -> Vec<Exprs> {
    let mut rules = Vec::new();
    if d.uses_tcp() {
        rules.push(flags_ignored(d));
    }
    let n = d.steps.len();
    for f in Family::BOTH {
        if n > 1 {
            // A source without a sequence under way (most of a flood) is done after one
            // lookup: its first knock starts one (after clearing whatever stage is left
            // from a sequence that timed out), anything else is ignored.
            let mut e = family(f);
            e.push(source(f));
            e.push(lookup(&timer(d, f), true));
            e.extend(step(f, d.steps[0]));
            for k in 2..n {
                e.push(source(f));
                e.push(dynset(NFT_DYNSET_OP_DELETE, &stage(d, k, f), None));
            }
            e.extend(start(d, f));
            rules.push(e);
            let mut e = family(f);
            e.push(source(f));
            e.push(lookup(&timer(d, f), true));
            e.push(jump_verdict(Verdict::Return, None));
            rules.push(e);
        }
        for k in (1..n).rev() {
            // Advance from stage k.
            let mut e = family(f);
            e.extend(is_in(f, &stage(d, k, f)));
            e.extend(is_in(f, &timer(d, f)));
            e.extend(step(f, d.steps[k]));
            e.push(source(f));
            e.push(dynset(NFT_DYNSET_OP_DELETE, &stage(d, k, f), None));
            if k + 1 < n {
                e.push(source(f));
                e.push(dynset(NFT_DYNSET_OP_ADD, &stage(d, k + 1, f), None));
            } else {
                e.push(source(f));
                e.push(dynset(NFT_DYNSET_OP_DELETE, &timer(d, f), None));
                e.extend(open(d, f, group));
            }
            e.push(jump_verdict(Verdict::Return, None));
            rules.push(e);
            // A retransmission of the knock just made.
            let mut e = family(f);
            e.extend(is_in(f, &stage(d, k, f)));
            e.extend(is_in(f, &timer(d, f)));
            e.extend(step(f, d.steps[k - 1]));
            e.push(jump_verdict(Verdict::Return, None));
            rules.push(e);
            // Anything else on the door's ports, or too late: back to the start.
            let mut e = family(f);
            e.extend(is_in(f, &stage(d, k, f)));
            e.push(source(f));
            e.push(dynset(NFT_DYNSET_OP_DELETE, &stage(d, k, f), None));
            rules.push(e);
        }
        // The first knock, from a source whose sequence was under way: it starts over.
        let mut e = family(f);
        e.extend(step(f, d.steps[0]));
        if n == 1 {
            e.extend(open(d, f, group));
            e.push(jump_verdict(Verdict::Return, None));
        } else {
            e.extend(start(d, f));
        }
        rules.push(e);
    }
    rules
}

/// `update @T { ip saddr } add @S_1 { ip saddr } return`: a sequence starts.
fn start(d: &KernelDoor, f: Family) -> Exprs {
    vec![
        source(f),
        dynset(NFT_DYNSET_OP_UPDATE, &timer(d, f), None),
        source(f),
        dynset(NFT_DYNSET_OP_ADD, &stage(d, 1, f), None),
        jump_verdict(Verdict::Return, None),
    ]
}

/// `meta nfproto @alive`, the door's grants for the source, and the log line that tells
/// the agent.
fn open(d: &KernelDoor, f: Family, group: u16) -> Exprs {
    let mut e = vec![meta(MetaKey::Nfproto, Register::Reg1), lookup(ALIVE, false)];
    let (set, proto_reg, port_reg) = f.grants();
    for a in &d.open {
        e.push(source(f));
        // As nft sends them: a byte and two, the kernel zeroes the rest of the register
        // (and `nft list` cannot print a padded constant).
        e.push(immediate(proto_reg, vec![a.proto.ip_number()]));
        e.push(immediate(port_reg, a.port.to_be_bytes().to_vec()));
        e.push(dynset(NFT_DYNSET_OP_ADD, set, Some(ms(d.timeout))));
    }
    e.push(log(group, &d.id()));
    e
}

/// `meta l4proto tcp tcp flags & (set|clear) != set return`: TCP knocks that fail the
/// door's flag filter are ignored, as the user-space matcher ignores them.
fn flags_ignored(d: &KernelDoor) -> Exprs {
    let f = d.tcp_flags;
    vec![
        meta(MetaKey::L4Proto, Register::Reg1),
        cmp(Operator::Equal, vec![IPPROTO_TCP]),
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1, Register::Reg1),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(1),
            Bitwise::Mask(DataAttribute::Value(vec![f.set | f.clear])),
            Bitwise::Xor(DataAttribute::Value(vec![0])),
        ])
        .into(),
        cmp(Operator::NotEqual, vec![f.set]),
        jump_verdict(Verdict::Return, None),
    ]
}

/// `meta nfproto ipv4` (or ipv6).
fn family(f: Family) -> Exprs {
    vec![
        meta(MetaKey::Nfproto, Register::Reg1),
        cmp(Operator::Equal, vec![f.nfproto()]),
    ]
}

/// The source address into reg 1.
fn source(f: Family) -> ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute> {
    let (offset, len, _) = f.saddr();
    payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, Register::Reg1)
}

/// `ip saddr @set`.
fn is_in(f: Family, set: &str) -> Exprs {
    vec![source(f), lookup(set, false)]
}

/// The packet is knock `s`: `tcp dport 7000`, `udp dport 8000`, or an echo request.
fn step(f: Family, s: KnockStep) -> Exprs {
    match s {
        KnockStep::Port { proto, port } => vec![
            meta(MetaKey::L4Proto, Register::Reg1),
            cmp(Operator::Equal, vec![proto.ip_number()]),
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, Register::Reg1),
            cmp(Operator::Equal, port.to_be_bytes().to_vec()),
        ],
        KnockStep::Icmp => {
            let (proto, kind) = match f {
                Family::V4 => (IPPROTO_ICMP, ICMP_ECHO_REQUEST),
                Family::V6 => (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST),
            };
            vec![
                meta(MetaKey::L4Proto, Register::Reg1),
                cmp(Operator::Equal, vec![proto]),
                payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, Register::Reg1),
                cmp(Operator::Equal, vec![kind]),
            ]
        }
    }
}

/// `meta l4proto . th dport @set jump chain`.
fn port_jump(set: &str, chain: &str) -> Exprs {
    let mut e = proto_port(Register::Reg1, Register::Reg32_01);
    e.push(lookup(set, false));
    e.push(jump_verdict(Verdict::Jump, Some(chain)));
    e
}

/// `icmp type echo-request jump chain` (or its icmpv6 twin).
fn icmp_jump(f: Family, chain: &str) -> Exprs {
    let mut e = family(f);
    e.extend(step(f, KnockStep::Icmp));
    e.push(jump_verdict(Verdict::Jump, Some(chain)));
    e
}

fn dynset(
    op: u32,
    set: &str,
    timeout_ms: Option<u64>,
) -> ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute> {
    let be32 = |n: u32| n.to_be_bytes().to_vec();
    let mut attributes = vec![
        DefaultNla::new(NFTA_DYNSET_SET_NAME, cstr(set)),
        DefaultNla::new(NFTA_DYNSET_OP, be32(op)),
        DefaultNla::new(NFTA_DYNSET_SREG_KEY, be32(u32::from(Register::Reg1))),
    ];
    if let Some(t) = timeout_ms {
        attributes.push(DefaultNla::new(
            NFTA_DYNSET_TIMEOUT,
            t.to_be_bytes().to_vec(),
        ));
    }
    Expressions::Other {
        expression_type: "dynset".into(),
        attributes,
    }
    .into()
}

fn log(
    group: u16,
    prefix: &str,
) -> ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute> {
    Expressions::Other {
        expression_type: "log".into(),
        attributes: vec![
            DefaultNla::new(NFTA_LOG_GROUP, group.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_LOG_PREFIX, cstr(prefix)),
            // Sent at once: nflog otherwise batches up to 100 messages for up to 1 s.
            DefaultNla::new(NFTA_LOG_QTHRESHOLD, 1u16.to_be_bytes().to_vec()),
        ],
    }
    .into()
}

fn immediate(
    reg: Register,
    data: Vec<u8>,
) -> ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(reg),
        Immediate::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn jump_verdict(
    code: Verdict,
    chain: Option<&str>,
) -> ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute> {
    let mut v = vec![VerdictAttribute::Code(code)];
    if let Some(c) = chain {
        v.push(VerdictAttribute::Chain(c.into()));
    }
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(v)),
    ])
    .into()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn chain(name: &str) -> Request {
    Request {
        what: "add a door chain",
        msg: NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(name.into()),
            ],
        }),
        flags: NLM_F_CREATE,
    }
}

/// A set of `key_type`; `bounded` gives a default timeout (ms) and a size.
fn new_set(
    name: &str,
    key_type: u32,
    key_len: u32,
    flags: SetFlags,
    bounded: Option<(u64, u32)>,
    id: u32,
) -> Request {
    let mut attributes = vec![
        SetAttribute::Table(TABLE.into()),
        SetAttribute::Name(name.into()),
        SetAttribute::KeyType(key_type),
        SetAttribute::KeyLen(key_len),
        SetAttribute::Id(id),
        SetAttribute::Flags(flags),
    ];
    if let Some((timeout, size)) = bounded {
        attributes.push(SetAttribute::Timeout(timeout));
        attributes.push(SetAttribute::Description(vec![SetDescription::Size(size)]));
    }
    Request {
        what: "add a door set",
        msg: NfTablesMessage::NewSet(SetMessage { attributes }),
        flags: NLM_F_CREATE,
    }
}
