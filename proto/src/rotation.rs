//! Rotating knock sequences and one-time SPA keys, both derived from a user's rotating
//! secret (specified with test vectors in `proto/rotation.md`).
//!
//! The controller holds the secret and derives; an agent only ever receives derived
//! values for a bounded horizon, so a compromised gateway can neither mint future knocks
//! nor use them at another gateway (the gateway's name is part of the derivation).

use hkdf::Hkdf;
use sha2::Sha256;

use crate::access::{Access, Proto};
use crate::spa::SpaKey;

/// HKDF salt: separates these derivations from every other use of the secret.
const SALT: &[u8] = b"knockgate rotation v1";
/// Longest sequence a policy may ask for.
pub const MAX_LENGTH: u8 = 16;

/// Which protocols rotating knocks may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protos {
    Tcp,
    Udp,
    Both,
}

impl Protos {
    fn code(self) -> u8 {
        match self {
            Protos::Tcp => 1,
            Protos::Udp => 2,
            Protos::Both => 3,
        }
    }
}

/// The policy settings a rotating sequence depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationParams {
    /// Knocks per sequence, 1..=16.
    pub length: u8,
    pub protos: Protos,
    /// Inclusive port range knocks are drawn from.
    pub port_lo: u16,
    pub port_hi: u16,
    /// Ports never used (the gateway's protected ports); need not be sorted.
    pub exclude: Vec<u16>,
    /// Window length in seconds (> 0).
    pub window_secs: u32,
}

impl Default for RotationParams {
    fn default() -> Self {
        RotationParams {
            length: 4,
            protos: Protos::Both,
            port_lo: 20000,
            port_hi: 60000,
            exclude: Vec::new(),
            window_secs: 30,
        }
    }
}

/// Settings no sequence can be drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    #[error("sequence length must be 1..=16")]
    Length,
    #[error("window must be longer than zero")]
    Window,
    #[error("port range is empty after exclusions")]
    NoPorts,
}

/// The index of the window `unix_secs` falls in.
#[must_use]
pub fn window_index(unix_secs: u64, window_secs: u32) -> u64 {
    unix_secs / u64::from(window_secs.max(1))
}

/// The HKDF-SHA256 PRK of `secret` under [`SALT`]; also used by
/// [`crate::scope::gateway_otk`].
pub(crate) fn prk(secret: &[u8; 32]) -> Hkdf<Sha256> {
    Hkdf::<Sha256>::new(Some(SALT), secret)
}

/// The sequence `secret` knocks at `gateway` during window `window`: `length` distinct
/// `proto/port` pairs.
pub fn derive_sequence(
    secret: &[u8; 32],
    gateway: &str,
    window: u64,
    p: &RotationParams,
) -> Result<Vec<Access>, RotationError> {
    if p.length == 0 || p.length > MAX_LENGTH {
        return Err(RotationError::Length);
    }
    if p.window_secs == 0 {
        return Err(RotationError::Window);
    }
    let mut exclude: Vec<u16> = p
        .exclude
        .iter()
        .copied()
        .filter(|e| (p.port_lo..=p.port_hi).contains(e))
        .collect();
    exclude.sort_unstable();
    exclude.dedup();
    let span = u64::from(p.port_hi).saturating_sub(u64::from(p.port_lo)) + 1;
    if p.port_lo > p.port_hi || span <= exclude.len() as u64 {
        return Err(RotationError::NoPorts);
    }
    let allowed = span - exclude.len() as u64;
    let gw = gateway.as_bytes();
    let gw = &gw[..gw.len().min(255)];
    let mut info = Vec::with_capacity(32 + gw.len());
    info.extend_from_slice(b"seq");
    info.push(gw.len() as u8);
    info.extend_from_slice(gw);
    info.extend_from_slice(&window.to_be_bytes());
    info.push(p.length);
    info.push(p.protos.code());
    info.extend_from_slice(&p.port_lo.to_be_bytes());
    info.extend_from_slice(&p.port_hi.to_be_bytes());
    info.extend_from_slice(&p.window_secs.to_be_bytes());
    // 255 candidates of 8 bytes: enough for 16 distinct knocks from as few as 18 ports.
    let mut okm = [0u8; 2040];
    prk(secret)
        .expand(&info, &mut okm)
        .map_err(|_| RotationError::Length)?;
    let mut out: Vec<Access> = Vec::with_capacity(usize::from(p.length));
    for chunk in okm.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_be_bytes(b);
        let proto = match p.protos {
            Protos::Tcp => Proto::Tcp,
            Protos::Udp => Proto::Udp,
            Protos::Both if v & 1 == 0 => Proto::Tcp,
            Protos::Both => Proto::Udp,
        };
        let mut port = u64::from(p.port_lo) + (v >> 1) % allowed;
        for &e in &exclude {
            if u64::from(e) <= port {
                port += 1;
            }
        }
        let knock = Access {
            proto,
            port: port as u16,
        };
        if !out.contains(&knock) {
            out.push(knock);
            if out.len() == usize::from(p.length) {
                return Ok(out);
            }
        }
    }
    // Only reachable with a tiny port range and a long sequence.
    Err(RotationError::NoPorts)
}

