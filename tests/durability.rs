//! What survives: clean restarts, signals, SIGKILL and compaction. Torn and damaged files and
//! a second server on the same file are in damaged_files.rs.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{temp_db, transcript, Server};

#[test]
fn data_survives_a_clean_restart_with_flags_and_expiry() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let request = b"set a 1\nset b two words\nsetmeta c 42 4000000000 meta\nsetmeta gone 0 1 old\ndel a\n";
    transcript(server.addr, request);
    let exited = server.signal_and_wait(libc::SIGTERM);
    assert!(exited.status.success(), "SIGTERM exits 0:\n{}", exited.log);
    assert!(exited.log.contains("stopped cleanly"), "{}", exited.log);

    let server = Server::start(&db, &[]);
    let reply = transcript(server.addr, b"get a\nget b\nget c\nget gone\nkeys\n");
    // `keys` comes in shard order, not sorted: either order of b and c is right.
    let reply = String::from_utf8(reply).unwrap().replace("KEY c\nKEY b\n", "KEY b\nKEY c\n");
    assert_eq!(reply, "NOT_FOUND\nVALUE two words\nVALUE meta\nNOT_FOUND\nKEY b\nKEY c\nEND\n");
    let file = fs::read_to_string(&db).unwrap();
    assert!(file.contains("setmeta c 42 4000000000 meta\n"), "metadata is in the file:\n{file}");
}

/// Ctrl-C (SIGINT) stops the server as SIGTERM does. While the shutdown waits for a
/// connection to finish (here a client that stopped reading its replies), a second SIGINT
/// exits at once with code 1 and loses nothing acknowledged.
#[test]
fn sigint_stops_cleanly_and_a_second_sigint_exits_at_once() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    assert_eq!(transcript(server.addr, b"set a 1\n"), b"STORED\n");
    let exited = server.signal_and_wait(libc::SIGINT);
    assert!(exited.status.success(), "SIGINT exits 0:\n{}", exited.log);
    assert!(exited.log.contains("stopped cleanly"), "{}", exited.log);

    let server = Server::start(&db, &["--idle-timeout", "300"]);
    let big = "x".repeat(1 << 20);
    assert_eq!(transcript(server.addr, format!("set big {big}\n").as_bytes()), b"STORED\n");
    // 64 MiB of replies asked for and none read: the connection's thread blocks writing,
    // and the shutdown waits for it (up to its drain timeout).
    let mut stuck = server.raw();
    stuck.write_all(&b"get big\n".repeat(64)).unwrap();
    thread::sleep(Duration::from_millis(200));
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGINT);
    }
    assert!(server.wait_for_log("shutting down: finishing", Duration::from_secs(10)), "{}", server.log());
    let exited = server.signal_and_wait(libc::SIGINT);
    assert_eq!(exited.status.code(), Some(1), "a second SIGINT exits 1:\n{}", exited.log);
    assert!(exited.log.contains("again, exiting without waiting"), "{}", exited.log);
    assert!(!exited.log.contains("stopped cleanly"), "{}", exited.log);
    drop(stuck);

    let server = Server::start(&db, &[]);
    let reply = transcript(server.addr, b"get a\nget big\n");
    assert_eq!(reply, format!("VALUE 1\nVALUE {big}\n").as_bytes(), "nothing acknowledged is lost");
}

/// A SIGTERM that arrives while a large database is still loading is not lost: the server
/// stops cleanly (exit 0) once loaded, and leaves the file as it was.
#[test]
fn sigterm_during_start_up_stops_the_server_once_loaded() {
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    const RECORDS: usize = 1_000_000;
    let (_dir, db) = temp_db();
    let text: String = (0..RECORDS).map(|i| format!("set key{i} value{i}\n")).collect();
    fs::write(&db, &text).unwrap();
    let mut child = KillOnDrop(Server::command(&db, &[]).spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let mut log = String::new();
    loop {
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("kvserver logs `loading`");
        log.push_str(&line);
        log.push('\n');
        if line.contains("loading ") {
            break;
        }
    }
    let loading_seen = Instant::now();
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let signalled_after = loading_seen.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kvserver did not stop:\n{log}");
        thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    log.extend(lines.try_iter().map(|line| line + "\n"));
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    let load_ms: u128 = log
        .split("loaded in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no load time in the log:\n{log}"));
    assert!(
        load_ms > signalled_after.as_millis() + 50,
        "the signal came {signalled_after:?} after `loading`, the load took {load_ms} ms: not during start-up"
    );
    assert!(fs::read_to_string(&db).unwrap() == text, "the database file changed");
}

#[test]
fn sigkill_during_concurrent_writes_loses_no_acknowledged_write() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "always"]);
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            let mut client = server.client();
            thread::spawn(move || {
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (key, value) = (format!("t{t}:k{}", i % 50), format!("v{i}"));
                    match client.set(key.as_bytes(), value.as_bytes()) {
                        Ok(()) => acked.lock().unwrap().insert(key, value),
                        Err(_) => break, // the server died mid-request: not acknowledged
                    };
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "writers made progress before the kill");

    let server = Server::start(&db, &[]);
    let mut client = server.client();
    for (key, value) in &acked {
        // A later unacknowledged write of the same key may also have reached the disk, so the
        // value must be the acknowledged one or a newer one from the same writer.
        let stored = client.get(key.as_bytes()).unwrap().unwrap_or_else(|| panic!("{key} lost"));
        let stored: u64 = std::str::from_utf8(&stored[1..]).unwrap().parse().unwrap();
        let acked_value: u64 = value[1..].parse().unwrap();
        assert!(stored >= acked_value, "{key}: acknowledged v{acked_value}, found v{stored}");
    }
}

