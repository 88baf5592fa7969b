//! The config file as written: serde shapes with `deny_unknown_fields`, and the string
//! forms (durations, `proto/port`, knocks, tcp flags, keys) parsed where they are read, so
//! toml reports the line and column of a bad value.

use std::time::Duration;

use knockgate_proto::fwknop::{FwknopKeys, HmacType};
use knockgate_proto::spa::SpaKey;
use serde::{Deserialize, Deserializer};

use super::{
    AgentSection, ConfigError, ControllerSection, DEFAULT_RECONNECT_MAX, FirewallSection,
    PolicyDef, User, invalid,
};
use crate::detect::sequence::FlagFilter;
use crate::packet::KnockStep;
use crate::ruleset::Access;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub firewall: FirewallSection,
    pub spa: Option<RawSpa>,
    pub controller: Option<RawController>,
    #[serde(default)]
    pub user: Vec<RawUser>,
    #[serde(default)]
    pub policy: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpa {
    pub port: Option<u16>,
    pub max_age: Option<Human>,
    pub replay_cache_max: Option<usize>,
    pub sealed_base_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawController {
    pub url: OneOrMany,
    pub reconnect_max: Option<Human>,
}

/// `url = "https://a:7443"`, or several replicas: `url = ["https://a:7443", "https://b:7443"]`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a URL or a list of URLs")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawController {
    pub(super) fn validate(self) -> Result<ControllerSection, ConfigError> {
        let urls = match self.url {
            OneOrMany::One(url) => {
                check_url(&url).map_err(|why| invalid("controller.url", why))?;
                vec![url]
            }
            OneOrMany::Many(urls) => {
                if urls.is_empty() {
                    return Err(invalid("controller.url", "names no controller"));
                }
                for (i, url) in urls.iter().enumerate() {
                    let key = format!("controller.url[{i}]");
                    check_url(url).map_err(|why| invalid(&key, why))?;
                    if urls[..i].contains(url) {
                        return Err(invalid(&key, "is listed twice"));
                    }
                }
                urls
            }
        };
        let reconnect_max = self.reconnect_max.map_or(DEFAULT_RECONNECT_MAX, |h| h.0);
        if reconnect_max < Duration::from_millis(200) {
            return Err(invalid(
                "controller.reconnect_max",
                "must be at least 200ms",
            ));
        }
        Ok(ControllerSection {
            urls,
            reconnect_max,
        })
    }
}

/// `https://HOST[:PORT][/…]`, or why not.
fn check_url(url: &str) -> Result<(), &'static str> {
    let host = url
        .strip_prefix("https://")
        .ok_or("must start with https://")?;
    let authority = host.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.starts_with(':') {
        return Err("names no host");
    }
    if authority.contains('@') || authority.chars().any(char::is_whitespace) {
        return Err("must be https://HOST[:PORT]");
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub name: String,
    pub spa_key: Option<Secret<SpaKey>>,
    pub fwknop_key: Option<String>,
    pub fwknop_hmac_key: Option<String>,
    pub fwknop_hmac: Option<Spec<HmacType>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub name: String,
    // May be empty when the policy forwards (its outer ports are opened).
    #[serde(default)]
    pub open: Vec<Spec<Access>>,
    pub timeout: Human,
    pub max_timeout: Option<Human>,
    #[serde(default)]
    pub sequence: Vec<Spec<KnockStep>>,
    pub sequence_timeout: Option<Human>,
    pub min_gap: Option<Human>,
    pub max_gap: Option<Human>,
    pub tcp_flags: Option<Spec<FlagFilter>>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub spa: bool,
    #[serde(default)]
    pub fwknop: bool,
    #[serde(default)]
    pub sealed: bool,
    pub require_os: Option<toml::Spanned<Vec<String>>>,
    /// `forward = "tcp/2222 -> 10.0.0.5:22"`, or a list (`config/forward.rs`).
    #[serde(default)]
    pub forward: super::forward::Forwards,
}

