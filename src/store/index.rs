//! The exact-match in-memory index: key → item.
//!
//! Memory per item is what decides how many keys fit in a machine, so each item is one heap
//! allocation holding a small header, the key and the value:
//!
//! ```text
//! [tag: u8][key length: u8][cas: u64][value length: u32]
//! [flags: u32, if tag & HAS_FLAGS][expiry: u32, if tag & HAS_EXPIRY][key][value]
//! ```
//!
//! Flags and expiry are stored only when they are not zero, which they are for every item
//! written through the line protocol. The table holds just a thin pointer to it (8 bytes per
//! slot), in a `hashbrown::HashTable` so a key is hashed once for both the shard and the slot.
//! The hash is hashbrown's default (foldhash), seeded randomly per process: several times
//! faster than SipHash on short keys, while keys chosen by a client still cannot be made to
//! collide without knowing the seed.
//! Expiry is stored in 32 bits (Unix seconds, good until 2106); later times are clamped.
//!
//! The index is split into shards, each behind its own `parking_lot::RwLock`, so readers on
//! different keys never contend and the writer thread only blocks the one shard it is
//! updating. Readers never touch the writer's channel or the file.

use std::hash::BuildHasher;
use std::ptr::NonNull;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;

/// Number of shards; a power of two so the shard is picked with a mask. Many small shards
/// keep both lock contention and the time compaction holds one shard's read lock short.
pub const SHARDS: usize = 256;

/// One stored item, owned.
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

/// One stored item, borrowed from the index (see [`Index::with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef<'a> {
    pub value: &'a [u8],
    pub flags: u32,
    pub expires_at: u64,
    pub cas: u64,
}

impl Item {
    /// Is the item past its expiry time at `now` (Unix seconds)?
    pub fn is_expired(&self, now: u64) -> bool {
        is_expired(self.expires_at, now)
    }

    pub fn as_ref(&self) -> ItemRef<'_> {
        ItemRef { value: &self.value, flags: self.flags, expires_at: self.expires_at, cas: self.cas }
    }
}

impl ItemRef<'_> {
    pub fn to_item(&self) -> Item {
        Item { value: self.value.into(), flags: self.flags, expires_at: self.expires_at, cas: self.cas }
    }
}

pub(crate) fn is_expired(expires_at: u64, now: u64) -> bool {
    expires_at != 0 && expires_at <= now
}

const HAS_FLAGS: u8 = 1;
const HAS_EXPIRY: u8 = 2;
/// tag (1) + key length (1) + CAS (8) + value length (4).
const FIXED_HEADER: usize = 14;

/// An item in its single allocation, behind a thin pointer: the table slot is 8 bytes, and
/// the allocation's length is read from its own header (a `Box<[u8]>` would spend another 8
/// bytes of every slot on it).
struct Entry(NonNull<u8>);

// SAFETY: an `Entry` owns its allocation exclusively, like a `Box<[u8]>`, and exposes it only
// through `&self` methods that read it.
unsafe impl Send for Entry {}
unsafe impl Sync for Entry {}

impl Entry {
    fn new(key: &[u8], item: ItemRef<'_>) -> Entry {
        assert!(!key.is_empty() && key.len() <= usize::from(u8::MAX), "key length checked by the protocols");
        let value_len = u32::try_from(item.value.len()).expect("--max-value-bytes is below 4 GiB");
        let expires_at = u32::try_from(item.expires_at).unwrap_or(u32::MAX);
        let tag = if item.flags != 0 { HAS_FLAGS } else { 0 } | if expires_at != 0 { HAS_EXPIRY } else { 0 };
        let mut bytes = Vec::with_capacity(Entry::header_len(tag) + key.len() + item.value.len());
        bytes.push(tag);
        bytes.push(key.len() as u8);
        bytes.extend_from_slice(&item.cas.to_le_bytes());
        bytes.extend_from_slice(&value_len.to_le_bytes());
        if tag & HAS_FLAGS != 0 {
            bytes.extend_from_slice(&item.flags.to_le_bytes());
        }
        if tag & HAS_EXPIRY != 0 {
            bytes.extend_from_slice(&expires_at.to_le_bytes());
        }
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(item.value);
        let raw = Box::into_raw(bytes.into_boxed_slice());
        // SAFETY: `Box::into_raw` never returns null; the slice is at least FIXED_HEADER long.
        Entry(unsafe { NonNull::new_unchecked(raw.cast::<u8>()) })
    }

