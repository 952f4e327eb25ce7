//! Floods and slow or hostile clients against the real server: many connections, the
//! connection cap, idle and non-reading clients, oversized lines, garbage and resets. Memory
//! is measured from /proc/<pid>/status (VmHWM = peak resident set).
//!
//! Memcached listener (`--memcached ADDR`, built on another branch): add the same cases on
//! that listener once it exists — cap reply `SERVER_ERROR too many connections`, a data block
//! larger than the limit, a `get` with thousands of keys, and garbage — via
//! `server.listener("memcached")`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::faults::{assert_no_panic, proc_status_kib, raise_nofile, with_rlimit, Conn, Rng};
use common::{temp_db, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Peak memory growth allowed for any flood below, over the server's resident size before it.
const RSS_BUDGET_KIB: u64 = 64 * 1024;

fn ping(conn: &mut Conn) {
    assert_eq!(conn.call(b"ping").unwrap(), b"PONG");
}

fn stat(addr: SocketAddr, name: &str) -> u64 {
    let mut conn = Conn::connect(addr, IO_TIMEOUT).unwrap();
    let lines = conn.call_until_end(b"stats").unwrap();
    let prefix = format!("STAT {name} ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).parse().unwrap())
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_thousand_connections_are_served_and_one_more_is_refused_cleanly() {
    let have = raise_nofile(4096);
    assert!(have >= 1200, "need ~1,200 open files for this test, the hard limit allows {have}");
    let (_dir, db) = temp_db();
    let mut command = Server::command(&db, &["--max-connections", "1000"]);
    with_rlimit(&mut command, libc::RLIMIT_NOFILE, 4096.min(have), have);
    let server = Server::start_command(command, &db).unwrap_or_else(|e| panic!("{}", e.log));
    let before = proc_status_kib(server.pid(), "VmRSS");

    let mut conns: Vec<Conn> = (0..1000)
        .map(|i| {
            let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
            assert_eq!(conn.call(format!("set conn{i} {i}").as_bytes()).unwrap(), b"STORED");
            conn
        })
        .collect();
    // All 1,000 are held open and each still answers.
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(conn.call(format!("get conn{i}").as_bytes()).unwrap(), format!("VALUE {i}").as_bytes());
    }

    // Connection 1,001: told why, then closed.
    let mut extra = TcpStream::connect(server.addr).unwrap();
    extra.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reply = Vec::new();
    let _ = extra.read_to_end(&mut reply);
    assert_eq!(String::from_utf8_lossy(&reply), "ERROR too many connections\n");

    // Closing some makes room again, and the server stays healthy.
    conns.truncate(990);
    let mut fresh = None;
    eventually("a slot to free up", IO_TIMEOUT, || match Conn::connect(server.addr, IO_TIMEOUT) {
        Ok(mut conn) => match conn.call(b"ping") {
            Ok(reply) if reply == b"PONG" => {
                fresh = Some(conn);
                true
            }
            _ => false,
        },
        Err(_) => false,
    });
    let mut fresh = fresh.unwrap();
    assert_eq!(fresh.call(b"get conn999").unwrap(), b"VALUE 999");
    for conn in conns.iter_mut() {
        ping(conn);
    }
    let peak = proc_status_kib(server.pid(), "VmHWM");
    eprintln!("1,000 connections held: server RSS {before} KiB before, peak {peak} KiB");
    drop(conns);
    drop(fresh);
    assert!(stat(server.addr, "rejected_connections") >= 1);
    assert_no_panic(&server.log());
}

#[test]
fn idle_clients_are_disconnected_and_active_ones_are_not() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--idle-timeout", "1"]);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Half a request, then silence: the partial line does not keep the connection alive.
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    half.write_all(b"set k partial").unwrap();
    let started = Instant::now();

    let mut active = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    for _ in 0..25 {
        ping(&mut active);
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "the idle connection is closed");
    assert_eq!(half.read(&mut buf).unwrap(), 0, "the half-request connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(500), "closed before the timeout");
    ping(&mut active);
    assert_eq!(active.call(b"get k").unwrap(), b"NOT_FOUND", "the half request was not run");
    eventually("idle connections to be released", IO_TIMEOUT, || stat(server.addr, "curr_connections") == 2);
}

#[test]
fn a_client_that_never_reads_its_replies_is_disconnected_and_memory_stays_bounded() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--idle-timeout", "2"]);
    let big = vec![b'x'; 1 << 20];
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(conn.call(&common::faults::set_request("big", &big)).unwrap(), b"STORED");
    let before = proc_status_kib(server.pid(), "VmRSS");

    // Ask for the 1 MiB value over and over without reading a byte of the answers.
    let mut flood = TcpStream::connect(server.addr).unwrap();
    flood.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let requests = b"get big\n".repeat(1024);
    let mut sent_gets = 0u64;
    for _ in 0..10_000 {
        match flood.write_all(&requests) {
            Ok(()) => sent_gets += 1024,
            Err(_) => break,
        }
    }
    assert!(
        server.wait_for_log("idle or not reading", IO_TIMEOUT),
        "the non-reading client was not disconnected:\n{}",
        server.log()
    );
    let peak = proc_status_kib(server.pid(), "VmHWM");
    eprintln!(
        "non-reading client: {sent_gets} gets of 1 MiB sent ({} GiB of replies asked for), \
         RSS {before} KiB before, peak {peak} KiB",
        sent_gets >> 10
    );
    assert!(sent_gets >= 1024, "the flood did not get going");
    assert!(peak < before + RSS_BUDGET_KIB, "peak RSS {peak} KiB (was {before} KiB)");
    // The rest of the server is fine.
    let mut other = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    assert_eq!(other.call(b"get big").unwrap().len(), "VALUE ".len() + big.len());
    drop(flood);
    assert_no_panic(&server.log());
}

#[test]
fn a_100_mib_line_is_refused_and_memory_stays_bounded() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let before = proc_status_kib(server.pid(), "VmRSS");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"set before 1\nset huge ").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        stream.write_all(&chunk).unwrap();
    }
    stream.write_all(b"\nget before\nget huge\n").unwrap();
    let expected = b"STORED\nERROR line too long (max 4195328 bytes)\nVALUE 1\nNOT_FOUND\n";
    assert_eq!(
        String::from_utf8_lossy(&common::read_exact_reply(&mut stream, expected.len())),
        String::from_utf8_lossy(expected)
    );
    let peak = proc_status_kib(server.pid(), "VmHWM");
    eprintln!("100 MiB line: RSS {before} KiB before, peak {peak} KiB");
    assert!(peak < before + RSS_BUDGET_KIB, "peak RSS {peak} KiB (was {before} KiB)");
    assert_no_panic(&server.log());
}

