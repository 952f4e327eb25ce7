//! `decide`: what a batch of writes does, as a pure function.
//!
//! ```text
//! decide(state, ops, Inputs { now, first_cas, max_value_bytes }) -> Decision { effects, outcomes, next_cas }
//! ```
//!
//! Each op is decided against the state as the earlier ops of the same batch left it (so
//! `add` after `set` of the same key in one pipeline is `NOT_STORED`), which is what makes
//! `add`, `cas`, `incr`, … atomic without a lock held by the callers: the caller that commits
//! the batch holds the write lock while it decides, appends and applies.
//!
//! **Determinism contract.** `decide` reads no clock, draws no random number and does no
//! I/O: the time (`now`, Unix seconds, for expiry) and the CAS uniques (`first_cas`, then one
//! more per stored item, in op order) are inputs, and nothing depends on hash-map iteration
//! order. The same state, ops and inputs give the same effects and outcomes on every
//! machine. The single-node store passes the wall clock and its hybrid CAS clock; a
//! replicated log passes the time the leader stamped into the entry and uniques derived from
//! the entry's position, so every node applies the same log to the same state.
//!
//! **One copy of the value.** Effects borrow the ops' keys and values (`Cow::Borrowed` for
//! plain stores), so a value travels from the request to the log encoding and to the index
//! entry without an intermediate copy; only values built here (append, incr, touch) are owned.
//!
//! memcached's rules implemented here: `add` only if absent, `replace`/`append`/`prepend`
//! only if present (the last two keep flags and expiry), `cas` only if the unique matches
//! (`NOT_FOUND` if absent), delete with a CAS, touch, incr/decr on a decimal of at most 20
//! digits (incr wraps at 2^64, decr stops at 0, the item keeps its expiry unless the op gives
//! one; an absent key is created at an initial value when the op asks, as meta `ma N` and
//! binary incr/decr do), expiry capped at
//! `MAX_EXPIRES_AT`, and an item stored already expired is a delete (the old value goes, the
//! new one is never seen).

use std::borrow::Cow;
use std::collections::HashMap;

use super::format::{parse_number, MAX_EXPIRES_AT};
use super::index::{is_expired, Index, Item, ItemRef};
use super::{StoreMode, WriteOp, WriteOutcome};

/// The state a batch is decided against.
pub trait State {
    /// Runs `f` on the live item under `key` at time `now`.
    fn peek<R>(&self, key: &[u8], now: u64, f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R;

    /// How many live items at time `now` have a key starting with `prefix` that `also`
    /// accepts (for `delprefix`'s count).
    fn count_prefix(&self, prefix: &[u8], now: u64, also: &dyn Fn(&[u8]) -> bool) -> usize;
}

impl State for Index {
    fn peek<R>(&self, key: &[u8], now: u64, f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R {
        self.with(key, now, f)
    }

    fn count_prefix(&self, prefix: &[u8], now: u64, also: &dyn Fn(&[u8]) -> bool) -> usize {
        Index::count_prefix(self, prefix, now, also)
    }
}

/// Everything `decide` needs besides the state and the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// Unix seconds: an item whose expiry is at or before it is absent.
    pub now: u64,
    /// The CAS unique of the first item stored; each further one gets the next number.
    pub first_cas: u64,
    /// Largest value a write may leave (append, prepend and incr included).
    pub max_value_bytes: usize,
}

/// A value to store and, when the request carried it, its escaped text.
type StoredValue<'a> = (Cow<'a, [u8]>, Option<&'a [u8]>);

/// A change to the log and the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<'a> {
    Set {
        key: &'a [u8],
        value: Cow<'a, [u8]>,
        /// The value's canonical escaped text when the request carried it (the log record
        /// copies it instead of escaping `value`; see [`crate::store::Value`]).
        value_text: Option<&'a [u8]>,
        flags: u32,
        expires_at: u64,
        cas: u64,
    },
    Del {
        key: &'a [u8],
    },
    Flush,
    /// `dst` takes a copy of `src`'s item (with a new CAS); with `remove_source`, `src` is
    /// deleted: one `copy` or `rename` record.
    Copy {
        src: &'a [u8],
        dst: &'a [u8],
        value: Cow<'a, [u8]>,
        flags: u32,
        expires_at: u64,
        cas: u64,
        remove_source: bool,
    },
    /// Every key starting with `prefix` is deleted: one `delprefix` record.
    DelPrefix {
        prefix: &'a [u8],
    },
}