    fn header_len(tag: u8) -> usize {
        FIXED_HEADER + 4 * usize::from(tag & HAS_FLAGS != 0) + 4 * usize::from(tag & HAS_EXPIRY != 0)
    }

    /// The whole allocation.
    fn bytes(&self) -> &[u8] {
        // SAFETY: every allocation starts with a FIXED_HEADER-byte header, whose fields give
        // the length the allocation was made with in `new`.
        unsafe {
            let header = std::slice::from_raw_parts(self.0.as_ptr(), FIXED_HEADER);
            let value_len = u32::from_le_bytes([header[10], header[11], header[12], header[13]]) as usize;
            let len = Entry::header_len(header[0]) + usize::from(header[1]) + value_len;
            std::slice::from_raw_parts(self.0.as_ptr(), len)
        }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    fn key(&self) -> &[u8] {
        let bytes = self.bytes();
        let start = Entry::header_len(bytes[0]);
        &bytes[start..start + usize::from(bytes[1])]
    }

    fn expires_at(&self) -> u64 {
        let bytes = self.bytes();
        match bytes[0] {
            tag if tag & HAS_EXPIRY != 0 => {
                u64::from(Entry::u32_at(bytes, FIXED_HEADER + 4 * usize::from(tag & HAS_FLAGS)))
            }
            _ => 0,
        }
    }

    fn item(&self) -> ItemRef<'_> {
        let bytes = self.bytes();
        let tag = bytes[0];
        let mut cas = [0; 8];
        cas.copy_from_slice(&bytes[2..10]);
        ItemRef {
            value: &bytes[Entry::header_len(tag) + usize::from(bytes[1])..],
            flags: if tag & HAS_FLAGS != 0 { Entry::u32_at(bytes, FIXED_HEADER) } else { 0 },
            expires_at: self.expires_at(),
            cas: u64::from_le_bytes(cas),
        }
    }

    fn is_live(&self, now: u64) -> bool {
        !is_expired(self.expires_at(), now)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let len = self.bytes().len();
        // SAFETY: rebuilds exactly the boxed slice `new` leaked (same pointer and length),
        // once: `Entry` is not `Clone`.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.0.as_ptr(), len))) }
    }
}

type Shard = RwLock<HashTable<Entry>>;

/// The sharded table. Expired items stay until overwritten, deleted or swept
/// ([`Index::remove_expired`], run by the writer), but every lookup that takes `now` treats
/// them as absent.
pub struct Index {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }
}

