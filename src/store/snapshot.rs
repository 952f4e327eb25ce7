//! Every item with its CAS unique, at one point: what a Raft snapshot of the store carries
//! (`cluster`), since `database.txt` does not hold CAS uniques.
//!
//! ```text
//! items = line*
//! line  = <cas unique, decimal> ' ' <the item's database.txt record: `set`/`setmeta`> '\n'
//! ```
//!
//! So a snapshot reads like a compacted `database.txt` with a number in front of each line.
//! Items are listed shard by shard, expired ones included: on a cluster node whether an
//! item has expired is decided by each log entry's time (`decide`), never by the clock of
//! the node that took the snapshot, so every copy of one state is the same set of items.
//!
//! [`Store::export_items`](super::Store::export_items) encodes them under the write lock (no
//! write between two items); [`Store::replace_all`](super::Store::replace_all) decodes a copy
//! whole before it touches anything, then writes it as the new `database.txt` (fsynced and
//! renamed into place like a compaction) and makes it the index.

use std::fmt;

use super::format::{encode_set, parse_number, Record};
use super::index::{Index, Item, SHARDS};

/// A line that is not `<cas> <set record>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError {
    pub line: usize,
    pub why: String,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot line {}: {}", self.line, self.why)
    }
}

/// Items as a snapshot lists them: key and item.
pub type Items = Vec<(Box<[u8]>, Item)>;

/// Appends every item of `index`, expired ones included.
pub(crate) fn encode_items(index: &Index, out: &mut Vec<u8>) {
    for shard in 0..SHARDS {
        // `now = 0`: no item counts as expired, so none is left out.
        index.for_each_in_shard(shard, 0, |key, item| encode_item(key, &item.to_item(), out));
    }
}

/// Appends one item's line.
pub fn encode_item(key: &[u8], item: &Item, out: &mut Vec<u8>) {
    out.extend_from_slice(item.cas.to_string().as_bytes());
    out.push(b' ');
    encode_set(key, &item.value, item.flags, item.expires_at, out);
}

/// Decodes items written by [`encode_items`] (in their order); the first bad line is the
/// error, and nothing is returned with it.
pub fn decode_items(bytes: &[u8]) -> Result<Items, SnapshotError> {
    let mut items = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(items);
    }
    for (at, line) in body.split(|&b| b == b'\n').enumerate() {
        let bad = |why: String| SnapshotError { line: at + 1, why };
        let space = line.iter().position(|&b| b == b' ').ok_or_else(|| bad("no CAS unique".into()))?;
        let cas: u64 = parse_number(&line[..space]).ok_or_else(|| bad("bad CAS unique".into()))?;
        match Record::parse(&line[space + 1..]).map_err(|e| bad(e.to_string()))? {
            // The record's parser checked the key.
            Record::Set { key, value, flags, expires_at } => {
                items.push((key.into(), Item { value: value.into(), flags, expires_at, cas }));
            }
            _ => return Err(bad("not a set record".into())),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Keys the engine stores: 1..=250 bytes, no spaces or control bytes.
        proptest::collection::vec((0x21u8..=0xff).prop_map(|b| if b == 0x7f { b'x' } else { b }), 1..40)
    }

    fn item() -> impl Strategy<Value = Item> {
        // Expiry as the index holds it: Unix seconds in 32 bits.
        let expiry = 0..=u64::from(u32::MAX);
        (proptest::collection::vec(any::<u8>(), 0..60), any::<u32>(), expiry, any::<u64>())
            .prop_map(|(value, flags, expires_at, cas)| Item { value: value.into(), flags, expires_at, cas })
    }

    proptest! {
        #[test]
        fn every_item_round_trips_with_its_cas_flags_and_expiry(
            items in proptest::collection::btree_map(key(), item(), 0..20),
        ) {
            let index = Index::default();
            for (key, item) in &items {
                index.insert(key, item.as_ref());
            }
            let mut encoded = Vec::new();
            encode_items(&index, &mut encoded);
            let mut decoded: Vec<(Vec<u8>, Item)> =
                decode_items(&encoded).unwrap().into_iter().map(|(k, i)| (k.into_vec(), i)).collect();
            decoded.sort_by(|a, b| a.0.cmp(&b.0));
            let expected: Vec<(Vec<u8>, Item)> = items.into_iter().collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn a_cut_copy_is_refused_or_shorter(
            items in proptest::collection::btree_map(key(), item(), 1..6),
            cut in 1usize..400,
        ) {
            let mut encoded = Vec::new();
            for (key, item) in &items {
                encode_item(key, item, &mut encoded);
            }
            let cut = cut.min(encoded.len() - 2);
            // A copy cut inside a line either fails to parse or (cut inside a value) yields
            // a different item: never the whole set.
            if let Ok(decoded) = decode_items(&encoded[..cut]) {
                let whole = decode_items(&encoded).unwrap();
                prop_assert_ne!(decoded, whole);
            }
        }
    }

    #[test]
    fn expired_items_are_kept_and_bad_lines_named() {
        let index = Index::default();
        let old = Item { value: b"v".to_vec().into(), flags: 3, expires_at: 1, cas: 42 };
        index.insert(b"gone", old.as_ref());
        let mut encoded = Vec::new();
        encode_items(&index, &mut encoded);
        assert_eq!(encoded, b"42 setmeta gone 3 1 v\n");
        assert_eq!(decode_items(&encoded).unwrap(), vec![(Box::from(&b"gone"[..]), old)]);
        assert_eq!(decode_items(b"").unwrap(), vec![]);
        assert_eq!(decode_items(b"1 set a b\nx set c d\n").unwrap_err().line, 2);
        assert!(decode_items(b"1 del a\n").unwrap_err().why.contains("not a set"));
        assert!(decode_items(b"7\n").unwrap_err().why.contains("no CAS"));
    }

    #[test]
    fn a_store_replaced_by_an_export_holds_the_same_items_and_cas_on_disk_and_in_memory() {
        use crate::store::{Store, StoreConfig, StoreMode, WriteOp};
        let dir = tempfile::tempdir().unwrap();
        let from = Store::open(StoreConfig::new(dir.path().join("from.txt"))).unwrap();
        for (key, flags) in [("a", 0), ("b", 5), ("c", 0)] {
            let set = |value: &str| WriteOp::Store {
                key: key.into(),
                value: value.into(),
                flags,
                expires_at: 0,
                mode: StoreMode::Set,
            };
            from.write_many([set("old"), set(&format!("value of {key}"))]);
        }
        let exported = from.export_items();

        let path = dir.path().join("to.txt");
        std::fs::write(&path, "set stale gone\nset a other\n").unwrap();
        let to = Store::open(StoreConfig::new(&path)).unwrap();
        assert!(to.replace_all(b"1 set ok 1\nbad line\n").is_err());
        assert_eq!(to.get(b"stale").map(|i| i.value), Some(b"gone".to_vec().into()), "nothing changed");
        to.replace_all(&exported).unwrap();
        for key in ["a", "b", "c"] {
            assert_eq!(to.get(key.as_bytes()), from.get(key.as_bytes()), "{key}");
        }
        assert_eq!(to.get(b"stale"), None);
        assert_eq!(to.stats().keys, 3);
        assert_eq!(to.export_items().len(), exported.len());
        drop(to);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("setmeta b 5 0 value of b\n") && !text.contains("stale"), "{text}");
    }
}
