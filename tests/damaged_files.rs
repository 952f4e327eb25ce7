//! Torn and damaged database files, interrupted compactions and a second server on the same
//! file, all against the real `kvserver` binary.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::{assert_no_panic, decode_get, set_request, Conn, Rng};
use common::{temp_db, transcript, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn get(server: &Server, key: &str) -> Option<Vec<u8>> {
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    decode_get(&conn.call(format!("get {key}").as_bytes()).unwrap())
}

/// Writes `records` through a server, stops it cleanly and returns the file's bytes.
fn database_written_by_server(db: &Path, requests: &[Vec<u8>]) -> Vec<u8> {
    let server = Server::start(db, &[]);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    for request in requests {
        let reply = conn.call(request).unwrap();
        assert!(reply == b"STORED" || reply == b"DELETED", "{}", String::from_utf8_lossy(&reply));
    }
    let exited = server.signal_and_wait(libc::SIGTERM);
    assert!(exited.status.success(), "{}", exited.log);
    fs::read(db).unwrap()
}

#[test]
fn truncating_inside_the_last_record_at_every_offset_loses_only_that_record() {
    let (_dir, db) = temp_db();
    let mut requests: Vec<Vec<u8>> = (0..10).map(|i| set_request(&format!("k{i}"), b"v")).collect();
    requests.push(b"del k3".to_vec());
    // The last record overwrites k0 and needs escapes, so a cut can fall inside one.
    requests.push(set_request("k0", b"new\tvalue \\ with\nescapes"));
    let full = database_written_by_server(&db, &requests);
    let last_start = full[..full.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert!(full[last_start..].starts_with(b"set k0 "), "{}", String::from_utf8_lossy(&full));

    // Every length from "the last record's first byte" to "all but its newline".
    for len in last_start + 1..full.len() {
        fs::write(&db, &full[..len]).unwrap();
        let server = Server::start(&db, &[]);
        assert!(
            server.wait_for_log("torn final line", Duration::from_secs(5)),
            "cut at {len}: no warning about the torn line:\n{}",
            server.log()
        );
        let reply = transcript(server.addr, b"get k0\nget k1\nget k3\nget k9\n");
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "VALUE v\nVALUE v\nNOT_FOUND\nVALUE v\n",
            "cut at {len} of {}",
            full.len()
        );
        server.kill();
        assert_eq!(fs::read(&db).unwrap(), &full[..last_start], "the torn bytes are cut off the file");
    }
    // Cut exactly at the record boundary: a clean file, no warning.
    fs::write(&db, &full[..last_start]).unwrap();
    let server = Server::start(&db, &[]);
    assert!(!server.log().contains("torn"), "{}", server.log());
    assert_eq!(get(&server, "k0").unwrap(), b"v");
}

#[test]
fn a_damaged_middle_line_refuses_to_start_and_repair_keeps_a_backup() {
    let (dir, db) = temp_db();
    let mut text = String::from("# hand-edited\n");
    for i in 1..=9 {
        text.push_str(&format!("set k{i} value {i}\n"));
    }
    // Line 6 of the file (k5) is damaged: a bad escape.
    let damaged = text.replace("set k5 value 5\n", "set k5 value \\q5\n");
    fs::write(&db, &damaged).unwrap();

    let exited = match Server::try_start(&db, &[]) {
        Ok(_) => panic!("a damaged database was opened"),
        Err(exited) => exited,
    };
    assert!(!exited.status.success());
    assert!(exited.log.contains("database.txt:6: bad escape: \\q"), "{}", exited.log);
    assert_eq!(fs::read_to_string(&db).unwrap(), damaged, "a refused file is left untouched");

    let server = Server::start(&db, &["--repair"]);
    assert!(server.log().contains("repaired"), "{}", server.log());
    for i in 1..=4 {
        assert_eq!(get(&server, &format!("k{i}")).unwrap(), format!("value {i}").as_bytes());
    }
    for i in 5..=9 {
        assert_eq!(get(&server, &format!("k{i}")), None, "k{i} is after the damage");
    }
    let backups: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let name = backups[0].file_name().unwrap().to_string_lossy().into_owned();
    let stamp = name.strip_prefix("database.txt.corrupt-").and_then(|s| s.strip_suffix(".bak"));
    assert!(
        stamp.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-')),
        "{name}"
    );
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), damaged, "the backup is the original file");
    assert_eq!(get(&server, "k1").unwrap(), b"value 1");
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(b"set after repair").unwrap(), b"STORED");
    server.kill();
    // The repaired file loads without --repair.
    let server = Server::start(&db, &[]);
    assert_eq!(get(&server, "after").unwrap(), b"repair");
}

#[test]
fn a_second_server_on_the_same_database_is_refused() {
    let (_dir, db) = temp_db();
    let first = Server::start(&db, &[]);
    let mut conn = Conn::connect(first.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(b"set owner first").unwrap(), b"STORED");
    match Server::try_start(&db, &[]) {
        Ok(_) => panic!("two servers opened the same database"),
        Err(exited) => {
            assert!(!exited.status.success());
            assert!(exited.log.contains("in use by another kvserver"), "{}", exited.log);
        }
    }
    assert_eq!(conn.call(b"get owner").unwrap(), b"VALUE first", "the first server is unaffected");
    drop(conn);
    first.kill();
    // The lock is an OS lock on the database file itself, released when its holder dies: any
    // process holding it (here this test) keeps a server off, and none outlives a SIGKILL.
    let lock = fs::File::open(&db).unwrap();
    lock.try_lock().expect("the killed server's lock is gone");
    match Server::try_start(&db, &[]) {
        Ok(_) => panic!("a server opened a database whose lock is held"),
        Err(exited) => assert!(exited.log.contains("in use by another kvserver"), "{}", exited.log),
    }
    drop(lock);
    let server = Server::start(&db, &[]);
    assert_eq!(transcript(server.addr, b"get owner\n"), b"VALUE first\n");
}

