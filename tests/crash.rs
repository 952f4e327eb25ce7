//! Crash consistency: clients write and delete while the server is killed with SIGKILL at
//! random moments; after every restart on the same file, every acknowledged write must be
//! there, unchanged, and every acknowledged delete must stay deleted.
//!
//! Each client thread owns its own keys, sends one request at a time and records each
//! acknowledgement, so for every key the test knows the acknowledged state and at most one
//! request in flight when the kill came (which may or may not have been applied — both are
//! correct, since it was never acknowledged). A compactor connection runs `compact` now and
//! then, so some kills land inside a compaction.
//!
//! The same harness runs with clients speaking memcached (`set`/`delete` without `noreply`
//! on the `--memcached` listener): `memcached_clients_lose_no_acknowledged_write_with_fsync_always`.
//!
//! Knobs (the defaults keep `cargo test` short; `scripts/crash-test.sh` runs a long version):
//! `TEXTKV_CRASH_CYCLES` (20; `TEXTKV_CRASH_CYCLES_EVERYSEC`, 5, for the
//! `everysec` run), `TEXTKV_CRASH_THREADS` (4), `TEXTKV_CRASH_KEYS` (keys per
//! thread, 64), `TEXTKV_CRASH_MAX_MS` (longest run between kills, 400),
//! `TEXTKV_CRASH_SEED` (replay a run), `TEXTKV_CRASH_CYCLES_MEMCACHED` (5).
//!
//! What this proves and what it does not: SIGKILL ends the process but not the kernel, so
//! data written with write(2) survives in the page cache whether or not it was fsynced.
//! These tests prove that the server never acknowledges a write before it is in the file,
//! never leaves the file in a state that fails to load (torn lines, half-done compactions),
//! and never loses or resurrects data across restarts. They do not prove durability across
//! power loss or a kernel crash, which also depends on fsync reaching stable storage.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{assert_no_panic, decode_get, env_or, set_request, Conn, McConn, Rng};
use common::{temp_db, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the test knows about one key.
#[derive(Clone, Default)]
struct KeyState {
    /// The acknowledged value; `None` = absent (never written, or deleted).
    acked: Option<Vec<u8>>,
    /// The one request sent but not acknowledged when the server died: the state it would
    /// have produced.
    pending: Option<Option<Vec<u8>>>,
}

struct Client {
    id: usize,
    keys: Vec<KeyState>,
    seq: u64,
    rng: Rng,
}

fn key_name(client: usize, key: usize) -> String {
    format!("c{client}:k{key}")
}

/// A value that names its key and write, and holds bytes that need escaping.
fn value_for(client: usize, key: usize, seq: u64, rng: &mut Rng) -> Vec<u8> {
    let mut value = format!("{}#{seq} ", key_name(client, key)).into_bytes();
    value.extend_from_slice(b"a\\b\nc\t\x00 ");
    let filler = rng.range(0, 200) as usize;
    value.extend((0..filler).map(|i| b'a' + ((seq as usize + i) % 26) as u8));
    value
}

/// Which protocol the writing clients speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Line,
    Memcached,
}

fn client_addr(server: &Server, protocol: Protocol) -> SocketAddr {
    match protocol {
        Protocol::Line => server.addr,
        Protocol::Memcached => server.listener("memcached"),
    }
}

/// A client connection in either protocol.
enum AnyConn {
    Line(Conn),
    Memcached(McConn),
}

impl AnyConn {
    /// Connects to the server's listener for `protocol`.
    fn connect(server: &Server, protocol: Protocol) -> std::io::Result<AnyConn> {
        AnyConn::connect_to(client_addr(server, protocol), protocol)
    }

    fn connect_to(addr: SocketAddr, protocol: Protocol) -> std::io::Result<AnyConn> {
        Ok(match protocol {
            Protocol::Line => AnyConn::Line(Conn::connect(addr, IO_TIMEOUT)?),
            Protocol::Memcached => AnyConn::Memcached(McConn::connect(addr, IO_TIMEOUT)?),
        })
    }

