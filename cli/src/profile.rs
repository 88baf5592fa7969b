//! The knocker profile: the TOML file `knockadm user add --profile-out`
//! writes (and `knockadm user profile NAME --update` brings up to date) and
//! `knocker open --profile` reads, and (in `profile/fwknoprc.rs`) the fwknop rc
//! file written beside it for users of the stock `fwknop` client.
//!
//! ```toml
//! [user]
//! name = "alice"
//! spa_key = "…"            # base64, 32 bytes: native SPA
//! fwknop_key = "…"         # base64: fwknop KEY_BASE64
//! fwknop_hmac_key = "…"    # base64: fwknop HMAC_KEY_BASE64
//! fwknop_hmac = "sha256"   # fwknop HMAC_DIGEST_TYPE
//! rotating_secret = "…"    # base64: rotating knock sequences
//!
//! [[gateway]]
//! name = "gw1"
//! address = "203.0.113.7"  # host, IP, or host:port
//!
//! [[gateway.policy]]       # one per policy admitting the user there
//! name = "ssh"
//! open = ["tcp/22"]        # what it opens: `knocker open` asks for this without --access
//! methods = ["spa", "fwknop", "rotating"]   # also "otk", "sequence" (a fixed sequence)
//!
//! [[gateway.rotating]]     # one per rotating policy admitting the user there
//! policy = "ssh"
//! length = 4
//! protos = "both"          # tcp, udp or both
//! port_lo = 20000
//! port_hi = 60000
//! window_secs = 30
//! exclude = [22]           # the gateway's protected ports
//! ```
//!
//! The `[[gateway.policy]]` entries (`profile/policy.rs`) and the
//! `[[gateway.rotating]]` entries (`profile/rotation.rs`) are copied from the
//! controller, which derives the agents' sequences with exactly these settings;
//! profiles written before either still read. One-time keys keep their counter
//! beside the profile (`crate::otk`).
//!
//! Both files hold secrets: they are created with mode 0600 and never
//! overwritten, except by [`replace_profile`] on an explicit `--update` (a new
//! file renamed over the old one). No error here carries a key.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use knockgate_proto::fwknop::{DigestType, FwknopKeys};
use knockgate_proto::scope;
use knockgate_proto::spa::SpaKey;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

mod fwknoprc;
mod policy;
mod rotation;

pub use fwknoprc::{fwknoprc_path, render_fwknoprc, split_address};
pub use policy::ProfileGatewayPolicy;
pub use rotation::ProfileRotation;

/// Mode of the profile and rc files: readable by their owner only.
pub const PROFILE_MODE: u32 = 0o600;

/// A profile is a few hundred bytes; refuse to read anything huge.
const MAX_PROFILE_LEN: u64 = 1024 * 1024;

/// A knocker profile: who the user is, their keys, and where to knock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user and their keys.
    pub user: ProfileUser,
    /// The gateways this user may knock on.
    #[serde(default, rename = "gateway", skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<ProfileGateway>,
}

/// The `[user]` table. Keys are standard base64; any may be missing from a
/// hand-written profile, and is then reported when a method needs it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProfileUser {
    /// The knockgate user name (sent in fwknop packets).
    pub name: String,
    /// Native SPA key, base64 of 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa_key: Option<String>,
    /// fwknop Rijndael key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwknop_key: Option<String>,
    /// fwknop HMAC key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwknop_hmac_key: Option<String>,
    /// fwknop HMAC digest type (`sha256` unless said otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwknop_hmac: Option<String>,
    /// Secret the rotating sequences derive from, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_secret: Option<String>,
}

impl Drop for ProfileUser {
    fn drop(&mut self) {
        self.spa_key.zeroize();
        self.fwknop_key.zeroize();
        self.fwknop_hmac_key.zeroize();
        self.rotating_secret.zeroize();
    }
}

