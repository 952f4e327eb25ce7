//! The line-protocol commands of issue 14 (LINE-SPEC-14.md) against the real server: each
//! command byte for byte, what it leaves in `database.txt` and after a restart, atomicity of
//! `copy`/`rename`/`delprefix` across kill -9 and torn writes, and `scan` over a million keys.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::faults::{assert_no_panic, proc_status_kib, Conn};
use common::{temp_db, transcript, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

/// Stops the server cleanly and starts it again on the same file.
fn restart(server: Server) -> Server {
    let db = server.db.clone();
    let exited = server.signal_and_wait(libc::SIGTERM);
    assert!(exited.status.success(), "{}", exited.log);
    Server::start(&db, &[])
}

#[test]
fn copy_and_rename_with_and_without_nx() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let reply = text(transcript(
        server.addr,
        b"setmeta a 7 4000000000 alpha\nset b beta\n\
          copy a c\nget c\nstat c\ncopy a b NX\nget b\ncopy missing x\ncopy a b\nget b\n\
          rename c d\nget c\nget d\nrename d b nx\nrename d e NX\nrename e e\nget e\nrename e e NX\n\
          rename nope x\ncopy a\nrename a b c\ncopy a b XX\n",
    ));
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(&lines[..5], ["STORED", "STORED", "OK", "VALUE alpha", lines[4]]);
    assert!(lines[4].starts_with("ITEM c size=5 flags=7 expires_at=4000000000 cas="), "{}", lines[4]);
    assert_eq!(
        &lines[5..],
        [
            "EXISTS",
            "VALUE beta",
            "NOT_FOUND",
            "OK",
            "VALUE alpha",
            "OK",
            "NOT_FOUND",
            "VALUE alpha",
            "EXISTS",
            "OK",
            "OK",
            "VALUE alpha",
            "EXISTS",
            "NOT_FOUND",
            "ERROR wrong number of arguments, usage: copy <src> <dst> [NX]",
            "ERROR wrong number of arguments, usage: rename <src> <dst> [NX]",
            "ERROR wrong number of arguments, usage: copy <src> <dst> [NX]",
        ]
    );
    // One record each, written as the command that did it.
    let file = fs::read_to_string(&db).unwrap();
    for line in ["copy a c\n", "copy a b\n", "rename c d\n", "rename d e\n"] {
        assert!(file.contains(line), "{line:?} in:\n{file}");
    }
    assert!(!file.contains("rename e e"), "a rename onto itself changes nothing and writes nothing");
    let server = restart(server);
    let reply = text(transcript(server.addr, b"get a\nget b\nget c\nget d\nget e\nstat e\n"));
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(&lines[..5], ["VALUE alpha", "VALUE alpha", "NOT_FOUND", "NOT_FOUND", "VALUE alpha"]);
    assert!(lines[5].starts_with("ITEM e size=5 flags=7 expires_at=4000000000 "), "{}", lines[5]);
}

#[test]
fn stat_exists_mget_and_ttl() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let reply = text(transcript(
        server.addr,
        b"set a one\nsetmeta b 3 4000000000 two\\nlines\n\
          stat a\nstat b\nstat zz\nexists a b zz a\nexists zz\nmget a zz b\nmget zz\n\
          ttl a\nttl zz\nttl b\nexists\nmget\nstat a b\n",
    ));
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let lines: Vec<&str> = reply.lines().collect();
    let stat = |line: &str, key: &str| -> Vec<(String, u64)> {
        let fields = line.strip_prefix(&format!("ITEM {key} ")).unwrap_or_else(|| panic!("{line}"));
        fields
            .split(' ')
            .map(|f| {
                let (name, value) = f.split_once('=').unwrap();
                (name.to_string(), value.parse().unwrap())
            })
            .collect()
    };
    let a = stat(lines[2], "a");
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["size", "flags", "expires_at", "cas", "mtime"]);
    assert_eq!((a[0].1, a[1].1, a[2].1), (3, 0, 0));
    assert!((before..=after).contains(&a[4].1), "mtime {} is the time of the write", a[4].1);
    assert_eq!(a[4].1, a[3].1 / 1_000_000, "mtime is the CAS clock in seconds");
    let b = stat(lines[3], "b");
    assert_eq!((b[0].1, b[1].1, b[2].1), (9, 3, 4_000_000_000));
    assert_eq!(
        &lines[4..],
        [
            "NOT_FOUND",
            "INT 3",
            "INT 0",
            "VALUE one",
            "NOT_FOUND",
            "VALUE two\\nlines",
            "END",
            "NOT_FOUND",
            "END",
            "INT -1",
            "INT -2",
            lines[15],
            "ERROR wrong number of arguments, usage: exists <key> [<key>...]",
            "ERROR wrong number of arguments, usage: mget <key> [<key>...]",
            "ERROR wrong number of arguments, usage: stat <key>",
        ]
    );
    let ttl: i64 = lines[15].strip_prefix("INT ").unwrap().parse().unwrap();
    assert!((4_000_000_000 - after as i64..=4_000_000_000 - before as i64).contains(&ttl), "{ttl}");
}

