//! A user's fwknop keys (Rijndael key, HMAC key, HMAC type), their prepared
//! form for the hot path, and [`FwknopVerifier`], which finds the one user
//! among many whose HMAC matches a packet.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroize;

use super::digest::{HmacType, MAX_B64_LEN, PreparedHmac};
use super::{FwknopError, FwknopPacket, FwknopRequest, cipher};

/// Longest Rijndael key fwknop accepts (`RIJNDAEL_MAX_KEYSIZE`).
pub const MAX_ENC_KEY_LEN: usize = 32;
/// Longest HMAC key fwknop accepts (`MAX_DIGEST_BLOCK_LEN`, SHA3-256's block).
pub const MAX_HMAC_KEY_LEN: usize = 136;

/// Why a key pair is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FwknopKeyError {
    /// The Rijndael key is empty or longer than 32 bytes.
    #[error("rijndael key must be 1..=32 bytes, got {0}")]
    EncKeyLength(usize),
    /// The HMAC key is empty or longer than 136 bytes.
    #[error("hmac key must be 1..=136 bytes, got {0}")]
    HmacKeyLength(usize),
    /// A `*_BASE64` key is not valid base64.
    #[error("key is not valid base64")]
    NotBase64,
}

/// One user's fwknop key pair, as in an `access.conf` stanza: the raw
/// Rijndael key (`KEY`, or `KEY_BASE64` decoded), the raw HMAC key
/// (`HMAC_KEY`, or `HMAC_KEY_BASE64` decoded) and `HMAC_DIGEST_TYPE`.
/// Wiped on drop; `Debug` shows lengths only.
#[derive(Clone, PartialEq, Eq)]
pub struct FwknopKeys {
    /// Raw Rijndael key bytes, 1..=32.
    pub enc_key: Vec<u8>,
    /// Raw HMAC key bytes, 1..=136.
    pub hmac_key: Vec<u8>,
    /// HMAC digest type (fwknop's default is SHA-256).
    pub hmac: HmacType,
}

impl FwknopKeys {
    /// Builds keys from raw bytes, checking fwknop's length limits.
    ///
    /// # Errors
    /// [`FwknopKeyError`] when a key is empty or too long.
    pub fn new(
        enc_key: Vec<u8>,
        hmac_key: Vec<u8>,
        hmac: HmacType,
    ) -> Result<Self, FwknopKeyError> {
        let keys = FwknopKeys {
            enc_key,
            hmac_key,
            hmac,
        };
        keys.check()?;
        Ok(keys)
    }

    /// Builds keys from `KEY_BASE64` and `HMAC_KEY_BASE64` text (standard
    /// base64, padded as `fwknop --key-gen` prints it, or not).
    ///
    /// # Errors
    /// [`FwknopKeyError`] when a key is not base64 or out of bounds.
    pub fn from_base64(
        enc_key: &str,
        hmac_key: &str,
        hmac: HmacType,
    ) -> Result<Self, FwknopKeyError> {
        let decode = |s: &str| {
            super::B64
                .decode(s.trim())
                .or_else(|_| STANDARD.decode(s.trim()))
                .map_err(|_| FwknopKeyError::NotBase64)
        };
        Self::new(decode(enc_key)?, decode(hmac_key)?, hmac)
    }

    fn check(&self) -> Result<(), FwknopKeyError> {
        if self.enc_key.is_empty() || self.enc_key.len() > MAX_ENC_KEY_LEN {
            return Err(FwknopKeyError::EncKeyLength(self.enc_key.len()));
        }
        if self.hmac_key.is_empty() || self.hmac_key.len() > MAX_HMAC_KEY_LEN {
            return Err(FwknopKeyError::HmacKeyLength(self.hmac_key.len()));
        }
        Ok(())
    }
}

impl Drop for FwknopKeys {
    fn drop(&mut self) {
        self.enc_key.zeroize();
        self.hmac_key.zeroize();
    }
}

impl fmt::Debug for FwknopKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FwknopKeys")
            .field("enc_key_len", &self.enc_key.len())
            .field("hmac_key_len", &self.hmac_key.len())
            .field("hmac", &self.hmac)
            .finish()
    }
}

/// A user's keys made ready for the hot path: the HMAC key schedule is
/// computed once, so checking a packet costs one hash of the message.
#[derive(Clone)]
pub struct PreparedKeys {
    enc_key: [u8; MAX_ENC_KEY_LEN],
    enc_key_len: usize,
    hmac_type: HmacType,
    hmac: PreparedHmac,
}

