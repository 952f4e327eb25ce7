//! What the fuzz targets check, shared by `fuzz/fuzz_targets/*` (libFuzzer) and
//! `tests/fuzz_corpus.rs` (which replays the committed corpus on stable Rust in `cargo test`).
//!
//! Besides "never panics", each entry point has a property that must hold for every input:
//! - `line_parse`: a write request re-encodes to one record line that parses back to the same
//!   request.
//! - `record_parse`: an accepted record round-trips through its one-line encoding.
//! - `recovery_load`: loading only ever cuts a torn final line off the file (nothing else is
//!   changed), the index equals an independent replay of the lines, a second load finds
//!   nothing to cut, a refusal names the first bad line and leaves the file untouched, and
//!   `repair` then keeps everything before that line plus a byte-exact backup.
//! - `memcache_parse`: a `MemcacheSession` fed the input all at once and then either a byte at
//!   a time or in random chunks never consumes more than it was offered, never leaves more
//!   unconsumed than one request can hold, answers only well-formed reply lines (and data
//!   blocks of the announced length), and gives the same replies however the input was split.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use textkv::protocol::memcache::MemcacheSession;
use textkv::protocol::{Context, Limits, Session};
use textkv::stats::ServerStats;
use textkv::store::{unix_now, FsyncPolicy, Store, StoreConfig};

use textkv::protocol::line::{parse, Request};
use textkv::store::format::Record;
use textkv::store::index::Index;
use textkv::store::recovery::{self, is_comment_or_blank, strip_line_ending, LoadReport};
use textkv::store::LoadError;

/// A small value limit, so that the fuzzer reaches the "value too large" path.
const MAX_VALUE: usize = 64;
/// "Now" for expiry decisions during a fuzzed load.
const NOW: u64 = 1_000_000;

fn encode(record: &Record) -> Vec<u8> {
    let mut line = Vec::new();
    record.encode_into(&mut line);
    assert_eq!(line.last(), Some(&b'\n'), "a record line ends with a newline");
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "a record is exactly one line: {line:?}");
    line
}

/// An error becomes an `ERROR <reason>` reply and a `path:line: reason` log line: it must be
/// one line of text without control characters, whatever bytes the input held.
fn assert_clean_message(message: &str) {
    assert!(
        !message.chars().any(|c| c.is_ascii_control()),
        "error message with control characters: {message:?}"
    );
}

/// `textkv::protocol::line::parse`.
pub fn line_parse(data: &[u8]) {
    match parse(data, MAX_VALUE) {
        Ok(Request::Write(record)) => {
            // As the server logs it: `database.txt` reads it back as the same record (keys
            // that are not plain UTF-8 are escaped there, while requests carry them raw).
            let line = encode(&record);
            let again = Record::parse(&line[..line.len() - 1]);
            assert_eq!(again, Ok(record), "re-encoded write {line:?} parses differently");
        }
        Ok(_) => {}
        Err(e) => assert_clean_message(&e.to_string()),
    }
}

/// `textkv::store::format::Record::parse`.
pub fn record_parse(data: &[u8]) {
    match Record::parse(data) {
        Ok(record) => {
            let line = encode(&record);
            assert_eq!(
                Record::parse(&line[..line.len() - 1]).as_ref(),
                Ok(&record),
                "record {line:?} does not round-trip"
            );
        }
        Err(e) => assert_clean_message(&e.to_string()),
    }
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, u32, u64)>;

fn snapshot(index: &Index) -> Model {
    index
        .keys(b"", NOW)
        .into_iter()
        .map(|key| {
            let item = index.get(&key, NOW).expect("a listed key is present");
            (key.to_vec(), (item.value.to_vec(), item.flags, item.expires_at))
        })
        .collect()
}

fn load(path: &Path, repair: bool) -> (Result<LoadReport, LoadError>, Model) {
    let index = Index::default();
    let mut cas = 0u64;
    let options = recovery::LoadOptions { now: NOW, repair, max_value_bytes: usize::MAX };
    let result = recovery::load(path, &index, &options, || {
        cas += 1;
        cas
    });
    (result, snapshot(&index))
}

