//! What a SYN shows a fingerprinter: the IP and TCP fields and quirks p0f reads, taken
//! from a captured frame by a total parser (p0f's `parse_packet_frag`, SYNs only).

use std::fmt;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::MAX_DIST;
use crate::packet::LinkType;

/// The most TCP options p0f records per packet (its `MAX_TCP_OPT`).
pub const MAX_OPTS: usize = 24;

/// The IP version of a packet or signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// One of p0f's packet quirks; [`Quirk::name`] is its spelling in `p0f.fp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// `df`: IPv4 don't-fragment set.
    Df,
    /// `id+`: DF set and a non-zero IPv4 ID.
    NonZeroId,
    /// `id-`: DF clear and a zero IPv4 ID.
    ZeroId,
    /// `ecn`: ECN bits in IP, or ECE/CWR/NS in TCP.
    Ecn,
    /// `0+`: the IPv4 must-be-zero flag set.
    MustBeZero,
    /// `flow`: a non-zero IPv6 flow label.
    Flow,
    /// `seq-`: sequence number zero.
    ZeroSeq,
    /// `ack+`: a non-zero ACK number with ACK clear.
    NonZeroAck,
    /// `ack-`: a zero ACK number with ACK set (never on a SYN).
    ZeroAck,
    /// `uptr+`: a non-zero urgent pointer with URG clear.
    NonZeroUrgPtr,
    /// `urgf+`: URG set.
    Urg,
    /// `pushf+`: PSH set.
    Push,
    /// `ts1-`: own timestamp zero.
    ZeroTs1,
    /// `ts2+`: peer timestamp non-zero on a SYN.
    NonZeroTs2,
    /// `opt+`: non-zero bytes after EOL.
    DataAfterEol,
    /// `exws`: window scale above 14.
    ExcessiveWs,
    /// `bad`: malformed TCP options.
    BadOptions,
}

impl Quirk {
    /// Every quirk, in the order p0f prints them.
    pub const ALL: [Quirk; 17] = [
        Self::Df,
        Self::NonZeroId,
        Self::ZeroId,
        Self::Ecn,
        Self::MustBeZero,
        Self::Flow,
        Self::ZeroSeq,
        Self::NonZeroAck,
        Self::ZeroAck,
        Self::NonZeroUrgPtr,
        Self::Urg,
        Self::Push,
        Self::ZeroTs1,
        Self::NonZeroTs2,
        Self::DataAfterEol,
        Self::ExcessiveWs,
        Self::BadOptions,
    ];

