//! fwknop's Rijndael layer: OpenSSL-compatible `EVP_BytesToKey(MD5, 1)` key
//! and IV derivation from the key and an 8-byte salt, AES-256-CBC with
//! PKCS#7, and the `Salted__‖salt‖ct` framing under base64.

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use zeroize::Zeroize;

use super::{B64, FwknopError, FwknopRequest, MAX_WIRE_LEN, SALTED_B64, fields};

/// OpenSSL's salted-format marker.
pub(crate) const SALTED: &[u8; 8] = b"Salted__";
/// Largest decoded `Salted__‖salt‖ct`: the longest wire plus the prefix.
const MAX_RAW_LEN: usize = (MAX_WIRE_LEN + SALTED_B64.len()) * 3 / 4 + 3;

/// AES-256 key and CBC IV derived as OpenSSL `EVP_BytesToKey(MD5, count 1)`:
/// `D1 = MD5(k‖salt)`, `Di = MD5(Di-1‖k‖salt)`, key = `D1‖D2`, IV = `D3`.
pub(crate) struct KeyIv {
    pub(crate) key: [u8; 32],
    pub(crate) iv: [u8; 16],
}

impl KeyIv {
    pub(crate) fn derive(enc_key: &[u8], salt: &[u8; 8]) -> Self {
        let mut out = [0u8; 48];
        let mut prev: Option<[u8; 16]> = None;
        for chunk in out.chunks_exact_mut(16) {
            let mut h = Md5::new();
            if let Some(p) = prev {
                h.update(p);
            }
            h.update(enc_key);
            h.update(salt);
            let d: [u8; 16] = h.finalize().into();
            chunk.copy_from_slice(&d);
            prev = Some(d);
        }
        let mut kiv = KeyIv {
            key: [0; 32],
            iv: [0; 16],
        };
        kiv.key.copy_from_slice(&out[..32]);
        kiv.iv.copy_from_slice(&out[32..]);
        out.zeroize();
        kiv
    }
}

impl Drop for KeyIv {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// Decodes the authenticated wire body (the wire minus its HMAC, without
/// the dropped `U2FsdGVkX1`), decrypts it and parses the plaintext.
/// Works in stack buffers: no allocation until the fields are copied out.
pub(crate) fn decrypt_and_parse(enc_key: &[u8], body: &[u8]) -> Result<FwknopRequest, FwknopError> {
    let mut text = [0u8; MAX_WIRE_LEN + SALTED_B64.len()];
    let full_len = SALTED_B64.len() + body.len();
    let full = text.get_mut(..full_len).ok_or(FwknopError::TooLong)?;
    full[..SALTED_B64.len()].copy_from_slice(SALTED_B64.as_bytes());
    full[SALTED_B64.len()..].copy_from_slice(body);
    let mut raw = [0u8; MAX_RAW_LEN];
    let n = B64
        .decode_slice(&*full, &mut raw)
        .map_err(|_| FwknopError::NotBase64)?;
    let raw = &mut raw[..n];
    if raw.len() < 32 || !raw.starts_with(SALTED) {
        return Err(FwknopError::BadCiphertext);
    }
    let (head, ct) = raw.split_at_mut(16);
    if ct.len() % 16 != 0 {
        return Err(FwknopError::BadCiphertext);
    }
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&head[8..]);
    let kiv = KeyIv::derive(enc_key, &salt);
    let pt = cbc::Decryptor::<Aes256>::new(&kiv.key.into(), &kiv.iv.into())
        .decrypt_padded::<Pkcs7>(ct)
        .map_err(|_| FwknopError::BadPadding)?;
    let result = fields::parse(pt);
    ct.zeroize();
    result
}

/// Encrypts `plaintext` (fields and inner digest) and returns the unpadded
/// base64 of `Salted__‖salt‖ct`, which starts with `U2FsdGVkX1`.
pub(crate) fn encrypt_to_b64(enc_key: &[u8], salt: &[u8; 8], plaintext: &[u8]) -> String {
    let kiv = KeyIv::derive(enc_key, salt);
    let ct = cbc::Encryptor::<Aes256>::new(&kiv.key.into(), &kiv.iv.into())
        .encrypt_padded_vec::<Pkcs7>(plaintext);
    let mut raw = Vec::with_capacity(16 + ct.len());
    raw.extend_from_slice(SALTED);
    raw.extend_from_slice(salt);
    raw.extend_from_slice(&ct);
    B64.encode(raw)
}