impl Effect<'_> {
    /// The item a `Set` (or a `Copy`, under `dst`) leaves.
    pub fn item(&self) -> Option<ItemRef<'_>> {
        match self {
            Effect::Set { value, flags, expires_at, cas, .. }
            | Effect::Copy { value, flags, expires_at, cas, .. } => {
                Some(ItemRef { value, flags: *flags, expires_at: *expires_at, cas: *cas })
            }
            Effect::Del { .. } | Effect::Flush | Effect::DelPrefix { .. } => None,
        }
    }
}

/// What a batch does: effects to log and apply (in order), and one outcome per op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub effects: Vec<Effect<'a>>,
    pub outcomes: Vec<WriteOutcome>,
    /// The CAS unique after the last one handed out (`first_cas` if none was).
    pub next_cas: u64,
}

/// The state of a key as the earlier ops of the batch left it.
#[derive(Clone, Copy)]
enum Overlay {
    /// Set by the effect at this position.
    SetBy(usize),
    Absent,
}

struct Batch<'s, 'a, S> {
    state: &'s S,
    inputs: Inputs,
    overlay: HashMap<&'a [u8], Overlay>,
    /// A flush earlier in the batch: keys not in `overlay` are absent.
    flushed: bool,
    /// Prefixes deleted earlier in the batch: keys under them not in `overlay` are absent.
    deleted_prefixes: Vec<&'a [u8]>,
    effects: Vec<Effect<'a>>,
    next_cas: u64,
}

/// Decides `ops` in order against `state`; see the module doc.
pub fn decide<'a>(
    state: &impl State,
    ops: impl IntoIterator<Item = &'a WriteOp>,
    inputs: Inputs,
) -> Decision<'a> {
    let mut batch = Batch {
        state,
        inputs,
        overlay: HashMap::new(),
        flushed: false,
        deleted_prefixes: Vec::new(),
        effects: Vec::new(),
        next_cas: inputs.first_cas,
    };
    let outcomes = ops.into_iter().map(|op| batch.decide(op)).collect();
    Decision { effects: batch.effects, outcomes, next_cas: batch.next_cas }
}