/// `mget` naming a 256 KiB value 64 times (16 MiB of replies) is answered a part at a time:
/// complete and in order, and a request pipelined behind it is answered after its `END`.
#[test]
fn a_large_mget_is_answered_in_full_a_part_at_a_time() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let value = "v".repeat(256 << 10);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(format!("set big {value}").as_bytes()).unwrap(), b"STORED");
    let before = proc_status_kib(server.pid(), "VmRSS");
    let request = format!("mget {}nope\nping", "big ".repeat(64));
    let lines = conn.call_until_end(request.as_bytes()).unwrap();
    assert_eq!(lines.len(), 66);
    assert!(lines[..64].iter().all(|line| line.len() == 6 + value.len() && line.starts_with(b"VALUE v")));
    assert_eq!(lines[64], b"NOT_FOUND");
    assert_eq!(conn.read_line().unwrap(), b"PONG");
    let peak = proc_status_kib(server.pid(), "VmHWM");
    assert!(peak < before + 8 * 1024, "peak RSS {peak} KiB for 16 MiB of replies (was {before} KiB)");
}

#[test]
fn expire_sets_and_removes_an_expiry() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let reply = text(transcript(
        server.addr,
        b"set k v\nexpire k 100\nttl k\nexpire k 0\nttl k\nexpire nope 5\nexpire k x\nexpire k\n\
          expire k 1\nget k\n",
    ));
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines[..2], ["STORED", "OK"]);
    let ttl: u64 = lines[2].strip_prefix("INT ").unwrap().parse().unwrap();
    assert!((98..=100).contains(&ttl), "{ttl}");
    assert_eq!(
        &lines[3..],
        [
            "OK",
            "INT -1",
            "NOT_FOUND",
            "ERROR bad number for seconds",
            "ERROR wrong number of arguments, usage: expire <key> <seconds>",
            "OK",
            "VALUE v",
        ]
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(text(transcript(server.addr, b"get k\nttl k\n")), "NOT_FOUND\nINT -2\n");
    let server = restart(server);
    assert_eq!(text(transcript(server.addr, b"get k\n")), "NOT_FOUND\n", "the expiry is in the file");
}

#[test]
fn incr_and_decr_follow_memcached_rules() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let reply = text(transcript(
        server.addr,
        b"set n 10\nincr n\nincr n 5\ndecr n 3\ndecr n 100\nset max 18446744073709551615\nincr max\n\
          incr nope\nset s abc\nincr s\ndecr n x\nincr n -1\nincr\nset n 007\nincr n\n",
    ));
    assert_eq!(
        reply,
        "STORED\nINT 11\nINT 16\nINT 13\nINT 0\nSTORED\nINT 0\nNOT_FOUND\nSTORED\n\
         ERROR value is not a decimal number\nERROR bad number for delta\nERROR bad number for delta\n\
         ERROR wrong number of arguments, usage: incr <key> [<delta>]\nSTORED\nINT 8\n"
    );
    let server = restart(server);
    assert_eq!(text(transcript(server.addr, b"get n\nget max\n")), "VALUE 8\nVALUE 0\n");
}

#[test]
fn append_creates_or_extends_and_keeps_the_limit() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-value-bytes", "10"]);
    let reply = text(transcript(
        server.addr,
        b"append k ab\nappend k \\x00c d\nget k\nsetmeta m 9 4000000000 x\nappend m y\nstat m\n\
          append k 123456\nappend k 12345678901\nget k\nappend k\n",
    ));
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines[..5], ["STORED", "STORED", "VALUE ab\\x00c d", "STORED", "STORED"]);
    assert!(
        lines[5].starts_with("ITEM m size=2 flags=9 expires_at=4000000000 "),
        "append keeps flags and expiry"
    );
    assert_eq!(
        &lines[6..],
        [
            "ERROR value too large (max 10 bytes)",
            "ERROR value too large (max 10 bytes)",
            "VALUE ab\\x00c d",
            "ERROR wrong number of arguments, usage: append <key> <value>",
        ]
    );
}

