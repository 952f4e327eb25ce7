//! libmemcached's command-line tools (Debian package `libmemcached-tools`, installed by
//! `.ci/run`) run unchanged against kvserver's `--memcached` port. Each tool is run as a user
//! would, and what it did is checked through a raw memcached connection (and the reverse).
//! A missing tool fails the test: nothing is skipped silently.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};

use common::{raw_connect, temp_db, Server};

/// Runs `tool --servers=<addr> <args>` and returns its output; panics if it cannot start.
fn run(tool: &str, addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(tool)
        .arg(format!("--servers={addr}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (libmemcached-tools, see .ci/run): {e}"))
}

/// Runs a tool that must succeed; returns its stdout.
fn ok(tool: &str, addr: SocketAddr, args: &[&str]) -> String {
    let output = run(tool, addr, args);
    assert!(
        output.status.success(),
        "{tool} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One request line (and data) and its reply up to and including `end`.
fn call(stream: &mut TcpStream, request: &str, end: &str) -> String {
    use std::io::Read;
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(end.as_bytes()) {
        stream.read_exact(&mut byte).expect("read reply");
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap()
}

/// Every tool, in the ASCII protocol (the tools' default), and with `--binary` where the tool
/// has it (`binary`): libmemcached speaks each protocol through its own code paths.
fn tools_round_trip(binary: bool) {
    let (dir, db) = temp_db();
    let (_server, addr) = Server::start_memcached(&db, &[]);
    let mode: &[&str] = if binary { &["--binary"] } else { &[] };
    let with = |args: &[&'static str]| [mode, args].concat();

    ok("memcping", addr, &[]); // memcping has no --binary

    // memccp stores a file under its name; memccat prints it back.
    let file = dir.path().join("greeting.txt");
    std::fs::write(&file, b"hello from a file\n").unwrap();
    let file_arg = file.to_str().unwrap().to_string();
    let mut args = mode.to_vec();
    args.push(&file_arg);
    ok("memccp", addr, &args);
    let mut mc = raw_connect(addr);
    assert_eq!(
        call(&mut mc, "get greeting.txt\r\n", "END\r\n"),
        "VALUE greeting.txt 0 18\r\nhello from a file\n\r\nEND\r\n"
    );
    // memccat prints the value and a newline of its own.
    assert_eq!(ok("memccat", addr, &with(&["greeting.txt"])), "hello from a file\n\n");

    assert_eq!(call(&mut mc, "set other 0 0 2\r\nhi\r\n", "\r\n"), "STORED\r\n");
    ok("memcexist", addr, &with(&["other"]));
    assert!(!run("memcexist", addr, &with(&["absent"])).status.success(), "memcexist of a missing key fails");

    ok("memctouch", addr, &with(&["--expire=1000", "other"]));
    let ttl = call(&mut mc, "mg other t\r\n", "\r\n");
    let ttl: i64 = ttl.trim_end().strip_prefix("HD t").unwrap().parse().unwrap();
    assert!((990..=1000).contains(&ttl), "memctouch set the expiry: {ttl}");

    let stats = ok("memcstat", addr, mode);
    assert!(stats.contains("version: 1.6.18"), "memcstat parses the version: {stats}");
    assert!(stats.contains("curr_items: 2"), "memcstat shows real counters: {stats}");

    if !binary {
        // memcdump lists keys with `stats cachedump <class> 0` (it has no --binary).
        let mut dumped: Vec<String> = ok("memcdump", addr, &[]).lines().map(str::to_string).collect();
        dumped.sort();
        assert_eq!(dumped, ["greeting.txt", "other"]);
    }

    ok("memcrm", addr, &with(&["other"]));
    assert_eq!(call(&mut mc, "get other\r\n", "END\r\n"), "END\r\n");

    // memcslap stores and reads its own keys; they are really there afterwards.
    ok("memcslap", addr, &with(&["--concurrency=2", "--execute-number=50", "--test=set"]));
    let items = call(&mut mc, "stats\r\n", "END\r\n");
    let items: u64 = items
        .lines()
        .find_map(|l| l.strip_prefix("STAT curr_items "))
        .and_then(|n| n.parse().ok())
        .expect("curr_items");
    assert!(items > 1, "memcslap stored its keys: {items} items");

    ok("memcflush", addr, mode);
    assert_eq!(call(&mut mc, "get greeting.txt\r\n", "END\r\n"), "END\r\n");
}

#[test]
fn libmemcached_tools_work_in_ascii() {
    tools_round_trip(false);
}

#[test]
fn libmemcached_tools_work_in_binary() {
    tools_round_trip(true);
}
