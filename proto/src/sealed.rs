//! Sealed knock sequences: a knock sequence whose destination ports carry an
//! authenticated, encrypted request (the address to open, the access asked
//! for, a timestamp and a nonce), bound to one gateway, under a user's
//! gateway-scoped SPA key. Specified with test vectors in `proto/sealed.md`.
//!
//! The codec is pure: the caller passes time and randomness, and the agent
//! judges freshness, replay and policy. [`seal`] gives the bytes, [`port`] the
//! port each byte is knocked on; the agent puts knocks back in order by their
//! index ([`index_of`]) and calls [`open`] with the candidates of the clear
//! hint ([`SealedKeys::hint`]), which also says how many knocks to expect.

use std::net::IpAddr;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

use crate::access::{Access, Proto};
use crate::spa::SpaKey;

/// Bytes of the clear hint that selects the key: the first two knocks.
pub const HINT_LEN: usize = 2;
/// Bytes of the authentication tag: the last six knocks.
pub const TAG_LEN: usize = 6;
/// Bytes of the sealed body without an address: flags, timestamp, nonce, port.
const BODY_LEN: usize = 1 + 4 + 2 + 2;
/// Knocks of a sequence that opens the knocking address itself.
pub const LEN_SOURCE: usize = HINT_LEN + BODY_LEN + TAG_LEN;
/// Knocks of a sequence that carries an IPv4 address.
pub const LEN_V4: usize = LEN_SOURCE + 4;
/// Knocks of a sequence that carries an IPv6 address: the longest.
pub const MAX_LEN: usize = LEN_SOURCE + 16;
/// The lengths a sequence can have, shortest first.
pub const LENGTHS: [usize; 3] = [LEN_SOURCE, LEN_V4, MAX_LEN];
/// Ports a gateway's sealed range spans: one block of 256 per knock index.
pub const RANGE: u16 = (MAX_LEN as u16) << 8;
/// Where a gateway's sealed range starts unless its config says otherwise: 20000-28447,
/// below Linux's ephemeral ports (32768-60999), so the host's own connections never
/// land in it.
pub const DEFAULT_BASE_PORT: u16 = 20_000;
/// Seconds per hint window: the hint of one user changes this often.
pub const HINT_WINDOW_SECS: u64 = 60;

const LABEL_HINT: &[u8] = b"knockgate sealed hint v1";
const LABEL_MAC: &[u8] = b"knockgate sealed mac v1";
const LABEL_ENC: &[u8] = b"knockgate sealed enc v1";
const MAC_DOMAIN: &[u8] = b"knockgate sealed knock v1";

type HmacSha256 = Hmac<Sha256>;

/// The three keys of one user at one gateway, derived from the user's SPA key
/// for that gateway (`scope::gateway_spa_key`).
pub struct SealedKeys {
    hint: [u8; 32],
    mac: [u8; 32],
    enc: [u8; 32],
}

impl Drop for SealedKeys {
    fn drop(&mut self) {
        self.hint.zeroize();
        self.mac.zeroize();
        self.enc.zeroize();
    }
}

impl std::fmt::Debug for SealedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedKeys(..)")
    }
}

impl SealedKeys {
    /// `HKDF-Expand(PRK = SPA secret, info = label, L = 32)` for each label.
    #[must_use]
    pub fn derive(key: &SpaKey) -> Self {
        let expand = |label: &[u8]| {
            let mut out = [0; 32];
            // A 32-byte secret is a valid PRK and 32 bytes are within HKDF's
            // bound: neither step can fail.
            if let Ok(hk) = Hkdf::<Sha256>::from_prk(key.secret()) {
                let _ = hk.expand(label, &mut out);
            }
            out
        };
        SealedKeys {
            hint: expand(LABEL_HINT),
            mac: expand(LABEL_MAC),
            enc: expand(LABEL_ENC),
        }
    }

    /// The clear hint of a sequence of `len` knocks (one of [`LENGTHS`]) in hint window
    /// `window` (`unix_secs / HINT_WINDOW_SECS`): `HMAC-SHA256(hint key, u64be(window) ‖
    /// u8(kind))`, first two bytes, where kind is the index of `len` in [`LENGTHS`]. So
    /// the hint also tells the gateway how many knocks to wait for.
    #[must_use]
    pub fn hint(&self, window: u64, len: usize) -> [u8; HINT_LEN] {
        let kind = LENGTHS.iter().position(|&l| l == len).unwrap_or(usize::MAX) as u8;
        let out = hmac(&self.hint, &[&window.to_be_bytes(), &[kind]]);
        [out[0], out[1]]
    }
}

