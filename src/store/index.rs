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

use std::collections::BinaryHeap;
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

/// Bytes a key costs in [`Index::next_keys`]'s budget on top of its own: its box, and the
/// framing of the reply line it becomes.
pub const KEY_OVERHEAD: usize = 16;

/// A position in a walk over every key ([`Index::next_keys`]): a shard, and the last key
/// returned from it. Shards are visited in order and each in bytewise key order, so the
/// position is meaningful whatever happens to the table between two calls; it is not across
/// a restart (the hash that picks a key's shard is seeded per process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCursor {
    shard: usize,
    after: Option<Box<[u8]>>,
}

impl KeyCursor {
    /// The walk has visited every shard.
    pub fn is_done(&self) -> bool {
        self.shard >= SHARDS
    }

    /// A cursor as a token without spaces: `<shard>` at the start of a shard, else
    /// `<shard>:<last key>` (raw key bytes: keys hold no spaces or control bytes). The start
    /// and the end of the walk are both `0`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let shard = if self.is_done() { 0 } else { self.shard };
        out.extend_from_slice(shard.to_string().as_bytes());
        if let Some(after) = &self.after {
            out.push(b':');
            out.extend_from_slice(after);
        }
    }

    /// Reads a token written by [`KeyCursor::encode_into`]; `None` when it is not one.
    pub fn decode(token: &[u8]) -> Option<KeyCursor> {
        let (shard, after) = match token.iter().position(|&b| b == b':') {
            Some(colon) => (&token[..colon], Some(&token[colon + 1..])),
            None => (token, None),
        };
        if shard.is_empty() || shard.len() > 3 || !shard.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let shard: usize = std::str::from_utf8(shard).ok()?.parse().ok()?;
        match after {
            _ if shard >= SHARDS => None,
            Some(after) if after.is_empty() || after.len() > usize::from(u8::MAX) => None,
            after => Some(KeyCursor { shard, after: after.map(Box::from) }),
        }
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

    /// Removes every entry whose key starts with `prefix` (expired ones too); returns how
    /// many. Takes each shard's write lock in turn, so it is not atomic for readers: a reader
    /// may see some of the keys gone and others not yet (the log record is atomic).
    pub fn remove_prefix(&self, prefix: &[u8]) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.len();
            shard.retain(|entry| !entry.key().starts_with(prefix));
            removed += before - shard.len();
        }
        removed
    }

    /// Live items whose key starts with `prefix` and passes `also`, counted one shard at a
    /// time.
    pub fn count_prefix(&self, prefix: &[u8], now: u64, also: &dyn Fn(&[u8]) -> bool) -> usize {
        let mut count = 0;
        for shard in self.shards.iter() {
            let shard = shard.read();
            count += shard
                .iter()
                .filter(|e| e.key().starts_with(prefix) && e.is_live(now) && also(e.key()))
                .count();
        }
        count
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

    /// Live keys starting with `prefix`, sorted, all at once: for tests and checks. The
    /// server lists keys with [`Index::next_keys`], which bounds its memory.
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

    /// The next live keys accepted by `wanted` from `cursor` on, in cursor order (shard by
    /// shard, bytewise within a shard), and moves `cursor` past them. Stops after `max_keys`
    /// keys or about `max_bytes` bytes of them (each counted as its length plus
    /// [`KEY_OVERHEAD`]); returns at least one key unless the walk is over
    /// ([`KeyCursor::is_done`]).
    ///
    /// Each call holds one shard's read lock at a time and passes over every entry of the
    /// shards it visits, keeping only the smallest keys past the cursor in a bounded heap: the
    /// memory is bounded by the budget, not by the shard. Because the position is a key, not
    /// a slot, it survives the table being resized or rehashed between calls: a key present
    /// for the whole walk is returned exactly once, and a key added or removed meanwhile at
    /// most once.
    pub fn next_keys(
        &self,
        cursor: &mut KeyCursor,
        now: u64,
        wanted: &dyn Fn(&[u8]) -> bool,
        max_keys: usize,
        max_bytes: usize,
    ) -> Vec<Box<[u8]>> {
        let (max_keys, max_bytes) = (max_keys.max(1), max_bytes.max(1));
        let mut found: Vec<Box<[u8]>> = Vec::new();
        let mut found_bytes = 0;
        while cursor.shard < SHARDS && found.len() < max_keys && found_bytes < max_bytes {
            let (keys_left, bytes_left) = (max_keys - found.len(), max_bytes - found_bytes);
            // The smallest keys past the cursor, largest on top so it is the one to drop;
            // borrowed from the shard while its lock is held, copied only once chosen. Keys
            // cost different amounts, so once one is dropped every key from it up is out
            // (`ceiling`): else a shorter, larger key could take the room of a dropped one.
            let mut heap_bytes = 0;
            let (batch, truncated): (Vec<Box<[u8]>>, bool) = {
                let shard = self.shards[cursor.shard].read();
                let mut ceiling: Option<&[u8]> = None;
                let mut smallest: BinaryHeap<&[u8]> = BinaryHeap::new();
                for entry in shard.iter() {
                    let key = entry.key();
                    if cursor.after.as_deref().is_some_and(|after| key <= after)
                        || ceiling.is_some_and(|ceiling| key >= ceiling)
                        || !entry.is_live(now)
                        || !wanted(key)
                    {
                        continue;
                    }
                    heap_bytes += key.len() + KEY_OVERHEAD;
                    smallest.push(key);
                    while smallest.len() > 1 && (smallest.len() > keys_left || heap_bytes > bytes_left) {
                        if let Some(dropped) = smallest.pop() {
                            heap_bytes -= dropped.len() + KEY_OVERHEAD;
                            ceiling = Some(dropped);
                        }
                    }
                }
                (smallest.into_sorted_vec().into_iter().map(Box::from).collect(), ceiling.is_some())
            };
            found_bytes += heap_bytes;
            if truncated {
                cursor.after = batch.last().cloned();
                found.extend(batch);
                break;
            }
            found.extend(batch);
            cursor.shard += 1;
            cursor.after = None;
        }
        found
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

    /// Walks every key live at time 10 with `max_keys` per call, running `between` after each
    /// call.
    fn walk(index: &Index, max_keys: usize, mut between: impl FnMut(usize)) -> Vec<Box<[u8]>> {
        let mut cursor = KeyCursor::default();
        let mut seen = Vec::new();
        let mut calls = 0;
        while !cursor.is_done() {
            let keys = index.next_keys(&mut cursor, 10, &|_| true, max_keys, usize::MAX);
            assert!(keys.len() <= max_keys);
            assert!(!keys.is_empty() || cursor.is_done(), "a call returns a key unless the walk is over");
            seen.extend(keys);
            calls += 1;
            between(calls);
        }
        seen
    }

    #[test]
    fn next_keys_come_shard_by_shard_sorted_within_a_shard_and_filtered() {
        let index = Index::default();
        for i in 0..2000 {
            index.insert(format!("k{i}").as_bytes(), item(b"x", if i % 10 == 0 { 5 } else { 0 }).as_ref());
        }
        let seen = walk(&index, 7, |_| {});
        assert_eq!(seen.len(), 1800, "expired items are skipped");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "no key twice");
        let shard_of = |key: &[u8]| (index.hasher.hash_one(key) >> 32) as usize % SHARDS;
        for pair in seen.windows(2) {
            let (a, b) = (shard_of(&pair[0]), shard_of(&pair[1]));
            assert!(a < b || (a == b && pair[0] < pair[1]), "cursor order");
        }
        let mut cursor = KeyCursor::default();
        let mut ones = Vec::new();
        while !cursor.is_done() {
            ones.extend(index.next_keys(&mut cursor, 10, &|k| k.starts_with(b"k1"), 1000, usize::MAX));
        }
        assert_eq!(ones.len(), 1 + 10 + 100 + 1000 - 111, "k1, k1x, k1xx, k1xxx without the expired");
    }

    #[test]
    fn next_keys_keeps_to_its_byte_budget() {
        let index = Index::default();
        for i in 0..5000 {
            index.insert(format!("{i:0200}").as_bytes(), item(b"x", 0).as_ref());
        }
        let mut cursor = KeyCursor::default();
        let mut total = 0;
        while !cursor.is_done() {
            let keys = index.next_keys(&mut cursor, 0, &|_| true, usize::MAX, 4096);
            let bytes: usize = keys.iter().map(|k| k.len() + KEY_OVERHEAD).sum();
            assert!(bytes <= 4096 + 216, "{bytes} bytes returned for a 4096-byte budget");
            total += keys.len();
        }
        assert_eq!(total, 5000);
    }

    #[test]
    fn a_walk_returns_every_key_present_throughout_exactly_once_while_tables_resize() {
        let index = Index::default();
        for i in 0..3000 {
            index.insert(format!("stay{i}").as_bytes(), item(b"x", 0).as_ref());
        }
        // Between calls: add 40,000 keys (every table grows several times), delete them again
        // (and shrink nothing: hashbrown keeps capacity), and churn.
        let seen = walk(&index, 50, |call| {
            for j in 0..400 {
                index.insert(format!("new{call}:{j}").as_bytes(), item(b"y", 0).as_ref());
            }
            if call % 3 == 0 {
                for j in 0..400 {
                    index.remove(format!("new{}:{j}", call - 1).as_bytes());
                }
            }
        });
        let mut stay: Vec<_> = seen.iter().filter(|k| k.starts_with(b"stay")).cloned().collect();
        assert_eq!(stay.len(), 3000, "every key present throughout, once");
        stay.sort();
        stay.dedup();
        assert_eq!(stay.len(), 3000);
        let mut all = seen.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), seen.len(), "no key returned twice");
    }

    #[test]
    fn a_walk_in_byte_budgeted_parts_misses_nothing() {
        for _ in 0..200 {
            let index = Index::default();
            std::thread::scope(|scope| {
                for t in 0..64 {
                    let index = &index;
                    scope.spawn(move || {
                        for i in 0..50 {
                            index.insert(format!("c{t}:{i}").as_bytes(), item(b"x", 0).as_ref());
                        }
                    });
                }
            });
            let mut cursor = KeyCursor::default();
            let mut seen = Vec::new();
            let mut out_len = 0usize;
            while !cursor.is_done() {
                if out_len >= 65536 {
                    out_len = 0;
                }
                let keys =
                    index.next_keys(&mut cursor, 0, &|k| k.starts_with(b"c"), usize::MAX, 65536 - out_len);
                out_len += keys.iter().map(|k| k.len() + 5).sum::<usize>();
                seen.extend(keys);
            }
            assert_eq!(seen.len(), 3200);
        }
    }

    #[test]
    fn cursors_round_trip_as_tokens_and_bad_ones_are_refused() {
        let cursor = KeyCursor { shard: 3, after: Some(Box::from(&b"a:b\xff"[..])) };
        let mut token = Vec::new();
        cursor.encode_into(&mut token);
        assert_eq!(token, b"3:a:b\xff");
        assert_eq!(KeyCursor::decode(&token), Some(cursor));
        assert_eq!(KeyCursor::decode(b"0"), Some(KeyCursor::default()));
        assert_eq!(KeyCursor::decode(b"17"), Some(KeyCursor { shard: 17, after: None }));
        for bad in [&b""[..], b"x", b"256", b"-1", b"1:", b"0001", b":k", b"12a:k"] {
            assert_eq!(KeyCursor::decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let done = KeyCursor { shard: SHARDS, after: None };
        let mut token = Vec::new();
        done.encode_into(&mut token);
        assert_eq!(token, b"0", "the end of the walk is written as 0");
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
