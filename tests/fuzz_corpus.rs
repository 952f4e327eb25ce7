//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same checks the
//! libFuzzer targets run (`fuzz/checks.rs`), so `cargo test` on stable Rust exercises every
//! input the fuzzer found interesting, and pins each input that once crashed a target.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "{} holds only {} inputs", dir.display(), inputs.len());
    inputs
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    for (path, data) in corpus(target) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))) {
            eprintln!("corpus input {} fails", path.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn line_parser_corpus_replays() {
    replay("line_parse", checks::line_parse);
}

#[test]
fn record_parser_corpus_replays() {
    replay("record_parse", checks::record_parse);
}

#[test]
fn recovery_loader_corpus_replays() {
    let dir = tempfile::tempdir().unwrap();
    replay("recovery_load", |data| checks::recovery_load(data, dir.path()));
}

#[test]
fn memcache_parser_corpus_replays() {
    let dir = tempfile::tempdir().unwrap();
    let stores = checks::MemcacheStores::open(dir.path());
    replay("memcache_parse", |data| {
        checks::memcache_parse(data, &stores);
        // The first byte picks the split compared with the all-at-once run (odd: a byte at a
        // time, even: random chunks); replay each input with the other one too.
        if let Some((&seed, input)) = data.split_first() {
            checks::memcache_parse(&[&[seed ^ 1], input].concat(), &stores);
        }
    });
}

// Inputs that crashed a fuzz target, each with the bug it found.

/// line_parse: an unknown command word holding a line break was echoed raw in the error.
#[test]
fn regression_line_parse_unknown_command_with_line_break() {
    checks::line_parse(b"\r\ndepingl k");
}

/// record_parse: same bug through `Record::parse` (a `database.txt` line): control bytes and
/// invalid UTF-8 of the command word went raw into the `path:line: reason` error.
#[test]
fn regression_record_parse_unknown_command_with_control_bytes() {
    checks::record_parse(b"sh\xff\xffl\xffep\r\n");
}

/// memcache_parse: the meta `O<opaque>` token was echoed verbatim, so control bytes in it
/// (here `\r`, 0xff and 0x04) went raw into the reply line.
#[test]
fn regression_memcache_parse_opaque_with_control_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let stores = checks::MemcacheStores::open(dir.path());
    checks::memcache_parse(b"\x13ms m 3 T0 F2\r\nxyz\r\nmg m v k Oab\r\xff\xff\x04\nmn\r\n", &stores);
}

/// memcache_parse: `flush_all <past Unix time>` was carried out later by the background
/// flusher, so a value stored after its `OK` could vanish (the fuzzer saw byte-at-a-time and
/// all-at-once runs disagree when that flush landed during a later run).
#[test]
fn regression_memcache_parse_flush_all_in_the_past_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let stores = checks::MemcacheStores::open(dir.path());
    checks::memcache_parse(
        b"\x00set a 0 0 1\r\nx\r\nflush_all 2592001\r\nset b 0 0 1\r\ny\r\nget a b\r\n",
        &stores,
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    // A run with no flush in it: the earlier flush must not land in the middle of it.
    checks::memcache_parse(b"\x00set c 0 0 1\r\nz\r\nget c\r\nma n N0 J5 v\r\nma n D1\r\n", &stores);
}
