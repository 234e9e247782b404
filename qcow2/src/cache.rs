//! One cache for metadata tables read from the image (L2 tables, refblocks): least recently used
//! eviction of clean tables, dirty tracking for the write-back.
//!
//! The cache decides nothing about order on disk: a dirty table is never evicted here, so the
//! owner ([`crate::meta`]) writes dirty tables back in its crash-safe order when the cache is
//! full of them, and only then asks for a clean victim.

use std::collections::HashMap;

/// Table indexes are small dense integers chosen by the image, not by a network peer; a
/// multiplicative hash is enough and much cheaper than SipHash on the read path.
#[derive(Default, Clone, Copy)]
pub struct IndexHash;

impl std::hash::BuildHasher for IndexHash {
    type Hasher = IndexHasher;
    fn build_hasher(&self) -> IndexHasher {
        IndexHasher(0)
    }
}

pub struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

struct Slot<V> {
    table: V,
    dirty: bool,
    last_use: u64,
}

/// Tables of type `V` by index (L1 index for L2 tables, refcount-table index for refblocks).
pub(crate) struct TableCache<V> {
    slots: HashMap<u64, Slot<V>, IndexHash>,
    cap: usize,
    dirty: usize,
    tick: u64,
}

impl<V> TableCache<V> {
    /// A cache of at most `cap` tables (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            slots: HashMap::default(),
            cap: cap.max(1),
            dirty: 0,
            tick: 0,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Tables changed since they were last written.
    pub fn dirty_count(&self) -> usize {
        self.dirty
    }

    /// The table at `key`, counted as a use.
    pub fn get(&mut self, key: u64) -> Option<&V> {
        self.tick += 1;
        let slot = self.slots.get_mut(&key)?;
        slot.last_use = self.tick;
        Some(&slot.table)
    }

    /// The table at `key` for changing it: counted as a use and marked dirty.
    pub fn get_dirty(&mut self, key: u64) -> Option<&mut V> {
        self.tick += 1;
        let slot = self.slots.get_mut(&key)?;
        slot.last_use = self.tick;
        if !slot.dirty {
            slot.dirty = true;
            self.dirty += 1;
        }
        Some(&mut slot.table)
    }

    /// The table at `key` without counting a use (for the write-back).
    pub fn peek(&self, key: u64) -> Option<&V> {
        self.slots.get(&key).map(|s| &s.table)
    }

    /// Whether the next insert needs room made first ([`TableCache::evict_clean`]).
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.cap
    }

    /// Whether every cached table is dirty, so nothing can be evicted before a write-back.
    pub fn all_dirty(&self) -> bool {
        self.dirty == self.slots.len()
    }

    /// Adds a table (read from disk: clean; new: dirty). The caller made room.
    pub fn insert(&mut self, key: u64, table: V, dirty: bool) {
        self.tick += 1;
        let old = self.slots.insert(
            key,
            Slot {
                table,
                dirty,
                last_use: self.tick,
            },
        );
        debug_assert!(old.is_none(), "table {key} inserted twice");
        if dirty {
            self.dirty += 1;
        }
    }

    /// Drops the least recently used clean table, if there is one.
    pub fn evict_clean(&mut self) {
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| !s.dirty)
            .min_by_key(|(_, s)| s.last_use)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.slots.remove(&k);
        }
    }

    /// Indexes of the dirty tables, ascending (the write-back goes through the file in order).
    pub fn dirty_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The table at `key` reached the disk.
    pub fn mark_clean(&mut self, key: u64) {
        if let Some(slot) = self.slots.get_mut(&key)
            && slot.dirty
        {
            slot.dirty = false;
            self.dirty -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_clean_table_and_never_a_dirty_one() {
        let mut c: TableCache<u32> = TableCache::new(3);
        c.insert(1, 10, false);
        c.insert(2, 20, true);
        c.insert(3, 30, false);
        assert!(c.is_full());
        // 1 is used again: 3 is now the least recently used clean table.
        assert_eq!(c.get(1), Some(&10));
        c.evict_clean();
        assert!(c.peek(3).is_none());
        assert!(!c.is_full());
        c.evict_clean();
        assert!(c.peek(1).is_none());
        // Only the dirty one is left: nothing to evict.
        c.evict_clean();
        assert_eq!(c.peek(2), Some(&20));
        assert!(c.all_dirty());
    }

    #[test]
    fn counts_dirty_tables_once_and_lists_them_in_order() {
        let mut c: TableCache<u32> = TableCache::new(8);
        for k in [5, 1, 3] {
            c.insert(k, 0, false);
        }
        *c.get_dirty(5).unwrap() = 7;
        *c.get_dirty(5).unwrap() += 1;
        c.get_dirty(1);
        assert_eq!(c.dirty_count(), 2);
        assert_eq!(c.dirty_keys(), vec![1, 5]);
        c.mark_clean(5);
        c.mark_clean(5);
        assert_eq!(c.dirty_count(), 1);
        assert_eq!(c.peek(5), Some(&8));
        assert!(c.get_dirty(9).is_none());
    }
}
