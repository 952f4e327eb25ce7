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
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

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
            let line = encode(&record);
            let again = parse(&line[..line.len() - 1], MAX_VALUE);
            assert_eq!(again, Ok(Request::Write(record)), "re-encoded write {line:?} parses differently");
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
    let result = recovery::load(path, &index, NOW, repair, || {
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
                Err(_) => return (offset, Err((number, offset))),
            }
        }
        offset += end + 1;
    }
    (offset, Ok(model))
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
