//! Helpers for the kvclient end-to-end tests: run the real `kvclient` binary against a
//! [`common::Server`](../common/mod.rs), feed it standard input, measure its peak memory.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const KVCLIENT: &str = env!("CARGO_BIN_EXE_kvclient");

/// Runs `kvclient --addr <addr> <args>` with `stdin` as its input.
pub fn kvclient(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(KVCLIENT)
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvclient");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    // A client that exits early (an error) closes its input: a failed write is fine then.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for kvclient");
    feeder.join().expect("stdin feeder");
    output
}

/// Starts `kvclient put - <key>` with `data` on its input, waits (up to 20 s) until
/// `reached_server` says part of it arrived, then kills the client with SIGKILL.
pub fn kill_mid_upload(addr: SocketAddr, key: &str, data: &[u8], reached_server: impl Fn() -> bool) {
    let mut child = Command::new(KVCLIENT)
        .args(["--addr", &addr.to_string(), "put", "-", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvclient");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(data).expect("feed the upload");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !reached_server() {
        assert!(std::time::Instant::now() < deadline, "the upload never reached the server");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill kvclient");
    child.wait().expect("reap kvclient");
}

/// Standard output as text.
pub fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `kvclient --addr <addr> <args>` with standard input from `stdin_file` (or nothing)
/// and returns its exit code and peak resident memory in KiB: `VmHWM` of /proc/<pid>/status,
/// read every few milliseconds while it runs. (getrusage's `ru_maxrss` of a child would not
/// do: Linux carries the spawning test process's own peak over into the child at exec.)
pub fn run_measured(addr: SocketAddr, args: &[&str], stdin_file: Option<&Path>) -> (i32, u64) {
    let stdin = match stdin_file {
        Some(path) => Stdio::from(std::fs::File::open(path).expect("open input")),
        None => Stdio::null(),
    };
    let mut child = Command::new(KVCLIENT)
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kvclient");
    let mut peak = 0;
    loop {
        // Absent once the process has exited (a zombie has no memory left).
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `len` bytes that do not compress or repeat (xorshift), the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
