//! Native knockgate SPA: one UDP datagram, sealed with XChaCha20-Poly1305
//! under a per-user key, found by a clear 8-byte key id.
//!
//! Wire layout (all integers big-endian; full spec and vectors in
//! `proto/spa.md`):
//!
//! ```text
//! 0      1   magic 0xC5
//! 1      1   version 0x01
//! 2      8   key id                      } clear header = AEAD associated data
//! 10     24  XChaCha20-Poly1305 nonce
//! 34     n   ciphertext of the body (n = 36..=160)
//! 34+n   16  Poly1305 tag
//! ```
//!
//! Opening does the cheap checks first (size, magic, version, key id) and
//! then exactly one AEAD open; nothing allocates before authentication.

mod body;
mod key;
#[cfg(test)]
mod tests;

pub use body::{BodyError, MAX_ACCESS, MAX_GATEWAY_LEN, SpaRequest};
pub use key::{KEY_ID_LEN, KeyId, SECRET_LEN, SpaKey, SpaKeyError};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::CryptoRng;

/// First byte of every native packet. Not a base64 or ASCII character, so
/// a native packet never looks like an fwknop one.
pub const MAGIC: u8 = 0xC5;
/// Wire format version.
pub const VERSION: u8 = 1;
/// Clear header length: magic, version, key id.
pub const HEADER_LEN: usize = 2 + KEY_ID_LEN;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Shortest well-formed packet.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + NONCE_LEN + body::BODY_MIN + TAG_LEN;
/// Longest well-formed packet.
pub const MAX_PACKET_LEN: usize = HEADER_LEN + NONCE_LEN + body::BODY_MAX + TAG_LEN;

/// Why a packet was rejected. `Copy` and allocation-free: the agent drops
/// many of these per second under a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpaError {
    /// Shorter than [`MIN_PACKET_LEN`].
    #[error("packet shorter than {MIN_PACKET_LEN} bytes")]
    TooShort,
    /// Longer than [`MAX_PACKET_LEN`].
    #[error("packet longer than {MAX_PACKET_LEN} bytes")]
    TooLong,
    /// First byte is not [`MAGIC`].
    #[error("not a knockgate spa packet")]
    BadMagic,
    /// Version byte is not [`VERSION`].
    #[error("unsupported spa version {0}")]
    UnsupportedVersion(u8),
    /// No key is known under the packet's key id.
    #[error("unknown key id")]
    UnknownKey,
    /// The key given to [`open`] has a different id than the packet.
    #[error("key id does not match the packet")]
    KeyMismatch,
    /// AEAD authentication failed: wrong key, or tampered or corrupt packet.
    #[error("packet failed authentication")]
    BadTag,
    /// Authenticated, but the sealed body is malformed.
    #[error("malformed sealed body")]
    Malformed(#[source] BodyError),
}

/// Why a request could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The request is out of bounds (see [`SpaRequest::validate`]).
    #[error("invalid spa request")]
    Invalid(#[from] BodyError),
    /// The AEAD refused to encrypt (cannot happen for bounded bodies).
    #[error("aead encryption failed")]
    Aead,
}

/// Seals `req` under `key` with an explicit AEAD nonce.
///
/// The nonce must never repeat under one key; [`seal_with_rng`] draws it.
///
/// # Errors
/// [`SealError::Invalid`] when the request is out of bounds.
pub fn seal(
    key: &SpaKey,
    req: &SpaRequest,
    aead_nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, SealError> {
    req.validate()?;
    let mut out = Vec::with_capacity(MAX_PACKET_LEN);
    out.push(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&aead_nonce);
    let body_start = out.len();
    req.encode_into(&mut out);
    let (head, body) = out.split_at_mut(body_start);
    let cipher = XChaCha20Poly1305::new(key.aead_key().into());
    let nonce = XNonce::from(aead_nonce);
    let tag = cipher
        .encrypt_inout_detached(&nonce, &head[..HEADER_LEN], body.into())
        .map_err(|_| SealError::Aead)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Seals `req` under `key` with a nonce drawn from `rng`.
///
/// # Errors
/// As [`seal`].
pub fn seal_with_rng(
    key: &SpaKey,
    req: &SpaRequest,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal(key, req, nonce)
}

/// Runs the cheap header checks (size, magic, version) and returns the
/// clear key id, without touching any key.
///
/// # Errors
/// [`SpaError::TooShort`], [`SpaError::TooLong`], [`SpaError::BadMagic`],
/// [`SpaError::UnsupportedVersion`].
pub fn peek_key_id(packet: &[u8]) -> Result<KeyId, SpaError> {
    if packet.len() < MIN_PACKET_LEN {
        return Err(SpaError::TooShort);
    }
    if packet.len() > MAX_PACKET_LEN {
        return Err(SpaError::TooLong);
    }
    let (header, _) = packet.split_at(HEADER_LEN);
    let (&[magic, version], id) = header.split_at(2) else {
        return Err(SpaError::TooShort);
    };
    if magic != MAGIC {
        return Err(SpaError::BadMagic);
    }
    if version != VERSION {
        return Err(SpaError::UnsupportedVersion(version));
    }
    let id = <[u8; KEY_ID_LEN]>::try_from(id).map_err(|_| SpaError::TooShort)?;
    Ok(KeyId(id))
}

/// Opens a packet with a known key: header checks, key id match, one AEAD
/// open, then body decoding.
///
/// # Errors
/// Any [`SpaError`] but [`SpaError::UnknownKey`].
pub fn open(key: &SpaKey, packet: &[u8]) -> Result<SpaRequest, SpaError> {
    if peek_key_id(packet)? != key.id() {
        return Err(SpaError::KeyMismatch);
    }
    let (header, rest) = packet.split_at(HEADER_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| SpaError::TooShort)?;
    let tag = Tag::try_from(tag).map_err(|_| SpaError::TooShort)?;
    // Decrypt into a stack buffer: a rejected packet costs no allocation.
    let mut buf = [0u8; body::BODY_MAX];
    let body = buf.get_mut(..ciphertext.len()).ok_or(SpaError::TooLong)?;
    body.copy_from_slice(ciphertext);
    XChaCha20Poly1305::new(key.aead_key().into())
        .decrypt_inout_detached(&nonce, header, (&mut *body).into(), &tag)
        .map_err(|_| SpaError::BadTag)?;
    SpaRequest::decode(body).map_err(SpaError::Malformed)
}

/// Opens a packet whose key is found by id: `lookup` is called once with
/// the clear key id (a hash-map lookup in the agent), then [`open`] runs.
///
/// # Errors
/// [`SpaError::UnknownKey`] when `lookup` returns `None`, else as [`open`].
pub fn open_with<'k>(
    packet: &[u8],
    lookup: impl FnOnce(KeyId) -> Option<&'k SpaKey>,
) -> Result<(KeyId, SpaRequest), SpaError> {
    let id = peek_key_id(packet)?;
    let key = lookup(id).ok_or(SpaError::UnknownKey)?;
    open(key, packet).map(|req| (id, req))
}