impl<'a, S: State> Batch<'_, 'a, S> {
    /// Runs `f` on the item under `key` as of this point in the batch.
    fn peek<R>(&self, key: &[u8], f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R {
        match self.overlay.get(key) {
            Some(&Overlay::SetBy(at)) => f(self.effects[at].item()),
            Some(Overlay::Absent) => f(None),
            None if self.deleted_in_batch(key) => f(None),
            None => self.state.peek(key, self.inputs.now, f),
        }
    }

    /// Whether a flush or a deleted prefix earlier in the batch covers `key`.
    fn deleted_in_batch(&self, key: &[u8]) -> bool {
        self.flushed || self.deleted_prefixes.iter().any(|prefix| key.starts_with(prefix))
    }

    /// Only whether the item is there, and its CAS unique: no copy of the value.
    fn current_cas(&self, key: &[u8]) -> Option<u64> {
        self.peek(key, |item| item.map(|item| item.cas))
    }

    fn current(&self, key: &[u8]) -> Option<Item> {
        self.peek(key, |item| item.map(|item| item.to_item()))
    }

    fn take_cas(&mut self) -> u64 {
        let cas = self.next_cas;
        self.next_cas += 1;
        cas
    }

    fn push(&mut self, effect: Effect<'a>) {
        match &effect {
            Effect::Set { key, expires_at, .. } => {
                let state = if is_expired(*expires_at, self.inputs.now) {
                    Overlay::Absent
                } else {
                    Overlay::SetBy(self.effects.len())
                };
                self.overlay.insert(key, state);
            }
            Effect::Del { key } => {
                self.overlay.insert(key, Overlay::Absent);
            }
            Effect::Flush => {
                self.overlay.clear();
                self.deleted_prefixes.clear();
                self.flushed = true;
            }
            Effect::Copy { src, dst, remove_source, .. } => {
                self.overlay.insert(dst, Overlay::SetBy(self.effects.len()));
                if *remove_source {
                    self.overlay.insert(src, Overlay::Absent);
                }
            }
            Effect::DelPrefix { prefix } => {
                for (key, state) in self.overlay.iter_mut() {
                    if key.starts_with(prefix) {
                        *state = Overlay::Absent;
                    }
                }
                self.deleted_prefixes.push(prefix);
            }
        }
        self.effects.push(effect);
    }

    /// Stores an item, or deletes the key when the item is stored already expired.
    fn store(&mut self, key: &'a [u8], value: StoredValue<'a>, flags: u32, expires_at: u64) -> u64 {
        let cas = self.take_cas();
        let expires_at = expires_at.min(MAX_EXPIRES_AT);
        if is_expired(expires_at, self.inputs.now) {
            self.push(Effect::Del { key });
        } else {
            let (value, value_text) = value;
            self.push(Effect::Set { key, value, value_text, flags, expires_at, cas });
        }
        cas
    }

    fn decide(&mut self, op: &'a WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Store { key, value, flags, expires_at, mode } => {
                // The op's own value: borrowed, with the text it came in.
                let given = || ((Cow::Borrowed(&value[..]), value.file_text()), *flags, *expires_at);
                let (value, flags, expires_at) = match *mode {
                    StoreMode::Set => given(),
                    StoreMode::Add if self.current_cas(key).is_some() => return WriteOutcome::NotStored,
                    StoreMode::Replace if self.current_cas(key).is_none() => return WriteOutcome::NotStored,
                    StoreMode::Add | StoreMode::Replace => given(),
                    StoreMode::Cas(expected) => match self.current_cas(key) {
                        None => return WriteOutcome::NotFound,
                        Some(cas) if cas != expected => return WriteOutcome::Exists,
                        Some(_) => given(),
                    },
                    StoreMode::AppendOrCreate if self.current_cas(key).is_none() => given(),
                    StoreMode::Append | StoreMode::Prepend | StoreMode::AppendOrCreate => {
                        let joined = self.peek(key, |old| {
                            old.map(|old| {
                                let (first, second) = if *mode != StoreMode::Prepend {
                                    (old.value, &value[..])
                                } else {
                                    (&value[..], old.value)
                                };
                                let mut joined = Vec::with_capacity(first.len() + second.len());
                                joined.extend_from_slice(first);
                                joined.extend_from_slice(second);
                                (joined, old.flags, old.expires_at)
                            })
                        });
                        match joined {
                            None => return WriteOutcome::NotStored,
                            Some((joined, flags, expires_at)) => {
                                ((Cow::Owned(joined), None), flags, expires_at)
                            }
                        }
                    }
                };
                if value.0.len() > self.inputs.max_value_bytes {
                    return WriteOutcome::TooLarge;
                }
                let cas = self.store(key, value, flags, expires_at);
                WriteOutcome::Stored { cas }
            }
            WriteOp::Delete { key, cas } => match self.current_cas(key) {
                None => WriteOutcome::NotFound,
                Some(old) if cas.is_some_and(|c| c != old) => WriteOutcome::Exists,
                Some(_) => {
                    self.push(Effect::Del { key });
                    WriteOutcome::Deleted
                }
            },
            WriteOp::Touch { key, expires_at } => match self.current(key) {
                None => WriteOutcome::NotFound,
                Some(mut item) => {
                    item.expires_at = (*expires_at).min(MAX_EXPIRES_AT);
                    // A touch keeps the item's CAS unique, as memcached's does.
                    if is_expired(item.expires_at, self.inputs.now) {
                        self.push(Effect::Del { key });
                    } else {
                        self.push(Effect::Set {
                            key,
                            value: Cow::Owned(item.value.to_vec()),
                            value_text: None,
                            flags: item.flags,
                            expires_at: item.expires_at,
                            cas: item.cas,
                        });
                    }
                    WriteOutcome::Touched(item)
                }
            },
            WriteOp::Arith { key, delta, incr, cas, create, expires_at: new_expiry } => {
                let found = self.peek(key, |item| {
                    item.map(|item| (parse_number::<u64>(item.value), item.flags, item.expires_at, item.cas))
                });
                let (value, flags, expires_at) = match (found, create) {
                    (None, None) => return WriteOutcome::NotFound,
                    // Created at the initial value; the delta is not applied (memcached's rule).
                    (None, Some(new)) => (new.initial, 0, new.expires_at),
                    (Some((_, _, _, old)), _) if cas.is_some_and(|c| c != old) => {
                        return WriteOutcome::Exists
                    }
                    (Some((None, ..)), _) => return WriteOutcome::NonNumeric,
                    (Some((Some(number), flags, expires_at, _)), _) => {
                        let value =
                            if *incr { number.wrapping_add(*delta) } else { number.saturating_sub(*delta) };
                        (value, flags, new_expiry.unwrap_or(expires_at))
                    }
                };
                let expires_at = expires_at.min(MAX_EXPIRES_AT);
                let cas =
                    self.store(key, (Cow::Owned(value.to_string().into_bytes()), None), flags, expires_at);
                WriteOutcome::Counter { value, cas, expires_at }
            }
            WriteOp::Flush => {
                self.push(Effect::Flush);
                WriteOutcome::Flushed
            }
            WriteOp::Copy { src, dst, remove_source, only_if_absent } => {
                let Some(item) = self.current(src) else { return WriteOutcome::NotFound };
                if *only_if_absent && self.current_cas(dst).is_some() {
                    return WriteOutcome::Exists;
                }
                if src == dst {
                    return WriteOutcome::Copied;
                }
                let cas = self.take_cas();
                self.push(Effect::Copy {
                    src,
                    dst,
                    value: Cow::Owned(item.value.into_vec()),
                    flags: item.flags,
                    expires_at: item.expires_at,
                    cas,
                    remove_source: *remove_source,
                });
                WriteOutcome::Copied
            }
            WriteOp::DeletePrefix { prefix } => {
                // Live keys under the prefix as of this point in the batch: the state's that
                // the batch has not touched, and the batch's own.
                let in_state = if self.flushed {
                    0
                } else {
                    let untouched =
                        |key: &[u8]| !self.overlay.contains_key(key) && !self.deleted_in_batch(key);
                    self.state.count_prefix(prefix, self.inputs.now, &untouched)
                };
                let in_batch = self
                    .overlay
                    .iter()
                    .filter(|(key, state)| key.starts_with(prefix) && matches!(state, Overlay::SetBy(_)))
                    .count();
                let count = (in_state + in_batch) as u64;
                if count > 0 {
                    self.push(Effect::DelPrefix { prefix });
                }
                WriteOutcome::Count(count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A state in a map: the decide step needs nothing else.
    #[derive(Default)]
    struct Map(BTreeMap<Vec<u8>, Item>);

    impl State for Map {
        fn peek<R>(&self, key: &[u8], now: u64, f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R {
            f(self.0.get(key).filter(|item| !is_expired(item.expires_at, now)).map(Item::as_ref))
        }

        fn count_prefix(&self, prefix: &[u8], now: u64, also: &dyn Fn(&[u8]) -> bool) -> usize {
            let live = |(key, item): &(&Vec<u8>, &Item)| !is_expired(item.expires_at, now) && also(key);
            self.0.iter().filter(|(key, _)| key.starts_with(prefix)).filter(live).count()
        }
    }

    impl Map {
        fn with(mut self, key: &str, value: &str, flags: u32, expires_at: u64, cas: u64) -> Map {
            let item = Item { value: value.as_bytes().into(), flags, expires_at, cas };
            self.0.insert(key.as_bytes().to_vec(), item);
            self
        }
    }

    const NOW: u64 = 1_000;
    const INPUTS: Inputs = Inputs { now: NOW, first_cas: 500, max_value_bytes: 10 };

    fn store(key: &str, value: &str, mode: StoreMode) -> WriteOp {
        store_with(key, value, 0, 0, mode)
    }

    fn store_with(key: &str, value: &str, flags: u32, expires_at: u64, mode: StoreMode) -> WriteOp {
        WriteOp::Store { key: key.into(), value: value.into(), flags, expires_at, mode }
    }

    fn outcomes(state: &Map, ops: &[WriteOp]) -> Vec<WriteOutcome> {
        decide(state, ops, INPUTS).outcomes
    }

    fn set_effect<'a>(key: &'a str, value: &'a str, flags: u32, expires_at: u64, cas: u64) -> Effect<'a> {
        Effect::Set {
            key: key.as_bytes(),
            value: Cow::Borrowed(value.as_bytes()),
            value_text: None,
            flags,
            expires_at,
            cas,
        }
    }

    #[test]
    fn set_stores_with_the_next_cas_and_borrows_the_value() {
        let ops = [store_with("k", "v", 3, 2_000, StoreMode::Set), store("k2", "w", StoreMode::Set)];
        let decision = decide(&Map::default(), &ops, INPUTS);
        assert_eq!(decision.outcomes, [WriteOutcome::Stored { cas: 500 }, WriteOutcome::Stored { cas: 501 }]);
        assert_eq!(decision.effects, [set_effect("k", "v", 3, 2_000, 500), set_effect("k2", "w", 0, 0, 501)]);
        assert!(matches!(&decision.effects[0], Effect::Set { value: Cow::Borrowed(_), .. }), "no copy");
        assert_eq!(decision.next_cas, 502);
    }

    #[test]
    fn a_store_keeps_the_requests_text_and_a_built_value_has_none() {
        let carried = |key: &str, mode| WriteOp::Store {
            key: key.into(),
            value: crate::store::Value::from_escaped(br"a\nb").unwrap(),
            flags: 0,
            expires_at: 0,
            mode,
        };
        let ops =
            [carried("k", StoreMode::Set), carried("k", StoreMode::Append), carried("n", StoreMode::Add)];
        let decision = decide(&Map::default(), &ops, Inputs { max_value_bytes: 100, ..INPUTS });
        let texts: Vec<Option<&[u8]>> = decision
            .effects
            .iter()
            .map(|effect| match effect {
                Effect::Set { value_text, .. } => *value_text,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            [Some(&br"a\nb"[..]), None, Some(&br"a\nb"[..])],
            "an appended value is built here"
        );
    }

    #[test]
    fn add_and_replace_depend_on_presence_including_earlier_ops_of_the_batch() {
        let state = Map::default().with("old", "1", 0, 0, 7).with("gone", "1", 0, NOW, 8);
        let ops = [
            store("old", "x", StoreMode::Add),
            store("new", "x", StoreMode::Replace),
            store("new", "x", StoreMode::Add),
            store("new", "y", StoreMode::Add),
            store("new", "z", StoreMode::Replace),
            store("gone", "x", StoreMode::Add),
        ];
        let got = outcomes(&state, &ops);
        assert_eq!(
            got,
            [
                WriteOutcome::NotStored,
                WriteOutcome::NotStored,
                WriteOutcome::Stored { cas: 500 },
                WriteOutcome::NotStored,
                WriteOutcome::Stored { cas: 501 },
                WriteOutcome::Stored { cas: 502 },
            ],
            "an item expiring at `now` is absent"
        );
    }

    #[test]
    fn cas_matches_the_unique_and_misses_are_not_found() {
        let state = Map::default().with("k", "v", 0, 0, 42);
        let ops = [
            store("k", "x", StoreMode::Cas(41)),
            store("missing", "x", StoreMode::Cas(42)),
            store("k", "x", StoreMode::Cas(42)),
            store("k", "y", StoreMode::Cas(42)),
            store("k", "z", StoreMode::Cas(500)),
        ];
        let got = outcomes(&state, &ops);
        assert_eq!(
            got,
            [
                WriteOutcome::Exists,
                WriteOutcome::NotFound,
                WriteOutcome::Stored { cas: 500 },
                WriteOutcome::Exists,
                WriteOutcome::Stored { cas: 501 },
            ]
        );
    }

    #[test]
    fn append_and_prepend_keep_flags_and_expiry_and_respect_the_size_limit() {
        let state = Map::default().with("k", "mid", 9, 5_000, 1);
        let ops = [
            store_with("k", "<", 1, 0, StoreMode::Prepend),
            store_with("k", ">", 1, 0, StoreMode::Append),
            store("missing", "x", StoreMode::Append),
            store("k", "too-long!", StoreMode::Append),
        ];
        let decision = decide(&state, &ops, INPUTS);
        assert_eq!(
            decision.outcomes,
            [
                WriteOutcome::Stored { cas: 500 },
                WriteOutcome::Stored { cas: 501 },
                WriteOutcome::NotStored,
                WriteOutcome::TooLarge
            ]
        );
        assert_eq!(decision.effects.last(), Some(&set_effect("k", "<mid>", 9, 5_000, 501)));
        assert_eq!(decision.effects.len(), 2);
    }

    #[test]
    fn a_value_over_the_limit_is_too_large_and_changes_nothing() {
        let ops = [store("k", "12345678901", StoreMode::Set)];
        let decision = decide(&Map::default(), &ops, INPUTS);
        assert_eq!(decision.outcomes, [WriteOutcome::TooLarge]);
        assert!(decision.effects.is_empty());
        assert_eq!(decision.next_cas, 500, "no unique used");
    }

    #[test]
    fn an_item_stored_already_expired_is_a_delete_and_expiry_is_capped() {
        let state = Map::default().with("k", "old", 0, 0, 1);
        let ops = [
            store_with("k", "new", 0, NOW, StoreMode::Set),
            store_with("far", "v", 0, u64::MAX, StoreMode::Set),
        ];
        let decision = decide(&state, &ops, INPUTS);
        assert_eq!(decision.outcomes[0], WriteOutcome::Stored { cas: 500 });
        assert_eq!(decision.effects[0], Effect::Del { key: b"k" });
        assert_eq!(decision.effects[1], set_effect("far", "v", 0, MAX_EXPIRES_AT, 501));
        // …and a later op of the batch sees the key absent.
        let ops = [store_with("k", "new", 0, 1, StoreMode::Set), store("k", "x", StoreMode::Replace)];
        assert_eq!(outcomes(&state, &ops)[1], WriteOutcome::NotStored);
    }

    #[test]
    fn delete_with_and_without_cas() {
        let state = Map::default().with("k", "v", 0, 0, 42).with("j", "v", 0, 0, 43);
        let ops = [
            WriteOp::Delete { key: b"k".to_vec(), cas: Some(41) },
            WriteOp::Delete { key: b"k".to_vec(), cas: Some(42) },
            WriteOp::Delete { key: b"k".to_vec(), cas: None },
            WriteOp::Delete { key: b"j".to_vec(), cas: None },
        ];
        let decision = decide(&state, &ops, INPUTS);
        assert_eq!(
            decision.outcomes,
            [WriteOutcome::Exists, WriteOutcome::Deleted, WriteOutcome::NotFound, WriteOutcome::Deleted]
        );
        assert_eq!(decision.effects, [Effect::Del { key: b"k" }, Effect::Del { key: b"j" }]);
    }

    #[test]
    fn touch_sets_the_expiry_keeps_the_unique_and_a_past_expiry_deletes() {
        let state = Map::default().with("k", "v", 5, 0, 42).with("j", "w", 0, 0, 43);
        let ops = [
            WriteOp::Touch { key: b"k".to_vec(), expires_at: 3_000 },
            WriteOp::Touch { key: b"j".to_vec(), expires_at: 10 },
            WriteOp::Touch { key: b"j".to_vec(), expires_at: 3_000 },
        ];
        let decision = decide(&state, &ops, INPUTS);
        let touched = Item { value: b"v"[..].into(), flags: 5, expires_at: 3_000, cas: 42 };
        assert_eq!(decision.outcomes[0], WriteOutcome::Touched(touched));
        assert_eq!(decision.effects[0], set_effect("k", "v", 5, 3_000, 42));
        assert_eq!(decision.effects[1], Effect::Del { key: b"j" });
        assert_eq!(decision.outcomes[2], WriteOutcome::NotFound, "gone after the past expiry");
    }

    #[test]
    fn incr_wraps_decr_stops_at_zero_and_non_numbers_are_refused() {
        let state = Map::default()
            .with("max", &u64::MAX.to_string(), 0, 0, 1)
            .with("two", "2", 4, 9_000, 2)
            .with("text", "abc", 0, 0, 3)
            .with("long", "123456789012345678901", 0, 0, 4);
        let arith = |key: &str, delta, incr, cas| WriteOp::Arith {
            key: key.into(),
            delta,
            incr,
            cas,
            create: None,
            expires_at: None,
        };
        let ops = [
            arith("max", 1, true, None),
            arith("two", 5, false, None),
            arith("text", 1, true, None),
            arith("long", 1, true, None),
            arith("missing", 1, true, None),
            arith("two", 1, true, Some(2)),
            arith("two", 1, true, Some(501)),
        ];
        let decision = decide(&state, &ops, INPUTS);
        assert_eq!(
            decision.outcomes,
            [
                WriteOutcome::Counter { value: 0, cas: 500, expires_at: 0 },
                WriteOutcome::Counter { value: 0, cas: 501, expires_at: 9_000 },
                WriteOutcome::NonNumeric,
                WriteOutcome::NonNumeric,
                WriteOutcome::NotFound,
                WriteOutcome::Exists,
                WriteOutcome::Counter { value: 1, cas: 502, expires_at: 9_000 },
            ]
        );
        assert_eq!(decision.effects[1], set_effect("two", "0", 4, 9_000, 501), "flags and expiry kept");
    }

    #[test]
    fn flush_hides_everything_before_it_in_the_batch_and_in_the_state() {
        let state = Map::default().with("k", "v", 0, 0, 1);
        let ops = [
            store("a", "1", StoreMode::Set),
            WriteOp::Flush,
            store("k", "x", StoreMode::Replace),
            store("a", "x", StoreMode::Replace),
            store("b", "2", StoreMode::Set),
            store("b", "3", StoreMode::Replace),
        ];
        let decision = decide(&state, &ops, INPUTS);
        assert_eq!(decision.outcomes[1], WriteOutcome::Flushed);
        assert_eq!(decision.outcomes[2..4], [WriteOutcome::NotStored, WriteOutcome::NotStored]);
        assert_eq!(decision.outcomes[5], WriteOutcome::Stored { cas: 502 });
        assert_eq!(decision.effects[1], Effect::Flush);
    }

    proptest::proptest! {
        /// The contract that replication relies on: deciding is a function of its inputs.
        #[test]
        fn the_same_inputs_give_the_same_decision(
            seed in proptest::collection::vec((0u8..6, 0u8..4, 0u8..3, 0u64..3), 1..40),
            now in 0u64..5,
            first_cas in 0u64..1_000,
        ) {
            let keys = ["a", "b", "c", "d"];
            let state = Map::default().with("a", "1", 0, 0, 7).with("b", "x", 0, 3, 8);
            let ops: Vec<WriteOp> = seed
                .iter()
                .map(|&(kind, key, value, extra)| {
                    let key = keys[key as usize];
                    let value = ["1", "22", "abc"][value as usize];
                    match kind {
                        0 => store_with(key, value, 0, extra, StoreMode::Set),
                        1 => store(key, value, StoreMode::Add),
                        2 => store(key, value, StoreMode::Append),
                        3 => WriteOp::Delete { key: key.into(), cas: None },
                        4 => WriteOp::Arith {
                            key: key.into(),
                            delta: extra,
                            incr: true,
                            cas: None,
                            create: None,
                            expires_at: None,
                        },
                        _ => WriteOp::Touch { key: key.into(), expires_at: extra },
                    }
                })
                .collect();
            let inputs = Inputs { now, first_cas, max_value_bytes: 8 };
            let first = decide(&state, &ops, inputs);
            let second = decide(&state, &ops, inputs);
            proptest::prop_assert_eq!(&first, &second);
            proptest::prop_assert_eq!(first.outcomes.len(), ops.len());
            let stored = first.outcomes.iter().filter(|o| matches!(o, WriteOutcome::Stored { .. } | WriteOutcome::Counter { .. })).count();
            proptest::prop_assert_eq!(first.next_cas, first_cas + stored as u64);
        }
    }
}
