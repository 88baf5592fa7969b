//! The sealed body of a native SPA packet: [`SpaRequest`] and its fixed,
//! length-prefixed binary layout (see `proto/spa.md`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use rand::CryptoRng;

use crate::access::{Access, Proto};

/// Body format version; equals the clear header version.
pub(crate) const BODY_VERSION: u8 = 1;
/// Longest gateway name, in bytes of UTF-8.
pub const MAX_GATEWAY_LEN: usize = 64;
/// Most `proto/port` entries one request may carry.
pub const MAX_ACCESS: usize = 16;
/// Shortest valid body: 1-byte gateway, no address, one access entry.
pub(crate) const BODY_MIN: usize = 1 + 8 + 16 + 4 + 1 + 1 + 1 + 1 + 3;
/// Longest valid body: 64-byte gateway, IPv6 address, sixteen entries.
pub(crate) const BODY_MAX: usize =
    1 + 8 + 16 + 4 + 1 + MAX_GATEWAY_LEN + 1 + 16 + 1 + 3 * MAX_ACCESS;

const ADDR_NONE: u8 = 0;
const ADDR_V4: u8 = 4;
const ADDR_V6: u8 = 6;

/// What a native SPA packet asks for, once opened.
///
/// The codec checks only form; freshness of `timestamp`, uniqueness of
/// `nonce`, the gateway name and the policy are the agent's to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaRequest {
    /// Client time of sending, unix seconds.
    pub timestamp: u64,
    /// Random per-packet replay id.
    pub nonce: [u8; 16],
    /// Name of the gateway the packet is meant for (1..=64 bytes of UTF-8).
    pub gateway: String,
    /// Address to open; `None` means the packet's source address.
    pub allow_ip: Option<IpAddr>,
    /// Requested `proto/port` pairs, 1..=16 entries, ports non-zero.
    pub access: Vec<Access>,
    /// Requested grant duration in seconds; 0 means the policy default.
    pub duration_secs: u32,
}

/// Why a body was not well-formed (after successful authentication, or
/// before sealing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body ends in the middle of a field.
    #[error("body truncated")]
    Truncated,
    /// Bytes remain after the last field.
    #[error("trailing bytes after body")]
    TrailingBytes,
    /// The sealed version differs from the header's.
    #[error("sealed version {0} does not match header")]
    Version(u8),
    /// The gateway name is empty or longer than 64 bytes.
    #[error("gateway name length {0} outside 1..=64")]
    GatewayLength(usize),
    /// The gateway name is not UTF-8.
    #[error("gateway name is not utf-8")]
    GatewayUtf8,
    /// The address kind byte is not 0, 4 or 6.
    #[error("unknown address kind {0}")]
    AddressKind(u8),
    /// Zero or more than sixteen access entries.
    #[error("access count {0} outside 1..=16")]
    AccessCount(usize),
    /// An access entry's protocol is neither TCP (6) nor UDP (17).
    #[error("access protocol {0} is not tcp (6) or udp (17)")]
    AccessProto(u8),
    /// An access entry asks for port 0.
    #[error("access port 0")]
    AccessPort,
}

impl SpaRequest {
    /// A request stamped with `now` and a fresh replay nonce from `rng`,
    /// for the packet's source address and the policy's default duration.
    pub fn new(
        now: SystemTime,
        gateway: impl Into<String>,
        access: Vec<Access>,
        rng: &mut impl CryptoRng,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        SpaRequest {
            timestamp: crate::unix_secs(now),
            nonce,
            gateway: gateway.into(),
            allow_ip: None,
            access,
            duration_secs: 0,
        }
    }

    /// Checks the request can be encoded: gateway and access bounds, ports
    /// non-zero.
    ///
    /// # Errors
    /// The first [`BodyError`] found.
    pub fn validate(&self) -> Result<(), BodyError> {
        let g = self.gateway.len();
        if g == 0 || g > MAX_GATEWAY_LEN {
            return Err(BodyError::GatewayLength(g));
        }
        let n = self.access.len();
        if n == 0 || n > MAX_ACCESS {
            return Err(BodyError::AccessCount(n));
        }
        if self.access.iter().any(|a| a.port == 0) {
            return Err(BodyError::AccessPort);
        }
        Ok(())
    }

    /// Appends the body encoding to `out`. Call [`SpaRequest::validate`]
    /// first; lengths are written as `u8` and assume it passed.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(BODY_VERSION);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.duration_secs.to_be_bytes());
        out.push(u8::try_from(self.gateway.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.gateway.as_bytes());
        match self.allow_ip {
            None => out.push(ADDR_NONE),
            Some(IpAddr::V4(ip)) => {
                out.push(ADDR_V4);
                out.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                out.push(ADDR_V6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.push(u8::try_from(self.access.len()).unwrap_or(u8::MAX));
        for a in &self.access {
            out.push(a.proto.ip_number());
            out.extend_from_slice(&a.port.to_be_bytes());
        }
    }

    /// Decodes a body, requiring every field in bounds and no trailing bytes.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, BodyError> {
        let mut r = Reader(body);
        let version = r.u8()?;
        if version != BODY_VERSION {
            return Err(BodyError::Version(version));
        }
        let timestamp = u64::from_be_bytes(r.array()?);
        let nonce = r.array()?;
        let duration_secs = u32::from_be_bytes(r.array()?);
        let g = usize::from(r.u8()?);
        if g == 0 || g > MAX_GATEWAY_LEN {
            return Err(BodyError::GatewayLength(g));
        }
        let gateway = std::str::from_utf8(r.take(g)?).map_err(|_| BodyError::GatewayUtf8)?;
        let allow_ip = match r.u8()? {
            ADDR_NONE => None,
            ADDR_V4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            ADDR_V6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            other => return Err(BodyError::AddressKind(other)),
        };
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_ACCESS {
            return Err(BodyError::AccessCount(n));
        }
        let mut access = Vec::with_capacity(n);
        for _ in 0..n {
            let [p, hi, lo] = r.array()?;
            let proto = Proto::from_ip_number(p).ok_or(BodyError::AccessProto(p))?;
            let port = u16::from_be_bytes([hi, lo]);
            if port == 0 {
                return Err(BodyError::AccessPort);
            }
            access.push(Access { proto, port });
        }
        if !r.0.is_empty() {
            return Err(BodyError::TrailingBytes);
        }
        Ok(SpaRequest {
            timestamp,
            nonce,
            gateway: gateway.to_owned(),
            allow_ip,
            access,
            duration_secs,
        })
    }
}

/// A cursor over the body that never panics: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        if self.0.len() < n {
            return Err(BodyError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, BodyError> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_| BodyError::Truncated)
    }
}
