//! A fixed-capacity map that evicts the least recently used entry: per-source state must
//! cost bounded memory however many (spoofed) sources a flood brings.

use std::collections::HashMap;
use std::hash::Hash;

const NIL: u32 = u32::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    prev: u32,
    next: u32,
}

/// An LRU map with O(1) get, insert and eviction. Nodes live in one slab; the recency
/// list is intrusive (indices), so a hit moves no memory and allocates nothing.
pub struct BoundedLru<K, V> {
    index: HashMap<K, u32>,
    nodes: Vec<Node<K, V>>,
    free: Vec<u32>,
    head: u32, // most recent
    tail: u32, // least recent
    cap: usize,
}

impl<K: Hash + Eq + Copy, V> BoundedLru<K, V> {
    /// A map holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        let cap = cap.clamp(1, NIL as usize - 1);
        BoundedLru {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The entry for `key`, marked most recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.touch(i);
        Some(&mut self.nodes[i as usize].value)
    }

    /// The entry for `key`, created with `make` if absent (evicting the least recently used
    /// entry when full). Returns the value and the evicted key, if any.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> (&mut V, Option<K>) {
        if let Some(&i) = self.index.get(&key) {
            self.touch(i);
            return (&mut self.nodes[i as usize].value, None);
        }
        let mut evicted = None;
        if self.index.len() >= self.cap {
            evicted = self.pop_lru();
        }
        let node = Node {
            key,
            value: make(),
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_front(i);
        (&mut self.nodes[i as usize].value, evicted)
    }

    /// Remove `key`, returning its value's slot to the free list.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.index.remove(key) {
            Some(i) => {
                self.unlink(i);
                self.free.push(i);
                true
            }
            None => false,
        }
    }

    fn pop_lru(&mut self) -> Option<K> {
        if self.tail == NIL {
            return None;
        }
        let i = self.tail;
        let key = self.nodes[i as usize].key;
        self.index.remove(&key);
        self.unlink(i);
        self.free.push(i);
        Some(key)
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        let n = &mut self.nodes[i as usize];
        n.prev = NIL;
        n.next = NIL;
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old != NIL {
            self.nodes[old as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = BoundedLru::new(2);
        lru.get_or_insert_with(1, || "a");
        lru.get_or_insert_with(2, || "b");
        assert!(lru.get_mut(&1).is_some()); // 2 is now the oldest
        let (_, evicted) = lru.get_or_insert_with(3, || "c");
        assert_eq!(evicted, Some(2));
        assert!(lru.get_mut(&2).is_none());
        assert_eq!(lru.get_mut(&1).copied(), Some("a"));
        assert_eq!(lru.get_mut(&3).copied(), Some("c"));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn remove_frees_a_slot() {
        let mut lru = BoundedLru::new(2);
        lru.get_or_insert_with(1, || 1);
        lru.get_or_insert_with(2, || 2);
        assert!(lru.remove(&1));
        assert!(!lru.remove(&1));
        let (_, evicted) = lru.get_or_insert_with(3, || 3);
        assert_eq!(evicted, None);
        assert_eq!(lru.len(), 2);
    }

    proptest! {
        /// Against a model: a Vec ordered by recency.
        #[test]
        fn behaves_like_a_model(ops in proptest::collection::vec((0u8..3, 0u8..8), 0..200), cap in 1usize..5) {
            let mut lru = BoundedLru::new(cap);
            let mut model: Vec<u8> = Vec::new();
            for (op, k) in ops {
                match op {
                    0 => {
                        let (_, ev) = lru.get_or_insert_with(k, || k);
                        if let Some(p) = model.iter().position(|&x| x == k) {
                            model.remove(p);
                            prop_assert_eq!(ev, None);
                        } else if model.len() >= cap {
                            let oldest = model.remove(0);
                            prop_assert_eq!(ev, Some(oldest));
                        }
                        model.push(k);
                    }
                    1 => {
                        let hit = lru.get_mut(&k).is_some();
                        let p = model.iter().position(|&x| x == k);
                        prop_assert_eq!(hit, p.is_some());
                        if let Some(p) = p { model.remove(p); model.push(k); }
                    }
                    _ => {
                        let had = lru.remove(&k);
                        let p = model.iter().position(|&x| x == k);
                        prop_assert_eq!(had, p.is_some());
                        if let Some(p) = p { model.remove(p); }
                    }
                }
                prop_assert_eq!(lru.len(), model.len());
                prop_assert!(lru.len() <= cap);
            }
        }
    }
}
