//! The exact-match in-memory index: key → item.
//!
//! The index is split into shards, each behind its own `parking_lot::RwLock`, so readers on
//! different keys never contend and the writer thread only blocks the one shard it is
//! updating. Readers never touch the writer's channel or the file: a `get` is a hash, a read
//! lock and a copy of the value.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::RwLock;

/// Number of shards; a power of two so the shard is picked with a mask.
const SHARDS: usize = 64;

/// One stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Box<[u8]>,
    /// memcached's opaque client flags.
    pub flags: u32,
    /// Unix seconds; 0 means never.
    pub expires_at: u64,
    /// memcached's CAS unique; changes on every write of the item.
    pub cas: u64,
}

impl Item {
    /// Is the item past its expiry time at `now` (Unix seconds)?
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

type Shard = RwLock<HashMap<Box<[u8]>, Item>>;

/// The sharded map. Expired items stay until overwritten, deleted or compacted away, but
/// every lookup that takes `now` treats them as absent.
pub struct Index {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl Index {
    fn shard(&self, key: &[u8]) -> &Shard {
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash & (SHARDS - 1)]
    }

    /// The live item under `key`, if any.
    pub fn get(&self, key: &[u8], now: u64) -> Option<Item> {
        self.shard(key).read().get(key).filter(|item| !item.is_expired(now)).cloned()
    }

    /// Calls `f` with the live item under `key` without copying it, under the shard's read
    /// lock (keep `f` short).
    pub fn with<R>(&self, key: &[u8], now: u64, f: impl FnOnce(Option<&Item>) -> R) -> R {
        let shard = self.shard(key).read();
        f(shard.get(key).filter(|item| !item.is_expired(now)))
    }

    /// Stores `item`, returning what it replaced (expired or not).
    pub fn insert(&self, key: &[u8], item: Item) -> Option<Item> {
        let mut shard = self.shard(key).write();
        match shard.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, item)),
            None => {
                shard.insert(key.into(), item);
                None
            }
        }
    }

    /// Removes `key`, returning what it held (expired or not).
    pub fn remove(&self, key: &[u8]) -> Option<Item> {
        self.shard(key).write().remove(key)
    }

    /// Removes every item.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.write() = HashMap::new();
        }
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live keys starting with `prefix`, sorted.
    pub fn keys(&self, prefix: &[u8], now: u64) -> Vec<Box<[u8]>> {
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            keys.extend(
                shard
                    .iter()
                    .filter(|(k, item)| k.starts_with(prefix) && !item.is_expired(now))
                    .map(|(k, _)| k.clone()),
            );
        }
        keys.sort_unstable();
        keys
    }

    /// Visits every live item one shard at a time, holding only that shard's read lock while
    /// `visit` runs for its items. Used by compaction, so the writer is held up for at most one
    /// shard's worth of work.
    pub fn for_each_shard(&self, now: u64, mut visit: impl FnMut(&[u8], &Item)) {
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (key, item) in shard.iter().filter(|(_, item)| !item.is_expired(now)) {
                visit(key, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: &[u8], expires_at: u64) -> Item {
        Item { value: value.into(), flags: 0, expires_at, cas: 1 }
    }

    #[test]
    fn expired_items_are_invisible() {
        let index = Index::default();
        index.insert(b"a", item(b"1", 100));
        index.insert(b"b", item(b"2", 0));
        assert_eq!(index.get(b"a", 99).map(|i| i.value), Some(b"1"[..].into()));
        assert_eq!(index.get(b"a", 100), None);
        assert_eq!(index.keys(b"", 100), vec![Box::from(&b"b"[..])]);
    }

    #[test]
    fn keys_are_sorted_and_filtered_by_prefix() {
        let index = Index::default();
        for k in ["user:2", "user:1", "order:1", "user:10"] {
            index.insert(k.as_bytes(), item(b"x", 0));
        }
        let keys: Vec<_> = index.keys(b"user:", 0).into_iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys, vec![b"user:1".to_vec(), b"user:10".to_vec(), b"user:2".to_vec()]);
    }
}
