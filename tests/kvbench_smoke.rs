//! Keeps `kvbench` working: a tiny run against a real `kvserver` with prefill and the
//! verification pass. It asserts that the run worked and checked its data, never on speed
//! (timed assertions are flaky on shared machines).

mod common;

use std::process::Command;

use common::{temp_db, Server};

const KVBENCH: &str = env!("CARGO_BIN_EXE_kvbench");

/// The value of `name=` in a kvbench summary line.
fn field<'a>(summary: &'a str, name: &str) -> &'a str {
    summary
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
}

fn kvbench(server: &Server, requests: &str, extra: &[&str]) -> String {
    let addr = server.addr.to_string();
    let mut args = vec![
        "--protocol",
        "line",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--keys",
        "500",
        "--value-size",
        "40",
        "--get-ratio",
        "1:1",
        "--requests",
        requests,
        "--duration",
        "20",
        "--timeout",
        "20",
        "--prefill",
        "--verify",
    ];
    args.extend_from_slice(extra);
    let output = Command::new(KVBENCH).args(&args).output().expect("run kvbench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kvbench failed with {}:\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn kvbench_runs_against_kvserver_and_verifies_every_key_it_wrote() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "never"]);

    let summary = kvbench(&server, "3000", &["--pipeline", "4"]);
    assert_eq!(summary.lines().count(), 1, "one summary line per run: {summary}");
    let ops: u64 = field(&summary, "ops").parse().unwrap();
    assert!(ops > 0 && ops <= 3000, "the request budget bounds the run: {summary}");
    assert!(field(&summary, "ops_per_sec").parse::<f64>().unwrap() > 0.0);
    assert_eq!(field(&summary, "errors"), "0");
    assert_eq!(field(&summary, "misses"), "0", "every key was prefilled: {summary}");
    assert_eq!(field(&summary, "verify_errors"), "0");
    let verified: u64 = field(&summary, "verified").parse().unwrap();
    assert!(verified >= 500, "the verify pass reads back all 500 prefilled keys: {summary}");

    // What kvbench wrote is really in the server, byte for byte as the value generator says.
    let mut client = server.client();
    let value = client.get(b"key:0000000000").unwrap().expect("key 0 was prefilled");
    assert_eq!(value.len(), 40);
    assert!(value.iter().all(u8::is_ascii_alphanumeric));
}

#[test]
fn kvbench_json_output_is_one_object_per_run() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "never"]);
    let out = kvbench(&server, "500", &["--json"]);
    let line = out.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"protocol\":\"line\""), "{line}");
    assert!(line.contains("\"verify_errors\":0"), "{line}");
}

/// A line-protocol server that stores nothing: it acknowledges every SET and answers every
/// GET with the same wrong value. kvbench's verification must notice.
fn forgetful_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let reply: &[u8] = if line.starts_with("set ") { b"STORED\n" } else { b"VALUE forgotten\n" };
            if writer.write_all(reply).is_err() {
                break;
            }
        }
    });
    (addr, handle)
}

#[test]
fn kvbench_verify_fails_when_the_server_returns_other_values() {
    let (addr, server) = forgetful_server();
    let output = Command::new(KVBENCH)
        .args(["--protocol", "line", "--addr", &addr.to_string(), "--connections", "1", "--keys", "20"])
        .args(["--requests", "50", "--duration", "20", "--timeout", "20", "--prefill", "--verify"])
        .output()
        .expect("run kvbench");
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "verification failures give exit 1: {stdout}");
    let errors: u64 = field(&stdout, "verify_errors").parse().unwrap();
    assert!(errors >= 20, "every one of the 20 keys read back is wrong: {stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected version"));
}
