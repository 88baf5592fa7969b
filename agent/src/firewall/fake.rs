//! An in-memory firewall for the unit tests of the layers above the firewall edge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{GrantKey, Ruleset};

use super::{Firewall, FirewallError, Held};

/// What the fake holds; shared so a test can look inside after handing the fake away.
#[derive(Debug, Default)]
pub struct FakeState {
    pub ruleset: Option<Ruleset>,
    pub open: BTreeMap<GrantKey, Duration>,
    /// The label each open grant was stored with.
    pub labels: BTreeMap<GrantKey, GrantLabel>,
    /// Refuse every open, as a kernel error would.
    pub fail: bool,
    /// Refuse `ensure_base`.
    pub fail_base: bool,
}

#[derive(Debug, Default, Clone)]
pub struct FakeFirewall {
    pub state: Arc<Mutex<FakeState>>,
}

impl Firewall for FakeFirewall {
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| FirewallError::Netlink("poisoned".into()))?;
        if s.fail_base {
            return Err(FirewallError::Netlink("fake failure".into()));
        }
        s.ruleset = Some(ruleset.clone());
        Ok(())
    }

    fn open(
        &mut self,
        key: &GrantKey,
        timeout: Duration,
        label: &GrantLabel,
    ) -> Result<(), FirewallError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| FirewallError::Netlink("poisoned".into()))?;
        if s.fail {
            return Err(FirewallError::Netlink("fake failure".into()));
        }
        s.open.insert(*key, timeout);
        s.labels.insert(*key, label.clone());
        Ok(())
    }

    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError> {
        self.state
            .lock()
            .map_err(|_| FirewallError::Netlink("poisoned".into()))?
            .open
            .remove(key);
        Ok(())
    }

    fn intact(&mut self, ruleset: &Ruleset) -> Result<bool, FirewallError> {
        let s = self
            .state
            .lock()
            .map_err(|_| FirewallError::Netlink("poisoned".into()))?;
        Ok(s.ruleset.as_ref() == Some(ruleset))
    }

    fn list(&mut self) -> Result<Vec<Held>, FirewallError> {
        let s = self
            .state
            .lock()
            .map_err(|_| FirewallError::Netlink("poisoned".into()))?;
        Ok(s.open
            .iter()
            .map(|(k, t)| Held {
                key: *k,
                remaining: *t,
                label: s.labels.get(k).cloned(),
            })
            .collect())
    }
}