#[test]
fn delprefix_deletes_a_whole_prefix_in_one_record() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut setup = String::new();
    for i in 0..100 {
        setup.push_str(&format!("set dir/sub/f{i} x\n"));
    }
    setup.push_str("set dir/top y\nset dirt z\nsetmeta dir/gone 0 1 old\n");
    transcript(server.addr, setup.as_bytes());
    let records_before = fs::read_to_string(&db).unwrap().lines().count();
    let reply = text(transcript(
        server.addr,
        b"delprefix dir/sub/\ndelprefix dir/sub/\ndelprefix dir/\nexists dir/top dirt\ndelprefix\ndelprefix \n\
          delprefix a b\n",
    ));
    assert_eq!(
        reply,
        "INT 100\nINT 0\nINT 1\nINT 1\nERROR wrong number of arguments, usage: delprefix <prefix>\n\
         ERROR empty key\nERROR wrong number of arguments, usage: delprefix <prefix>\n"
    );
    let file = fs::read_to_string(&db).unwrap();
    let added: Vec<&str> = file.lines().skip(records_before).collect();
    assert_eq!(added, ["delprefix dir/sub/", "delprefix dir/"], "one record each; none when nothing matched");
    let server = restart(server);
    assert_eq!(text(transcript(server.addr, b"keys\n")), "KEY dirt\nEND\n");
}

#[test]
fn keys_and_scan_take_glob_patterns() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    transcript(
        server.addr,
        b"set user:1:name a\nset user:2:name b\nset user:10:mail c\nset u*x d\nset other e\n",
    );
    let sorted = |request: &[u8]| {
        let reply = text(transcript(server.addr, request));
        let (listed, end) = reply.rsplit_once("END\n").unwrap();
        assert_eq!(end, "");
        let mut keys: Vec<String> =
            listed.lines().map(|l| l.strip_prefix("KEY ").unwrap().to_string()).collect();
        keys.sort();
        keys
    };
    assert_eq!(sorted(b"keys user:*:name\n"), ["user:1:name", "user:2:name"]);
    assert_eq!(sorted(b"keys user:?:*\n"), ["user:1:name", "user:2:name"]);
    assert_eq!(sorted(b"keys user:[1-5]0:*\n"), ["user:10:mail"]);
    assert_eq!(sorted(b"keys u\\*x\n"), ["u*x"]);
    assert_eq!(sorted(b"keys user:1\n"), ["user:10:mail", "user:1:name"], "no metacharacter: a prefix");
    assert_eq!(sorted(b"keys *\n").len(), 5);
    assert_eq!(sorted(b"keys [^u]*\n"), ["other"]);
    // One scan call takes every key here (count 100 by default); match filters.
    let reply = text(transcript(server.addr, b"scan 0 match *name count 5\n"));
    assert!(reply.starts_with("CURSOR "), "{reply}");
    let mut lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.pop(), Some("END"));
    let keys: HashSet<&str> = lines[1..].iter().map(|l| l.strip_prefix("KEY ").unwrap()).collect();
    assert_eq!(keys, HashSet::from(["user:1:name", "user:2:name"]));
    assert_eq!(lines[0], "CURSOR 0", "done in one call");
    let count_one = text(transcript(server.addr, b"scan 0 count 0\n"));
    assert_eq!(
        count_one.lines().filter(|l| l.starts_with("KEY ")).count(),
        1,
        "count 0 is taken as 1: {count_one}"
    );
    let usage = "ERROR wrong number of arguments, usage: scan <cursor> [match <pattern>] [count <n>]\n";
    assert_eq!(
        text(transcript(server.addr, b"scan x\nscan 0 match\nscan 0 frob 1\nscan 999\nscan\nscan 0 count x\n")),
        format!(
            "ERROR bad cursor (start a scan with 0)\n{usage}{usage}ERROR bad cursor (start a scan with 0)\n{usage}\
             ERROR bad number for count\n"
        )
    );
}