    /// Sets or (`value` None) deletes `key`; Ok once acknowledged. An error is a broken
    /// connection (the server was killed); any other reply fails the test.
    fn write(&mut self, key: &str, value: Option<&[u8]>) -> std::io::Result<()> {
        let (reply, expected): (Vec<u8>, &[u8]) = match (self, value) {
            (AnyConn::Line(conn), Some(value)) => (conn.call(&set_request(key, value))?, b"STORED"),
            (AnyConn::Line(conn), None) => (conn.call(format!("del {key}").as_bytes())?, b"DELETED"),
            (AnyConn::Memcached(conn), Some(value)) => (conn.store("set", key, 0, value)?, b"STORED"),
            (AnyConn::Memcached(conn), None) => (conn.call(&format!("delete {key}"))?, b"DELETED"),
        };
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(expected),
            "reply to a {} of {key}",
            if value.is_some() { "set" } else { "delete" }
        );
        Ok(())
    }

    fn get(&mut self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            AnyConn::Line(conn) => Ok(decode_get(&conn.call(format!("get {key}").as_bytes())?)),
            AnyConn::Memcached(conn) => conn.get(key),
        }
    }
}

#[derive(Default)]
struct Totals {
    acked_writes: AtomicU64,
    acked_deletes: AtomicU64,
}

impl Client {
    /// Writes and deletes until the connection breaks (the server was killed) or `stop`.
    fn run(&mut self, addr: SocketAddr, protocol: Protocol, stop: &AtomicBool, totals: &Totals) {
        let Ok(mut conn) = AnyConn::connect_to(addr, protocol) else { return };
        // Bounded even if the kill never came.
        for _ in 0..1_000_000 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let k = self.rng.range(0, self.keys.len() as u64) as usize;
            let name = key_name(self.id, k);
            let delete = self.keys[k].acked.is_some() && self.rng.chance(30);
            let next = if delete {
                None
            } else {
                self.seq += 1;
                Some(value_for(self.id, k, self.seq, &mut self.rng))
            };
            self.keys[k].pending = Some(next.clone());
            if conn.write(&name, next.as_deref()).is_err() {
                return;
            }
            let state = &mut self.keys[k];
            state.acked = next;
            state.pending = None;
            let counter = if delete { &totals.acked_deletes } else { &totals.acked_writes };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks every key against the restarted server; resolves the in-flight request.
    fn verify(&mut self, conn: &mut AnyConn, cycle: u64, stats: &mut Stats) {
        for k in 0..self.keys.len() {
            let name = key_name(self.id, k);
            let found = conn.get(&name).expect("get after restart");
            let state = &mut self.keys[k];
            if found == state.acked {
                if state.pending.is_some() {
                    stats.in_flight_not_applied += 1;
                }
            } else if state.pending.as_ref() == Some(&found) {
                stats.in_flight_applied += 1;
                state.acked = found;
            } else {
                panic!(
                    "cycle {cycle}: {name} is {:?}, but the last acknowledged state is {:?} (in flight: {:?})",
                    found.as_deref().map(String::from_utf8_lossy),
                    state.acked.as_deref().map(String::from_utf8_lossy),
                    state.pending.as_ref().map(|p| p.as_deref().map(String::from_utf8_lossy)),
                );
            }
            state.pending = None;
            stats.keys_verified += 1;
        }
    }

    fn present_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.keys.iter().enumerate().filter(|(_, s)| s.acked.is_some()).map(|(k, _)| key_name(self.id, k))
    }
}

#[derive(Default, Debug)]
struct Stats {
    cycles: u64,
    keys_verified: u64,
    in_flight_applied: u64,
    in_flight_not_applied: u64,
    torn_lines_cut: u64,
    compactions_interrupted: u64,
}