/// What loading `data` should give, worked out independently: the complete lines, the torn
/// tail, and either the replayed state or the number of the first malformed line.
fn expected(data: &[u8]) -> (usize, Result<Model, (u64, usize)>) {
    let mut model = Model::new();
    let mut offset = 0;
    let mut number = 0u64;
    while let Some(end) = data[offset..].iter().position(|&b| b == b'\n') {
        number += 1;
        let line = strip_line_ending(&data[offset..offset + end + 1]);
        if !is_comment_or_blank(line) {
            match Record::parse(line) {
                Ok(Record::Set { key, value, flags, expires_at }) => {
                    if expires_at != 0 && expires_at <= NOW {
                        model.remove(&key);
                    } else {
                        model.insert(key, (value, flags, expires_at));
                    }
                }
                Ok(Record::Del { key }) => {
                    model.remove(&key);
                }
                Ok(Record::Flush) => model.clear(),
                // A copy or rename is written only for a present src: a src missing here
                // expired, and dst, given the same item, is gone too.
                Ok(Record::Copy { src, dst }) => copy_in_model(&mut model, &src, &dst, false),
                Ok(Record::Rename { src, dst, moved: None }) => copy_in_model(&mut model, &src, &dst, true),
                Ok(Record::Rename { src, dst, moved: Some(moved) }) => {
                    model.remove(&src);
                    if moved.expires_at != 0 && moved.expires_at <= NOW {
                        model.remove(&dst);
                    } else {
                        model.insert(dst, (moved.value, moved.flags, moved.expires_at));
                    }
                }
                Ok(Record::DelPrefix { prefix }) => model.retain(|key, _| !key.starts_with(&prefix)),
                Err(_) => return (offset, Err((number, offset))),
            }
        }
        offset += end + 1;
    }
    (offset, Ok(model))
}

fn copy_in_model(model: &mut Model, src: &[u8], dst: &[u8], remove_source: bool) {
    if src == dst {
        return;
    }
    match model.get(src).cloned() {
        Some(item) => model.insert(dst.to_vec(), item),
        None => model.remove(dst),
    };
    if remove_source {
        model.remove(src);
    }
}

/// `textkv::store::recovery::load` on `data` written to `dir/database.txt`.
pub fn recovery_load(data: &[u8], dir: &Path) {
    let path = dir.join("database.txt");
    fs::write(&path, data).expect("write the fuzzed database");
    let (complete, expected) = expected(data);
    let (result, state) = load(&path, false);
    let after = fs::read(&path).expect("read back");
    match (result, expected) {
        (Ok(report), Ok(model)) => {
            assert_eq!(after, &data[..complete], "only a torn final line may be cut off");
            assert_eq!(report.file_len, complete as u64);
            assert_eq!(report.torn_bytes, (data.len() - complete) as u64);
            assert_eq!(report.backup, None);
            assert_eq!(state, model, "the index differs from a replay of the lines");
            let (again, state_again) = load(&path, false);
            let again = again.expect("a file that loaded once loads again");
            assert_eq!(again.torn_bytes, 0, "nothing left to cut on the second load");
            assert_eq!(state_again, model);
        }
        (Err(LoadError::Corrupt { line, .. }), Err((bad_line, bad_offset))) => {
            assert_eq!(line, bad_line, "the error names the first malformed line");
            assert_eq!(after, data, "a refused file is left untouched");
            let (repaired, _) = load(&path, true);
            let report = repaired.expect("repair always loads");
            let backup = report.backup.expect("repair keeps a backup");
            assert_eq!(fs::read(&backup).expect("read backup"), data, "the backup is the original");
            fs::remove_file(&backup).expect("remove backup");
            assert_eq!(fs::read(&path).expect("read repaired"), &data[..bad_offset]);
            let (reloaded, _) = load(&path, false);
            reloaded.expect("a repaired file loads without --repair");
        }
        (result, expected) => panic!(
            "load gave {:?}, an independent replay expected {:?}",
            result.map(|r| r.file_len),
            expected.map(|m| m.len())
        ),
    }
}

