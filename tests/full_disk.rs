//! A full disk, simulated without root: the server runs with RLIMIT_FSIZE, so an append past
//! the limit fails with EFBIG (kvserver handles SIGXFSZ), exactly where a full file system
//! would fail with ENOSPC.

mod common;

use std::fs;
use std::time::Duration;

use common::faults::{assert_no_panic, decode_get, set_request, with_rlimit, Conn, McConn};
use common::{temp_db, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const LIMIT: u64 = 64 * 1024;

fn start_limited(db: &std::path::Path) -> Server {
    start_limited_with(db, &[])
}

fn start_limited_with(db: &std::path::Path, args: &[&str]) -> Server {
    let mut command = Server::command(db, args);
    with_rlimit(&mut command, libc::RLIMIT_FSIZE, LIMIT, LIMIT);
    Server::start_command(command, db).unwrap_or_else(|e| panic!("{}", e.log))
}

/// Every line of the file is a complete record: no half record was left behind.
fn assert_whole_records(db: &std::path::Path) {
    let bytes = fs::read(db).unwrap();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "the file ends inside a record");
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if !line.is_empty() && !line.starts_with(b"#") {
            textkv::store::format::Record::parse(line)
                .unwrap_or_else(|e| panic!("line {}: {e}: {}", i + 1, String::from_utf8_lossy(line)));
        }
    }
}

fn check_values(conn: &mut Conn, acked: &[(String, Vec<u8>)]) {
    for (key, value) in acked {
        let found = decode_get(&conn.call(format!("get {key}").as_bytes()).unwrap());
        assert_eq!(found.as_ref(), Some(value), "{key}");
    }
}

/// Writes distinct keys until the first failure; returns the acknowledged ones.
fn fill(conn: &mut Conn, prefix: &str, acked: &mut Vec<(String, Vec<u8>)>) -> Vec<u8> {
    for i in 0..10_000 {
        let key = format!("{prefix}{i}");
        let value = format!("{key} {}", "v".repeat(300)).into_bytes();
        let reply = conn.call(&set_request(&key, &value)).unwrap();
        if reply != b"STORED" {
            return reply;
        }
        acked.push((key, value));
    }
    panic!("{} bytes of writes never hit the {LIMIT}-byte limit", 10_000 * 300);
}

#[test]
fn writes_past_a_full_disk_fail_cleanly_and_succeed_again_once_space_is_back() {
    let (_dir, db) = temp_db();
    let server = start_limited(&db);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    let mut acked = Vec::new();

    // 1. Fill the "disk": a clear error, no half record, reads unaffected.
    let reply = fill(&mut conn, "a", &mut acked);
    assert_eq!(String::from_utf8_lossy(&reply), "ERROR out of disk space");
    assert!(acked.len() > 100, "only {} writes before the limit", acked.len());
    for _ in 0..5 {
        assert_eq!(conn.call(&set_request("later", &[b'x'; 300])).unwrap(), b"ERROR out of disk space");
    }
    assert_eq!(conn.call(b"get later").unwrap(), b"NOT_FOUND", "a refused write is not visible");
    assert_whole_records(&db);
    assert!(fs::metadata(&db).unwrap().len() <= LIMIT);
    check_values(&mut conn, &acked);
    let stats = conn.call_until_end(b"stats").unwrap();
    assert!(
        stats.iter().any(|l| l.starts_with(b"STAT write_errors ") && l != b"STAT write_errors 0"),
        "write errors are counted"
    );

    // 2. A delete is a record too: it fits in the few bytes left, or fails just as cleanly.
    let reply = conn.call(format!("del {}", acked[0].0).as_bytes()).unwrap();
    if reply == b"DELETED" {
        acked.remove(0);
    } else {
        assert_eq!(reply, b"ERROR out of disk space");
    }
    // The log is read from the server's stderr by another thread: wait for the line.
    assert!(
        server.wait_for_log("write to", Duration::from_secs(10)),
        "the failure is logged:\n{}",
        server.log()
    );
    let log = server.log();
    server.kill();
    assert_no_panic(&log);

    // 3. Restart without the limit (space is back): the file loads cleanly, nothing stored
    //    was damaged, and writes work again.
    let server = Server::start(&db, &[]);
    assert!(!server.log().contains("torn"), "no half record was left:\n{}", server.log());
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    check_values(&mut conn, &acked);
    assert_eq!(conn.call(&set_request("later", b"fits now")).unwrap(), b"STORED");
    assert_eq!(conn.call(b"get later").unwrap(), b"VALUE fits now");
}

#[test]
fn compaction_frees_space_on_a_full_disk_and_writes_resume_without_a_restart() {
    let (_dir, db) = temp_db();
    let server = start_limited(&db);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    // Overwrite the same 10 keys until the file is full: almost all of it is garbage.
    let mut latest: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full = false;
    for i in 0..10_000 {
        let key = format!("k{}", i % 10);
        let value = format!("version {i} {}", "v".repeat(300)).into_bytes();
        let reply = conn.call(&set_request(&key, &value)).unwrap();
        if reply != b"STORED" {
            assert_eq!(String::from_utf8_lossy(&reply), "ERROR out of disk space");
            full = true;
            break;
        }
        latest.retain(|(k, _)| *k != key);
        latest.push((key, value));
    }
    assert!(full, "never hit the limit");
    assert_whole_records(&db);
    check_values(&mut conn, &latest);

    assert_eq!(conn.call(b"compact").unwrap(), b"OK");
    let size = fs::metadata(&db).unwrap().len();
    assert!(size < LIMIT / 4, "compaction left {size} bytes");
    let value = b"written after compaction".to_vec();
    assert_eq!(conn.call(&set_request("k0", &value)).unwrap(), b"STORED");
    latest.retain(|(k, _)| k != "k0");
    latest.push(("k0".into(), value));
    check_values(&mut conn, &latest);
    let log = server.log();
    server.kill();
    assert_no_panic(&log);

    let server = start_limited(&db);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    check_values(&mut conn, &latest);
}