impl fmt::Debug for ProfileUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileUser")
            .field("name", &self.name)
            .field("fwknop_hmac", &self.fwknop_hmac)
            .finish_non_exhaustive()
    }
}

/// One `[[gateway]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileGateway {
    /// The gateway (agent) name; native SPA packets are sealed for it.
    pub name: String,
    /// Where to send packets: a host name, an IP, or `host:port`.
    #[serde(default)]
    pub address: String,
    /// The policies admitting the user here: what each opens, and how.
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ProfileGatewayPolicy>,
    /// The rotating policies admitting the user here, as the controller derives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotating: Vec<ProfileRotation>,
}

/// Why a profile could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Opening or reading the file failed.
    #[error("cannot read profile '{}'", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The file is not a profile (TOML syntax, missing `[user] name`, …).
    #[error("invalid profile '{}': {message}", path.display())]
    Parse {
        /// The file as given.
        path: PathBuf,
        /// What is wrong, as the TOML parser says it (one line).
        message: String,
    },
    /// The file (or its `.fwknoprc` sibling) exists already.
    #[error("refusing to overwrite existing file '{}'", path.display())]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// Creating or writing the file failed.
    #[error("cannot write '{}'", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The profile names no gateway by that name.
    #[error("no gateway named '{name}' in profile '{}' (known: {})", path.display(), known_list(known))]
    UnknownGateway {
        /// The gateway asked for.
        name: String,
        /// The profile.
        path: PathBuf,
        /// The gateways the profile does name.
        known: Vec<String>,
    },
    /// The gateway entry has an empty address.
    #[error("gateway '{name}' has no address in profile '{}'", path.display())]
    NoAddress {
        /// The gateway.
        name: String,
        /// The profile.
        path: PathBuf,
    },
    /// A key the method needs is absent or empty.
    #[error("profile '{}' has no {field} (needed for {purpose})", path.display())]
    MissingKey {
        /// The `[user]` field.
        field: &'static str,
        /// What needed it.
        purpose: &'static str,
        /// The profile.
        path: PathBuf,
    },
    /// The gateway entry has no `[[gateway.rotating]]` entry.
    #[error(
        "gateway '{gateway}' has no rotating policy in profile '{}' (none admitted you there \
         when it was written; 'knockadm user profile NAME --update FILE' brings it up to date)",
        path.display()
    )]
    NoRotation {
        /// The gateway.
        gateway: String,
        /// The profile.
        path: PathBuf,
    },
    /// No rotating entry of the gateway has that policy name.
    #[error("no rotating policy '{policy}' at gateway '{gateway}' in profile '{}' (known: {})", path.display(), known_list(known))]
    UnknownPolicy {
        /// The policy asked for.
        policy: String,
        /// The gateway.
        gateway: String,
        /// The profile.
        path: PathBuf,
        /// The rotating policies the gateway entry does name.
        known: Vec<String>,
    },
    /// A rotating entry is out of range.
    #[error("profile '{}' has an invalid rotating policy '{policy}' at gateway '{gateway}': {reason}", path.display())]
    BadRotation {
        /// The policy.
        policy: String,
        /// The gateway.
        gateway: String,
        /// What is wrong.
        reason: String,
        /// The profile.
        path: PathBuf,
    },
    /// A key is present but unusable (never shows the key).
    #[error("profile '{}' has an invalid {field}: {reason}", path.display())]
    BadKey {
        /// The `[user]` field.
        field: &'static str,
        /// Why (no key material).
        reason: String,
        /// The profile.
        path: PathBuf,
    },
}

/// `a, b, c`, or `none`: how errors list what there is.
pub(crate) fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    }
}

