//! The SPA replay cache: every authenticated packet's identity, remembered until it could
//! no longer pass the age check anyway. Bounded by that expiry and by a hard cap; only
//! authenticated packets ever enter, so junk cannot fill it.

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

/// Seen packets and when each may be forgotten (unix seconds).
#[derive(Debug)]
pub struct ReplayCache {
    entries: HashMap<ReplayKey, u64>,
    cap: usize,
    /// Earliest expiry among entries, to make pruning free until something can go.
    next_expiry: u64,
}

impl ReplayCache {
    pub fn new(cap: usize) -> Self {
        ReplayCache {
            entries: HashMap::new(),
            cap: cap.max(1),
            next_expiry: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admit `key` (forgettable after `expires`) unless it was seen before.
    pub fn handle_seen(
        &mut self,
        key: ReplayKey,
        expires: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if self.entries.contains_key(&key) {
            return Err(ReplayError::Replay);
        }
        if self.entries.len() >= self.cap {
            return Err(ReplayError::Full);
        }
        self.insert(key, expires);
        Ok(())
    }

    /// Restore an entry from disk (no replay check; expired entries are skipped).
    pub fn restore(&mut self, key: ReplayKey, expires: u64, now: u64) {
        if expires > now && self.entries.len() < self.cap {
            self.insert(key, expires);
        }
    }

    fn insert(&mut self, key: ReplayKey, expires: u64) {
        self.entries.insert(key, expires);
        self.next_expiry = self.next_expiry.min(expires);
    }

    /// Forget entries whose time has passed.
    pub fn prune(&mut self, now: u64) {
        if now < self.next_expiry {
            return;
        }
        self.entries.retain(|_, exp| *exp > now);
        self.next_expiry = self.entries.values().copied().min().unwrap_or(u64::MAX);
    }

    /// Live entries, for compacting the on-disk copy.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplayKey, &u64)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_replays_until_expiry_and_respects_the_cap() {
        let mut c = ReplayCache::new(2);
        assert_eq!(c.handle_seen([1; 32], 100, 0), Ok(()));
        assert_eq!(c.handle_seen([1; 32], 100, 50), Err(ReplayError::Replay));
        assert_eq!(c.handle_seen([2; 32], 200, 50), Ok(()));
        assert_eq!(c.handle_seen([3; 32], 200, 50), Err(ReplayError::Full));
        // After entry 1 expires it is forgotten: room again, and (by then) the packet
        // would fail the age check anyway.
        assert_eq!(c.handle_seen([3; 32], 200, 101), Ok(()));
        assert_eq!(c.len(), 2);
        let mut d = ReplayCache::new(10);
        d.restore([9; 32], 10, 20);
        assert!(d.is_empty(), "expired entries are not restored");
        d.restore([9; 32], 30, 20);
        assert_eq!(d.handle_seen([9; 32], 30, 21), Err(ReplayError::Replay));
    }
}