#[test]
fn a_stale_compaction_file_is_ignored_and_removed() {
    let (dir, db) = temp_db();
    fs::write(&db, "set a 1\nset b 2\n").unwrap();
    let temp = dir.path().join("database.txt.compact");
    // What a compaction killed half-way leaves: a partial live set, even a torn line.
    fs::write(&temp, "# textkv database, compacted\nset a 1\nset b 9\nset c").unwrap();
    let server = Server::start(&db, &[]);
    assert!(server.log().contains("left by an interrupted compaction"), "{}", server.log());
    assert!(!temp.exists());
    assert_eq!(transcript(server.addr, b"get a\nget b\nget c\n"), b"VALUE 1\nVALUE 2\nNOT_FOUND\n");
}

/// A compaction of a database of many records, killed with SIGKILL at random points while
/// clients keep writing: every restart loads, and every acknowledged write is there.
#[test]
fn compaction_killed_at_random_points_keeps_every_acknowledged_write() {
    let (dir, db) = temp_db();
    let mut rng = Rng::from_env("TEXTKV_COMPACT_SEED");
    // 40,000 keys, each written three times: ~120,000 records, two thirds garbage.
    let keys = 40_000;
    let mut text = String::with_capacity(8 << 20);
    for round in 0..3 {
        for k in 0..keys {
            text.push_str(&format!("set key{k} round {round} of key {k} {}\n", "x".repeat(k % 40)));
        }
    }
    fs::write(&db, &text).unwrap();
    let expected_base = |k: usize| format!("round 2 of key {k} {}", "x".repeat(k % 40)).into_bytes();

    // How long one compaction takes here, to spread the kills over it.
    let server = Server::start(&db, &[]);
    let started = Instant::now();
    assert_eq!(transcript(server.addr, b"compact\n"), b"OK\n");
    let compaction_ms = started.elapsed().as_millis() as u64;
    server.kill();
    // Back to the uncompacted file for every round.
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut interrupted = 0;
    let rounds = 8;
    for round in 0..rounds {
        fs::write(&db, &text).unwrap();
        for (key, value) in &acked {
            let mut line = set_request(key, value);
            line.push(b'\n');
            fs::OpenOptions::new().append(true).open(&db).unwrap().write_all(&line).unwrap();
        }
        let server = Server::start(&db, &[]);
        let addr = server.addr;
        let kill_after = Duration::from_millis(rng.range(0, compaction_ms * 3 / 2 + 20));
        let writer = std::thread::spawn(move || {
            let mut done = Vec::new();
            let Ok(mut conn) = Conn::connect(addr, IO_TIMEOUT) else { return done };
            for i in 0..100_000u32 {
                let key = format!("during{round}:{i}");
                let value = format!("written during compaction round {round}, #{i}").into_bytes();
                match conn.call(&set_request(&key, &value)) {
                    Ok(reply) if reply == b"STORED" => done.push((key, value)),
                    Ok(reply) => panic!("{}", String::from_utf8_lossy(&reply)),
                    Err(_) => break,
                }
            }
            done
        });
        let mut compact = Conn::connect(addr, IO_TIMEOUT).unwrap();
        compact.stream().write_all(b"compact\n").unwrap();
        std::thread::sleep(kill_after);
        let temp_existed = dir.path().join("database.txt.compact").exists();
        let log = server.log();
        server.kill();
        assert_no_panic(&log);
        acked.extend(writer.join().unwrap());
        let server = match Server::try_start(&db, &[]) {
            Ok(server) => server,
            Err(exited) => panic!("round {round}: the database did not load:\n{}", exited.log),
        };
        if temp_existed || server.log().contains("interrupted compaction") {
            interrupted += 1;
        }
        assert!(!dir.path().join("database.txt.compact").exists());
        // Every base key and every acknowledged write, in one pipelined request.
        let mut request = Vec::new();
        for k in 0..keys {
            request.extend_from_slice(format!("get key{k}\n").as_bytes());
        }
        for (key, _) in &acked {
            request.extend_from_slice(format!("get {key}\n").as_bytes());
        }
        let reply = transcript(server.addr, &request);
        let mut lines = reply.split(|&b| b == b'\n');
        for k in 0..keys {
            let found = decode_get(lines.next().unwrap());
            assert_eq!(found, Some(expected_base(k)), "round {round}: key{k}");
        }
        for (key, value) in &acked {
            let found = decode_get(lines.next().unwrap());
            assert_eq!(found.as_ref(), Some(value), "round {round}: acknowledged {key} lost");
        }
        // Keep what this round's server holds: the next round starts from the base file plus
        // the acknowledged writes, so each kill meets a fresh, full-size compaction.
        server.kill();
    }
    eprintln!(
        "compaction kills: {rounds} rounds, one compaction takes ~{compaction_ms} ms, \
         {interrupted} kills inside a compaction, {} acknowledged writes verified",
        acked.len()
    );
}