impl Profile {
    /// The gateway entry named `name`.
    ///
    /// # Errors
    /// [`ProfileError::UnknownGateway`] listing the known ones.
    pub fn gateway(&self, name: &str, path: &Path) -> Result<&ProfileGateway, ProfileError> {
        self.gateways
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| ProfileError::UnknownGateway {
                name: name.to_owned(),
                path: path.to_owned(),
                known: self.gateways.iter().map(|g| g.name.clone()).collect(),
            })
    }

    /// The native SPA key.
    ///
    /// # Errors
    /// [`ProfileError::MissingKey`] or [`ProfileError::BadKey`].
    pub fn spa_key(&self, path: &Path) -> Result<SpaKey, ProfileError> {
        let text = required(&self.user.spa_key, "spa_key", "native spa", path)?;
        SpaKey::parse(text).map_err(|err| ProfileError::BadKey {
            field: "spa_key",
            reason: err.to_string(),
            path: path.to_owned(),
        })
    }

    /// The native SPA key for `gateway` alone, derived from the profile's root key
    /// (`knockgate_proto::scope`): what that gateway's agent holds.
    ///
    /// # Errors
    /// As [`Profile::spa_key`], or [`ProfileError::BadKey`] for a gateway name no
    /// agent can have.
    pub fn gateway_spa_key(&self, gateway: &str, path: &Path) -> Result<SpaKey, ProfileError> {
        let root = self.spa_key(path)?;
        scope::gateway_spa_key(root.secret(), gateway).map_err(|err| ProfileError::BadKey {
            field: "spa_key",
            reason: format!("gateway {gateway:?}: {err}"),
            path: path.to_owned(),
        })
    }

    /// The fwknop key pair for `gateway` alone, derived from the profile's root keys:
    /// what that gateway's agent holds, and what the `.fwknoprc` stanza carries.
    ///
    /// # Errors
    /// As [`Profile::fwknop_keys`], or [`ProfileError::BadKey`] for a gateway name no
    /// agent can have.
    pub fn gateway_fwknop_keys(
        &self,
        gateway: &str,
        path: &Path,
    ) -> Result<FwknopKeys, ProfileError> {
        let roots = self.fwknop_keys(path)?;
        scope::gateway_fwknop_keys(&roots.enc_key, &roots.hmac_key, roots.hmac, gateway).map_err(
            |err| ProfileError::BadKey {
                field: "fwknop_key/fwknop_hmac_key",
                reason: format!("gateway {gateway:?}: {err}"),
                path: path.to_owned(),
            },
        )
    }

    /// The fwknop root key pair and HMAC type (SHA-256 when unset).
    ///
    /// # Errors
    /// [`ProfileError::MissingKey`] or [`ProfileError::BadKey`].
    pub fn fwknop_keys(&self, path: &Path) -> Result<FwknopKeys, ProfileError> {
        let purpose = "fwknop";
        let enc = required(&self.user.fwknop_key, "fwknop_key", purpose, path)?;
        let hmac_key = required(&self.user.fwknop_hmac_key, "fwknop_hmac_key", purpose, path)?;
        let hmac = match self.user.fwknop_hmac.as_deref().map(str::trim) {
            None | Some("") => DigestType::Sha256,
            Some(name) => {
                name.parse()
                    .map_err(|err: knockgate_proto::fwknop::UnknownDigestType| {
                        ProfileError::BadKey {
                            field: "fwknop_hmac",
                            reason: err.to_string(),
                            path: path.to_owned(),
                        }
                    })?
            }
        };
        FwknopKeys::from_base64(enc, hmac_key, hmac).map_err(|err| ProfileError::BadKey {
            field: "fwknop_key/fwknop_hmac_key",
            reason: err.to_string(),
            path: path.to_owned(),
        })
    }
}

fn required<'a>(
    value: &'a Option<String>,
    field: &'static str,
    purpose: &'static str,
    path: &Path,
) -> Result<&'a str, ProfileError> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(ProfileError::MissingKey {
            field,
            purpose,
            path: path.to_owned(),
        }),
    }
}

