//! kvclient's modes and exit codes, many concurrent clients, and the connection cap.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::thread;

use common::{temp_db, transcript, Server, KVCLIENT};

fn kvclient(server: &Server, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(KVCLIENT)
        .arg("--addr")
        .arg(server.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    output
}

#[test]
fn one_shot_commands_and_exit_codes() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let out = kvclient(&server, &["set", "greeting", "hello", "big", "world"], b"");
    assert!(out.status.success(), "{out:?}");
    let out = kvclient(&server, &["get", "greeting"], b"");
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"hello big world"[..]));
    let out = kvclient(&server, &["get", "missing"], b"");
    assert_eq!((out.status.code(), out.stdout.len()), (Some(1), 0));
    let out = kvclient(&server, &["set", "multi", "line\none\\n"], b"");
    assert!(out.status.success());
    let out = kvclient(&server, &["get", "multi"], b"");
    assert_eq!(out.stdout, b"line\none\\n", "set/get store the argument byte for byte");
    let out = kvclient(&server, &["keys"], b"");
    let mut listed: Vec<&[u8]> = out.stdout.split_inclusive(|&b| b == b'\n').collect();
    listed.sort_unstable(); // `keys` comes in shard order, not sorted
    assert_eq!(listed.concat(), b"greeting\nmulti\n");
    let out = kvclient(&server, &["del", "greeting"], b"");
    assert_eq!(out.status.code(), Some(0));
    let out = kvclient(&server, &["del", "greeting"], b"");
    assert_eq!(out.status.code(), Some(1));
    let out = kvclient(&server, &["stats"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("keys 1\n"), "{out:?}");
    let out = kvclient(&server, &["set", &"k".repeat(300), "v"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key too long"), "{out:?}");
}

#[test]
fn piped_input_sends_each_line_and_prints_each_reply() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let out = kvclient(&server, &[], b"set a 1\n# a comment\n\nget a\nkeys\nget b\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"STORED\nVALUE 1\nKEY a\nEND\nNOT_FOUND\n");
    let out = kvclient(&server, &[], b"bogus\nping\n");
    assert_eq!(out.status.code(), Some(2), "an ERROR reply makes the exit code 2");
    assert_eq!(out.stdout, b"ERROR unknown command 'bogus'\nPONG\n");
}

#[test]
fn piping_a_large_file_is_pipelined() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "never"]);
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend_from_slice(format!("set k{i} {i}\n").as_bytes());
    }
    let out = kvclient(&server, &[], &input);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 20_000 * "STORED\n".len());
    assert_eq!(transcript(server.addr, b"get k19999\n"), b"VALUE 19999\n");
}

#[test]
fn a_server_that_is_down_is_reported_clearly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = Command::new(KVCLIENT).args(["--addr", &addr, "get", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("kvclient: cannot connect to {addr}: connection refused (is kvserver running?)\n")
    );
}

#[test]
fn sixty_four_concurrent_clients_each_see_their_own_writes() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let workers: Vec<_> = (0..64)
        .map(|t| {
            let mut client = server.client();
            thread::spawn(move || {
                for i in 0..50 {
                    let key = format!("c{t}:{i}");
                    let value = format!("{t}-{i}-\x01\n");
                    client.set(key.as_bytes(), value.as_bytes()).unwrap();
                    assert_eq!(client.get(key.as_bytes()).unwrap().unwrap(), value.as_bytes());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut client = server.client();
    let keys = client.request(b"keys c").unwrap();
    assert_eq!(keys.len(), 64 * 50 + 1);
}

#[test]
fn connections_past_the_cap_are_refused_and_the_server_stays_healthy() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-connections", "3"]);
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut s = server.raw();
            s.write_all(b"ping\n").unwrap();
            assert_eq!(common::read_exact_reply(&mut s, 5), b"PONG\n");
            s
        })
        .collect();
    let mut refused = server.raw();
    let mut reply = Vec::new();
    refused.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"ERROR too many connections\n");
    drop(held);
    // Slots free up once the server has noticed the closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = transcript(server.addr, b"ping\n");
        if reply == b"PONG\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never freed: {reply:?}");
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--idle-timeout", "1"]);
    let mut idle = server.raw();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    idle.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(transcript(server.addr, b"ping\n"), b"PONG\n");
}

/// `kvserver` with exactly these arguments (no harness `--listen`), stderr captured.
fn kvserver_command(db: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(common::KVSERVER);
    command.arg("--db").arg(db).args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null());
    command.stderr(Stdio::piped());
    command
}

#[test]
fn listen_and_memcached_accept_host_names() {
    let (_dir, db) = temp_db();
    let command = kvserver_command(&db, &["--listen", "localhost:0", "--memcached", "localhost:0"]);
    let server = Server::start_command(command, &db).unwrap_or_else(|e| panic!("{}", e.log));
    assert!(server.addr.ip().is_loopback(), "{:?}", server.listeners);
    assert_eq!(transcript(server.addr, b"ping\n"), b"PONG\n");
    assert!(transcript(server.listener("memcached"), b"version\r\n").starts_with(b"VERSION "));
}

#[test]
fn a_listen_name_that_does_not_resolve_is_a_clear_error() {
    let (_dir, db) = temp_db();
    let output = kvserver_command(&db, &["--listen", "no-such-host.invalid:7878"]).output().unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("--listen no-such-host.invalid:7878: cannot resolve the address"), "{log}");
    let output =
        kvserver_command(&db, &["--listen", "127.0.0.1:0", "--memcached", "nonsense"]).output().unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("--memcached nonsense: cannot resolve the address"), "{log}");
}
