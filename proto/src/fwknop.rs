//! The stock fwknop client's SPA packet (Rijndael + HMAC), byte-exact with
//! Debian's fwknop 2.6.10 (FKO protocol 3.0.0).
//!
//! Wire: `B64(Salted__‖salt‖AES-256-CBC(plaintext))[10..] ‖ B64(HMAC)`, all
//! base64 unpadded; the dropped 10 characters are always `U2FsdGVkX1`, and
//! the HMAC covers them. Decoding runs cheapest first, as fwknopd does:
//!
//! 1. [`FwknopPacket::parse`]: length 140..=1500, base64 characters, no
//!    re-added `U2FsdGVkX1` (or `hQ` past 400 characters), and a first
//!    character that can follow `U2FsdGVkX1` (one of `8 9 + /`).
//! 2. Per user: split the tag off by the user's HMAC type and compare the
//!    HMAC in constant time ([`PreparedKeys::verify_hmac`]).
//! 3. For the matching user only: base64, `EVP_BytesToKey` with the salt,
//!    AES-256-CBC with a PKCS#7 check, 16 digits and `:`, the inner digest,
//!    then the fields ([`PreparedKeys::decrypt`]).
//!
//! Only HMAC mode is supported: a Rijndael-only stanza would make the agent
//! a decryption oracle for anyone. `ENCRYPTION_MODE legacy` and GPG are not
//! supported either.

mod cipher;
mod digest;
mod encode;
mod fields;
mod keys;
#[cfg(test)]
mod tests;

pub use digest::{DigestType, HmacType, UnknownDigestType};
pub use encode::{FwknopEncodeError, encode};
pub use fields::{FwknopRequest, msg_type};
pub use keys::{
    FwknopKeyError, FwknopKeys, FwknopVerifier, MAX_ENC_KEY_LEN, MAX_HMAC_KEY_LEN, PreparedKeys,
};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};

/// fwknop's base64: standard alphabet, `=` stripped when writing, padding
/// and trailing bits tolerated when reading (as its `b64_decode`).
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The base64 of `Salted__` as far as whole characters go; fwknop drops it
/// from the wire and re-adds it before the HMAC and decryption.
pub const SALTED_B64: &str = "U2FsdGVkX1";
/// Shortest wire packet fwknopd considers (`MIN_SPA_DATA_SIZE`).
pub const MIN_WIRE_LEN: usize = 140;
/// Longest wire packet fwknopd considers (`MAX_SPA_PACKET_LEN`).
pub const MAX_WIRE_LEN: usize = 1500;
/// Past this length fwknopd takes data starting `hQ` for GPG.
const MIN_GNUPG_MSG_SIZE: usize = 400;

/// A plaintext field of an fwknop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The 16-digit random value.
    Rand,
    /// The user name.
    User,
    /// The timestamp.
    Timestamp,
    /// The client version.
    Version,
    /// The message type.
    MsgType,
    /// The access (or command) message.
    Message,
    /// The NAT access field.
    NatAccess,
    /// The server-auth field.
    ServerAuth,
    /// The client timeout.
    ClientTimeout,
}

/// Why an fwknop packet was rejected. `Copy` and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FwknopError {
    /// Shorter than 140 characters (or too short for the HMAC type).
    #[error("fwknop packet shorter than {MIN_WIRE_LEN} characters")]
    TooShort,
    /// Longer than 1500 characters.
    #[error("fwknop packet longer than {MAX_WIRE_LEN} characters")]
    TooLong,
    /// A character outside the base64 alphabet, or undecodable base64.
    #[error("fwknop packet is not base64")]
    NotBase64,
    /// Starts with `U2FsdGVkX1` (or `hQ` past 400 characters): a replay
    /// dodge fwknopd refuses too.
    #[error("fwknop packet starts with a forbidden prefix")]
    ForbiddenPrefix,
    /// The first character cannot follow `U2FsdGVkX1`, so the data cannot
    /// be OpenSSL salted format.
    #[error("fwknop packet is not in salted format")]
    NotSalted,
    /// No HMAC matched.
    #[error("fwknop hmac mismatch")]
    BadHmac,
    /// The decoded data is not `Salted__`, salt and whole AES blocks.
    #[error("fwknop ciphertext malformed")]
    BadCiphertext,
    /// PKCS#7 padding is wrong after decryption.
    #[error("fwknop padding invalid")]
    BadPadding,
    /// The plaintext does not start with 16 digits and `:` (wrong key), or
    /// is out of fwknop's length bounds.
    #[error("fwknop decryption failed")]
    DecryptFailed,
    /// The plaintext has a non-printable character.
    #[error("fwknop plaintext not printable")]
    NotPrintable,
    /// Too few or too many `:`-separated fields.
    #[error("fwknop plaintext has a wrong number of fields")]
    FieldCount,
    /// The inner digest has no known length.
    #[error("fwknop digest length unknown")]
    DigestLength,
    /// The inner digest does not match.
    #[error("fwknop digest mismatch")]
    DigestMismatch,
    /// A field is malformed.
    #[error("fwknop field {0:?} malformed")]
    Field(Field),
    /// The keys given are out of bounds.
    #[error("fwknop keys out of bounds")]
    BadKeys,
}

