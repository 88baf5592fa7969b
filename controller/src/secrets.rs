//! Fresh secrets from the system CSPRNG: user key material and enrolment
//! tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::ServiceError;
use crate::store::{DEFAULT_FWKNOP_HMAC, UserKeys};

/// `N` random bytes.
pub fn random<const N: usize>() -> Result<[u8; N], ServiceError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ServiceError::Internal("the system random generator failed"))?;
    Ok(bytes)
}

/// A new user's keys: 32-byte SPA key, 32-byte fwknop key, 64-byte fwknop
/// HMAC key (SHA-256), 32-byte rotating secret.
pub fn user_keys() -> Result<UserKeys, ServiceError> {
    Ok(UserKeys {
        spa_key: random()?,
        fwknop_key: random()?,
        fwknop_hmac_key: random()?,
        fwknop_hmac: DEFAULT_FWKNOP_HMAC.to_owned(),
        rotating_secret: random()?,
    })
}

/// A one-time enrolment token: `kge_` and 32 random bytes in base64url without padding.
/// The prefix keeps a token from starting with `-` (which a command line would take for
/// a flag) and lets secret scanners recognise one.
pub fn enrolment_token() -> Result<String, ServiceError> {
    Ok(format!("kge_{}", URL_SAFE_NO_PAD.encode(random::<32>()?)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_never_look_like_flags() {
        for _ in 0..200 {
            assert!(super::enrolment_token().unwrap().starts_with("kge_"));
        }
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (
            super::enrolment_token().unwrap(),
            super::enrolment_token().unwrap(),
        );
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
