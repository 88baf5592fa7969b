//! How many of one kind of event, per key, are told one by one: the first few in each
//! interval; the rest only count, and the interval's summary carries the count. Bounded in
//! keys too, so a flood from many sources costs bounded memory and bounded output.

use std::collections::HashMap;
use std::hash::Hash;

/// Per-key counts for the current interval; the owner clears them when it summarizes.
#[derive(Debug)]
pub struct PerKey<K> {
    told: HashMap<K, u32>,
    per_key: u32,
    max_keys: usize,
}

impl<K: Hash + Eq> PerKey<K> {
    /// At most `per_key` events of one key told in an interval, for at most `max_keys`
    /// keys (events of further keys are not told).
    pub fn new(per_key: u32, max_keys: usize) -> Self {
        PerKey {
            told: HashMap::new(),
            per_key,
            max_keys,
        }
    }

    /// Whether this event of `key` should be told on its own.
    pub fn admit(&mut self, key: K) -> bool {
        if let Some(n) = self.told.get_mut(&key) {
            if *n < self.per_key {
                *n += 1;
                return true;
            }
            return false;
        }
        if self.told.len() >= self.max_keys || self.per_key == 0 {
            return false;
        }
        self.told.insert(key, 1);
        true
    }

    /// A new interval: every key may be told again.
    pub fn reset(&mut self) {
        self.told.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_per_key_then_silence_until_the_next_interval() {
        let mut l = PerKey::new(2, 2);
        assert!(l.admit("a") && l.admit("a"));
        assert!(!l.admit("a"), "third of a key");
        assert!(l.admit("b"));
        assert!(!l.admit("c"), "more keys than the cap");
        l.reset();
        assert!(l.admit("a") && l.admit("c"));
    }
}