/// Which bytes may appear in a wire packet: base64's alphabet and its padding.
const BASE64_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
        c += 1;
    }
    t
};

/// A wire packet that passed the cheap, key-independent checks. Borrowing
/// the datagram; splitting it by HMAC type is free.
#[derive(Debug, Clone, Copy)]
pub struct FwknopPacket<'a> {
    wire: &'a [u8],
}

impl<'a> FwknopPacket<'a> {
    /// Runs the key-independent checks, cheapest first.
    ///
    /// # Errors
    /// [`FwknopError::TooShort`], [`FwknopError::TooLong`],
    /// [`FwknopError::ForbiddenPrefix`], [`FwknopError::NotBase64`],
    /// [`FwknopError::NotSalted`].
    pub fn parse(wire: &'a [u8]) -> Result<Self, FwknopError> {
        if wire.len() < MIN_WIRE_LEN {
            return Err(FwknopError::TooShort);
        }
        if wire.len() > MAX_WIRE_LEN {
            return Err(FwknopError::TooLong);
        }
        if wire.starts_with(SALTED_B64.as_bytes())
            || (wire.len() > MIN_GNUPG_MSG_SIZE && wire.starts_with(b"hQ"))
        {
            return Err(FwknopError::ForbiddenPrefix);
        }
        // A table lookup per byte: junk at the SPA port is refused here, per packet.
        if !wire.iter().all(|&c| BASE64_CHARS[usize::from(c)]) {
            return Err(FwknopError::NotBase64);
        }
        // `U2FsdGVkX1` holds 60 of the 64 bits of `Salted__`; the first wire
        // character carries the last 4 (all ones) in its top bits.
        if !matches!(wire[0], b'8' | b'9' | b'+' | b'/') {
            return Err(FwknopError::NotSalted);
        }
        Ok(FwknopPacket { wire })
    }

    /// The raw datagram.
    #[must_use]
    pub fn wire(&self) -> &'a [u8] {
        self.wire
    }

    /// Splits the wire into (body, base64 HMAC tag) for an HMAC type, or
    /// `None` when too short for it.
    #[must_use]
    pub fn split(&self, hmac: HmacType) -> Option<(&'a [u8], &'a [u8])> {
        let at = self.wire.len().checked_sub(hmac.b64_len())?;
        Some(self.wire.split_at(at))
    }

    /// The 8-byte salt, readable without any key (for tests and
    /// diagnostics: re-encoding a decoded packet with it must reproduce the
    /// wire byte for byte).
    #[must_use]
    pub fn salt(&self) -> Option<[u8; 8]> {
        // `U2FsdGVkX1` + 14 wire characters = 24 characters = 18 bytes.
        let mut text = [0u8; 24];
        text[..10].copy_from_slice(SALTED_B64.as_bytes());
        text[10..].copy_from_slice(self.wire.get(..14)?);
        let mut raw = [0u8; 18];
        B64.decode_slice(text, &mut raw).ok()?;
        raw[8..16].try_into().ok()
    }
}

/// Decodes one packet with one user's keys (cheap checks, HMAC, decrypt,
/// fields). For many users, prepare them once in a [`FwknopVerifier`].
///
/// # Errors
/// Any [`FwknopError`]; [`FwknopError::BadKeys`] when the keys are out of
/// bounds.
pub fn decode(keys: &FwknopKeys, wire: &[u8]) -> Result<FwknopRequest, FwknopError> {
    let packet = FwknopPacket::parse(wire)?;
    PreparedKeys::new(keys)
        .map_err(|_| FwknopError::BadKeys)?
        .open(&packet)
}

/// The replay digest of a datagram: SHA-256 of the raw payload, as
/// fwknopd's digest cache keys it (fwknopd stores its base64).
#[must_use]
pub fn replay_digest(wire: &[u8]) -> [u8; 32] {
    Sha256::digest(wire).into()
}
