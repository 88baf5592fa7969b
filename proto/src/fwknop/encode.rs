//! The fwknop encoder, as the client builds a packet: fields, inner digest,
//! Rijndael with a given salt, HMAC, and the first 10 characters dropped.
//! knockgate uses it for tests and fixtures; users send with `fwknop`.

use super::digest::MAX_B64_LEN;
use super::keys::{FwknopKeyError, FwknopKeys, PreparedKeys};
use super::{FwknopRequest, MAX_WIRE_LEN, MIN_WIRE_LEN, SALTED_B64, cipher, fields};

/// Why a request could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FwknopEncodeError {
    /// The keys are out of bounds.
    #[error("invalid fwknop keys")]
    Keys(#[from] FwknopKeyError),
    /// The packet would fall outside 140..=1500 characters.
    #[error("encoded fwknop packet length {0} outside 140..=1500")]
    Length(usize),
}

/// Encodes `req` as the fwknop client would, with an explicit 8-byte salt
/// (the client draws it at random). The inner digest type is
/// `req.digest_type`; `req.rand` is used as given.
///
/// # Errors
/// [`FwknopEncodeError`] for out-of-bounds keys or packet length.
pub fn encode(
    keys: &FwknopKeys,
    req: &FwknopRequest,
    salt: [u8; 8],
) -> Result<String, FwknopEncodeError> {
    let prepared = PreparedKeys::new(keys)?;
    let encoded = fields::encode(req);
    let mut buf = [0u8; MAX_B64_LEN + 2];
    let digest = req.digest_type.b64_digest(encoded.as_bytes(), &mut buf);
    let mut plaintext = encoded.into_bytes();
    plaintext.push(b':');
    plaintext.extend_from_slice(digest);
    let full = cipher::encrypt_to_b64(prepared.enc_key(), &salt, &plaintext);
    let body = full.get(SALTED_B64.len()..).unwrap_or_default();
    let mut tag = [0u8; MAX_B64_LEN + 2];
    let tag = prepared
        .hmac()
        .b64_tag(SALTED_B64.as_bytes(), body.as_bytes(), &mut tag);
    let mut wire = String::with_capacity(body.len() + tag.len());
    wire.push_str(body);
    wire.extend(tag.iter().map(|&c| char::from(c)));
    if !(MIN_WIRE_LEN..=MAX_WIRE_LEN).contains(&wire.len()) {
        return Err(FwknopEncodeError::Length(wire.len()));
    }
    Ok(wire)
}
