//! The rules of the input chain, and of the prerouting (nat) and forward chains while a
//! policy forwards, expression for expression what `nft --debug=netlink` generates for
//! them, so `nft list` prints them back verbatim (and `nft -f` reads that back).

use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute,
    Lookup, Meta, MetaKey, Operator, Payload, Register, Verdict, VerdictAttribute,
};

use super::layout::{
    FORWARDS4, FORWARDS6, GRANTS4, GRANTS6, KNOCKS, PROTECTED, TARGETS4, TARGETS6,
};

/// A rule's expression list.
pub(super) type Exprs = Vec<ListAttribute<ExpressionAttribute>>;

// Kernel constants the crate has no names for (include/uapi/linux/netfilter/*.h).
pub(super) const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const CT_STATE_ESTABLISHED: u32 = 0x2;
const CT_STATE_RELATED: u32 = 0x4;
/// `IPS_DST_NAT`: the connection's destination was rewritten.
const IPS_DST_NAT: u32 = 0x20;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;

/// The input chain's rules in order.
pub(super) fn all() -> [Exprs; 6] {
    [
        knocks(),
        established(),
        served_nowhere(FORWARDS4),
        served_nowhere(FORWARDS6),
        protect(false),
        protect(true),
    ]
}

/// The prerouting (nat) chain's rules: a granted source's DNAT, per family.
pub(super) fn prerouting() -> [Exprs; 2] {
    [dnat(false), dnat(true)]
}

/// The forward chain's rules: replies and established flows pass; a new flow to a
/// forwarded-to service passes only if a grant's DNAT sent it there.
pub(super) fn forward() -> [Exprs; 3] {
    [established(), unforwarded(false), unforwarded(true)]
}

/// `meta l4proto . th dport @knocks drop`: knock ports look filtered to a scan.
fn knocks() -> Exprs {
    let mut e = proto_port(Register::Reg1, Register::Reg32_01);
    e.push(lookup(KNOCKS, false));
    e.push(verdict(NF_DROP));
    e
}

/// `ct state established,related accept`: an open session outlives its grant.
fn established() -> Exprs {
    let mut e = ct_bits(NFT_CT_STATE, CT_STATE_ESTABLISHED | CT_STATE_RELATED);
    e.push(cmp(Operator::NotEqual, vec![0; 4]));
    e.push(verdict(NF_ACCEPT));
    e
}

/// `ct <key>` masked with `mask` into reg 1 (ct state and status are host-endian bit
/// masks).
fn ct_bits(key: u32, mask: u32) -> Exprs {
    vec![
        Expressions::Other {
            expression_type: "ct".into(),
            attributes: vec![
                DefaultNla::new(NFTA_CT_KEY, key.to_be_bytes().to_vec()),
                DefaultNla::new(
                    NFTA_CT_DREG,
                    u32::from(Register::Reg1).to_be_bytes().to_vec(),
                ),
            ],
        }
        .into(),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])
        .into(),
    ]
}

/// `meta l4proto . th dport @forwards4 drop` (or `@forwards6`): a forwarded port is never
/// served by the gateway itself. A granted source's packets were DNATed before this hook
/// and never come here; what comes is everyone else's, and a grant whose source's family
/// has no target (an IPv6 client of an IPv4 host).
fn served_nowhere(map: &str) -> Exprs {
    let mut e = proto_port(Register::Reg1, Register::Reg32_01);
    e.push(lookup(map, false));
    e.push(verdict(NF_DROP));
    e
}

/// `ip saddr . meta l4proto . th dport @grants4 dnat ip to meta l4proto . th dport map
/// @forwards4`, or its ipv6 twin: a granted source's new connection to a forwarded port
/// goes to the inner host. Sources without a grant, and ports not forwarded, miss a lookup
/// and are left alone.
fn dnat(v6: bool) -> Exprs {
    let mut e = granted_source(v6);
    e.extend(proto_port(Register::Reg1, Register::Reg32_01));
    let map = if v6 { FORWARDS6 } else { FORWARDS4 };
    e.push(
        Expressions::Lookup(vec![
            Lookup::SourceRegister(Register::Reg1),
            Lookup::Set(map.into()),
            Lookup::DestinationRegister(Register::Reg1),
        ])
        .into(),
    );
    // The map's data fills reg 1 with the address and, after it, the register holding
    // the port: reg32_01 after 4 bytes, reg 2 after 16.
    let (family, port_reg) = if v6 {
        (NFPROTO_IPV6, Register::Reg2)
    } else {
        (NFPROTO_IPV4, Register::Reg32_01)
    };
    let be = |n: u32| n.to_be_bytes().to_vec();
    e.push(
        Expressions::Other {
            expression_type: "nat".into(),
            attributes: vec![
                DefaultNla::new(NFTA_NAT_TYPE, be(NFT_NAT_DNAT)),
                DefaultNla::new(NFTA_NAT_FAMILY, be(u32::from(family))),
                DefaultNla::new(NFTA_NAT_REG_ADDR_MIN, be(u32::from(Register::Reg1))),
                DefaultNla::new(NFTA_NAT_REG_PROTO_MIN, be(u32::from(port_reg))),
            ],
        }
        .into(),
    );
    e
}