/// `--max-line-bytes` of the fuzzed memcached sessions (the limit of `get` lines).
const MC_MAX_LINE: usize = 3000;

/// The stores the memcached sessions run on, one per run of an input. Opening a
/// store per execution would cost more than the rest of the check; instead each is emptied
/// with `flush_all` (which also cancels a pending delayed flush) before every run.
pub struct MemcacheStores {
    stores: Vec<Arc<Store>>,
}

impl MemcacheStores {
    /// Opens the stores in `dir` (removing any earlier database there).
    pub fn open(dir: &Path) -> MemcacheStores {
        let stores = (0..2)
            .map(|i| {
                let path = dir.join(format!("memcache-{i}.txt"));
                let _ = fs::remove_file(&path);
                let mut config = StoreConfig::new(&path);
                config.fsync = FsyncPolicy::Never;
                config.max_value_bytes = MAX_VALUE;
                config.compact_min_bytes = 1 << 20;
                Arc::new(Store::open(config).expect("open a store"))
            })
            .collect();
        MemcacheStores { stores }
    }

    /// A session on store `i`, emptied first.
    fn session(&self, i: usize) -> MemcacheSession {
        let ctx = Context {
            store: Arc::clone(&self.stores[i]),
            stats: Arc::new(ServerStats::default()),
            limits: Limits { max_value_bytes: MAX_VALUE, max_line_bytes: MC_MAX_LINE },
            users: None,
            cluster: None,
        };
        let mut session = MemcacheSession::new(Arc::new(ctx));
        let mut out = Vec::new();
        session.process(b"flush_all\r\n", &mut out);
        assert_eq!(out, b"OK\r\n", "emptying the store");
        session
    }
}

/// Feeds `input` in pieces of the given sizes the way a connection does: whatever was not
/// consumed is offered again with the next piece, and replies are taken after every call.
/// Returns the replies and whether the session asked to close.
fn feed(session: &mut MemcacheSession, input: &[u8], mut sizes: impl FnMut() -> usize) -> (Vec<u8>, bool) {
    // The most one request can leave unconsumed: its line, `\n`, a data block and `\r\n`.
    const MAX_PENDING: usize = MC_MAX_LINE + 1 + MAX_VALUE + 2;
    let (mut buffer, mut replies) = (Vec::new(), Vec::new());
    let mut offset = 0;
    while offset < input.len() {
        let n = sizes().clamp(1, input.len() - offset);
        buffer.extend_from_slice(&input[offset..offset + n]);
        offset += n;
        loop {
            let mut out = Vec::new();
            let progress = session.process(&buffer, &mut out);
            assert!(progress.consumed <= buffer.len(), "consumed {} of {}", progress.consumed, buffer.len());
            buffer.drain(..progress.consumed);
            replies.extend_from_slice(&out);
            if progress.close {
                return (replies, true);
            }
            if progress.consumed == 0 || buffer.is_empty() {
                assert!(out.is_empty() || progress.consumed > 0, "replied without consuming");
                break;
            }
        }
        assert!(buffer.len() <= MAX_PENDING, "{} bytes left unconsumed", buffer.len());
    }
    (replies, false)
}