impl RawUser {
    /// The user as written in the file: fwknop keys come as a base64 pair.
    pub(super) fn into_user(self, i: usize) -> Result<User, ConfigError> {
        let key = |k: &str| format!("user[{i}].{k}");
        let fwknop = match (self.fwknop_key, self.fwknop_hmac_key) {
            (None, None) => {
                if self.fwknop_hmac.is_some() {
                    return Err(invalid(key("fwknop_hmac"), "set without fwknop_key"));
                }
                None
            }
            (Some(_), None) => {
                return Err(invalid(
                    key("fwknop_hmac_key"),
                    "required with fwknop_key (knockgate requires fwknop's HMAC)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(key("fwknop_key"), "required with fwknop_hmac_key"));
            }
            (Some(enc), Some(hmac)) => {
                let kind = self.fwknop_hmac.map_or(HmacType::Sha256, |s| s.0);
                Some(fwknop_keys(&enc, &hmac, kind).map_err(|e| invalid(key("fwknop_key"), e))?)
            }
        };
        Ok(User {
            name: self.name,
            spa_key: self.spa_key.map(|s| s.0),
            fwknop,
        })
    }
}

impl RawPolicy {
    /// The policy as written in `text`, the `[[policy]]` number `i`. A `require_os`
    /// without a TCP knock to fingerprint is refused here already, naming its line.
    pub(super) fn into_def(self, i: usize, text: &str) -> Result<PolicyDef, ConfigError> {
        let sequence: Vec<KnockStep> = self.sequence.into_iter().map(|s| s.0).collect();
        let require_os = match self.require_os {
            None => Vec::new(),
            Some(spanned) => {
                let line = text[..spanned.span().start.min(text.len())]
                    .matches('\n')
                    .count()
                    + 1;
                let names = spanned.into_inner();
                if !names.is_empty() && !super::validate::has_tcp_knock(&sequence) {
                    return Err(invalid(
                        format!("policy[{i}].require_os"),
                        format!("line {line}: {}", super::validate::NEEDS_TCP_KNOCK),
                    ));
                }
                names
            }
        };
        Ok(PolicyDef {
            name: self.name,
            open: self.open.into_iter().map(|s| s.0).collect(),
            timeout: self.timeout.0,
            max_timeout: self.max_timeout.map(|h| h.0),
            sequence,
            sequence_timeout: self.sequence_timeout.map(|h| h.0),
            min_gap: self.min_gap.map(|h| h.0),
            max_gap: self.max_gap.map(|h| h.0),
            tcp_flags: self.tcp_flags.map(|s| s.0),
            users: self.users,
            spa: self.spa,
            fwknop: self.fwknop,
            sealed: self.sealed,
            require_os,
            forward: self.forward.0,
            // Both need material only the controller can push.
            rotating: false,
            window_secs: None,
            otk: None,
        })
    }
}

/// A duration written as humantime (`30s`, `5m`), at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Human(pub Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?}: {e} (use e.g. \"30s\", \"5m\")"
            ))
        })?;
        if d > super::MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} is longer than the limit of 30 days"
            )));
        }
        Ok(Human(d))
    }
}

/// A value written as a string and parsed with [`ParseSpec`].
pub(super) struct Spec<T>(pub T);

/// Like [`Spec`], but the error never repeats the text: it is key material.
pub(super) struct Secret<T>(pub T);

pub(super) trait ParseSpec: Sized {
    fn parse_spec(s: &str) -> Result<Self, String>;
}

impl<'de, T: ParseSpec> Deserialize<'de> for Spec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        T::parse_spec(&s)
            .map(Spec)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Secret<SpaKey> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(d)?);
        SpaKey::parse(&s).map(Secret).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad spa_key: {e} (expected base64 of 32 bytes, as `knocker keygen` prints)"
            ))
        })
    }
}

impl ParseSpec for Access {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("bad proto/port {s:?}: {e}"))
    }
}

impl ParseSpec for HmacType {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("unknown fwknop_hmac {s:?} (sha1, sha256, sha384, sha512)"))
    }
}

impl ParseSpec for KnockStep {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("bad knock {s:?}: {e}"))
    }
}

impl ParseSpec for FlagFilter {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("tcp_flags {s:?}: {e}"))
    }
}

/// fwknop keys from their two base64 texts; errors name the key, never its value.
fn fwknop_keys(enc: &str, hmac: &str, kind: HmacType) -> Result<FwknopKeys, String> {
    FwknopKeys::from_base64(enc, hmac, kind).map_err(|e| format!("bad fwknop keys: {e}"))
}

/// toml's own rendering spans several lines with a caret drawing; say the same in one
/// line: where, the offending line itself (which names the key), and what is wrong.
/// Lines holding key material are not echoed.
pub(super) fn locate(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let mut line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.contains("key") {
        line = line.split('=').next().unwrap_or("").trim();
    }
    let column = text[line_start..start].chars().count() + 1;
    format!("line {line_no}, column {column} ({line}): {message}")
}
