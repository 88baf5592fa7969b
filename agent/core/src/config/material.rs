//! The controller's derived material (`proto/rotation.md`) checked against the config it
//! came with: each user's rotating sequences per policy and window, and a stock of
//! one-time SPA keys. Only the controller holds the secrets these come from; an agent
//! holds what it must verify, for a bounded horizon.
//!
//! Every entry must fit the config: a sequence belongs to a rotating policy that admits
//! its user, a one-time key to a user some one-time-key policy admits, and no key id is
//! shared (a packet finds its key by id). A controller that sends anything else is wrong,
//! and the whole config is refused like any other invalid one.

use std::collections::{BTreeSet, HashSet};

use knockgate_proto::spa::SpaKey;

use super::{Config, ConfigError, invalid};
use crate::packet::KnockStep;

/// Longest rotating sequence the detector tracks (its stage counter is a byte).
const MAX_KNOCKS: usize = 255;

/// One user's rotating sequence for a policy and window, as the controller names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceDef {
    pub user: String,
    pub policy: String,
    pub window: u64,
    /// In order.
    pub knocks: Vec<KnockStep>,
}

/// One one-time key of a user, as the controller names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtkDef {
    pub user: String,
    pub counter: u64,
    pub key: SpaKey,
}

/// Derived material by name, before it is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaterialDef {
    pub rotating: Vec<SequenceDef>,
    pub otks: Vec<OtkDef>,
}

/// A rotating sequence; `user` and `policy` index the config's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub user: usize,
    pub policy: usize,
    pub window: u64,
    pub knocks: Vec<KnockStep>,
}

/// A one-time key; `user` indexes the config's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otk {
    pub user: usize,
    pub counter: u64,
    pub key: SpaKey,
}

/// Material checked against one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Material {
    pub rotating: Vec<Sequence>,
    pub otks: Vec<Otk>,
}

impl Config {
    /// Check `def` against this config. Keys in errors index its lists
    /// (`rotating[3].policy`, `one_time_keys[0].user`).
    pub fn material(&self, def: MaterialDef) -> Result<Material, ConfigError> {
        let rotating = self.sequences(def.rotating)?;
        let otks = self.one_time_keys(def.otks)?;
        Ok(Material { rotating, otks })
    }

    /// The index of the user `name`, or an error at `key`.
    fn user_index(&self, key: String, name: &str) -> Result<usize, ConfigError> {
        self.users
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| invalid(key, format!("no user named {name:?}")))
    }

    /// Rotating sequences: each for a user a rotating policy admits, once per window.
    fn sequences(&self, defs: Vec<SequenceDef>) -> Result<Vec<Sequence>, ConfigError> {
        let mut seen = HashSet::new();
        let mut rotating = Vec::with_capacity(defs.len());
        for (i, s) in defs.into_iter().enumerate() {
            let key = |k: &str| format!("rotating[{i}].{k}");
            let user = self.user_index(key("user"), &s.user)?;
            let policy = self
                .policies
                .iter()
                .position(|p| p.name == s.policy)
                .ok_or_else(|| invalid(key("policy"), format!("no policy named {:?}", s.policy)))?;
            let p = &self.policies[policy];
            if p.rotating.is_none() {
                return Err(invalid(
                    key("policy"),
                    format!("policy {:?} is not opened by rotating sequences", p.name),
                ));
            }
            if !p.users.contains(&user) {
                return Err(invalid(
                    key("user"),
                    format!("policy {:?} does not admit user {:?}", p.name, s.user),
                ));
            }
            if s.knocks.is_empty() || s.knocks.len() > MAX_KNOCKS {
                return Err(invalid(key("knocks"), "must be 1-255 knocks"));
            }
            if s.knocks
                .iter()
                .any(|k| matches!(k, KnockStep::Port { port: 0, .. }))
            {
                return Err(invalid(key("knocks"), "port must be 1-65535"));
            }
            if !seen.insert((user, policy, s.window)) {
                return Err(invalid(
                    key("window"),
                    format!(
                        "a second sequence for user {:?}, policy {:?}, window {}",
                        s.user, p.name, s.window
                    ),
                ));
            }
            let (window, knocks) = (s.window, s.knocks);
            rotating.push(Sequence {
                user,
                policy,
                window,
                knocks,
            });
        }
        Ok(rotating)
    }

    /// One-time keys: each for a user a one-time-key policy admits, each counter and key
    /// id once (and no key id of a user's own key).
    fn one_time_keys(&self, defs: Vec<OtkDef>) -> Result<Vec<Otk>, ConfigError> {
        let otk_users: BTreeSet<usize> = self
            .policies
            .iter()
            .filter(|p| p.otk.is_some())
            .flat_map(|p| p.users.iter().copied())
            .collect();
        let mut ids: HashSet<_> = self
            .users
            .iter()
            .filter_map(|u| u.spa_key.as_ref().map(SpaKey::id))
            .collect();
        let mut counters = HashSet::new();
        let mut otks = Vec::with_capacity(defs.len());
        for (i, k) in defs.into_iter().enumerate() {
            let key = |f: &str| format!("one_time_keys[{i}].{f}");
            let user = self.user_index(key("user"), &k.user)?;
            if !otk_users.contains(&user) {
                return Err(invalid(
                    key("user"),
                    format!("no one-time-key policy admits user {:?}", k.user),
                ));
            }
            if !counters.insert((user, k.counter)) {
                return Err(invalid(
                    key("counter"),
                    format!("user {:?} has key {} twice", k.user, k.counter),
                ));
            }
            if !ids.insert(k.key.id()) {
                return Err(invalid(key("key"), "same key id as another key"));
            }
            otks.push(Otk {
                user,
                counter: k.counter,
                key: k.key,
            });
        }
        Ok(otks)
    }
}

#[cfg(test)]
mod tests;