/// What a sealed sequence asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Unix seconds when it was sealed.
    pub timestamp: u32,
    /// Random: two requests in the same second differ.
    pub nonce: u16,
    /// What to open.
    pub access: Access,
    /// The address to open; `None` = the knocking address, which the tag binds.
    pub allow_ip: Option<IpAddr>,
}

/// A sealed request: the bytes the knocks carry, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl Sealed {
    /// The bytes, one per knock.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The destination ports, in order, of a range starting at `base`.
    pub fn ports(&self, base: u16) -> impl Iterator<Item = u16> + '_ {
        self.bytes()
            .iter()
            .enumerate()
            .map(move |(i, &b)| port(base, i, b))
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} knocks)", self.len)
    }
}

/// The sealed range starting at `base`, or `None` when it would not fit below port 65536
/// (or `base` is 0): the one check of a configured or requested base.
#[must_use]
pub fn range(base: u16) -> Option<std::ops::RangeInclusive<u16>> {
    let last = base.checked_add(RANGE - 1)?;
    (base != 0).then_some(base..=last)
}

/// The port knock `index` carrying `byte` goes to: `base + index·256 + byte`.
/// `base + RANGE - 1` must fit a port (checked where the base is configured).
#[must_use]
pub fn port(base: u16, index: usize, byte: u8) -> u16 {
    base.wrapping_add(((index as u16) << 8) | u16::from(byte))
}

/// A knock on `port` of the range at `base`: its (index, byte), or `None`
/// when the port is outside the range.
#[must_use]
pub fn index_of(base: u16, port: u16) -> Option<(usize, u8)> {
    let off = port.checked_sub(base).filter(|&o| o < RANGE)?;
    Some((usize::from(off >> 8), (off & 0xff) as u8))
}

/// Why sealed bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    #[error("length {0} is not one of the sealed lengths")]
    Length(usize),
    #[error("bad tag")]
    BadTag,
    #[error("hint does not belong to the request's time")]
    StaleHint,
    #[error("port 0")]
    PortZero,
    #[error("the allowed address is not a unicast address")]
    BadAddress,
}

/// Seal `request` for `gateway`. `source` is the address the gateway will
/// see the knocks come from; it is bound by the tag when `request.allow_ip`
/// is `None` (and ignored otherwise).
#[must_use]
pub fn seal(keys: &SealedKeys, gateway: &str, source: IpAddr, request: &Request) -> Sealed {
    let window = u64::from(request.timestamp) / HINT_WINDOW_SECS;
    let len = match request.allow_ip {
        None => LEN_SOURCE,
        Some(IpAddr::V4(_)) => LEN_V4,
        Some(IpAddr::V6(_)) => MAX_LEN,
    };
    seal_hinted(keys, keys.hint(window, len), gateway, source, request)
}

/// [`seal`] with the hint given.
fn seal_hinted(
    keys: &SealedKeys,
    hint: [u8; HINT_LEN],
    gateway: &str,
    source: IpAddr,
    request: &Request,
) -> Sealed {
    let mut bytes = [0; MAX_LEN];
    bytes[..HINT_LEN].copy_from_slice(&hint);
    let mut body = [0u8; BODY_LEN + 16];
    let kind = match request.allow_ip {
        None => 0,
        Some(IpAddr::V4(_)) => 1,
        Some(IpAddr::V6(_)) => 2,
    };
    let proto = match request.access.proto {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    };
    body[0] = kind | (proto << 2);
    body[1..5].copy_from_slice(&request.timestamp.to_be_bytes());
    body[5..7].copy_from_slice(&request.nonce.to_be_bytes());
    body[7..9].copy_from_slice(&request.access.port.to_be_bytes());
    let body_len = match request.allow_ip {
        None => BODY_LEN,
        Some(IpAddr::V4(a)) => {
            body[9..13].copy_from_slice(&a.octets());
            BODY_LEN + 4
        }
        Some(IpAddr::V6(a)) => {
            body[9..25].copy_from_slice(&a.octets());
            BODY_LEN + 16
        }
    };
    let len = HINT_LEN + body_len + TAG_LEN;
    let bound = request.allow_ip.is_none().then_some(source);
    let tag = tag(keys, gateway, &bytes[..HINT_LEN], bound, &body[..body_len]);
    let stream = hmac(&keys.enc, &[&tag]);
    for (i, b) in body[..body_len].iter().enumerate() {
        bytes[HINT_LEN + i] = b ^ stream[i];
    }
    bytes[HINT_LEN + body_len..len].copy_from_slice(&tag);
    body.zeroize();
    Sealed { bytes, len }
}

