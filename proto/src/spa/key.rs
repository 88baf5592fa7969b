//! Native SPA keys: the per-user 256-bit secret, its text form (plain
//! base64 of the 32 bytes, what `knocker keygen` prints and `spa_key` holds),
//! and the key id and AEAD key derived from it with HKDF-SHA256.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hkdf::Hkdf;
use rand::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroize;

/// Length of a key id on the wire.
pub const KEY_ID_LEN: usize = 8;
/// Length of the user secret.
pub const SECRET_LEN: usize = 32;

/// HKDF info for the key id (public, sent in clear).
const INFO_KEY_ID: &[u8] = b"knockgate spa key id v1";
/// HKDF info for the XChaCha20-Poly1305 key.
const INFO_AEAD_KEY: &[u8] = b"knockgate spa aead key v1";

/// The clear 8-byte key id at the front of every native packet.
///
/// Derived one-way from the secret, so it names the key without revealing
/// it or the user; the agent finds the key with one hash-map lookup.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    /// Lower-case hex, 16 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key's text form did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpaKeyError {
    /// The text is not standard base64.
    #[error("spa key is not valid base64")]
    NotBase64,
    /// The text decodes to a length other than 32 bytes.
    #[error("spa key decodes to {0} bytes, expected 32")]
    WrongLength(usize),
}

/// A user's native SPA key: the secret and what is derived from it.
///
/// The text form ([`fmt::Display`], [`SpaKey::parse`]) is the standard
/// base64 of the 32-byte secret. `Debug` shows the key id only. The secret
/// and the derived AEAD key are wiped on drop.
#[derive(Clone)]
pub struct SpaKey {
    id: KeyId,
    secret: [u8; SECRET_LEN],
    aead_key: [u8; 32],
}

impl SpaKey {
    /// Builds a key from its 32-byte secret, deriving the key id and the
    /// AEAD key (HKDF-SHA256 with the secret as PRK; see `proto/spa.md`).
    #[must_use]
    pub fn from_secret(secret: [u8; SECRET_LEN]) -> Self {
        // A 32-byte uniformly random secret is a valid HKDF PRK as is, so
        // Extract is skipped and both keys are plain Expand outputs.
        let mut id = [0u8; KEY_ID_LEN];
        let mut aead_key = [0u8; 32];
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(&secret) {
            // Expand only fails for outputs longer than 255 * 32 bytes.
            let _ = hk.expand(INFO_KEY_ID, &mut id);
            let _ = hk.expand(INFO_AEAD_KEY, &mut aead_key);
        }
        SpaKey {
            id: KeyId(id),
            secret,
            aead_key,
        }
    }

    /// Generates a fresh key from a cryptographic random source.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut secret = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut secret);
        let key = Self::from_secret(secret);
        secret.zeroize();
        key
    }

    /// Parses the text form: standard base64 (padding optional) of exactly
    /// 32 bytes, surrounding whitespace ignored.
    ///
    /// # Errors
    /// [`SpaKeyError`] when the text is not base64 or not 32 bytes.
    pub fn parse(text: &str) -> Result<Self, SpaKeyError> {
        let text = text.trim().trim_end_matches('=');
        let bytes = zeroize::Zeroizing::new(
            STANDARD_NO_PAD
                .decode(text)
                .map_err(|_| SpaKeyError::NotBase64)?,
        );
        <[u8; SECRET_LEN]>::try_from(bytes.as_slice())
            .map(Self::from_secret)
            .map_err(|_| SpaKeyError::WrongLength(bytes.len()))
    }

    /// The clear key id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw secret, for storing the key; handle with care.
    #[must_use]
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    pub(crate) fn aead_key(&self) -> &[u8; 32] {
        &self.aead_key
    }
}

impl Drop for SpaKey {
    fn drop(&mut self) {
        self.secret.zeroize();
        self.aead_key.zeroize();
    }
}

impl PartialEq for SpaKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.secret.ct_eq(&other.secret))
    }
}

impl Eq for SpaKey {}

impl fmt::Debug for SpaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpaKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SpaKey {
    /// The text form: standard base64 of the secret, with padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 44];
        let n = STANDARD
            .encode_slice(self.secret, &mut buf)
            .map_err(|_| fmt::Error)?;
        let s = std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?;
        f.write_str(s)
    }
}

impl FromStr for SpaKey {
    type Err = SpaKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