#[test]
fn stats_report_the_value_limit_and_free_disk_space() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-value-bytes", "12345"]);
    let stats = text(transcript(server.addr, b"stats\n"));
    assert!(stats.contains("STAT max_value_bytes 12345\n"), "{stats}");
    let free: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("STAT disk_free_bytes "))
        .unwrap_or_else(|| panic!("{stats}"))
        .parse()
        .unwrap();
    assert!(free > 0);
}

/// Keys with bytes that are not UTF-8 (memcached allows them) or a backslash are written
/// escaped, so the file stays text; they read back as the same bytes, and an old file with
/// such a key raw still loads.
#[test]
fn keys_with_any_bytes_are_escaped_in_the_file_and_old_raw_keys_still_load() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let reply = transcript(
        server.addr,
        b"set k\xff\xfe v1\nset back\\slash v2\ncopy k\xff\xfe c\xc3\xa9\xff\nget k\xff\xfe\n",
    );
    assert_eq!(reply, b"STORED\nSTORED\nOK\nVALUE v1\n");
    let file = fs::read(&db).unwrap();
    let file = String::from_utf8(file).expect("database.txt is UTF-8 text");
    assert!(file.contains("set k\\xff\\xfe v1\n"), "{file}");
    assert!(file.contains("set back\\\\slash v2\n"), "{file}");
    assert!(file.contains("copy k\\xff\\xfe c\u{e9}\\xff\n"), "valid UTF-8 stays readable: {file}");
    let server = restart(server);
    let reply = transcript(server.addr, b"get k\xff\xfe\nget back\\slash\nget c\xc3\xa9\xff\n");
    assert_eq!(reply, b"VALUE v1\nVALUE v2\nVALUE v1\n");
    drop(server);

    // A file from before keys were escaped: raw bytes, and a backslash that is no escape.
    fs::write(&db, b"set old\xff raw\nset C:\\temp\\x win\nset a\\q b\n").unwrap();
    let server = Server::start(&db, &[]);
    assert_eq!(
        transcript(server.addr, b"get old\xff\nget C:\\temp\\x\nget a\\q\n"),
        b"VALUE raw\nVALUE win\nVALUE b\n"
    );
}

/// Every prefix of a file ending in a `rename`, `copy` or `delprefix` line (as a crash can
/// leave it: the last line torn) loads to the state before that record or after it, never a
/// mix: each is one line, and a torn final line is cut off.
#[test]
fn a_torn_rename_copy_or_delprefix_is_all_or_nothing() {
    let (dir, _) = temp_db();
    let base = "set a 1\nset b 2\nset p/1 x\nset p/2 y\n";
    for (record, after) in [
        ("rename a b\n", "NOT_FOUND|VALUE 1|VALUE x|VALUE y"),
        ("copy a c\n", "VALUE 1|VALUE 2|VALUE x|VALUE y|VALUE 1"),
        ("delprefix p/\n", "VALUE 1|VALUE 2|NOT_FOUND|NOT_FOUND"),
        ("rename a b 5 4000000000 moved\n", "NOT_FOUND|VALUE moved|VALUE x|VALUE y"),
    ] {
        let before = "VALUE 1|VALUE 2|VALUE x|VALUE y";
        for cut in 0..=record.len() {
            let db = dir.path().join(format!("cut-{}-{cut}.txt", record.len()));
            fs::write(&db, format!("{base}{}", &record[..cut])).unwrap();
            let server = Server::start(&db, &[]);
            let mut request = "get a\nget b\nget p/1\nget p/2\n".to_string();
            if record.starts_with("copy") {
                request.push_str("get c\n");
            }
            let state = text(transcript(server.addr, request.as_bytes())).trim_end().replace('\n', "|");
            let expected = if cut == record.len() { after } else { before };
            let expected = if record.starts_with("copy") && cut < record.len() {
                format!("{before}|NOT_FOUND")
            } else {
                expected.into()
            };
            assert_eq!(state, expected, "{record:?} cut at {cut}");
        }
    }
}