/// Open the bytes of a complete sequence from `source`, sealed for `gateway`
/// under `keys`. Checks the tag, the hint against the request's own time, and
/// the body; the caller checks freshness, replay and policy.
///
/// # Errors
/// [`SealedError`]: which check failed.
pub fn open(
    keys: &SealedKeys,
    gateway: &str,
    source: IpAddr,
    bytes: &[u8],
) -> Result<Request, SealedError> {
    let len = bytes.len();
    if !LENGTHS.contains(&len) {
        return Err(SealedError::Length(len));
    }
    let body_len = len - HINT_LEN - TAG_LEN;
    let (hint, rest) = bytes.split_at(HINT_LEN);
    let (sealed_body, tag_sent) = rest.split_at(body_len);
    let stream = hmac(&keys.enc, &[tag_sent]);
    let mut body = [0u8; BODY_LEN + 16];
    for (i, b) in sealed_body.iter().enumerate() {
        body[i] = b ^ stream[i];
    }
    let flags = body[0];
    let kind = flags & 0b11;
    let expected_len = match kind {
        0 => LEN_SOURCE,
        1 => LEN_V4,
        2 => MAX_LEN,
        _ => 0,
    };
    // The length decides the kind; a kind the length contradicts cannot be a
    // genuine request, so its tag is not worth computing.
    if flags & !0b111 != 0 || expected_len != len {
        body.zeroize();
        return Err(SealedError::BadTag);
    }
    let bound = (kind == 0).then_some(source);
    let tag = tag(keys, gateway, hint, bound, &body[..body_len]);
    if !bool::from(tag[..].ct_eq(tag_sent)) {
        body.zeroize();
        return Err(SealedError::BadTag);
    }
    let request = decode(&body[..body_len]);
    body.zeroize();
    let request = request?;
    let window = u64::from(request.timestamp) / HINT_WINDOW_SECS;
    if keys.hint(window, len)[..] != *hint {
        return Err(SealedError::StaleHint);
    }
    Ok(request)
}

/// The body after its tag checked out.
fn decode(body: &[u8]) -> Result<Request, SealedError> {
    let flags = body[0];
    let be16 = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let timestamp = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    let port = be16(7);
    if port == 0 {
        return Err(SealedError::PortZero);
    }
    let proto = if flags & 0b100 == 0 {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let allow_ip = match flags & 0b11 {
        1 => {
            let mut a = [0; 4];
            a.copy_from_slice(&body[9..13]);
            Some(IpAddr::from(a))
        }
        2 => {
            let mut a = [0; 16];
            a.copy_from_slice(&body[9..25]);
            Some(IpAddr::from(a))
        }
        _ => None,
    };
    if let Some(ip) = allow_ip
        && (ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]))
    {
        return Err(SealedError::BadAddress);
    }
    Ok(Request {
        timestamp,
        nonce: be16(5),
        access: Access { proto, port },
        allow_ip,
    })
}

/// `HMAC-SHA256(mac key, domain ‖ u8(len gw) ‖ gw ‖ hint ‖ u8(len a) ‖ a ‖ body)`,
/// first six bytes; `a` is the bound source address (4 or 16 bytes) or empty.
fn tag(
    keys: &SealedKeys,
    gateway: &str,
    hint: &[u8],
    bound: Option<IpAddr>,
    body: &[u8],
) -> [u8; TAG_LEN] {
    let (v4, v6);
    let addr: &[u8] = match bound {
        None => &[],
        Some(IpAddr::V4(a)) => {
            v4 = a.octets();
            &v4
        }
        Some(IpAddr::V6(a)) => {
            v6 = a.octets();
            &v6
        }
    };
    let gw = gateway.as_bytes();
    let out = hmac(
        &keys.mac,
        &[
            MAC_DOMAIN,
            &[gw.len().min(255) as u8],
            gw,
            hint,
            &[addr.len() as u8],
            addr,
            body,
        ],
    );
    let mut t = [0; TAG_LEN];
    t.copy_from_slice(&out[..TAG_LEN]);
    t
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests;