impl Index {
    /// The key's hash, and its shard. The shard comes from bits 32..40, which the table never
    /// looks at: hashbrown takes the bucket from the low bits and the control byte from the
    /// top 7, so sharding on either would leave every key of a shard agreeing on them (crowded
    /// buckets or useless control bytes, and a key comparison on nearly every probe).
    fn locate(&self, key: &[u8]) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    fn rehash(&self) -> impl Fn(&Entry) -> u64 + '_ {
        move |entry| self.hasher.hash_one(entry.key())
    }

    /// The live item under `key`, copied.
    pub fn get(&self, key: &[u8], now: u64) -> Option<Item> {
        self.with(key, now, |item| item.map(|item| item.to_item()))
    }

    /// Calls `f` with the live item under `key` without copying it, under the shard's read
    /// lock (keep `f` short).
    pub fn with<R>(&self, key: &[u8], now: u64, f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R {
        let (hash, shard) = self.locate(key);
        let shard = shard.read();
        f(shard.find(hash, |e| e.key() == key).filter(|e| e.is_live(now)).map(Entry::item))
    }

    /// Stores `item` under `key`. Returns whether the key held an entry before (expired or not).
    pub fn insert(&self, key: &[u8], item: ItemRef<'_>) -> bool {
        let entry = Entry::new(key, item);
        let (hash, shard) = self.locate(key);
        let mut shard = shard.write();
        match shard.entry(hash, |e| e.key() == key, self.rehash()) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                *slot.get_mut() = entry;
                true
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(entry);
                false
            }
        }
    }

    /// Removes `key`. Returns whether it held an entry (expired or not).
    pub fn remove(&self, key: &[u8]) -> bool {
        let (hash, shard) = self.locate(key);
        let mut shard = shard.write();
        match shard.find_entry(hash, |e| e.key() == key) {
            Ok(slot) => {
                slot.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Removes the items expired at `now`; returns how many.
    pub fn remove_expired(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.len();
            shard.retain(|entry| entry.is_live(now));
            removed += before - shard.len();
        }
        removed
    }

    /// Removes every item.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.write() = HashTable::new();
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
                    .filter(|e| e.key().starts_with(prefix) && e.is_live(now))
                    .map(|e| e.key().into()),
            );
        }
        keys.sort_unstable();
        keys
    }

    /// Visits every live item one shard at a time, holding only that shard's read lock while
    /// `visit` runs for its items.
    pub fn for_each_shard(&self, now: u64, mut visit: impl FnMut(&[u8], ItemRef<'_>)) {
        for shard in 0..SHARDS {
            self.for_each_in_shard(shard, now, &mut visit);
        }
    }

    /// Visits the live items of shard number `shard` (0..[`SHARDS`]) under its read lock.
    /// Compaction encodes one shard into memory this way and writes it out after the lock is
    /// released, so the writer is held up for at most one shard's encoding, never for I/O.
    pub fn for_each_in_shard(&self, shard: usize, now: u64, mut visit: impl FnMut(&[u8], ItemRef<'_>)) {
        let shard = self.shards[shard].read();
        for entry in shard.iter().filter(|e| e.is_live(now)) {
            visit(entry.key(), entry.item());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(value: &[u8], expires_at: u64) -> Item {
        Item { value: value.into(), flags: 0, expires_at, cas: 1 }
    }

    #[test]
    fn expired_items_are_invisible() {
        let index = Index::default();
        index.insert(b"a", item(b"1", 100).as_ref());
        index.insert(b"b", item(b"2", 0).as_ref());
        assert_eq!(index.get(b"a", 99).map(|i| i.value), Some(b"1"[..].into()));
        assert_eq!(index.get(b"a", 100), None);
        assert_eq!(index.keys(b"", 100), vec![Box::from(&b"b"[..])]);
    }

    #[test]
    fn keys_are_sorted_and_filtered_by_prefix() {
        let index = Index::default();
        for k in ["user:2", "user:1", "order:1", "user:10"] {
            index.insert(k.as_bytes(), item(b"x", 0).as_ref());
        }
        let keys: Vec<_> = index.keys(b"user:", 0).into_iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys, vec![b"user:1".to_vec(), b"user:10".to_vec(), b"user:2".to_vec()]);
    }

    #[test]
    fn insert_and_remove_report_what_was_there() {
        let index = Index::default();
        assert!(!index.insert(b"k", item(b"1", 0).as_ref()));
        assert!(index.insert(b"k", item(b"2", 0).as_ref()));
        assert_eq!(index.len(), 1);
        assert!(index.remove(b"k"));
        assert!(!index.remove(b"k"));
        assert!(index.is_empty());
    }

    #[test]
    fn expiry_past_2106_is_clamped_not_wrapped() {
        let index = Index::default();
        index.insert(b"k", item(b"v", u64::MAX).as_ref());
        assert_eq!(index.get(b"k", 0).unwrap().expires_at, u64::from(u32::MAX));
    }

    proptest! {
        #[test]
        fn entries_round_trip_every_field(
            key in proptest::collection::vec(any::<u8>(), 1..=250),
            value in proptest::collection::vec(any::<u8>(), 0..100),
            flags in any::<u32>(),
            expires_at in any::<u32>(),
            cas in any::<u64>(),
        ) {
            let item = Item { value: value.into(), flags, expires_at: u64::from(expires_at), cas };
            let entry = Entry::new(&key, item.as_ref());
            prop_assert_eq!(entry.key(), &key[..]);
            prop_assert_eq!(entry.item(), item.as_ref());
        }
    }
}
