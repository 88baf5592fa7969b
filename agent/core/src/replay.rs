//! The SPA replay cache: every authenticated packet's identity, remembered until it could
//! no longer pass the age check anyway. Bounded by that expiry and by a hard cap; only
//! authenticated packets ever enter, so junk cannot fill it. Each key holder (owner) may
//! fill only a share of it, so one user flooding with fresh packets is refused alone
//! while everyone else still gets in.

use std::collections::HashMap;

/// A packet's replay identity: (key id, nonce) for native SPA, SHA-256 of the wire bytes
/// for fwknop (what fwknopd's digest cache keeps).
pub type ReplayKey = [u8; 32];

/// Why a packet was not admitted to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before.
    Replay,
    /// The cache is at its cap with live entries: refuse rather than forget (fail closed).
    Full,
}

/// Who an entry belongs to: a stable number for a user (see [`owner_of`]), or
/// [`RESTORED`].
pub type Owner = u64;

/// The owner of entries restored from disk: not counted against anyone's share.
pub const RESTORED: Owner = 0;

/// The owner number of user `name`: stable across configs (a user's index is not).
pub fn owner_of(name: &str) -> Owner {
    // FNV-1a: deterministic, and 0 is left for RESTORED.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h.max(1)
}

/// Seen packets, when each may be forgotten (unix seconds) and whose they are.
#[derive(Debug)]
pub struct ReplayCache {
    entries: HashMap<ReplayKey, (u64, Owner)>,
    per_owner: HashMap<Owner, usize>,
    cap: usize,
    owner_cap: usize,
    /// Earliest expiry among entries, to make pruning free until something can go.
    next_expiry: u64,
}

impl ReplayCache {
    /// A cache of `cap` entries, of which one owner may hold a sixteenth (at least 1,024,
    /// at most all).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self::with_owner_cap(cap, (cap / 16).max(1024))
    }

    /// A cache of `cap` entries, at most `owner_cap` of them one owner's.
    pub fn with_owner_cap(cap: usize, owner_cap: usize) -> Self {
        let cap = cap.max(1);
        ReplayCache {
            entries: HashMap::new(),
            per_owner: HashMap::new(),
            cap,
            owner_cap: owner_cap.clamp(1, cap),
            next_expiry: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admit `key` of `owner` (forgettable after `expires`) unless it was seen before,
    /// the cache is full, or `owner` holds its whole share.
    pub fn handle_seen(
        &mut self,
        key: ReplayKey,
        expires: u64,
        now: u64,
        owner: Owner,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if self.entries.contains_key(&key) {
            return Err(ReplayError::Replay);
        }
        let held = self.per_owner.get(&owner).copied().unwrap_or(0);
        if self.entries.len() >= self.cap || (owner != RESTORED && held >= self.owner_cap) {
            return Err(ReplayError::Full);
        }
        self.insert(key, expires, owner);
        Ok(())
    }

    /// Restore an entry from disk (no replay check; expired entries are skipped).
    pub fn restore(&mut self, key: ReplayKey, expires: u64, now: u64) {
        if expires > now && self.entries.len() < self.cap {
            self.insert(key, expires, RESTORED);
        }
    }

    fn insert(&mut self, key: ReplayKey, expires: u64, owner: Owner) {
        self.entries.insert(key, (expires, owner));
        *self.per_owner.entry(owner).or_default() += 1;
        self.next_expiry = self.next_expiry.min(expires);
    }

    /// Forget entries whose time has passed.
    pub fn prune(&mut self, now: u64) {
        if now < self.next_expiry {
            return;
        }
        let per_owner = &mut self.per_owner;
        self.entries.retain(|_, (exp, owner)| {
            let keep = *exp > now;
            if !keep && let Some(n) = per_owner.get_mut(owner) {
                *n -= 1;
            }
            keep
        });
        per_owner.retain(|_, n| *n > 0);
        self.next_expiry = self
            .entries
            .values()
            .map(|(exp, _)| *exp)
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Live entries and their expiry, for compacting the on-disk copy.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplayKey, &u64)> {
        self.entries.iter().map(|(k, (exp, _))| (k, exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_replays_until_expiry_and_respects_the_cap() {
        let a = owner_of("alice");
        let mut c = ReplayCache::new(2);
        assert_eq!(c.handle_seen([1; 32], 100, 0, a), Ok(()));
        assert_eq!(c.handle_seen([1; 32], 100, 50, a), Err(ReplayError::Replay));
        assert_eq!(c.handle_seen([2; 32], 200, 50, a), Ok(()));
        assert_eq!(c.handle_seen([3; 32], 200, 50, a), Err(ReplayError::Full));
        // After entry 1 expires it is forgotten: room again, and (by then) the packet
        // would fail the age check anyway.
        assert_eq!(c.handle_seen([3; 32], 200, 101, a), Ok(()));
        assert_eq!(c.len(), 2);
        let mut d = ReplayCache::new(10);
        d.restore([9; 32], 10, 20);
        assert!(d.is_empty(), "expired entries are not restored");
        d.restore([9; 32], 30, 20);
        assert_eq!(d.handle_seen([9; 32], 30, 21, a), Err(ReplayError::Replay));
    }

    #[test]
    fn one_owner_cannot_fill_the_cache_for_everyone() {
        let (mallory, alice) = (owner_of("mallory"), owner_of("alice"));
        assert_ne!(mallory, alice);
        let mut c = ReplayCache::with_owner_cap(10, 3);
        for i in 0..3 {
            assert_eq!(c.handle_seen([i; 32], 100, 0, mallory), Ok(()));
        }
        assert_eq!(
            c.handle_seen([3; 32], 100, 0, mallory),
            Err(ReplayError::Full),
            "mallory's share is used up"
        );
        assert_eq!(
            c.handle_seen([4; 32], 100, 0, alice),
            Ok(()),
            "alice still gets in"
        );
        // Expiry gives the share back.
        assert_eq!(c.handle_seen([5; 32], 200, 101, mallory), Ok(()));
        assert_eq!(c.len(), 1);
    }
}
