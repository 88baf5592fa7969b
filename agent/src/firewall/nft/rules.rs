//! The four rules of the input chain, expression for expression what
//! `nft --debug=netlink` generates for them, so `nft list` prints them back verbatim.

use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute,
    Lookup, Meta, MetaKey, Operator, Payload, Register, Verdict, VerdictAttribute,
};

use super::layout::{GRANTS4, GRANTS6, KNOCKS, PROTECTED};

/// A rule's expression list.
pub(super) type Exprs = Vec<ListAttribute<ExpressionAttribute>>;

// Kernel constants the crate has no names for (include/uapi/linux/netfilter/*.h).
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const CT_STATE_ESTABLISHED: u32 = 0x2;
const CT_STATE_RELATED: u32 = 0x4;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The chain's rules in order.
pub(super) fn all() -> [Exprs; 4] {
    [knocks(), established(), protect(false), protect(true)]
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
    vec![
        Expressions::Other {
            expression_type: "ct".into(),
            attributes: vec![
                DefaultNla::new(NFTA_CT_KEY, NFT_CT_STATE.to_be_bytes().to_vec()),
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
            // ct state is a host-endian bit mask.
            Bitwise::Mask(DataAttribute::Value(
                (CT_STATE_ESTABLISHED | CT_STATE_RELATED)
                    .to_ne_bytes()
                    .to_vec(),
            )),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])
        .into(),
        cmp(Operator::NotEqual, vec![0; 4]),
        verdict(NF_ACCEPT),
    ]
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
fn proto_port(proto: Register, port: Register) -> Exprs {
    vec![
        meta(MetaKey::L4Proto, proto),
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, port),
    ]
}

fn meta(key: MetaKey, dreg: Register) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)]).into()
}

fn payload(base: u32, offset: u32, len: u32, dreg: Register) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn cmp(op: Operator, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn lookup(set: &str, invert: bool) -> ListAttribute<ExpressionAttribute> {
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
fn verdict(code: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(code),
        )])),
    ])
    .into()
}