/// Random bytes, mangled commands, half requests cut by a disconnect, and connections reset
/// while a large reply is being written, from several threads at once; meanwhile a well-
/// behaved client keeps checking its data.
#[test]
fn garbage_half_requests_and_resets_never_panic_or_corrupt_data() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-value-bytes", "65536"]);
    let mut good = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    let keep: Vec<(String, Vec<u8>)> =
        (0..50).map(|i| (format!("keep:{i}"), format!("kept value {i} \\ \n").into_bytes())).collect();
    for (key, value) in &keep {
        assert_eq!(good.call(&common::faults::set_request(key, value)).unwrap(), b"STORED");
    }
    assert_eq!(good.call(&common::faults::set_request("wide", &vec![b'w'; 60_000])).unwrap(), b"STORED");
    let check = |conn: &mut Conn| {
        for (key, value) in &keep {
            let reply = conn.call(format!("get {key}").as_bytes()).unwrap();
            assert_eq!(common::faults::decode_get(&reply).as_ref(), Some(value), "{key}");
        }
    };

    let mut rng = Rng::from_env("TEXTKV_GARBAGE_SEED");
    let templates: &[&[u8]] = &[
        b"get ",
        b"set ",
        b"setmeta ",
        b"del ",
        b"keys",
        b"stats",
        b"ping",
        b"help",
        b"\\x",
        b"\\",
        b"\r",
        b"\n",
        b" ",
        b"\x00",
        b"\xff\xfe",
        b"99999999999999999999999",
        b"-1",
        b"keep:",
        b"k",
    ];
    let addr = server.addr;
    let attacks: u64 = std::thread::scope(|scope| {
        let mut attackers = Vec::new();
        for t in 0..4 {
            let mut rng = Rng::new(rng.next_u64());
            attackers.push(scope.spawn(move || {
                let mut done = 0u64;
                for round in 0..60 {
                    let Ok(mut stream) = TcpStream::connect(addr) else { continue };
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut payload = Vec::new();
                    match (round + t) % 4 {
                        0 => {
                            let len = rng.range(1, 20_000) as usize;
                            payload = rng.bytes(len);
                        }
                        1 => {
                            for _ in 0..rng.range(1, 200) {
                                payload.extend_from_slice(
                                    templates[rng.range(0, templates.len() as u64) as usize],
                                );
                                if rng.chance(30) {
                                    let len = rng.range(1, 8) as usize;
                                    payload.extend(rng.bytes(len));
                                }
                            }
                        }
                        // A half request, then the connection goes away.
                        2 => payload.extend_from_slice(b"set keep:0 half a reque"),
                        // Ask for large replies, then reset the connection mid-reply.
                        _ => payload = b"get wide\nkeys\nhelp\n".repeat(200),
                    }
                    // Never let garbage spell a write to the protected keys or a flush.
                    let lower = payload.to_ascii_lowercase();
                    let dangerous = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
                    if (round + t) % 4 != 2 && (dangerous(b"flush") || dangerous(b"keep:")) {
                        continue;
                    }
                    let _ = stream.write_all(&payload);
                    if (round + t) % 4 == 3 {
                        let mut some = [0u8; 1000];
                        let _ = stream.read(&mut some);
                        // SO_LINGER 0: close() sends RST instead of FIN.
                        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                        // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
                        unsafe {
                            use std::os::fd::AsRawFd;
                            libc::setsockopt(
                                stream.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                &linger as *const libc::linger as *const libc::c_void,
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    } else if rng.chance(50) {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink);
                    }
                    done += 1;
                }
                done
            }));
        }
        // Meanwhile the good client keeps working.
        for _ in 0..20 {
            check(&mut good);
            ping(&mut good);
            std::thread::sleep(Duration::from_millis(20));
        }
        attackers.into_iter().map(|a| a.join().unwrap()).sum()
    });
    check(&mut good);
    let log = server.log();
    assert_no_panic(&log);
    // And the file still loads with everything in it.
    server.kill();
    let server = Server::start(&db, &[]);
    let mut conn = Conn::connect(server.addr, IO_TIMEOUT).unwrap();
    check(&mut conn);
    eprintln!("hostile clients: {attacks} connections of garbage, half requests and resets");
}