impl PreparedKeys {
    /// Prepares `keys`.
    ///
    /// # Errors
    /// [`FwknopKeyError`] when a key is out of fwknop's bounds.
    pub fn new(keys: &FwknopKeys) -> Result<Self, FwknopKeyError> {
        keys.check()?;
        let mut enc_key = [0u8; MAX_ENC_KEY_LEN];
        enc_key[..keys.enc_key.len()].copy_from_slice(&keys.enc_key);
        let hmac = PreparedHmac::new(keys.hmac, &keys.hmac_key)
            .ok_or(FwknopKeyError::HmacKeyLength(keys.hmac_key.len()))?;
        Ok(PreparedKeys {
            enc_key,
            enc_key_len: keys.enc_key.len(),
            hmac_type: keys.hmac,
            hmac,
        })
    }

    /// The HMAC type these keys expect.
    #[must_use]
    pub fn hmac_type(&self) -> HmacType {
        self.hmac_type
    }

    /// Checks the packet's HMAC in constant time. The cost is one HMAC of
    /// the message (about 200 bytes) with a precomputed key schedule.
    #[must_use]
    pub fn verify_hmac(&self, packet: &FwknopPacket<'_>) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some((body, tag)) = packet.split(self.hmac_type) else {
            return false;
        };
        let mut buf = [0u8; MAX_B64_LEN + 2];
        let want = self
            .hmac
            .b64_tag(super::SALTED_B64.as_bytes(), body, &mut buf);
        want.len() == tag.len() && bool::from(want.ct_eq(tag))
    }

    /// Decrypts and decodes a packet whose HMAC [`verify_hmac`](Self::verify_hmac)
    /// accepted. Never call it on an unauthenticated packet: that would make
    /// the agent a padding oracle.
    ///
    /// # Errors
    /// A decryption or field [`FwknopError`].
    pub fn decrypt(&self, packet: &FwknopPacket<'_>) -> Result<FwknopRequest, FwknopError> {
        let (body, _) = packet.split(self.hmac_type).ok_or(FwknopError::TooShort)?;
        cipher::decrypt_and_parse(&self.enc_key[..self.enc_key_len], body)
    }

    /// [`verify_hmac`](Self::verify_hmac), then [`decrypt`](Self::decrypt).
    ///
    /// # Errors
    /// [`FwknopError::BadHmac`] or what [`decrypt`](Self::decrypt) returns.
    pub fn open(&self, packet: &FwknopPacket<'_>) -> Result<FwknopRequest, FwknopError> {
        if !self.verify_hmac(packet) {
            return Err(FwknopError::BadHmac);
        }
        self.decrypt(packet)
    }

    pub(crate) fn enc_key(&self) -> &[u8] {
        &self.enc_key[..self.enc_key_len]
    }

    pub(crate) fn hmac(&self) -> &PreparedHmac {
        &self.hmac
    }
}

impl Drop for PreparedKeys {
    fn drop(&mut self) {
        self.enc_key.zeroize();
    }
}

impl fmt::Debug for PreparedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedKeys")
            .field("hmac", &self.hmac_type)
            .finish_non_exhaustive()
    }
}

/// The fwknop users of one agent, prepared, in a fixed order. fwknop
/// packets carry no key hint, so a packet is tried against each user's HMAC
/// in turn (as fwknopd walks its stanzas); the cheap checks and the split
/// happen once, the key schedules are precomputed, and only the first
/// matching user's key decrypts.
#[derive(Debug, Clone)]
pub struct FwknopVerifier<U> {
    users: Vec<(U, PreparedKeys)>,
}

impl<U> Default for FwknopVerifier<U> {
    fn default() -> Self {
        FwknopVerifier { users: Vec::new() }
    }
}

impl<U> FwknopVerifier<U> {
    /// An empty verifier.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user, tried after those already added.
    ///
    /// # Errors
    /// [`FwknopKeyError`] when the keys are out of bounds.
    pub fn push(&mut self, user: U, keys: &FwknopKeys) -> Result<(), FwknopKeyError> {
        self.users.push((user, PreparedKeys::new(keys)?));
        Ok(())
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Finds the first user whose HMAC matches the packet and decodes it
    /// with that user's key.
    ///
    /// # Errors
    /// A cheap-check error, [`FwknopError::BadHmac`] when no user matches,
    /// or the matching user's decryption or field error.
    pub fn verify(&self, wire: &[u8]) -> Result<(&U, FwknopRequest), FwknopError> {
        let packet = FwknopPacket::parse(wire)?;
        let (user, keys) = self
            .users
            .iter()
            .find(|(_, k)| k.verify_hmac(&packet))
            .ok_or(FwknopError::BadHmac)?;
        keys.decrypt(&packet).map(|req| (user, req))
    }
}

impl<U> FromIterator<(U, PreparedKeys)> for FwknopVerifier<U> {
    fn from_iter<I: IntoIterator<Item = (U, PreparedKeys)>>(iter: I) -> Self {
        FwknopVerifier {
            users: iter.into_iter().collect(),
        }
    }
}
