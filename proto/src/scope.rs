//! Secrets scoped to one gateway: a user's native SPA key, fwknop key pair
//! and one-time keys, each derived from a root the controller holds and the
//! name of the gateway that will hold the result (specified with test
//! vectors in `proto/spa.md` and `proto/rotation.md`, "Scoping secrets to
//! one gateway").
//!
//! A gateway is named by its enrolled agent name, the last part of
//! `spiffe://knockgate/agent/<name>`. An agent is handed only the
//! derivations for its own name, so a stolen agent (or a packet sniffed in
//! front of it) opens nothing at any other gateway: every other gateway
//! holds keys derived for another name, which the root alone can produce.
//!
//! Layouts (HKDF-SHA256, RFC 5869, Extract then Expand; `‖` is
//! concatenation, `0x00` a single zero byte, the gateway name its ASCII
//! bytes):
//!
//! | derivation | salt | ikm | info | length |
//! |---|---|---|---|---|
//! | [`gateway_spa_key`] | [`SALT`] | root | `"spa" ‖ 0x00 ‖ gateway` | 32 |
//! | [`gateway_fwknop_keys`], Rijndael key | [`SALT`] | enc root | `"fwknop-enc" ‖ 0x00 ‖ gateway` | 32 |
//! | [`gateway_fwknop_keys`], HMAC key | [`SALT`] | hmac root | `"fwknop-hmac" ‖ 0x00 ‖ gateway` | 64 |
//! | [`gateway_otk`] | `"knockgate rotation v1"` | rotating secret | `"otk" ‖ u8(len(gateway)) ‖ gateway ‖ u64be(counter)` | 32 |
//!
//! A gateway name never holds a zero byte ([`check_gateway`]), so each info
//! string reads back to exactly one (label, gateway) pair. The one-time key
//! layout follows the rotating sequences' (`"seq" ‖ u8(len) ‖ gateway ‖ …`)
//! under the rotation salt, and is at least 13 bytes long where the fleet
//! wide [`rotation::derive_otk`]'s `"otk" ‖ u64be(counter)` is 11, so the
//! two never share an info string.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use crate::fwknop::{FwknopKeyError, FwknopKeys, HmacType};
use crate::rotation;
use crate::spa::{MAX_GATEWAY_LEN, SECRET_LEN, SpaKey};

/// HKDF salt of the native and fwknop key derivations: separates them from
/// every other use of a root.
pub const SALT: &[u8] = b"knockgate gateway scope v1";
/// Length of a derived fwknop Rijndael key: what `fwknop --key-gen` writes
/// as `KEY_BASE64`, and the longest key fwknop accepts.
pub const FWKNOP_ENC_KEY_LEN: usize = 32;
/// Length of a derived fwknop HMAC key: what `fwknop --key-gen` writes as
/// `HMAC_KEY_BASE64`.
pub const FWKNOP_HMAC_KEY_LEN: usize = 64;

const LABEL_SPA: &[u8] = b"spa";
const LABEL_FWKNOP_ENC: &[u8] = b"fwknop-enc";
const LABEL_FWKNOP_HMAC: &[u8] = b"fwknop-hmac";
const LABEL_OTK: &[u8] = b"otk";

// HKDF-SHA256 can expand to at most 255 * 32 bytes: every expand below is
// within bounds, so its error case cannot happen.
const _: () = assert!(FWKNOP_HMAC_KEY_LEN <= 255 * 32 && SECRET_LEN <= 255 * 32);
// Derived fwknop keys are within what `FwknopKeys::new` and fwknop accept.
const _: () = assert!(
    FWKNOP_ENC_KEY_LEN <= crate::fwknop::MAX_ENC_KEY_LEN
        && FWKNOP_HMAC_KEY_LEN <= crate::fwknop::MAX_HMAC_KEY_LEN
);