    /// The spelling in `p0f.fp`, e.g. `"id+"`.
    pub const fn name(self) -> &'static str {
        const NAMES: [&str; 17] = [
            "df", "id+", "id-", "ecn", "0+", "flow", "seq-", "ack+", "ack-", "uptr+", "urgf+",
            "pushf+", "ts1-", "ts2+", "opt+", "exws", "bad",
        ];
        NAMES[self as usize]
    }

    /// The quirk spelled `name` in `p0f.fp`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }

    /// The IP version this quirk can only occur with.
    pub(super) const fn only_for(self) -> Option<IpVersion> {
        match self {
            Self::Df | Self::NonZeroId | Self::ZeroId | Self::MustBeZero => Some(IpVersion::V4),
            Self::Flow => Some(IpVersion::V6),
            _ => None,
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of [`Quirk`]s; displays like p0f (`df,id+`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks(u32);

impl Quirks {
    pub(super) const V4_ONLY: Self =
        Self(Quirk::Df.bit() | Quirk::NonZeroId.bit() | Quirk::ZeroId.bit());
    pub(super) const V6_ONLY: Self = Self(Quirk::Flow.bit());
    /// What p0f lets disappear in a fuzzy match (a middlebox clearing DF and the ID).
    pub(super) const MAY_VANISH: Self = Self(Quirk::Df.bit() | Quirk::NonZeroId.bit());
    /// What p0f lets appear in a fuzzy match.
    pub(super) const MAY_APPEAR: Self = Self(Quirk::ZeroId.bit() | Quirk::Ecn.bit());

    /// Whether `q` is in the set.
    pub const fn contains(self, q: Quirk) -> bool {
        self.0 & q.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Add `q` when `on`.
    pub(super) fn set(&mut self, q: Quirk, on: bool) {
        if on {
            self.0 |= q.bit();
        }
    }

    pub(super) const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl fmt::Display for Quirks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for q in Quirk::ALL.into_iter().filter(|q| self.contains(*q)) {
            write!(f, "{sep}{}", q.name())?;
            sep = ",";
        }
        Ok(())
    }
}

/// TCP option kinds in order, and the padding after EOL (p0f's `olayout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Layout {
    kinds: [u8; MAX_OPTS],
    len: u8,
    pub(super) eol_pad: u8,
}

impl Layout {
    /// Append a kind; false when full. Unused slots stay zero, so `==` compares layouts.
    pub(super) fn push(&mut self, kind: u8) -> bool {
        let Some(slot) = self.kinds.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = kind;
        self.len += 1;
        true
    }

    pub(super) fn kinds(&self) -> &[u8] {
        self.kinds.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for &kind in self.kinds() {
            f.write_str(sep)?;
            sep = ",";
            match kind {
                0 => write!(f, "eol+{}", self.eol_pad)?,
                1 => f.write_str("nop")?,
                2 => f.write_str("mss")?,
                3 => f.write_str("ws")?,
                4 => f.write_str("sok")?,
                5 => f.write_str("sack")?,
                8 => f.write_str("ts")?,
                other => write!(f, "?{other}")?,
            }
        }
        Ok(())
    }
}

/// The fields of one SYN that p0f matches on. Displays as a p0f signature line, the way
/// p0f prints an unknown one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syn {
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// TTL or hop limit as received.
    pub ttl: u8,
    /// IPv4 header length beyond 20 bytes; 0 for IPv6.
    pub ip_opt_len: u8,
    /// TCP window, unscaled.
    pub window: u16,
    /// MSS option value; 0 when absent.
    pub mss: u16,
    /// Window scale option value; 0 when absent.
    pub wscale: u8,
    /// Own timestamp (TSval); 0 when absent.
    pub ts1: u32,
    /// Everything unusual p0f notes about the packet.
    pub quirks: Quirks,
    /// Whether the SYN carries data (p0f's `pclass` `+`).
    pub payload: bool,
    /// IP plus TCP header length, for p0f's "MTU = MSS + actual headers" guess.
    pub(super) header_len: u16,
    pub(super) layout: Layout,
}

impl Syn {
    /// TCP option kinds in order (0 is EOL, 1 NOP, 2 MSS, 3 WS, 4 SACK-permitted, 5 SACK,
    /// 8 timestamps), at most [`MAX_OPTS`].
    pub fn options(&self) -> &[u8] {
        self.layout.kinds()
    }

    /// Bytes left after an EOL option.
    pub fn eol_pad(&self) -> u8 {
        self.layout.eol_pad
    }

    /// p0f's `detect_win_multi`: the window as (multiplier, of MTU rather than MSS),
    /// trying the divisors in p0f's order and taking the first that divides.
    pub(super) fn window_multiplier(&self) -> Option<(u16, bool)> {
        let (win, mss) = (u32::from(self.window), u32::from(self.mss));
        if win == 0 || mss < 100 {
            return None;
        }
        let v6 = self.version == IpVersion::V6;
        let ts = self.ts1 != 0;
        // (divisor, applies, is an MTU): MSS, MSS - 12 with timestamps, the MSS of a
        // 1500 MTU, then MTUs (IPv4 minimum headers, actual headers, IPv6, 1500).
        [
            (mss, true, false),
            (mss - 12, ts, false),
            (1460, true, false),
            (1448, true, false),
            (1440, v6, false),
            (1428, v6, false),
            (mss + 40, true, true),
            (mss + u32::from(self.header_len), true, true),
            (mss + 60, v6, true),
            (1500, true, true),
        ]
        .into_iter()
        .find(|&(div, applies, _)| applies && win % div == 0)
        .and_then(|(div, _, mtu)| Some((u16::try_from(win / div).ok()?, mtu)))
    }
}

impl fmt::Display for Syn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ver = if self.version == IpVersion::V4 { 4 } else { 6 };
        let dist = guess_distance(self.ttl);
        write!(f, "{ver}:{}+", self.ttl)?;
        if dist > MAX_DIST {
            f.write_str("?")?;
        } else {
            write!(f, "{dist}")?;
        }
        write!(f, ":{}:{}:", self.ip_opt_len, self.mss)?;
        match self.window_multiplier() {
            Some((n, false)) => write!(f, "mss*{n}")?,
            Some((n, true)) => write!(f, "mtu*{n}")?,
            None => write!(f, "{}", self.window)?,
        }
        let pclass = if self.payload { '+' } else { '0' };
        write!(
            f,
            ",{}:{}:{}:{pclass}",
            self.wscale, self.layout, self.quirks
        )
    }
}

/// Hops from the nearest initial TTL at or above `ttl` (32, 64, 128 or 255), as p0f
/// guesses them.
pub(super) fn guess_distance(ttl: u8) -> u8 {
    [32, 64, 128, 255]
        .into_iter()
        .find(|&initial| ttl <= initial)
        .map_or(0, |initial| initial - ttl)
}