/// `ct status ! dnat ip daddr . meta l4proto . th dport @targets4 drop`, or its ipv6
/// twin: a new flow to a forwarded-to service that was not DNATed (someone routing to the
/// inner host directly) is not forwarded. Only the prerouting chain's grant lookup DNATs to
/// it, unless the host's own rules do too: `ct original proto-dst` in a concatenation,
/// which would tie the flow to the grant, is something `nft -f` cannot read back.
fn unforwarded(v6: bool) -> Exprs {
    let mut e = ct_bits(NFT_CT_STATUS, IPS_DST_NAT);
    e.push(cmp(Operator::Equal, vec![0; 4]));
    e.push(meta(MetaKey::Nfproto, Register::Reg1));
    e.push(cmp(
        Operator::Equal,
        vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
    ));
    // The destination address: offset 16 in IPv4, 24 in IPv6.
    e.extend(addr_proto_port_in(v6, (16, 24), (TARGETS4, TARGETS6)));
    e.push(verdict(NF_DROP));
    e
}

/// `ip saddr|daddr . meta l4proto . th dport @set`: the address at `offsets` (IPv4,
/// IPv6) of the network header, with the protocol and port, looked up in `sets` (IPv4,
/// IPv6).
fn addr_proto_port_in(v6: bool, offsets: (u32, u32), sets: (&'static str, &'static str)) -> Exprs {
    let (offset, len, proto_reg, port_reg, set) = if v6 {
        (offsets.1, 16, Register::Reg2, Register::Reg32_05, sets.1)
    } else {
        (offsets.0, 4, Register::Reg32_01, Register::Reg32_02, sets.0)
    };
    let mut e = vec![payload(
        NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        Register::Reg1,
    )];
    e.extend(proto_port(proto_reg, port_reg));
    e.push(lookup(set, false));
    e
}

/// `meta nfproto ipv4 ip saddr . meta l4proto . th dport @grants4`, or its ipv6 twin.
fn granted_source(v6: bool) -> Exprs {
    let mut e = vec![
        meta(MetaKey::Nfproto, Register::Reg1),
        cmp(
            Operator::Equal,
            vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
        ),
    ];
    // The source address: offset 12 in IPv4, 8 in IPv6.
    e.extend(addr_proto_port_in(v6, (12, 8), (GRANTS4, GRANTS6)));
    e
}

/// `meta nfproto ipv4 meta l4proto . th dport @protected
/// ip saddr . meta l4proto . th dport != @grants4 drop`, or its ipv6 twin.
/// (`nft list` leaves out the `meta nfproto`, which it considers implied.)
fn protect(v6: bool) -> Exprs {
    let mut e = vec![
        meta(MetaKey::Nfproto, Register::Reg1),
        cmp(
            Operator::Equal,
            vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
        ),
    ];
    e.extend(proto_port(Register::Reg1, Register::Reg32_01));
    e.push(lookup(PROTECTED, false));
    // The address fills registers from reg 1 on; proto and port take the next two
    // 4-byte registers, which is the key layout of the grant sets.
    let (offset, len, proto_reg, port_reg, set) = if v6 {
        (8, 16, Register::Reg2, Register::Reg32_05, GRANTS6)
    } else {
        (12, 4, Register::Reg32_01, Register::Reg32_02, GRANTS4)
    };
    e.push(payload(
        NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        Register::Reg1,
    ));
    e.extend(proto_port(proto_reg, port_reg));
    e.push(lookup(set, true));
    e.push(verdict(NF_DROP));
    e
}

/// `meta l4proto . th dport` into two registers.
pub(super) fn proto_port(proto: Register, port: Register) -> Exprs {
    vec![
        meta(MetaKey::L4Proto, proto),
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, port),
    ]
}

pub(super) fn meta(key: MetaKey, dreg: Register) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)]).into()
}

pub(super) fn payload(
    base: u32,
    offset: u32,
    len: u32,
    dreg: Register,
) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

pub(super) fn cmp(op: Operator, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

pub(super) fn lookup(set: &str, invert: bool) -> ListAttribute<ExpressionAttribute> {
    let mut attrs = vec![
        Lookup::SourceRegister(Register::Reg1),
        Lookup::Set(set.into()),
    ];
    if invert {
        attrs.push(Lookup::Flags(NFT_LOOKUP_F_INV));
    }
    Expressions::Lookup(attrs).into()
}

/// The crate names only the jump-style verdicts; accept and drop are the netfilter codes.
pub(super) fn verdict(code: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(code),
        )])),
    ])
    .into()
}