/// kill -9 at random moments while clients rename a token around a ring of keys, copy it
/// and delete whole prefixes: after every restart the token is in exactly one place of the
/// ring (a rename is never half done), its copy is whole, and each prefix holds all or none
/// of its keys. Writes are acknowledged only once in the file, so nothing acknowledged is lost.
#[test]
fn rename_copy_and_delprefix_survive_kill_9_all_or_nothing() {
    const RING: usize = 8;
    const GROUP: usize = 20;
    let (_dir, db) = temp_db();
    let mut server = Server::start(&db, &["--fsync", "never"]);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(b"set ring:0 token").unwrap(), b"STORED");
    let mut position = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for cycle in 0..6 {
        // Work until killed: the kill lands at a random moment in this stream.
        let addr = server.addr;
        let worker = std::thread::spawn(move || {
            let mut conn = Conn::connect(addr, IO_TIMEOUT).unwrap();
            let mut acked = position;
            let mut group = 0u64;
            loop {
                let next = (acked + 1) % RING;
                match conn.call(format!("rename ring:{acked} ring:{next} NX").as_bytes()) {
                    Ok(reply) if reply == b"OK" => acked = next,
                    Ok(reply) => panic!("rename answered {}", String::from_utf8_lossy(&reply)),
                    Err(_) => return acked,
                }
                let fill: String = (0..GROUP).map(|i| format!("set grp{group}/{i} v\n")).collect();
                if conn.stream().write_all(fill.as_bytes()).is_err() {
                    return acked;
                }
                for _ in 0..GROUP {
                    if conn.read_line().is_err() {
                        return acked;
                    }
                }
                let copied = conn.call(format!("copy ring:{acked} copy").as_bytes());
                let deleted = conn.call(format!("delprefix grp{group}/").as_bytes());
                if copied.is_err() || deleted.is_err() {
                    return acked;
                }
                assert_eq!(deleted.unwrap(), format!("INT {GROUP}").into_bytes());
                group += 1;
            }
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 400));
        let log = server.log();
        server.kill();
        let acked = worker.join().unwrap();
        assert_no_panic(&log);
        server = Server::start(&db, &["--fsync", "never"]);
        let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
        let holders: Vec<usize> = (0..RING)
            .filter(|i| conn.call(format!("exists ring:{i}").as_bytes()).unwrap() == b"INT 1")
            .collect();
        assert_eq!(holders.len(), 1, "cycle {cycle}: the token is in exactly one place: {holders:?}");
        // The last acknowledged rename is in the file; one more may be, not yet answered.
        assert!(
            holders[0] == acked || holders[0] == (acked + 1) % RING,
            "cycle {cycle}: {holders:?} vs {acked}"
        );
        position = holders[0];
        let copy = conn.call(b"get copy").unwrap();
        assert!(copy == b"VALUE token" || copy == b"NOT_FOUND", "{}", String::from_utf8_lossy(&copy));
        // Every group is all or nothing: a delprefix never half done.
        let keys = conn.call_until_end(b"keys grp").unwrap();
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for line in &keys[..keys.len() - 1] {
            let key = String::from_utf8_lossy(line.strip_prefix(b"KEY ").unwrap()).into_owned();
            *counts.entry(key.split('/').next().unwrap().to_string()).or_default() += 1;
        }
        // Only the group being filled when the kill came may be partial (its sets are
        // separate records); any other group is whole or gone.
        assert!(counts.values().filter(|&&n| n != GROUP).count() <= 1, "cycle {cycle}: {counts:?}");
        // Clear them for the next cycle.
        conn.call(b"delprefix grp").unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_no_panic(&server.log());
}

