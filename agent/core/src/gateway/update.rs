//! A new config while running: built and validated ahead into an [`Update`], then
//! swapped in at once. Grants stay open across the swap, except those of users the new
//! config no longer has; fixed-sequence knocks in progress start over; the SPA replay
//! cache carries over, so a packet accepted under the old config is still a replay.
//! Rotating-sequence progress and consumption always carry over.
//!
//! Most pushes from the controller change only the derived material (new windows, a
//! fresh stock of one-time keys): then the firewall and the matchers are left alone and
//! only the material is swapped.

use std::collections::BTreeSet;
use std::sync::Arc;

use knockgate_proto::event::Reason;

use super::{Gateway, Time};
use crate::config::{Config, ConfigError, Material, MaterialDef};
use crate::detect::sealed::Assembler;
use crate::detect::sequence::{DoorError, SequenceMatcher};
use crate::detect::spa::SpaDetector;
use crate::p0f::Database;
use crate::ruleset::Ruleset;

/// Everything the gateway needs to enforce a config, built ahead of the swap.
pub struct Update {
    config: Config,
    matcher: SequenceMatcher,
    door_policy: Vec<usize>,
    spa: SpaDetector,
    ruleset: Ruleset,
    material: Material,
    /// The p0f database `require_os` is judged by, when a policy requires an OS.
    p0f: Option<Arc<Database>>,
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("policies", &self.config.policies.len())
            .field("users", &self.config.users.len())
            .field("ruleset", &self.ruleset)
            .field("sequences", &self.material.rotating.len())
            .field("one_time_keys", &self.material.otks.len())
            .finish_non_exhaustive()
    }
}

impl Update {
    /// Build the matcher, SPA detector and ruleset of a validated config (with no
    /// derived material: see [`Update::with_material`]).
    pub fn build(config: Config) -> Result<Update, DoorError> {
        let (door_policy, doors): (Vec<usize>, Vec<_>) = config.doors().into_iter().unzip();
        let matcher = SequenceMatcher::new(doors, config.agent.max_sources)?;
        let spa = SpaDetector::new(&config);
        let ruleset = config.ruleset();
        Ok(Update {
            config,
            matcher,
            door_policy,
            spa,
            ruleset,
            material: Material::default(),
            p0f: None,
        })
    }

    /// The same update with every fixed sequence matched in user space (for a firewall
    /// that cannot match them itself).
    pub fn userspace_sequences(self) -> Result<Update, DoorError> {
        if self.config.kernel_doors().is_empty() {
            return Ok(self);
        }
        let rebuilt = Update::build(self.config.userspace_sequences())?;
        Ok(Update {
            material: self.material,
            p0f: self.p0f,
            ..rebuilt
        })
    }

    /// Judge `require_os` by `db` (the shell loads it from `agent.p0f_db`).
    #[must_use]
    pub fn with_p0f(mut self, db: Option<Arc<Database>>) -> Update {
        self.p0f = db;
        self
    }

    /// Hold `def` too, checked against this update's config.
    pub fn with_material(mut self, def: MaterialDef) -> Result<Update, ConfigError> {
        self.material = self.config.material(def)?;
        Ok(self)
    }

    /// The config this update enforces.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The derived material it holds.
    pub fn material(&self) -> &Material {
        &self.material
    }
}

/// What taking a config in needs from the shell.
#[derive(Debug)]
pub enum Apply {
    /// Nothing: it is in force (only its derived material was new).
    Done,
    /// Install this base, then answer with [`Gateway::handle_installed_config`]; the
    /// config is in force only if that worked.
    Install(Ruleset),
}

impl Gateway {
    /// Take `update` in. A change of policies or users needs the firewall first (one
    /// atomic change, see [`Apply::Install`]); on an error nothing has changed.
    pub fn handle_config(&mut self, update: Update, now: Time) -> Result<Apply, String> {
        if update.config == self.config && !self.has_floor() {
            let material = update.material;
            self.set_material(material, now);
            return Ok(Apply::Done);
        }
        if update.config.uses_spa_detector() && self.spa.is_none() {
            return Err("SPA policies need the replay store, which this agent did not open".into());
        }
        let ruleset = update.ruleset.clone();
        self.staged = Some(Box::new(update));
        Ok(Apply::Install(ruleset))
    }

    /// How installing the base of the config handed to [`Gateway::handle_config`] went;
    /// only if it worked is the config in force.
    pub fn handle_installed_config(
        &mut self,
        result: Result<(), String>,
        now: Time,
    ) -> Result<(), String> {
        let Some(update) = self.staged.take() else {
            return Err("no config waits for its firewall".into());
        };
        result.map_err(|e| format!("firewall: {e}"))?;
        let Update {
            config,
            matcher,
            door_policy,
            spa,
            ruleset,
            material,
            p0f,
        } = *update;
        // An explicit config from the controller: what it protects is what is protected.
        self.clear_floor();
        self.installed(&ruleset);
        self.door_policy = door_policy;
        self.matcher = matcher;
        let uses_spa = config.uses_spa();
        if let Some(state) = &mut self.spa {
            state.replace(spa, uses_spa);
        }
        self.sealed = match (config.sealed_ports(), self.sealed.take()) {
            (Some(range), Some(held)) if held.base() == *range.start() => Some(held),
            (Some(range), _) => Some(Assembler::new(*range.start(), config.agent.max_sources)),
            (None, _) => None,
        };
        self.config = config;
        self.set_p0f(p0f);
        // The static knocks may have changed: retune whatever the rotating ones are.
        self.rotating.force_retune();
        self.set_material(material, now);
        let users: BTreeSet<&str> = self.config.users.iter().map(|u| u.name.as_str()).collect();
        let gone = self
            .grants
            .select(|g| g.user.as_deref().is_some_and(|u| !users.contains(u)));
        self.close_now(gone, Reason::UserRemoved, now);
        Ok(())
    }

    /// Close the grants named by ref, and every grant of `users`. Returns how many.
    pub fn handle_revoke(&mut self, grant_refs: &[String], users: &[String], now: Time) -> usize {
        let keys = self.grants.select(|g| {
            grant_refs.contains(&g.grant_ref) || g.user.as_ref().is_some_and(|u| users.contains(u))
        });
        let n = keys.len();
        self.close_now(keys, Reason::Revoked, now);
        n
    }
}
