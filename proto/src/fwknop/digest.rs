//! fwknop's digest types (`-m`, `--hmac-digest-type`), their base64 lengths,
//! and the two uses: the inner plaintext digest and the outer HMAC, whose
//! keyed state is prepared once per user.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit as _};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use sha3::{Sha3_256, Sha3_512};

use super::B64;
use base64::Engine as _;

/// A digest algorithm fwknop can use for the inner digest or the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestType {
    /// MD5 (22 base64 characters).
    Md5,
    /// SHA-1 (27).
    Sha1,
    /// SHA-256 (43), fwknop's default for both uses.
    Sha256,
    /// SHA-384 (64).
    Sha384,
    /// SHA-512 (86).
    Sha512,
    /// SHA3-256 (43).
    Sha3_256,
    /// SHA3-512 (86).
    Sha3_512,
}

/// The HMAC digest type of a user (fwknop's `HMAC_DIGEST_TYPE`); not
/// self-describing on the wire, so it is part of the user's keys.
pub type HmacType = DigestType;

/// Longest base64 digest (SHA-512 and SHA3-512, unpadded).
pub(crate) const MAX_B64_LEN: usize = 86;

impl DigestType {
    /// Length of the digest in unpadded base64, as it appears on the wire.
    #[must_use]
    pub const fn b64_len(self) -> usize {
        match self {
            DigestType::Md5 => 22,
            DigestType::Sha1 => 27,
            DigestType::Sha256 | DigestType::Sha3_256 => 43,
            DigestType::Sha384 => 64,
            DigestType::Sha512 | DigestType::Sha3_512 => 86,
        }
    }

    /// fwknop's name: `md5`, `sha1`, `sha256`, `sha384`, `sha512`,
    /// `sha3_256`, `sha3_512`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DigestType::Md5 => "md5",
            DigestType::Sha1 => "sha1",
            DigestType::Sha256 => "sha256",
            DigestType::Sha384 => "sha384",
            DigestType::Sha512 => "sha512",
            DigestType::Sha3_256 => "sha3_256",
            DigestType::Sha3_512 => "sha3_512",
        }
    }

    /// The SHA-2 (or MD5/SHA-1) type an inner digest of this base64 length
    /// is first taken for, as fwknop's decoder does.
    pub(crate) const fn from_b64_len(len: usize) -> Option<Self> {
        match len {
            22 => Some(DigestType::Md5),
            27 => Some(DigestType::Sha1),
            43 => Some(DigestType::Sha256),
            64 => Some(DigestType::Sha384),
            86 => Some(DigestType::Sha512),
            _ => None,
        }
    }

    /// Unpadded base64 of the digest of `data`, written into `out`.
    pub(crate) fn b64_digest<'o>(
        self,
        data: &[u8],
        out: &'o mut [u8; MAX_B64_LEN + 2],
    ) -> &'o [u8] {
        match self {
            DigestType::Md5 => b64(&Md5::digest(data), out),
            DigestType::Sha1 => b64(&Sha1::digest(data), out),
            DigestType::Sha256 => b64(&Sha256::digest(data), out),
            DigestType::Sha384 => b64(&Sha384::digest(data), out),
            DigestType::Sha512 => b64(&Sha512::digest(data), out),
            DigestType::Sha3_256 => b64(&Sha3_256::digest(data), out),
            DigestType::Sha3_512 => b64(&Sha3_512::digest(data), out),
        }
    }
}

impl fmt::Display for DigestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of fwknop's digest types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown digest type (expected md5, sha1, sha256, sha384, sha512, sha3_256 or sha3_512)")]
pub struct UnknownDigestType;

impl FromStr for DigestType {
    type Err = UnknownDigestType;

    /// fwknop's names, case-insensitive (`SHA256` as in `access.conf`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            DigestType::Md5,
            DigestType::Sha1,
            DigestType::Sha256,
            DigestType::Sha384,
            DigestType::Sha512,
            DigestType::Sha3_256,
            DigestType::Sha3_512,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .ok_or(UnknownDigestType)
    }
}

fn b64<'o>(digest: &[u8], out: &'o mut [u8; MAX_B64_LEN + 2]) -> &'o [u8] {
    // 64 bytes at most encode to 86 characters, which always fit.
    let n = B64.encode_slice(digest, out).unwrap_or(0);
    &out[..n]
}

/// An HMAC key schedule computed once: the inner and outer padded-key
/// states. Verifying then costs only hashing the message, not the key.
#[derive(Clone)]
pub(crate) enum PreparedHmac {
    Md5(Hmac<Md5>),
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
    Sha3_256(Hmac<Sha3_256>),
    Sha3_512(Hmac<Sha3_512>),
}

impl PreparedHmac {
    /// Prepares the keyed state. Any key length is accepted by HMAC itself;
    /// the caller bounds it as fwknop does.
    pub(crate) fn new(t: DigestType, key: &[u8]) -> Option<Self> {
        Some(match t {
            DigestType::Md5 => PreparedHmac::Md5(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha1 => PreparedHmac::Sha1(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha256 => PreparedHmac::Sha256(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha384 => PreparedHmac::Sha384(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha512 => PreparedHmac::Sha512(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha3_256 => PreparedHmac::Sha3_256(Hmac::new_from_slice(key).ok()?),
            DigestType::Sha3_512 => PreparedHmac::Sha3_512(Hmac::new_from_slice(key).ok()?),
        })
    }

    /// Unpadded base64 of HMAC(prefix ‖ body), written into `out`.
    pub(crate) fn b64_tag<'o>(
        &self,
        prefix: &[u8],
        body: &[u8],
        out: &'o mut [u8; MAX_B64_LEN + 2],
    ) -> &'o [u8] {
        fn run<M: hmac::Mac + Clone>(m: &M, prefix: &[u8], body: &[u8]) -> hmac::digest::Output<M> {
            let mut m = m.clone();
            m.update(prefix);
            m.update(body);
            m.finalize().into_bytes()
        }
        match self {
            PreparedHmac::Md5(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha1(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha256(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha384(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha512(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha3_256(m) => b64(&run(m, prefix, body), out),
            PreparedHmac::Sha3_512(m) => b64(&run(m, prefix, body), out),
        }
    }
}