/// `scan` over 1,000,000 keys with count 10,000, while other keys are added and deleted
/// between the calls (the tables grow and shrink): every key present for the whole scan is
/// returned exactly once, and the server's memory does not grow with the scan.
#[test]
fn scan_returns_each_of_a_million_keys_exactly_once_with_bounded_memory() {
    const KEYS: u64 = 1_000_000;
    let (_dir, db) = temp_db();
    common::write_numbered_keys(&db, KEYS, 11);
    let server = Server::start(&db, &[]);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    let mut churn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    let before = proc_status_kib(server.pid(), "VmRSS");
    let mut seen = vec![false; KEYS as usize];
    let mut cursor = b"0".to_vec();
    let mut calls = 0u64;
    loop {
        let lines = conn.call_until_end(&[b"scan ".as_slice(), &cursor, b" count 10000"].concat()).unwrap();
        cursor = lines[0].strip_prefix(b"CURSOR ").expect("a cursor line first").to_vec();
        for line in &lines[1..lines.len() - 1] {
            let key = line.strip_prefix(b"KEY ").unwrap();
            let key = std::str::from_utf8(key).unwrap();
            if let Some(number) = key.strip_prefix("key:") {
                let i: usize = number.parse().unwrap();
                assert!(!seen[i], "{key} returned twice");
                seen[i] = true;
            }
        }
        calls += 1;
        // Churn between calls: 200 new keys, and the previous call's ones deleted.
        let mut churned: String = (0..200).map(|j| format!("set new{calls}:{j} x\n")).collect();
        churned.extend((0..200).map(|j| format!("del new{}:{j}\n", calls - 1)));
        churn.stream().write_all(churned.as_bytes()).unwrap();
        for _ in 0..400 {
            let reply = churn.read_line().unwrap();
            assert!(reply == b"STORED" || reply == b"DELETED" || reply == b"NOT_FOUND");
        }
        if cursor == b"0" {
            break;
        }
        assert!(calls < 10_000, "the scan ends");
    }
    let missing = seen.iter().filter(|&&s| !s).count();
    assert_eq!(missing, 0, "{missing} keys never returned");
    let peak = proc_status_kib(server.pid(), "VmHWM");
    eprintln!("scan of {KEYS} keys in {calls} calls: RSS {before} KiB before, peak {peak} KiB");
    assert!(peak < before + 32 * 1024, "peak RSS {peak} KiB (was {before} KiB)");
    assert_no_panic(&server.log());
}

/// While a compaction runs, a `rename` is logged in the form that carries its item
/// (`rename <src> <dst> <flags> <expires-at> <value>`) and a `copy` as a `set` of dst:
/// compaction replays those records over a walk of the index that may show later writes,
/// and only self-contained records give the right state then. After the compaction and a
/// restart every key holds what it should.
#[test]
fn renames_during_a_compaction_are_logged_with_their_item_and_survive_it() {
    let (_dir, db) = temp_db();
    common::write_numbered_keys(&db, 300_000, 40);
    let server = Server::start(&db, &[]);
    let compacting = |conn: &mut Conn| {
        let stats = conn.call_until_end(b"stats").unwrap();
        stats.iter().any(|line| line == b"STAT compacting 1")
    };
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(b"setmeta ring:0 5 4000000000 token").unwrap(), b"STORED");
    let addr = server.addr;
    let compactor =
        std::thread::spawn(move || Conn::connect(addr, IO_TIMEOUT).unwrap().call(b"compact").unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !compacting(&mut conn) {
        assert!(Instant::now() < deadline, "the compaction never showed in stats");
    }
    // Renames and copies acknowledged between two sightings of `compacting 1` happened
    // during the compaction.
    let (mut at, mut during) = (0, 0);
    loop {
        let next = (at + 1) % 4;
        assert_eq!(conn.call(format!("rename ring:{at} ring:{next}").as_bytes()).unwrap(), b"OK");
        assert_eq!(conn.call(format!("copy ring:{next} copy:{next}").as_bytes()).unwrap(), b"OK");
        at = next;
        if !compacting(&mut conn) {
            break;
        }
        during += 1;
    }
    assert_eq!(compactor.join().unwrap(), b"OK");
    assert!(during > 0, "no rename landed during the compaction");
    let file = fs::read_to_string(&db).unwrap();
    let moving =
        file.lines().filter(|l| l.starts_with("rename ") && l.ends_with(" 5 4000000000 token")).count();
    assert!(moving >= during, "{moving} item-carrying renames for {during} renames during the compaction");
    assert!(file.contains("setmeta copy:"), "copies during the compaction are sets of dst");
    let server = restart(server);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    for i in 0..4 {
        let expected: &[u8] = if i == at { b"VALUE token" } else { b"NOT_FOUND" };
        assert_eq!(conn.call(format!("get ring:{i}").as_bytes()).unwrap(), expected, "ring:{i}");
    }
    assert!(conn
        .call(format!("stat ring:{at}").as_bytes())
        .unwrap()
        .starts_with(format!("ITEM ring:{at} size=5 flags=5 expires_at=4000000000 ").as_bytes()));
    assert_eq!(conn.call(format!("get copy:{at}").as_bytes()).unwrap(), b"VALUE token");
    let untouched = common::numbered_key(12_345, 40);
    assert_eq!(conn.call(format!("get {untouched}").as_bytes()).unwrap(), b"VALUE v", "the rest is intact");
}
