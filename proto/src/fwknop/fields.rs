//! The fwknop plaintext: `rand:B64(user):ts:version:type:B64(msg)
//! [:B64(nat)][:B64(server_auth)][:timeout]:digest`, parsed with the
//! checks fwknop's `fko_decode_spa_data` makes, and written back by the
//! encoder.

use std::net::Ipv4Addr;

use base64::Engine as _;

use super::digest::{DigestType, MAX_B64_LEN};
use super::{B64, Field, FwknopError};
use crate::access::{Access, parse_port};

/// Shortest plaintext fwknop accepts (`MIN_SPA_ENCODED_MSG_SIZE`).
const MIN_PLAINTEXT: usize = 36;
/// Plaintext must be shorter than this (`MAX_SPA_ENCODED_MSG_SIZE`).
const MAX_PLAINTEXT: usize = 1500;
/// Longest base64 message, NAT access or server auth field.
const MAX_FIELD: usize = 256;

/// fwknop message types (`-C` command, `-N` NAT, `-f` timeout).
pub mod msg_type {
    /// Run a command on the server (`-C`); knockgate refuses it.
    pub const COMMAND: u8 = 0;
    /// Open access (the usual case).
    pub const ACCESS: u8 = 1;
    /// Forward through NAT.
    pub const NAT_ACCESS: u8 = 2;
    /// Open access for a client-chosen timeout (`-f`).
    pub const CLIENT_TIMEOUT_ACCESS: u8 = 3;
    /// NAT with a client-chosen timeout.
    pub const CLIENT_TIMEOUT_NAT_ACCESS: u8 = 4;
    /// Local NAT.
    pub const LOCAL_NAT_ACCESS: u8 = 5;
    /// Local NAT with a client-chosen timeout.
    pub const CLIENT_TIMEOUT_LOCAL_NAT_ACCESS: u8 = 6;
}

/// A decoded fwknop request. The codec checks form only; age, replay,
/// user and policy checks are the agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwknopRequest {
    /// The 16 decimal digits the client drew.
    pub rand: String,
    /// User name (`-U`), validated as fwknop does.
    pub user: String,
    /// Client time of sending plus any `--time-offset`, unix seconds.
    pub timestamp: u64,
    /// Client protocol version, e.g. `3.0.0` (at most 8 characters).
    pub version: String,
    /// Message type, 0..=6 (see [`msg_type`]); only 1 and 3 grant access.
    pub msg_type: u8,
    /// Address to open; `0.0.0.0` (client `-s`) means the packet's source.
    pub allow_ip: Ipv4Addr,
    /// Requested `proto/port` pairs (empty for command messages).
    pub access: Vec<Access>,
    /// The command of a type-0 message.
    pub command: Option<String>,
    /// `host,port` of a NAT message.
    pub nat_access: Option<String>,
    /// Optional server-auth field.
    pub server_auth: Option<String>,
    /// Client-requested timeout in seconds (types 3, 4, 6).
    pub client_timeout: Option<u32>,
    /// Inner digest type, inferred from its length (SHA3 as a fallback).
    pub digest_type: DigestType,
}

impl FwknopRequest {
    /// Whether the message type asks for plain access (1, or 3 with a timeout).
    #[must_use]
    pub fn is_access(&self) -> bool {
        matches!(
            self.msg_type,
            msg_type::ACCESS | msg_type::CLIENT_TIMEOUT_ACCESS
        )
    }

    /// `allow_ip`, or `None` for `0.0.0.0` (use the packet's source).
    #[must_use]
    pub fn explicit_ip(&self) -> Option<Ipv4Addr> {
        Some(self.allow_ip).filter(|ip| !ip.is_unspecified())
    }
}

fn is_nat(t: u8) -> bool {
    matches!(t, 2 | 4 | 5 | 6)
}

fn has_timeout(t: u8) -> bool {
    matches!(t, 3 | 4 | 6)
}

/// Parses and checks a decrypted plaintext (padding already removed).
pub(crate) fn parse(pt: &[u8]) -> Result<FwknopRequest, FwknopError> {
    let (encoded, digest) = split_digest(pt)?;
    let digest_type = verify_digest(encoded, digest)?;

    let mut f = encoded.split(|&b| b == b':');
    let rand = ascii(field(&mut f, Field::Rand)?, 16, 16, Field::Rand)?;
    let user = decode_user(field(&mut f, Field::User)?)?;
    let timestamp = digits(field(&mut f, Field::Timestamp)?, 12, Field::Timestamp)?;
    let version = ascii(field(&mut f, Field::Version)?, 1, 8, Field::Version)?;
    let msg_type = decode_msg_type(field(&mut f, Field::MsgType)?)?;
    let rest: Vec<&[u8]> = f.collect();
    // fwknop's per-type limit on the fields after the type.
    let max_rest = match msg_type {
        0 | 1 => 2,
        2 | 3 | 5 => 3,
        _ => 4,
    };
    if rest.len() > max_rest {
        return Err(FwknopError::FieldCount);
    }
    let mut rest = rest.into_iter();
    let msg = b64_field(rest.next(), Field::Message)?;
    let (allow_ip, access, command) = parse_message(&msg, msg_type)?;
    let nat_access = if is_nat(msg_type) {
        Some(parse_nat(&b64_field(rest.next(), Field::NatAccess)?)?)
    } else {
        None
    };
    let tail: Vec<&[u8]> = rest.collect();
    let (server_auth, client_timeout) = parse_tail(msg_type, &tail)?;
    Ok(FwknopRequest {
        rand,
        user,
        timestamp,
        version,
        msg_type,
        allow_ip,
        access,
        command,
        nat_access,
        server_auth,
        client_timeout,
        digest_type,
    })
}