/// The fingerprintable fields of a captured frame. `None` for anything that is not an
/// unfragmented IPv4/IPv6 TCP segment with SYN set and ACK, RST and FIN clear. Never
/// panics, allocates nothing.
pub fn syn(link: LinkType, frame: &[u8]) -> Option<Syn> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        LinkType::LinuxSll => SlicedPacket::from_linux_sll(frame),
        LinkType::RawIp => SlicedPacket::from_ip(frame),
    }
    .ok()?;
    let TransportSlice::Tcp(tcp) = sliced.transport.as_ref()? else {
        return None;
    };
    if !tcp.syn() || tcp.ack() || tcp.rst() || tcp.fin() {
        return None;
    }
    let mut quirks = Quirks::default();
    let (version, ttl, ip_opt_len, ip_header) = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => {
            if v4.is_payload_fragmented() {
                return None;
            }
            let h = v4.header().slice();
            let &[_, tos, _, _, id_hi, id_lo, flags, _, ttl, ..] = h else {
                return None;
            };
            quirks.set(Quirk::Ecn, tos & 0b11 != 0);
            quirks.set(Quirk::MustBeZero, flags & 0x80 != 0);
            let (df, id) = (flags & 0x40 != 0, u16::from_be_bytes([id_hi, id_lo]));
            quirks.set(Quirk::Df, df);
            quirks.set(Quirk::NonZeroId, df && id != 0);
            quirks.set(Quirk::ZeroId, !df && id == 0);
            (IpVersion::V4, ttl, h.len().saturating_sub(20), h.len())
        }
        NetSlice::Ipv6(v6) => {
            if v6.is_payload_fragmented() {
                return None;
            }
            let h = v6.header();
            quirks.set(Quirk::Flow, h.flow_label().value() != 0);
            quirks.set(Quirk::Ecn, h.ecn().value() != 0);
            // Like p0f, extension headers count neither as options nor as header length.
            (IpVersion::V6, h.hop_limit(), 0, 40)
        }
        NetSlice::Arp(_) => return None,
    };
    quirks.set(Quirk::Ecn, tcp.ece() || tcp.cwr() || tcp.ns());
    quirks.set(Quirk::ZeroSeq, tcp.sequence_number() == 0);
    quirks.set(Quirk::NonZeroAck, tcp.acknowledgment_number() != 0);
    quirks.set(Quirk::Urg, tcp.urg());
    quirks.set(
        Quirk::NonZeroUrgPtr,
        !tcp.urg() && tcp.urgent_pointer() != 0,
    );
    quirks.set(Quirk::Push, tcp.psh());
    let mut out = Syn {
        version,
        ttl,
        ip_opt_len: u8::try_from(ip_opt_len).ok()?,
        window: tcp.window_size(),
        mss: 0,
        wscale: 0,
        ts1: 0,
        quirks,
        payload: !tcp.payload().is_empty(),
        header_len: u16::try_from(ip_header + tcp.header_slice().len()).ok()?,
        layout: Layout::default(),
    };
    let ok = read_options(tcp.options(), &mut out);
    out.quirks.set(Quirk::BadOptions, !ok);
    Some(out)
}

/// p0f's option walk: records kinds and values into `syn`; false when the options are
/// malformed (truncated, bad lengths, or more than [`MAX_OPTS`]). A wrong length byte on
/// a fixed-size option is also `bad` but, like p0f, does not stop the walk.
fn read_options(opts: &[u8], syn: &mut Syn) -> bool {
    let mut rest = opts;
    while let Some((&kind, after)) = rest.split_first() {
        if !syn.layout.push(kind) {
            return false;
        }
        let (ok_len, used) = match (kind, after) {
            (0, _) => {
                syn.layout.eol_pad = u8::try_from(after.len()).unwrap_or(u8::MAX);
                syn.quirks
                    .set(Quirk::DataAfterEol, after.iter().any(|&b| b != 0));
                return true;
            }
            (1, _) => (true, 0),
            (2, &[len, hi, lo, ..]) => {
                syn.mss = u16::from_be_bytes([hi, lo]);
                (len == 4, 3)
            }
            (3, &[len, scale, ..]) => {
                syn.wscale = scale;
                syn.quirks.set(Quirk::ExcessiveWs, scale > 14);
                (len == 3, 2)
            }
            (4, &[len, ..]) => (len == 2, 1),
            (8, &[len, a, b, c, d, e, f, g, h, ..]) => {
                syn.ts1 = u32::from_be_bytes([a, b, c, d]);
                syn.quirks.set(Quirk::ZeroTs1, syn.ts1 == 0);
                syn.quirks
                    .set(Quirk::NonZeroTs2, u32::from_be_bytes([e, f, g, h]) != 0);
                (len == 10, 9)
            }
            (2 | 3 | 4 | 8, _) => return false,
            // SACK (10 to 34 bytes) and unknown options (2 to 40) carry their length.
            (_, &[len, ..]) => {
                let max = if kind == 5 { 34 } else { 40 };
                let min = if kind == 5 { 10 } else { 2 };
                if !(min..=max).contains(&len) || usize::from(len) - 1 > after.len() {
                    return false;
                }
                (true, usize::from(len) - 1)
            }
            (_, []) => return false,
        };
        syn.quirks.set(Quirk::BadOptions, !ok_len);
        rest = after.get(used..).unwrap_or(&[]);
    }
    true
}