/// Why a scoped secret could not be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The gateway name is empty or longer than 64 bytes.
    #[error("gateway name must be 1..=64 bytes, got {0}")]
    GatewayLength(usize),
    /// The gateway name holds a byte outside `a-z 0-9 . _ -`.
    #[error("gateway name may only use a-z 0-9 . _ - (byte {byte:#04x} at offset {at})")]
    GatewayChar {
        /// The refused byte.
        byte: u8,
        /// Its offset in the name.
        at: usize,
    },
    /// The gateway name is made of dots only.
    #[error("gateway name must not be made of dots only")]
    GatewayDots,
    /// A root key is empty: anyone could compute what it derives.
    #[error("root key is empty")]
    EmptyRoot,
    /// The derived fwknop keys were refused (cannot happen: their lengths
    /// are fixed within fwknop's bounds).
    #[error("derived fwknop keys refused")]
    Fwknop(#[from] FwknopKeyError),
}

/// Checks a gateway name: the enrolled agent name, 1 to 64 bytes from
/// `a-z 0-9 . _ -`, not made of dots only. This is exactly what the
/// controller accepts for an agent name, so every enrolled agent has a
/// valid gateway name, and a name is never ambiguous inside a derivation
/// (no zero byte, no case folding).
///
/// # Errors
/// [`ScopeError::GatewayLength`], [`ScopeError::GatewayChar`] or
/// [`ScopeError::GatewayDots`].
pub fn check_gateway(name: &str) -> Result<(), ScopeError> {
    if name.is_empty() || name.len() > MAX_GATEWAY_LEN {
        return Err(ScopeError::GatewayLength(name.len()));
    }
    if let Some((at, &byte)) = name.as_bytes().iter().enumerate().find(|&(_, &b)| {
        !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    }) {
        return Err(ScopeError::GatewayChar { byte, at });
    }
    if name.bytes().all(|b| b == b'.') {
        return Err(ScopeError::GatewayDots);
    }
    Ok(())
}

/// `HKDF-SHA256(salt = SALT, ikm = root, info = label ‖ 0x00 ‖ gateway)`
/// into `out`, after checking the gateway name and the root.
fn expand_scoped(
    root: &[u8],
    label: &[u8],
    gateway: &str,
    out: &mut [u8],
) -> Result<(), ScopeError> {
    check_gateway(gateway)?;
    if root.is_empty() {
        return Err(ScopeError::EmptyRoot);
    }
    let mut info = Vec::with_capacity(label.len() + 1 + gateway.len());
    info.extend_from_slice(label);
    info.push(0);
    info.extend_from_slice(gateway.as_bytes());
    // `out` is at most 64 bytes, always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(Some(SALT), root).expand(&info, out);
    Ok(())
}

/// The native SPA key of the user whose root is `root`, for `gateway` only.
///
/// The result is an ordinary [`SpaKey`]: its secret is
/// `HKDF-SHA256(salt = SALT, ikm = root, info = "spa" ‖ 0x00 ‖ gateway, 32)`,
/// and its key id and AEAD key derive from that secret as for any key. So
/// the key id differs per gateway too, and packets to two gateways cannot
/// be linked by their clear key ids.
///
/// # Errors
/// A gateway-name [`ScopeError`] (see [`check_gateway`]).
pub fn gateway_spa_key(root: &[u8; SECRET_LEN], gateway: &str) -> Result<SpaKey, ScopeError> {
    let mut okm = [0u8; SECRET_LEN];
    expand_scoped(root, LABEL_SPA, gateway, &mut okm)?;
    let key = SpaKey::from_secret(okm);
    okm.zeroize();
    Ok(key)
}