/// Checks the plaintext's form as fwknop does before reading any field, and
/// splits it into the encoded fields and the inner digest after the last `:`.
fn split_digest(pt: &[u8]) -> Result<(&[u8], &[u8]), FwknopError> {
    if pt.len() < MIN_PLAINTEXT || pt.len() >= MAX_PLAINTEXT {
        return Err(FwknopError::DecryptFailed);
    }
    // A wrong key lands here: fwknop's own test of a good decryption.
    if !pt[..16].iter().all(u8::is_ascii_digit) || pt[16] != b':' {
        return Err(FwknopError::DecryptFailed);
    }
    if !pt.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(FwknopError::NotPrintable);
    }
    if pt.iter().filter(|&&b| b == b':').count() < 6 {
        return Err(FwknopError::FieldCount);
    }
    let split = pt
        .iter()
        .rposition(|&b| b == b':')
        .ok_or(FwknopError::FieldCount)?;
    Ok((&pt[..split], &pt[split + 1..]))
}

/// The message type field: at most two digits, 0..=6.
fn decode_msg_type(raw: &[u8]) -> Result<u8, FwknopError> {
    let t = digits(raw, 2, Field::MsgType)?;
    u8::try_from(t)
        .ok()
        .filter(|&t| t <= 6)
        .ok_or(FwknopError::Field(Field::MsgType))
}

/// The fields after the message (and NAT access): an optional server-auth
/// field, then the client timeout that types 3, 4 and 6 require.
fn parse_tail(msg_type: u8, tail: &[&[u8]]) -> Result<(Option<String>, Option<u32>), FwknopError> {
    let (auth, timeout) = match (has_timeout(msg_type), tail) {
        (_, []) => (None, None),
        (true, [t]) => (None, Some(*t)),
        (true, [a, t]) => (Some(*a), Some(*t)),
        (false, [a]) => (Some(*a), None),
        _ => return Err(FwknopError::Field(Field::ServerAuth)),
    };
    let server_auth = auth.map(|a| b64_text(a, Field::ServerAuth)).transpose()?;
    let client_timeout = match (has_timeout(msg_type), timeout) {
        (true, Some(t)) => {
            let v = digits(t, MAX_FIELD, Field::ClientTimeout)?;
            Some(
                u32::try_from(v)
                    .ok()
                    .filter(|&v| v <= 65_536)
                    .ok_or(FwknopError::Field(Field::ClientTimeout))?,
            )
        }
        (true, None) => return Err(FwknopError::Field(Field::ClientTimeout)),
        (false, _) => None,
    };
    Ok((server_auth, client_timeout))
}

/// Checks the inner digest; its type is inferred from its length, with
/// SHA3 tried when a SHA-256/512-length digest does not match.
fn verify_digest(encoded: &[u8], digest: &[u8]) -> Result<DigestType, FwknopError> {
    use subtle::ConstantTimeEq as _;
    let first = DigestType::from_b64_len(digest.len()).ok_or(FwknopError::DigestLength)?;
    let fallback = match first {
        DigestType::Sha256 => Some(DigestType::Sha3_256),
        DigestType::Sha512 => Some(DigestType::Sha3_512),
        _ => None,
    };
    let mut buf = [0u8; MAX_B64_LEN + 2];
    for t in std::iter::once(first).chain(fallback) {
        if bool::from(t.b64_digest(encoded, &mut buf).ct_eq(digest)) {
            return Ok(t);
        }
    }
    Err(FwknopError::DigestMismatch)
}

fn field<'a>(
    it: &mut impl Iterator<Item = &'a [u8]>,
    field: Field,
) -> Result<&'a [u8], FwknopError> {
    it.next().ok_or(FwknopError::Field(field))
}

fn ascii(s: &[u8], min: usize, max: usize, field: Field) -> Result<String, FwknopError> {
    if s.len() < min || s.len() > max {
        return Err(FwknopError::Field(field));
    }
    // The plaintext was checked printable ASCII, so this cannot fail.
    String::from_utf8(s.to_vec()).map_err(|_| FwknopError::Field(field))
}

