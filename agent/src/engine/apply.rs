//! A new config while running: built and validated off the engine thread into an
//! [`Update`], then swapped in at once. Grants stay open across the swap, except those of
//! users the new config no longer has; fixed-sequence knocks in progress start over; the
//! SPA replay cache carries over, so a packet accepted under the old config is still a
//! replay. Rotating-sequence progress and consumption always carry over.
//!
//! Most pushes from the controller change only the derived material (new windows, a
//! fresh stock of one-time keys): then the firewall and the matchers are left alone and
//! only the material is swapped.

use std::collections::BTreeSet;
use std::time::Instant;

use knockgate_agent_core::config::{Config, ConfigError, Material, MaterialDef};
use knockgate_agent_core::detect::sequence::{DoorError, SequenceMatcher};
use knockgate_agent_core::detect::spa::SpaDetector;
use knockgate_agent_core::ruleset::Ruleset;
use tracing::{debug, info};

use super::Engine;

/// Everything the engine needs to enforce a config, built ahead of the swap.
pub struct Update {
    config: Config,
    matcher: SequenceMatcher,
    door_policy: Vec<usize>,
    spa: SpaDetector,
    ruleset: Ruleset,
    material: Material,
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
        })
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

impl Engine {
    /// Enforce `update`: the firewall's ruleset first (one atomic change), and only if
    /// that worked the decision state. On an error nothing has changed.
    pub(super) fn apply(&mut self, update: Update, now: Instant) -> Result<(), String> {
        let Update {
            config,
            matcher,
            door_policy,
            spa,
            ruleset,
            material,
        } = update;
        if config == self.config && !self.has_floor() {
            debug!(
                sequences = material.rotating.len(),
                one_time_keys = material.otks.len(),
                "new derived material"
            );
            self.set_material(material);
            return Ok(());
        }
        let uses_spa = config.uses_spa();
        if uses_spa && self.spa.is_none() {
            return Err("SPA policies need the replay store, which this agent did not open".into());
        }
        // An explicit config from the controller: what it protects is what is protected.
        self.install_base(&ruleset)
            .map_err(|e| format!("firewall: {e}"))?;
        self.clear_floor();
        self.policies = config.policies.clone();
        self.users = config.users.iter().map(|u| u.name.clone()).collect();
        self.door_policy = door_policy;
        self.matcher = matcher;
        if let Some(state) = &mut self.spa {
            state.replace(spa, uses_spa);
        }
        self.config = config;
        // The static knocks may have changed: retune whatever the rotating ones are.
        self.rotating.force_retune();
        self.set_material(material);
        let users: BTreeSet<&str> = self.users.iter().map(String::as_str).collect();
        let gone = self
            .grants
            .select(|g| g.user.as_deref().is_some_and(|u| !users.contains(u)));
        let closed = gone.len();
        self.close_now(gone, "user_removed", now);
        info!(
            policies = self.policies.len(),
            users = self.users.len(),
            protected = ruleset.protected.len(),
            knock_ports = ruleset.knock_ports.len(),
            closed,
            "new config enforced"
        );
        Ok(())
    }

    /// Close the grants named by ref, and every grant of `users`.
    pub(super) fn revoke(&mut self, grant_refs: &[String], users: &[String], now: Instant) {
        let keys = self.grants.select(|g| {
            grant_refs.contains(&g.grant_ref) || g.user.as_ref().is_some_and(|u| users.contains(u))
        });
        info!(
            grant_refs = grant_refs.len(),
            users = users.len(),
            closing = keys.len(),
            "revocation from the controller"
        );
        self.close_now(keys, "revoked", now);
    }
}