/// The fwknop key pair of the user whose roots are `enc_root` and
/// `hmac_root`, for `gateway` only: a 32-byte Rijndael key
/// (`info = "fwknop-enc" ‖ 0x00 ‖ gateway`) and a 64-byte HMAC key
/// (`info = "fwknop-hmac" ‖ 0x00 ‖ gateway`), both HKDF-SHA256 with salt
/// [`SALT`], with the HMAC type `hmac` as given.
///
/// The keys are plain uniformly random-looking bytes of the sizes
/// `fwknop --key-gen` makes, so the stock client uses them as
/// `KEY_BASE64` / `HMAC_KEY_BASE64` ([`fwknop_rc_base64`]). A packet
/// sniffed at one gateway fails the HMAC check everywhere else, since every
/// other gateway holds another HMAC key. The roots should be random (for
/// instance keys from `fwknop --key-gen`); the derivation cannot add
/// strength to a guessable root.
///
/// # Errors
/// A gateway-name [`ScopeError`], or [`ScopeError::EmptyRoot`] when a root
/// is empty.
pub fn gateway_fwknop_keys(
    enc_root: &[u8],
    hmac_root: &[u8],
    hmac: HmacType,
    gateway: &str,
) -> Result<FwknopKeys, ScopeError> {
    let mut enc_key = vec![0u8; FWKNOP_ENC_KEY_LEN];
    let mut hmac_key = vec![0u8; FWKNOP_HMAC_KEY_LEN];
    let derived = expand_scoped(enc_root, LABEL_FWKNOP_ENC, gateway, &mut enc_key)
        .and_then(|()| expand_scoped(hmac_root, LABEL_FWKNOP_HMAC, gateway, &mut hmac_key));
    if let Err(err) = derived {
        enc_key.zeroize();
        hmac_key.zeroize();
        return Err(err);
    }
    // `FwknopKeys` takes the buffers and wipes them on drop (and on error).
    Ok(FwknopKeys::new(enc_key, hmac_key, hmac)?)
}

/// The `KEY_BASE64` and `HMAC_KEY_BASE64` values of a `.fwknoprc` stanza
/// (or an `access.conf` one) for `keys`: standard base64 with padding, as
/// `fwknop --key-gen` prints them and [`FwknopKeys::from_base64`] reads
/// them back. Both strings are wiped on drop.
#[must_use]
pub fn fwknop_rc_base64(keys: &FwknopKeys) -> (Zeroizing<String>, Zeroizing<String>) {
    (
        Zeroizing::new(STANDARD.encode(&keys.enc_key)),
        Zeroizing::new(STANDARD.encode(&keys.hmac_key)),
    )
}