/// The one-time SPA key number `counter` of the user with `secret`, the same at every
/// gateway (`info = "otk" ‖ u64be(counter)`).
///
/// Fleet code should use [`crate::scope::gateway_otk`] instead: a key from this function
/// opens at every gateway that holds it, so an agent's stock of these keys, if stolen, is
/// good at every other gateway until each counter is claimed. The scoped key differs per
/// gateway and is claimed under the same (user, counter), so it is just as single-use.
/// This one stays for callers that predate scoping; its vectors are in
/// `proto/rotation.md`.
#[must_use]
pub fn derive_otk(secret: &[u8; 32], counter: u64) -> SpaKey {
    let mut info = [0u8; 11];
    info[..3].copy_from_slice(b"otk");
    info[3..].copy_from_slice(&counter.to_be_bytes());
    let mut okm = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = prk(secret).expand(&info, &mut okm);
    SpaKey::from_secret(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [0x42; 32];

    fn text(seq: &[Access]) -> String {
        seq.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn vectors_match_rotation_md() {
        let p = RotationParams {
            exclude: vec![22, 443],
            ..RotationParams::default()
        };
        let w = window_index(1_800_000_000, 30);
        assert_eq!(w, 60_000_000);
        assert_eq!(
            text(&derive_sequence(&SECRET, "gw1", w, &p).unwrap()),
            VECTOR_GW1_W
        );
        assert_eq!(
            text(&derive_sequence(&SECRET, "gw1", w + 1, &p).unwrap()),
            VECTOR_GW1_W1
        );
        assert_eq!(
            text(&derive_sequence(&SECRET, "gw2", w, &p).unwrap()),
            VECTOR_GW2_W
        );
        assert_eq!(derive_otk(&SECRET, 0).id().to_string(), VECTOR_OTK0_ID);
        assert_eq!(derive_otk(&SECRET, 1).id().to_string(), VECTOR_OTK1_ID);
    }

    // Reproduced independently by proto/tests/fixtures/rotation_vectors.py.
    const VECTOR_GW1_W: &str = "tcp/31369 tcp/49846 udp/53745 tcp/28597";
    const VECTOR_GW1_W1: &str = "tcp/48471 udp/25021 udp/57805 tcp/37968";
    const VECTOR_GW2_W: &str = "udp/36529 udp/42954 tcp/39124 udp/30455";
    const VECTOR_OTK0_ID: &str = "0e02490393d184a5";
    const VECTOR_OTK1_ID: &str = "9aeefcfcb8f36396";

    #[test]
    fn sequences_respect_their_parameters() {
        let p = RotationParams {
            length: 16,
            protos: Protos::Udp,
            port_lo: 1000,
            port_hi: 1019,
            exclude: vec![1000, 1005, 5],
            window_secs: 30,
        };
        for w in 0..200 {
            let s = derive_sequence(&SECRET, "gw", w, &p).unwrap();
            assert_eq!(s.len(), 16);
            for (i, a) in s.iter().enumerate() {
                assert_eq!(a.proto, Proto::Udp);
                assert!(
                    (1000..=1019).contains(&a.port) && a.port != 1000 && a.port != 1005,
                    "{a}"
                );
                assert!(!s[..i].contains(a), "distinct");
            }
        }
        let tight = RotationParams {
            length: 4,
            protos: Protos::Tcp,
            port_lo: 10,
            port_hi: 12,
            exclude: vec![11],
            window_secs: 30,
        };
        assert_eq!(
            derive_sequence(&SECRET, "gw", 0, &tight),
            Err(RotationError::NoPorts)
        );
        assert_eq!(
            derive_sequence(
                &SECRET,
                "gw",
                0,
                &RotationParams {
                    length: 0,
                    ..RotationParams::default()
                }
            ),
            Err(RotationError::Length)
        );
    }

    #[test]
    fn windows_gateways_and_secrets_all_change_the_sequence() {
        let p = RotationParams::default();
        let a = derive_sequence(&SECRET, "gw1", 7, &p).unwrap();
        assert_ne!(a, derive_sequence(&SECRET, "gw1", 8, &p).unwrap());
        assert_ne!(a, derive_sequence(&SECRET, "gw2", 7, &p).unwrap());
        assert_ne!(a, derive_sequence(&[0x43; 32], "gw1", 7, &p).unwrap());
        assert_ne!(derive_otk(&SECRET, 5).id(), derive_otk(&SECRET, 6).id());
    }
}