/// The memcached listener on a full disk (tests/memcached.rs has the one-request transcript):
/// every kind of write gets `SERVER_ERROR out of disk space` (and nothing with `noreply`),
/// the connection stays in step, reads keep working, the file stays whole, and after a
/// restart with space back every acknowledged value is there and writes work again.
#[test]
fn memcached_writes_on_a_full_disk_get_server_error_and_reads_keep_working() {
    const FULL: &[u8] = b"SERVER_ERROR out of disk space";
    let (_dir, db) = temp_db();
    let server = start_limited_with(&db, &["--memcached", "127.0.0.1:0"]);
    let mut mc = McConn::connect(server.listener("memcached"), IO_TIMEOUT).unwrap();
    // Values hold CRLF and NUL: the data block is found by its length, and the record escapes it.
    let value_of = |i: usize| format!("value {i}\r\n\0{}", "v".repeat(300)).into_bytes();
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut reply = Vec::new();
    for i in 0..1000 {
        let key = format!("m{i}");
        reply = mc.store("set", &key, i as u32, &value_of(i)).unwrap();
        if reply != b"STORED" {
            break;
        }
        acked.push((key, value_of(i)));
    }
    assert_eq!(String::from_utf8_lossy(&reply), String::from_utf8_lossy(FULL));
    assert!(acked.len() > 100, "only {} writes before the limit", acked.len());

    // Every write command fails the same way, and the stream stays in step.
    let big = vec![b'x'; 300];
    for command in ["set", "add", "replace", "append", "prepend"] {
        let key = if command == "add" { "fresh" } else { acked[1].0.as_str() };
        assert_eq!(mc.store(command, key, 0, &big).unwrap(), FULL, "{command}");
    }
    let unique = mc.cas_of(&acked[1].0).unwrap().expect("stored");
    mc.send(format!("cas {} 0 0 300 {unique}\r\n", acked[1].0).as_bytes()).unwrap();
    mc.send(&big).unwrap();
    assert_eq!(mc.call("").unwrap(), FULL, "cas");
    assert_eq!(
        mc.call(&format!("incr {} 1", acked[1].0)).unwrap(),
        b"CLIENT_ERROR cannot increment or decrement non-numeric value"
    );
    // `noreply` means no reply at all, even for a failure: the next reply is `mn`'s.
    mc.send(b"set quiet 0 0 300 noreply\r\n").unwrap();
    mc.send(&big).unwrap();
    assert_eq!(mc.call("\r\nmn").unwrap(), b"MN");
    assert_eq!(mc.call("touch quiet 10").unwrap(), b"NOT_FOUND");
    let mut request = b"ms metakey 300 T0\r\n".to_vec();
    request.extend_from_slice(&big);
    request.extend_from_slice(b"\r\n");
    mc.send(&request).unwrap();
    assert_eq!(mc.read_line().unwrap(), FULL, "ms");
    let visible = mc.get_many(&["fresh", "quiet", "metakey"]).unwrap();
    assert!(visible.is_empty(), "refused writes are visible: {visible:?}");

    // Reads: every acknowledged value, flags included, 20 keys per multi-get.
    for batch in acked.chunks(20) {
        let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
        let hits = mc.get_many(&keys).unwrap();
        assert_eq!(hits.len(), batch.len());
        for ((key, flags, value), (want_key, want)) in hits.iter().zip(batch) {
            assert_eq!((key, value), (want_key, want));
            assert_eq!(*flags, want_key[1..].parse::<u32>().unwrap());
        }
    }
    assert_whole_records(&db);
    assert!(fs::metadata(&db).unwrap().len() <= LIMIT);

    // A delete or an incr is a small record: it fits in what is left, or fails just as cleanly.
    let reply = mc.call(&format!("delete {}", acked[0].0)).unwrap();
    if reply == b"DELETED" {
        acked.remove(0);
    } else {
        assert_eq!(reply, FULL);
    }
    assert_eq!(mc.call("version").unwrap(), b"VERSION 1.6.18 textkv-0.1.0", "the connection goes on");
    let log = server.log();
    server.kill();
    assert_no_panic(&log);
    assert_whole_records(&db);

    // Space is back: the file loads without a torn line, and writes work again.
    let server = Server::start(&db, &["--memcached", "127.0.0.1:0"]);
    assert!(!server.log().contains("torn"), "no half record was left:\n{}", server.log());
    let mut mc = McConn::connect(server.listener("memcached"), IO_TIMEOUT).unwrap();
    for (key, value) in &acked {
        assert_eq!(mc.get(key).unwrap().as_ref(), Some(value), "{key}");
    }
    assert_eq!(mc.store("set", "fresh", 0, &big).unwrap(), b"STORED");
    assert_eq!(mc.get("fresh").unwrap(), Some(big));
}