/// One-time SPA key number `counter` of the user with the rotating secret
/// `secret`, for `gateway` only:
/// `HKDF-SHA256(salt = "knockgate rotation v1", ikm = secret,
/// info = "otk" ‖ u8(len(gateway)) ‖ gateway ‖ u64be(counter), 32)`, used as
/// a native [`SpaKey`] secret.
///
/// Key `counter` differs at every gateway (and so does its key id), so an
/// agent's stock of one-time keys is worthless at any other gateway. The
/// counter stays one sequence per user, not per gateway: the controller's
/// claim is keyed by (user, counter), so once key `counter` is spent at one
/// gateway, key `counter` of every other gateway is refused too, and each
/// counter still opens at most once fleet-wide.
///
/// # Errors
/// A gateway-name [`ScopeError`] (see [`check_gateway`]).
pub fn gateway_otk(
    secret: &[u8; SECRET_LEN],
    gateway: &str,
    counter: u64,
) -> Result<SpaKey, ScopeError> {
    check_gateway(gateway)?;
    let len = u8::try_from(gateway.len()).map_err(|_| ScopeError::GatewayLength(gateway.len()))?;
    let mut info = Vec::with_capacity(LABEL_OTK.len() + 1 + gateway.len() + 8);
    info.extend_from_slice(LABEL_OTK);
    info.push(len);
    info.extend_from_slice(gateway.as_bytes());
    info.extend_from_slice(&counter.to_be_bytes());
    let mut okm = [0u8; SECRET_LEN];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = rotation::prk(secret).expand(&info, &mut okm);
    let key = SpaKey::from_secret(okm);
    okm.zeroize();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::fwknop::{FwknopError, FwknopRequest, FwknopVerifier, decode, encode};
    use crate::spa::{SpaError, SpaRequest, open_with, seal};

    const ROOT: [u8; 32] = [0x42; 32];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn fw(gateway: &str) -> FwknopKeys {
        gateway_fwknop_keys(&ROOT, &ROOT, HmacType::Sha256, gateway).unwrap()
    }

    // The vectors of proto/spa.md and proto/rotation.md, "Scoping secrets to
    // one gateway"; reproduced independently by
    // proto/tests/fixtures/scope_vectors.py.
    const SPA_GW1: &str = "80ce23709abb7f139a8ef4390510d8f5cef5699e8f0eeb721239b98596a1dfc5";
    const SPA_GW1_ID: &str = "82568715604601ca";
    const SPA_GW2: &str = "88c7710aed0d8f0154b0fc853c2d75b01bcfb920bc96dddea9bda57aba7d4673";
    const SPA_GW2_ID: &str = "67def4ae284c3eb4";
    const FW_GW1_KEY: &str = "L5c/NV1smouh2burZ3yiQib5QIbTcT5aujF2OTFDmtE=";
    const FW_GW1_HMAC: &str =
        "aeICk/j3Hixs0nmAQVqTHr8j8jvlLUZ05ahuGxpV+X8q/T57Hfa8EfyyiCVRT0ZOJCDQacpdvcK99NcL6JB4LQ==";
    const FW_GW2_KEY: &str = "bN2QombvslUhwgMUzALfyEvZQQNzZmvBuP0ktSWYs9E=";
    const FW_GW2_HMAC: &str =
        "Oj67/XkHQaYRuvfREmjrGpeWKBjgtsPRGrKJyi/j70aqgMGEQ3GlnMjFmWw/o6bHKfBQhif4rrPy+iD2nRn1ew==";
    /// (gateway, counter, secret, key id)
    const OTK: [(&str, u64, &str, &str); 4] = [
        (
            "gw1",
            0,
            "30fab699dcdb44a0eecdab2fdd265af47df4ad83778510da35c3ea5937471aaa",
            "b472ea465b9fc6c0",
        ),
        (
            "gw1",
            1,
            "de9859bbeb2e5aa6509d46f2661ebf543592035357b6de82d119cce460e93a4c",
            "a692bcb4628a53a1",
        ),
        (
            "gw2",
            0,
            "1da841fa6a2014498e43c885409f94779db10d8bbbbaa35ee8cc5fdcef0cf269",
            "14902b5d643805a6",
        ),
        (
            "gw2",
            1,
            "5867e5b1c45fd9dd2f0802c5ba02dbb16e80edf4ab37498909381418c1ca8832",
            "b26824d35afcd129",
        ),
    ];

    /// Made by the stock fwknop 2.6.10 client with the gw1 vector keys:
    /// `fwknop --no-rc-file -D 127.0.0.1 --use-hmac --hmac-digest-type sha256
    /// --key-base64-rijndael <FW_GW1_KEY> --key-base64-hmac <FW_GW1_HMAC>
    /// -A tcp/22 -a 192.0.2.10 -U alice -T -B pkt.txt`
    /// (`proto/tests/fixtures/regen.sh` prints a fresh one).
    const STOCK_CLIENT_GW1: &str = "+ro/vsWl+hfbaQ13WQD/o7QKxzyldHda9bEgZagNLLJvb6Z5JW1pAVGr8MODtDkiQI9YIW7JNCyxHYduHGUhqso2wGRRj11Sg00gatvr+pO4WI24+/N32C4ZUFS2Zp55PFoJKoVeIKSlSQtMFgsvYmKYlIZOzpuJQvqaRsKuN2ug806I5nBIgVFbtvkwmTOfTNie5DhX5bzA";

    #[test]
    fn vectors_match_the_spec() {
        let gw1 = gateway_spa_key(&ROOT, "gw1").unwrap();
        let gw2 = gateway_spa_key(&ROOT, "gw2").unwrap();
        assert_eq!(hex(gw1.secret()), SPA_GW1);
        assert_eq!(gw1.id().to_string(), SPA_GW1_ID);
        assert_eq!(hex(gw2.secret()), SPA_GW2);
        assert_eq!(gw2.id().to_string(), SPA_GW2_ID);

        for (gateway, key, hmac) in [
            ("gw1", FW_GW1_KEY, FW_GW1_HMAC),
            ("gw2", FW_GW2_KEY, FW_GW2_HMAC),
        ] {
            let keys = fw(gateway);
            let (k, h) = fwknop_rc_base64(&keys);
            assert_eq!((k.as_str(), h.as_str()), (key, hmac), "{gateway}");
        }

        for (gateway, counter, secret, id) in OTK {
            let key = gateway_otk(&ROOT, gateway, counter).unwrap();
            assert_eq!(hex(key.secret()), secret, "{gateway} {counter}");
            assert_eq!(key.id().to_string(), id, "{gateway} {counter}");
        }
    }

    #[test]
    fn derivations_are_deterministic_and_differ_per_gateway_and_per_user() {
        let other = [0x43; 32];
        let spa = |root: &[u8; 32], gw: &str| gateway_spa_key(root, gw).unwrap();
        assert_eq!(spa(&ROOT, "gw1"), spa(&ROOT, "gw1"));
        assert_ne!(spa(&ROOT, "gw1"), spa(&ROOT, "gw2"));
        assert_ne!(spa(&ROOT, "gw1").id(), spa(&ROOT, "gw2").id());
        assert_ne!(spa(&ROOT, "gw1"), spa(&other, "gw1"));
        // Scoped keys are not the root used directly.
        assert_ne!(spa(&ROOT, "gw1"), SpaKey::from_secret(ROOT));

        assert_eq!(fw("gw1"), fw("gw1"));
        let (a, b) = (fw("gw1"), fw("gw2"));
        assert_ne!(a.enc_key, b.enc_key);
        assert_ne!(a.hmac_key, b.hmac_key);
        let c = gateway_fwknop_keys(&other, &ROOT, HmacType::Sha256, "gw1").unwrap();
        assert_ne!(a.enc_key, c.enc_key);
        assert_eq!(a.hmac_key, c.hmac_key, "each key derives from its own root");
        let d = gateway_fwknop_keys(&ROOT, &other, HmacType::Sha256, "gw1").unwrap();
        assert_eq!(a.enc_key, d.enc_key);
        assert_ne!(a.hmac_key, d.hmac_key);
        // The two labels separate the two keys of one root.
        assert_ne!(a.enc_key[..], a.hmac_key[..FWKNOP_ENC_KEY_LEN]);

        let otk = |s: &[u8; 32], gw: &str, c| gateway_otk(s, gw, c).unwrap();
        assert_eq!(otk(&ROOT, "gw1", 7), otk(&ROOT, "gw1", 7));
        assert_ne!(otk(&ROOT, "gw1", 7), otk(&ROOT, "gw2", 7));
        assert_ne!(otk(&ROOT, "gw1", 7).id(), otk(&ROOT, "gw2", 7).id());
        assert_ne!(otk(&ROOT, "gw1", 7), otk(&ROOT, "gw1", 8));
        assert_ne!(otk(&ROOT, "gw1", 7), otk(&other, "gw1", 7));
        assert_ne!(otk(&ROOT, "gw1", 7), rotation::derive_otk(&ROOT, 7));
        // One-time keys and native keys of one secret never coincide.
        assert_ne!(otk(&ROOT, "gw1", 0), spa(&ROOT, "gw1"));
    }

    #[test]
    fn fwknop_keys_have_key_gen_sizes_and_read_back_from_base64() {
        for hmac in [
            HmacType::Md5,
            HmacType::Sha256,
            HmacType::Sha512,
            HmacType::Sha3_512,
        ] {
            let keys = gateway_fwknop_keys(&ROOT, &ROOT, hmac, "edge-fra-1.example.net").unwrap();
            assert_eq!(keys.enc_key.len(), 32);
            assert_eq!(keys.hmac_key.len(), 64);
            assert_eq!(keys.hmac, hmac);
            let (k, h) = fwknop_rc_base64(&keys);
            assert_eq!(FwknopKeys::from_base64(&k, &h, hmac).unwrap(), keys);
        }
    }

    #[test]
    fn a_stock_client_packet_opens_only_at_its_gateway() {
        let wire = STOCK_CLIENT_GW1.as_bytes();
        let req = decode(&fw("gw1"), wire).unwrap();
        assert_eq!(req.user, "alice");
        assert_eq!(req.allow_ip.to_string(), "192.0.2.10");
        assert_eq!(req.access, vec![Access::tcp(22)]);
        assert_eq!(decode(&fw("gw2"), wire), Err(FwknopError::BadHmac));

        // The same from the other side, with knockgate's encoder.
        let req = FwknopRequest {
            rand: "1234567890123456".into(),
            user: "alice".into(),
            ..req
        };
        let at_gw2 = encode(&fw("gw2"), &req, [7; 8]).unwrap();
        let mut gw1 = FwknopVerifier::new();
        gw1.push("alice", &fw("gw1")).unwrap();
        assert_eq!(
            gw1.verify(at_gw2.as_bytes()).unwrap_err(),
            FwknopError::BadHmac
        );
        let mut gw2 = FwknopVerifier::new();
        gw2.push("alice", &fw("gw2")).unwrap();
        assert_eq!(gw2.verify(at_gw2.as_bytes()).unwrap().1, req);
    }

    #[test]
    fn a_native_packet_sealed_for_one_gateway_finds_no_key_at_another() {
        let req = SpaRequest {
            timestamp: 1_767_225_600,
            nonce: [1; 16],
            gateway: "gw1".into(),
            allow_ip: None,
            access: vec![Access::tcp(22)],
            duration_secs: 0,
        };
        for (sealer, gw1, gw2) in [
            (
                gateway_spa_key(&ROOT, "gw1").unwrap(),
                gateway_spa_key(&ROOT, "gw1").unwrap(),
                gateway_spa_key(&ROOT, "gw2").unwrap(),
            ),
            (
                gateway_otk(&ROOT, "gw1", 3).unwrap(),
                gateway_otk(&ROOT, "gw1", 3).unwrap(),
                gateway_otk(&ROOT, "gw2", 3).unwrap(),
            ),
        ] {
            let packet = seal(&sealer, &req, [9; 24]).unwrap();
            let at = |key: &SpaKey| open_with(&packet, |id| (id == key.id()).then_some(key));
            assert_eq!(at(&gw1).unwrap().1, req);
            assert_eq!(at(&gw2).unwrap_err(), SpaError::UnknownKey);
        }
    }

    #[test]
    fn gateway_names_follow_the_controllers_agent_names() {
        for ok in ["a", "gw1", "web-01.eu_west", "0", &"x".repeat(64), "a..b"] {
            assert_eq!(check_gateway(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_gateway(""), Err(ScopeError::GatewayLength(0)));
        assert_eq!(
            check_gateway(&"x".repeat(65)),
            Err(ScopeError::GatewayLength(65))
        );
        assert_eq!(check_gateway("."), Err(ScopeError::GatewayDots));
        assert_eq!(check_gateway(".."), Err(ScopeError::GatewayDots));
        assert_eq!(
            check_gateway("Gw1"),
            Err(ScopeError::GatewayChar { byte: b'G', at: 0 })
        );
        for bad in ["a b", "a/b", "a:b", "é", "gw\u{0}1", "gw1\n"] {
            assert!(
                matches!(check_gateway(bad), Err(ScopeError::GatewayChar { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_derivation_refuses_a_bad_name_or_an_empty_root() {
        let long = "x".repeat(65);
        for bad in ["", "..", "GW1", "gw/1", long.as_str()] {
            let want = check_gateway(bad).unwrap_err();
            assert_eq!(gateway_spa_key(&ROOT, bad).unwrap_err(), want);
            assert_eq!(
                gateway_fwknop_keys(&ROOT, &ROOT, HmacType::Sha256, bad).unwrap_err(),
                want
            );
            assert_eq!(gateway_otk(&ROOT, bad, 0).unwrap_err(), want);
        }
        assert_eq!(
            gateway_fwknop_keys(&[], &ROOT, HmacType::Sha256, "gw1").unwrap_err(),
            ScopeError::EmptyRoot
        );
        assert_eq!(
            gateway_fwknop_keys(&ROOT, &[], HmacType::Sha256, "gw1").unwrap_err(),
            ScopeError::EmptyRoot
        );
    }
}