fn crash_cycles(fsync: &str, protocol: Protocol, cycles: u64) -> Stats {
    let threads = env_or("TEXTKV_CRASH_THREADS", 4) as usize;
    let keys = env_or("TEXTKV_CRASH_KEYS", 64) as usize;
    let max_ms = env_or("TEXTKV_CRASH_MAX_MS", 400);
    let mut rng = Rng::from_env("TEXTKV_CRASH_SEED");
    let (_dir, db) = temp_db();
    let mut args = vec!["--fsync", fsync];
    if protocol == Protocol::Memcached {
        args.extend(["--memcached", "127.0.0.1:0"]);
    }
    let totals = Arc::new(Totals::default());
    let mut clients: Vec<Client> = (0..threads)
        .map(|id| Client { id, keys: vec![KeyState::default(); keys], seq: 0, rng: Rng::new(rng.next_u64()) })
        .collect();
    let mut stats = Stats::default();
    let started = Instant::now();

    let mut server = Some(Server::start(&db, &args));
    for cycle in 1..=cycles {
        let stop = AtomicBool::new(false);
        let compact_every = Duration::from_millis(rng.range(20, 200));
        let run_for = Duration::from_millis(rng.range(10, max_ms));
        let addr = server.as_ref().unwrap().addr;
        std::thread::scope(|scope| {
            let client_addr = client_addr(server.as_ref().unwrap(), protocol);
            for client in clients.iter_mut() {
                let (stop, totals) = (&stop, &*totals);
                scope.spawn(move || client.run(client_addr, protocol, stop, totals));
            }
            let compactor = scope.spawn(|| {
                let Ok(mut conn) = Conn::connect(addr, IO_TIMEOUT) else { return };
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(compact_every);
                    match conn.call(b"compact") {
                        Ok(reply) => assert_eq!(reply, b"OK", "compact"),
                        Err(_) => return,
                    }
                }
            });
            std::thread::sleep(run_for);
            // The crash. Then let the clients see their broken connections and stop.
            let old = server.take().unwrap();
            let log = old.log();
            old.kill();
            assert_no_panic(&log);
            stop.store(true, Ordering::Relaxed);
            compactor.join().unwrap();
        });

        // Restart on the same file: it must load.
        let restarted = match Server::try_start(&db, &args) {
            Ok(server) => server,
            Err(exited) => {
                panic!("cycle {cycle}: the database did not load ({}):\n{}", exited.status, exited.log)
            }
        };
        let start_log = restarted.log();
        if start_log.contains("torn final line") {
            stats.torn_lines_cut += 1;
        }
        if start_log.contains("left by an interrupted compaction") {
            stats.compactions_interrupted += 1;
        }
        let mut conn = Conn::connect(restarted.addr, IO_TIMEOUT).expect("connect after restart");
        let mut reader = AnyConn::connect(&restarted, protocol).expect("connect after restart");
        server = Some(restarted);
        for client in clients.iter_mut() {
            client.verify(&mut reader, cycle, &mut stats);
        }
        // Nothing deleted came back and nothing unknown appeared.
        let listed: BTreeSet<String> = conn
            .call_until_end(b"keys")
            .expect("keys")
            .iter()
            .filter_map(|l| l.strip_prefix(b"KEY "))
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        let expected: BTreeSet<String> = clients.iter().flat_map(Client::present_keys).collect();
        assert_eq!(listed, expected, "cycle {cycle}: the set of keys differs");
        stats.cycles += 1;
    }
    let server = server.unwrap();
    let log = server.log();
    server.kill();
    assert_no_panic(&log);
    let writes = totals.acked_writes.load(Ordering::Relaxed);
    let deletes = totals.acked_deletes.load(Ordering::Relaxed);
    eprintln!(
        "crash test (--fsync {fsync}, {} clients): {} kill/restart cycles in {:.1} s, {writes} acknowledged sets and \
         {deletes} acknowledged deletes, {} key checks, 0 lost; in-flight at the kill: {} applied, {} not; \
         torn final lines cut: {}; kills inside a compaction (temporary file removed at restart): {}",
        if protocol == Protocol::Memcached { "memcached" } else { "line-protocol" },
        stats.cycles,
        started.elapsed().as_secs_f64(),
        stats.keys_verified,
        stats.in_flight_applied,
        stats.in_flight_not_applied,
        stats.torn_lines_cut,
        stats.compactions_interrupted,
    );
    assert!(writes > cycles, "the clients made progress: only {writes} acknowledged writes");
    stats
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write_with_fsync_always() {
    let cycles = env_or("TEXTKV_CRASH_CYCLES", 20);
    assert_eq!(crash_cycles("always", Protocol::Line, cycles).cycles, cycles);
}

/// `everysec` acknowledges after write(2): a process crash must lose nothing either (only a
/// power loss or kernel crash may lose up to about the last second).
#[test]
fn sigkill_loses_no_acknowledged_write_with_fsync_everysec() {
    let cycles = env_or("TEXTKV_CRASH_CYCLES_EVERYSEC", 5);
    assert_eq!(crash_cycles("everysec", Protocol::Line, cycles).cycles, cycles);
}

/// `never` acknowledges after write(2) and leaves fsync to the kernel: a process crash
/// still loses nothing (the page cache outlives the process).
#[test]
fn sigkill_loses_no_acknowledged_write_with_fsync_never() {
    let cycles = env_or("TEXTKV_CRASH_CYCLES_NEVER", 5);
    assert_eq!(crash_cycles("never", Protocol::Line, cycles).cycles, cycles);
}

/// The same with clients speaking memcached (`set`/`delete`, replies on): an acknowledged
/// `STORED` or `DELETED` survives SIGKILL.
#[test]
fn memcached_clients_lose_no_acknowledged_write_with_fsync_always() {
    let cycles = env_or("TEXTKV_CRASH_CYCLES_MEMCACHED", 5);
    assert_eq!(crash_cycles("always", Protocol::Memcached, cycles).cycles, cycles);
}