/// Asserts that `replies` is a sequence of well-formed memcached replies: lines ending in
/// `\r\n` without control characters, known reply words, and `VALUE`/`VA` followed by a data
/// block of exactly the announced size.
fn assert_well_formed(replies: &[u8]) {
    let mut rest = replies;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("unterminated reply {rest:?}"));
        let line = &rest[..end];
        rest = &rest[end + 2..];
        assert!(
            !line.iter().any(|&b| b < 0x20 || b == 0x7f),
            "reply line with control characters: {:?}",
            String::from_utf8_lossy(line)
        );
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split(' ').collect();
        let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number in {text:?}"));
        let block = match words[0] {
            "VALUE" => {
                assert!(words.len() == 4 || words.len() == 5, "bad VALUE line {text:?}");
                assert!(!words[1].is_empty(), "empty key in {text:?}");
                number(words[2]);
                if words.len() == 5 {
                    number(words[4]);
                }
                Some(number(words[3]) as usize)
            }
            "VA" => Some(number(words[1]) as usize),
            "STORED" | "NOT_STORED" | "EXISTS" | "NOT_FOUND" | "DELETED" | "TOUCHED" | "END" | "OK"
            | "ERROR" => {
                assert_eq!(words.len(), 1, "extra words in {text:?}");
                None
            }
            "CLIENT_ERROR" | "SERVER_ERROR" | "VERSION" => {
                assert!(words.len() >= 2, "no message in {text:?}");
                None
            }
            "STAT" => {
                assert_eq!(words.len(), 3, "bad STAT line {text:?}");
                None
            }
            "HD" | "NS" | "EX" | "NF" | "EN" | "MN" => None,
            word => {
                number(word);
                assert_eq!(words.len(), 1, "extra words in {text:?}");
                None
            }
        };
        if let Some(size) = block {
            assert!(rest.len() >= size + 2, "data block of {size} bytes cut short");
            assert_eq!(&rest[size..size + 2], b"\r\n", "data block not followed by CRLF");
            rest = &rest[size + 2..];
        }
    }
}

/// Replaces CAS uniques (clock-seeded per store, 16 digits) so that replies of two stores
/// compare equal.
fn without_cas(replies: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(replies.len());
    let mut i = 0;
    while i < replies.len() {
        let digits = replies[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits >= 15 {
            out.push(b'#');
            i += digits;
        } else if digits > 0 {
            out.extend_from_slice(&replies[i..i + digits]);
            i += digits;
        } else {
            out.push(replies[i]);
            i += 1;
        }
    }
    out
}

/// Chunk sizes from a small xorshift generator seeded by `seed`: mostly short, sometimes long.
fn chunk_sizes(seed: u8) -> impl FnMut() -> usize {
    let mut state = u32::from(seed) | 0x1000;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 4 == 0 {
            (state >> 8) as usize % 512
        } else {
            (state >> 8) as usize % 16
        }
    }
}

/// `textkv::protocol::memcache::MemcacheSession` fed `data[1..]` all at once and then split
/// as `data[0]` says: an odd seed feeds a byte at a time, an even one seeds random chunks.
/// (Two runs, not three: every write is a round trip to a store's writer thread, which is
/// most of an execution's cost.)
pub fn memcache_parse(data: &[u8], stores: &MemcacheStores) {
    let Some((&seed, input)) = data.split_first() else { return };
    let started = unix_now();
    let run = |store: usize, sizes: &mut dyn FnMut() -> usize| {
        let (replies, closed) = feed(&mut stores.session(store), input, sizes);
        assert_well_formed(&replies);
        (without_cas(&replies), closed)
    };
    let whole = run(0, &mut || usize::MAX);
    let (split, how) = if seed % 2 == 1 {
        (run(1, &mut || 1), "a byte at a time")
    } else {
        (run(1, &mut chunk_sizes(seed)), "in random chunks")
    };
    // Replies depend on the clock only through expiry times, `stats` and delayed flushes:
    // compare when the input has neither of the latter and both runs fell within one second.
    let timed = [&b"stats"[..], b"flush_all"].iter().any(|w| input.windows(w.len()).any(|x| x == *w));
    if !timed && unix_now() == started {
        assert!(
            split == whole,
            "fed {how} (seed {seed}), the session answers differently:\n{:?}\nall at once:\n{:?}",
            String::from_utf8_lossy(&split.0),
            String::from_utf8_lossy(&whole.0)
        );
    }
}