fn digits(s: &[u8], max: usize, field: Field) -> Result<u64, FwknopError> {
    if s.is_empty() || s.len() > max || !s.iter().all(u8::is_ascii_digit) {
        return Err(FwknopError::Field(field));
    }
    s.iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(FwknopError::Field(field))
}

/// Decodes fwknop's base64 (standard alphabet, `=` stripped, trailing bits
/// ignored as its `b64_decode` does).
fn unb64(s: &[u8], field: Field) -> Result<Vec<u8>, FwknopError> {
    B64.decode(s).map_err(|_| FwknopError::Field(field))
}

fn b64_field(s: Option<&[u8]>, field: Field) -> Result<Vec<u8>, FwknopError> {
    match s {
        Some(s) if !s.is_empty() && s.len() <= MAX_FIELD => unb64(s, field),
        _ => Err(FwknopError::Field(field)),
    }
}

fn b64_text(s: &[u8], field: Field) -> Result<String, FwknopError> {
    let bytes = b64_field(Some(s), field)?;
    String::from_utf8(bytes).map_err(|_| FwknopError::Field(field))
}

/// `validate_username`: 1..=64 base64 characters decoding to printable
/// ASCII without `"/\[]:;|=,+*?<>`.
fn decode_user(s: &[u8]) -> Result<String, FwknopError> {
    if s.is_empty() || s.len() > 64 {
        return Err(FwknopError::Field(Field::User));
    }
    let bytes = unb64(s, Field::User)?;
    let ok = !bytes.is_empty()
        && bytes.iter().all(|&c| {
            c.is_ascii_alphanumeric()
                || ((0x20..=0x7e).contains(&c) && !b"\"/\\[]:;|=,+*?<>".contains(&c))
        });
    if !ok {
        return Err(FwknopError::Field(Field::User));
    }
    String::from_utf8(bytes).map_err(|_| FwknopError::Field(Field::User))
}

/// `allowIP,proto/port[,proto/port...]`, or `allowIP,command` for type 0.
fn parse_message(
    msg: &[u8],
    t: u8,
) -> Result<(Ipv4Addr, Vec<Access>, Option<String>), FwknopError> {
    let bad = FwknopError::Field(Field::Message);
    let text = std::str::from_utf8(msg).map_err(|_| bad)?;
    let (ip, rest) = text.split_once(',').ok_or(bad)?;
    let ip = parse_ipv4(ip).ok_or(bad)?;
    if rest.is_empty() {
        return Err(bad);
    }
    if t == msg_type::COMMAND {
        return Ok((ip, Vec::new(), Some(rest.to_owned())));
    }
    let access = rest
        .split(',')
        .map(|spec| spec.parse::<Access>())
        .collect::<Result<Vec<_>, _>>();
    Ok((ip, access.map_err(|_| bad)?, None))
}

/// A dotted quad as fwknop's client writes it (7..=15 characters). Rust's
/// parser refuses leading zeros, which `inet_aton` would read as octal.
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    (7..=15)
        .contains(&s.len())
        .then(|| s.parse().ok())
        .flatten()
}

/// `validate_nat_access_msg`: `host,port`, one comma, host at most 64
/// characters without ` /?"'\`.
fn parse_nat(nat: &[u8]) -> Result<String, FwknopError> {
    let bad = FwknopError::Field(Field::NatAccess);
    let text = std::str::from_utf8(nat).map_err(|_| bad)?;
    let (host, port) = text.split_once(',').ok_or(bad)?;
    if host.len() > 64 || port.contains(',') || host.bytes().any(|c| b" /?\"'\\".contains(&c)) {
        return Err(bad);
    }
    parse_port(port.as_bytes()).ok_or(bad)?;
    Ok(text.to_owned())
}

/// Writes the plaintext fields (without the digest) as the client does.
pub(crate) fn encode(req: &FwknopRequest) -> String {
    use std::fmt::Write as _;
    let message = match &req.command {
        Some(cmd) if req.msg_type == msg_type::COMMAND => format!("{},{cmd}", req.allow_ip),
        _ => {
            let mut m = req.allow_ip.to_string();
            for a in &req.access {
                let _ = write!(m, ",{a}");
            }
            m
        }
    };
    let mut s = format!(
        "{}:{}:{}:{}:{}:{}",
        req.rand,
        B64.encode(&req.user),
        req.timestamp,
        req.version,
        req.msg_type,
        B64.encode(message)
    );
    if let Some(nat) = &req.nat_access {
        let _ = write!(s, ":{}", B64.encode(nat));
    }
    if let Some(auth) = &req.server_auth {
        let _ = write!(s, ":{}", B64.encode(auth));
    }
    if let Some(t) = req
        .client_timeout
        .filter(|&t| t > 0 && req.msg_type != msg_type::COMMAND)
    {
        let _ = write!(s, ":{t}");
    }
    s
}
