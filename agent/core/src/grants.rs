//! Grant bookkeeping: who is open until when. The firewall expires grants by itself; this
//! table mirrors it so the agent can report when a grant closes and restart a timeout
//! when the same source knocks again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ruleset::GrantKey;

/// What the agent knows about one open grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The policy that opened it (empty for a grant adopted from the firewall).
    pub policy: String,
    /// The user who opened it: `None` for sequence knocks and adopted grants.
    pub user: Option<String>,
    /// This grant's id, `<prefix>-<n>`; an extension keeps it.
    pub grant_ref: String,
    pub opened_at: Instant,
    pub expires_at: Instant,
}

/// Whether an open created a grant or extended one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    New,
    Extended,
}

/// All open grants, indexed by key and by expiry.
#[derive(Debug, Default)]
pub struct Grants {
    by_key: BTreeMap<GrantKey, Grant>,
    by_expiry: BTreeSet<(Instant, GrantKey)>,
    ref_prefix: String,
    next_ref: u64,
}

impl Grants {
    /// An empty table whose grant refs are `g-1`, `g-2`, …
    pub fn new() -> Self {
        Self::with_ref_prefix("g")
    }

    /// An empty table whose grant refs are `<prefix>-1`, `<prefix>-2`, … Give each run
    /// of the agent its own prefix, so refs are never reused across restarts.
    pub fn with_ref_prefix(prefix: &str) -> Self {
        Grants {
            ref_prefix: prefix.to_string(),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &GrantKey) -> Option<&Grant> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&GrantKey, &Grant)> {
        self.by_key.iter()
    }

    /// Record a grant opened now for `timeout` by `policy` for `user`. An open grant is
    /// extended: it keeps its ref and now belongs to the latest policy and user.
    pub fn handle_open(
        &mut self,
        key: GrantKey,
        policy: &str,
        user: Option<&str>,
        timeout: Duration,
        now: Instant,
    ) -> Opened {
        // The config caps every timeout far below this; an adopted grant may not be.
        let expires_at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)));
        let opened = match self.by_key.get_mut(&key) {
            Some(g) => {
                self.by_expiry.remove(&(g.expires_at, key));
                g.expires_at = expires_at;
                g.policy = policy.to_string();
                g.user = user.map(str::to_string);
                Opened::Extended
            }
            None => {
                self.next_ref += 1;
                self.by_key.insert(
                    key,
                    Grant {
                        policy: policy.to_string(),
                        user: user.map(str::to_string),
                        grant_ref: format!("{}-{}", self.ref_prefix, self.next_ref),
                        opened_at: now,
                        expires_at,
                    },
                );
                Opened::New
            }
        };
        self.by_expiry.insert((expires_at, key));
        opened
    }

    /// Take over a grant found in the firewall at start, with the time it has left.
    pub fn adopt(&mut self, key: GrantKey, remaining: Duration, now: Instant) {
        self.handle_open(key, "", None, remaining, now);
    }

    /// The keys of the grants selected by `pick`, for closing them.
    pub fn select(&self, mut pick: impl FnMut(&Grant) -> bool) -> Vec<GrantKey> {
        self.by_key
            .iter()
            .filter(|(_, g)| pick(g))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Forget a grant closed now; returns it if it was open.
    pub fn handle_close(&mut self, key: &GrantKey) -> Option<Grant> {
        let g = self.by_key.remove(key)?;
        self.by_expiry.remove(&(g.expires_at, *key));
        Some(g)
    }

    /// The next instant a grant expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(t, _)| *t)
    }

    /// Remove and return every grant that has expired by `now`.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<(GrantKey, Grant)> {
        let mut out = Vec::new();
        while let Some(&(t, key)) = self.by_expiry.first() {
            if t > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(g) = self.by_key.remove(&key) {
                out.push((key, g));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Proto;

    fn key(last: u8) -> GrantKey {
        GrantKey {
            addr: [10, 240, 0, last].into(),
            proto: Proto::Tcp,
            port: 22,
        }
    }

    #[test]
    fn grants_expire_in_order_and_reopening_extends() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Grants::new();
        assert_eq!(g.handle_open(key(2), "ssh", None, s(30), t0), Opened::New);
        assert_eq!(g.handle_open(key(3), "ssh", None, s(10), t0), Opened::New);
        assert_eq!(g.next_expiry(), Some(t0 + s(10)));
        assert_eq!(
            g.handle_open(key(2), "ssh", None, s(30), t0 + s(20)),
            Opened::Extended
        );
        assert!(g.poll_expired(t0 + s(9)).is_empty());
        let closed = g.poll_expired(t0 + s(31));
        assert_eq!(
            closed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![key(3)]
        );
        assert_eq!(g.next_expiry(), Some(t0 + s(50)));
        assert_eq!(g.handle_close(&key(2)).map(|g| g.opened_at), Some(t0));
        assert!(g.is_empty());
        assert_eq!(g.next_expiry(), None);
    }

    #[test]
    fn grants_keep_their_user_and_ref_and_refs_are_never_reused() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Grants::with_ref_prefix("boot7");
        g.handle_open(key(2), "web", Some("alice"), s(30), t0);
        g.handle_open(key(3), "ssh", None, s(30), t0);
        let first = g.get(&key(2)).expect("open").clone();
        assert_eq!(first.grant_ref, "boot7-1");
        assert_eq!(first.user.as_deref(), Some("alice"));
        assert_eq!(g.get(&key(3)).expect("open").grant_ref, "boot7-2");
        g.handle_open(key(2), "web", Some("bob"), s(30), t0 + s(5));
        let extended = g.get(&key(2)).expect("open");
        assert_eq!(extended.grant_ref, "boot7-1", "an extension keeps its ref");
        assert_eq!(extended.user.as_deref(), Some("bob"));
        assert_eq!(
            g.select(|gr| gr.user.as_deref() == Some("bob")),
            vec![key(2)]
        );
        g.handle_close(&key(2));
        g.handle_open(key(2), "web", Some("bob"), s(30), t0 + s(6));
        assert_eq!(g.get(&key(2)).expect("open").grant_ref, "boot7-3");
    }

    #[test]
    fn adopted_grants_expire_after_their_remaining_time() {
        let t0 = Instant::now();
        let mut g = Grants::new();
        g.adopt(key(9), Duration::from_secs(3), t0);
        assert_eq!(g.poll_expired(t0 + Duration::from_secs(3)).len(), 1);
    }
}