/// Standard padded base64, as the profile and fwknop's `KEY_BASE64` hold keys.
#[must_use]
pub fn encode_key(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The profile as TOML, with a header comment.
///
/// # Errors
/// Never in practice (every field is a string); a serializer error is
/// reported as a write error on `path`.
pub fn render_toml(profile: &Profile, path: &Path) -> Result<Zeroizing<String>, ProfileError> {
    let body = Zeroizing::new(toml::to_string(profile).map_err(|err| ProfileError::Write {
        path: path.to_owned(),
        source: io::Error::other(err.to_string()),
    })?);
    let mut text = Zeroizing::new(format!(
        "# knockgate profile for {}: keep it secret.\n\
         # Use it with: knocker open GATEWAY --profile {}\n\n",
        profile.user.name,
        path.display()
    ));
    text.push_str(&body);
    Ok(text)
}

/// Fails when the profile, its rc file or a one-time key counter exists, so a
/// caller can check before asking the controller for secrets it could not save
/// (a counter left from an older secret would skip the new one's keys).
///
/// # Errors
/// [`ProfileError::Exists`] naming the file that exists.
pub fn ensure_free(profile: &Path) -> Result<(), ProfileError> {
    for path in [
        profile.to_owned(),
        fwknoprc_path(profile),
        crate::otk::counter_path(profile),
    ] {
        if path.symlink_metadata().is_ok() {
            return Err(ProfileError::Exists { path });
        }
    }
    Ok(())
}

/// Writes the profile to `path` and the fwknop stanzas to `path.fwknoprc`,
/// both new files of mode 0600; returns the rc file's path.
///
/// # Errors
/// [`ProfileError::Exists`] when either file exists (checked before anything
/// is written, and again atomically with `O_EXCL`), [`ProfileError::Write`].
pub fn write_profile(path: &Path, profile: &Profile) -> Result<PathBuf, ProfileError> {
    ensure_free(path)?;
    let rc_path = fwknoprc_path(path);
    write_new(path, render_toml(profile, path)?.as_bytes())?;
    write_new(&rc_path, render_fwknoprc(profile).as_bytes())?;
    Ok(rc_path)
}

/// Replaces the profile at `path` and its `path.fwknoprc` with `profile`, each
/// through a new 0600 file in the same directory, synced and renamed over the
/// old one (then the directory synced), so a crash leaves the old or the new
/// file, never half of one; returns the rc file's path. The only overwrite of a
/// profile, for `knockadm user profile --update`.
///
/// # Errors
/// [`ProfileError::Write`] naming the file that could not be replaced.
pub fn replace_profile(path: &Path, profile: &Profile) -> Result<PathBuf, ProfileError> {
    let rc_path = fwknoprc_path(path);
    replace_file(path, render_toml(profile, path)?.as_bytes())?;
    replace_file(&rc_path, render_fwknoprc(profile).as_bytes())?;
    Ok(rc_path)
}

fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    crate::durable::replace(path, Path::new(&tmp), bytes).map_err(|source| ProfileError::Write {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    let write_error = |source| ProfileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PROFILE_MODE)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                ProfileError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write_error(source)
            }
        })?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Reads and parses a profile.
///
/// # Errors
/// [`ProfileError::Read`] or [`ProfileError::Parse`], naming `path`.
pub fn read_profile(path: &Path) -> Result<Profile, ProfileError> {
    let read_error = |source| ProfileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_PROFILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_PROFILE_LEN {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {MAX_PROFILE_LEN} bytes"),
        )));
    }
    toml::from_str(&text).map_err(|err: toml::de::Error| ProfileError::Parse {
        path: path.to_owned(),
        // The parser's message can quote the offending line, which may
        // hold a key: keep only its first line and the position.
        message: parse_message(&err),
    })
}

fn parse_message(err: &toml::de::Error) -> String {
    let first = err
        .message()
        .lines()
        .next()
        .unwrap_or("syntax error")
        .trim();
    match err.span() {
        Some(span) => format!("{first} (at byte {})", span.start),
        None => first.to_owned(),
    }
}

#[cfg(test)]
mod tests;
