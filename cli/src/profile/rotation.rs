//! The profile's rotating material: the `rotating_secret` and, per gateway, the
//! `[[gateway.rotating]]` entries knockadm copies from the controller, so that
//! knocker derives exactly the sequences the gateway's agent is sent
//! (`proto/rotation.md`).
//!
//! Entries are kept as the controller sent them (plain numbers and strings) and
//! checked only when used, so a profile with an entry this knocker cannot use
//! still works for every other method.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use knockgate_proto::rotation::{MAX_LENGTH, Protos, RotationParams};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Profile, ProfileError, ProfileGateway, required};

/// One `[[gateway.rotating]]` entry: a rotating policy at that gateway, with its
/// effective settings and the ports excluded there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRotation {
    /// The policy's name (`knocker open --policy`).
    pub policy: String,
    /// Knocks per sequence, 1..=16.
    pub length: u32,
    /// `tcp`, `udp` or `both`.
    pub protos: String,
    /// Lowest port knocks are drawn from.
    pub port_lo: u32,
    /// Highest port knocks are drawn from.
    pub port_hi: u32,
    /// Window length in seconds.
    pub window_secs: u32,
    /// Ports never knocked on (the gateway's protected ports).
    pub exclude: Vec<u32>,
}

impl ProfileRotation {
    /// The derivation parameters, or why the entry is unusable (no secrets in it).
    ///
    /// # Errors
    /// A reason naming the field that is out of range.
    pub fn params(&self) -> Result<RotationParams, String> {
        let length = u8::try_from(self.length)
            .ok()
            .filter(|l| (1..=MAX_LENGTH).contains(l))
            .ok_or_else(|| format!("length {} is not in 1..={MAX_LENGTH}", self.length))?;
        let protos = match self.protos.as_str() {
            "tcp" => Protos::Tcp,
            "udp" => Protos::Udp,
            "both" => Protos::Both,
            other => {
                return Err(format!(
                    "protos {other:?} is not \"tcp\", \"udp\" or \"both\""
                ));
            }
        };
        let port = |field: &str, v: u32| {
            u16::try_from(v)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{field} {v} is not in 1..=65535"))
        };
        let port_lo = port("port_lo", self.port_lo)?;
        let port_hi = port("port_hi", self.port_hi)?;
        if port_lo > port_hi {
            return Err(format!("port_hi {port_hi} is below port_lo {port_lo}"));
        }
        if self.window_secs == 0 {
            return Err("window_secs must be greater than 0".to_owned());
        }
        let exclude = self
            .exclude
            .iter()
            .map(|e| port("exclude", *e))
            .collect::<Result<_, _>>()?;
        Ok(RotationParams {
            length,
            protos,
            port_lo,
            port_hi,
            exclude,
            window_secs: self.window_secs,
        })
    }
}

impl Profile {
    /// The rotating secret, which sequences and one-time keys derive from;
    /// `purpose` names what needs it in the error.
    ///
    /// # Errors
    /// [`ProfileError::MissingKey`] or [`ProfileError::BadKey`] (not 32 bytes of base64).
    pub fn rotating_secret(
        &self,
        purpose: &'static str,
        path: &Path,
    ) -> Result<Zeroizing<[u8; 32]>, ProfileError> {
        let field = "rotating_secret";
        let text = required(&self.user.rotating_secret, field, purpose, path)?;
        let bad = |reason: String| ProfileError::BadKey {
            field,
            reason,
            path: path.to_owned(),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| bad("not standard base64".to_owned()))?,
        );
        let mut secret = Zeroizing::new([0u8; 32]);
        if bytes.len() != secret.len() {
            return Err(bad(format!("{} bytes, expected 32", bytes.len())));
        }
        secret.copy_from_slice(&bytes);
        Ok(secret)
    }

    /// The rotating entry of `gateway` named `policy`, or its first one, with
    /// its derivation parameters.
    ///
    /// # Errors
    /// [`ProfileError::NoRotation`] when the gateway has none,
    /// [`ProfileError::UnknownPolicy`] when none is named `policy`,
    /// [`ProfileError::BadRotation`] when the entry is out of range.
    pub fn rotation<'a>(
        &self,
        gateway: &'a ProfileGateway,
        policy: Option<&str>,
        path: &Path,
    ) -> Result<(&'a ProfileRotation, RotationParams), ProfileError> {
        let entry = match policy {
            None => gateway.rotating.first(),
            Some(name) => gateway.rotating.iter().find(|r| r.policy == name),
        };
        let entry = match (entry, policy) {
            (Some(entry), _) => entry,
            (None, None) => {
                return Err(ProfileError::NoRotation {
                    gateway: gateway.name.clone(),
                    path: path.to_owned(),
                });
            }
            (None, Some(name)) => {
                return Err(ProfileError::UnknownPolicy {
                    policy: name.to_owned(),
                    gateway: gateway.name.clone(),
                    path: path.to_owned(),
                    known: gateway.rotating.iter().map(|r| r.policy.clone()).collect(),
                });
            }
        };
        let params = entry.params().map_err(|reason| ProfileError::BadRotation {
            policy: entry.policy.clone(),
            gateway: gateway.name.clone(),
            reason,
            path: path.to_owned(),
        })?;
        Ok((entry, params))
    }
}