#[test]
fn compaction_under_concurrent_writes_keeps_every_write() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut setup = server.client();
    // Many dead records: each key overwritten several times.
    let mut request = Vec::new();
    for round in 0..5 {
        for i in 0..2000 {
            request.extend_from_slice(format!("set base{i} r{round}\n").as_bytes());
        }
    }
    transcript(server.addr, &request);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let mut client = server.client();
            thread::spawn(move || {
                let mut written = 0;
                while !stop.load(Ordering::Relaxed) && written < 20_000 {
                    client.set(format!("live{t}:{written}").as_bytes(), b"x").unwrap();
                    written += 1;
                }
                written
            })
        })
        .collect();
    for _ in 0..3 {
        assert_eq!(setup.request(b"compact").unwrap(), vec![b"OK".to_vec()]);
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let check = |server: &Server| {
        let mut client = server.client();
        for (t, &count) in counts.iter().enumerate() {
            for i in 0..count {
                assert_eq!(
                    client.get(format!("live{t}:{i}").as_bytes()).unwrap().as_deref(),
                    Some(&b"x"[..])
                );
            }
        }
        for i in (0..2000).step_by(97) {
            assert_eq!(client.get(format!("base{i}").as_bytes()).unwrap().as_deref(), Some(&b"r4"[..]));
        }
    };
    check(&server);
    let stats = setup.request(b"stats").unwrap();
    assert!(stats.contains(&b"STAT compactions 3".to_vec()), "{stats:?}");
    server.kill();
    let server = Server::start(&db, &[]);
    check(&server);
    // The 8,000 overwritten base records are gone: each base key is in the file once (10,000
    // lines without compaction). A write made during a compaction may be in both its snapshot
    // and the copied tail (the walk is not a point-in-time snapshot), so live keys appear
    // once or twice, and each one at least once.
    let text = fs::read_to_string(&db).unwrap();
    let written: usize = counts.iter().sum();
    assert_eq!(text.lines().filter(|l| l.starts_with("set base")).count(), 2000);
    let live: Vec<&str> = text.lines().filter(|l| l.starts_with("set live")).collect();
    let distinct: std::collections::HashSet<&str> = live.iter().copied().collect();
    assert_eq!(distinct.len(), written);
    assert!(live.len() <= 2 * written, "{} live records for {written} writes", live.len());
    assert!(!db.with_extension("txt.compact").exists());
}

#[test]
fn automatic_compaction_starts_past_the_garbage_threshold() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--compact-min-bytes", "10000", "--compact-garbage-ratio", "0.5"]);
    let mut request = Vec::new();
    for i in 0..3000 {
        request.extend_from_slice(format!("set same value{i}\n").as_bytes());
    }
    transcript(server.addr, &request);
    // Compaction runs in the background (possibly more than once, as the tail written during
    // one may itself be mostly garbage); wait until the log holds few records.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let stats = String::from_utf8(transcript(server.addr, b"stats\n")).unwrap();
        let stat = |name: &str| -> u64 {
            let line = stats.lines().find(|l| l.starts_with(&format!("STAT {name} "))).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        if (stat("compactions") >= 1 && stat("compacting") == 0 && stat("db_records") < 100)
            || std::time::Instant::now() > deadline
        {
            break stat("db_records");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(records < 100, "3000 writes of one key compacted to {records} records\n{}", server.log());
    assert!(
        server.wait_for_log("starting automatic compaction", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert_eq!(transcript(server.addr, b"get same\n"), b"VALUE value2999\n");
    drop(server);
    let file = fs::read_to_string(&db).unwrap();
    assert!(file.lines().filter(|l| l.starts_with("set ")).count() < 100, "{file}");
}

fn stat(server: &Server, name: &str) -> u64 {
    let stats = String::from_utf8(transcript(server.addr, b"stats\n")).unwrap();
    let line = stats.lines().find(|l| l.starts_with(&format!("STAT {name} "))).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn compaction_drops_expired_items_from_memory_and_keeps_the_files_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let soon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let mut request = b"set keep forever\n".to_vec();
    for i in 0..100 {
        request.extend_from_slice(format!("setmeta short{i} 0 {soon} v\n").as_bytes());
    }
    transcript(server.addr, &request);
    fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(stat(&server, "keys"), 101);
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(transcript(server.addr, b"get short7\ncompact\n"), b"NOT_FOUND\nOK\n");
    // `OK` comes once the new file is in place, so stats already show it.
    assert_eq!(stat(&server, "compactions"), 1);
    assert_eq!(stat(&server, "keys"), 1, "expired items are dropped from memory");
    assert_eq!(stat(&server, "db_records"), 1);
    assert_eq!(fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(transcript(server.addr, b"get keep\n"), b"VALUE forever\n");
}

#[test]
fn a_shutdown_asked_for_before_the_listeners_exist_still_stops_the_server() {
    // What a SIGTERM during a long start-up does: the shutdown comes before `serve` knows
    // any address to wake. `serve` must notice and return instead of accepting forever.
    use textkv::protocol::{Context, Limits};
    use textkv::server::{Protocol, Server, ServerConfig};
    use textkv::stats::ServerStats;
    use textkv::store::{Store, StoreConfig};
    let (_dir, db) = temp_db();
    let ctx = Context {
        store: Arc::new(Store::open(StoreConfig::new(&db)).unwrap()),
        stats: Arc::new(ServerStats::default()),
        limits: Limits { max_value_bytes: 1 << 20, max_line_bytes: 1 << 22 },
        users: None,
        cluster: None,
    };
    let server = Server::new(Arc::new(ctx), ServerConfig { max_connections: 8, ..ServerConfig::default() });
    server.shutdown_handle().shutdown();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || done_tx.send(server.serve(vec![(listener, Protocol::Line)]).is_ok()));
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(20)), Ok(true), "serve returned");
}
