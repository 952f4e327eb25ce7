//! kvclient's directory commands (keys with `/` as paths) and multi-key commands, end to end
//! against the real kvserver: ls, mkdir, cp, mv, rm (-r, -f), stat, du, df, exists, mget.

mod common;
#[path = "kvclient_support/mod.rs"]
mod support;

use sha2::{Digest, Sha256};

use common::{temp_db, Server};
use support::{kill_mid_upload, kvclient, noise, text};

fn ok(server: &Server, args: &[&str]) -> String {
    let out = kvclient(server.addr, args, b"");
    assert!(out.status.success(), "{args:?}: {out:?}");
    text(&out)
}

fn put(server: &Server, key: &str, data: &[u8]) {
    let out = kvclient(server.addr, &["put", "-", key], data);
    assert!(out.status.success(), "put {key}: {out:?}");
}

fn get(server: &Server, key: &str) -> Option<Vec<u8>> {
    let out = kvclient(server.addr, &["get", key], b"");
    match out.status.code() {
        Some(0) => Some(out.stdout),
        Some(1) => None,
        _ => panic!("get {key}: {out:?}"),
    }
}

/// Every key on the server, chunk keys included.
fn all_keys(server: &Server) -> Vec<String> {
    let reply = server.client().request(b"keys").unwrap();
    let mut keys: Vec<String> = reply
        .iter()
        .filter_map(|l| l.strip_prefix(b"KEY "))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort(); // `keys` answers in the server's order
    keys
}

#[test]
fn ls_shows_each_file_once_with_real_sizes_and_directories() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let big = noise(3_000_000, 1);
    put(&server, "docs/a.txt", b"hello");
    put(&server, "docs/big.bin", &big);
    put(&server, "docs/old/x", b"x");
    put(&server, "top", b"top level");
    ok(&server, &["mkdir", "empty"]);
    assert_eq!(ok(&server, &["ls"]), "docs/\nempty/\ntop\n");
    assert_eq!(ok(&server, &["ls", "docs"]), "a.txt\nbig.bin\nold/\n", "chunks are hidden");
    assert_eq!(ok(&server, &["ls", "/docs/old/../"]), "a.txt\nbig.bin\nold/\n");
    assert_eq!(ok(&server, &["ls", "empty"]), "", "an empty directory exists");
    assert_eq!(kvclient(server.addr, &["ls", "nothing"], b"").status.code(), Some(1));

    let long = ok(&server, &["ls", "-l", "docs"]);
    let lines: Vec<Vec<&str>> = long.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 3, "{long}");
    assert_eq!((lines[0][0], lines[0][1], lines[0][4]), ("-", "5", "a.txt"), "{long}");
    assert_eq!(
        (lines[1][0], lines[1][1], lines[1][4]),
        ("-", "3000000", "big.bin"),
        "a chunked file shows its size"
    );
    assert_eq!((lines[2][0], lines[2][3]), ("d", "old/"), "{long}");
    let year = lines[0][2].split('-').next().unwrap().parse::<u32>().unwrap();
    assert!(year >= 2024, "a date: {long}");
    assert_eq!(ok(&server, &["ls", "-l", "top"]).split_whitespace().nth(1), Some("9"), "ls of one file");

    let stat = ok(&server, &["stat", "docs/big.bin"]);
    assert!(stat.contains("size:     3000000") && stat.contains("3 chunks of 1048576 bytes"), "{stat}");
    let sha = Sha256::digest(&big).iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(stat.contains(&sha), "stat shows the SHA-256: {stat}");
    let info = ok(&server, &["info", "docs"]);
    assert!(info.contains("type:     directory") && info.contains("2 files, 1 directories"), "{info}");
    let du: u64 = ok(&server, &["du", "docs"]).split('\t').next().unwrap().parse().unwrap();
    assert!((3_000_006..3_001_000).contains(&du), "du counts chunks once and the manifest: {du}");
    let df = ok(&server, &["df"]);
    let numbers: Vec<&str> = df.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(numbers[0], all_keys(&server).len().to_string(), "{df}");
    assert!(numbers[1].parse::<u64>().unwrap() > 3_000_000, "{df}");
}

#[test]
fn cp_mv_and_rm_keep_files_whole() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let big = noise(2_200_000, 2);
    put(&server, "docs/big.bin", &big);
    put(&server, "docs/a.txt", b"aaa");
    ok(&server, &["cp", "docs/big.bin", "docs/copy.bin"]);
    assert!(get(&server, "docs/copy.bin").unwrap() == big);
    ok(&server, &["mv", "docs/a.txt", "docs/sub/"]);
    assert_eq!(get(&server, "docs/sub/a.txt").as_deref(), Some(&b"aaa"[..]));
    assert_eq!(get(&server, "docs/a.txt"), None);
    ok(&server, &["mv", "docs/big.bin", "moved.bin"]);
    assert!(get(&server, "moved.bin").unwrap() == big);
    assert_eq!(get(&server, "docs/big.bin"), None);
    assert!(!all_keys(&server).iter().any(|k| k.starts_with("docs/big.bin")), "no chunk left behind");

    ok(&server, &["cp", "-r", "docs", "backup"]);
    assert_eq!(ok(&server, &["ls", "backup"]), "copy.bin\nsub/\n");
    assert!(get(&server, "backup/copy.bin").unwrap() == big);
    ok(&server, &["mv", "docs", "archive"]);
    assert_eq!(kvclient(server.addr, &["ls", "docs"], b"").status.code(), Some(1));
    assert!(get(&server, "archive/copy.bin").unwrap() == big);
    assert_eq!(get(&server, "archive/sub/a.txt").as_deref(), Some(&b"aaa"[..]));

    let out = kvclient(server.addr, &["rm", "archive"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory (use rm -r)"), "{out:?}");
    let out = kvclient(server.addr, &["rm", "-r", "archive"], b"y\n");
    assert_eq!(out.status.code(), Some(2), "not a terminal and no -f: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -f"), "{out:?}");
    assert!(get(&server, "archive/copy.bin").is_some(), "nothing removed");
    ok(&server, &["rm", "-r", "-f", "archive"]);
    assert!(!all_keys(&server).iter().any(|k| k.starts_with("archive/")));
    ok(&server, &["mkdir", "empty"]);
    ok(&server, &["rm", "-r", "empty"]); // empty: nothing to confirm
    ok(&server, &["rm", "moved.bin"]);
    assert_eq!(kvclient(server.addr, &["rm", "moved.bin"], b"").status.code(), Some(1));
    let left = all_keys(&server);
    assert!(left.iter().all(|k| k.starts_with("backup/")), "{left:?}");
}

#[test]
fn exists_and_mget_take_several_keys() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    ok(&server, &["set", "a", "one"]);
    ok(&server, &["set", "b", "two"]);
    assert_eq!(ok(&server, &["exists", "a", "b", "a", "nope"]), "3\n");
    assert_eq!(ok(&server, &["--no-raw", "exists", "nope"]), "(integer) 0\n");
    assert_eq!(ok(&server, &["mget", "a", "nope", "b"]), "one\n\ntwo\n");
    assert_eq!(ok(&server, &["--no-raw", "mget", "a", "nope"]), "1) \"one\"\n2) (nil)\n");
    assert_eq!(ok(&server, &["compact"]), "OK\n");
    assert_eq!(ok(&server, &["mget", "a", "b"]), "one\ntwo\n", "compaction kept them");
}

#[test]
fn orphans_of_a_killed_first_upload_are_invisible() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    put(&server, "d/keep", b"k");
    kill_mid_upload(server.addr, "d/new.bin", &noise(3 << 20, 9), || {
        all_keys(&server).iter().filter(|k| k.contains("~chunk.")).count() >= 2
    });
    assert_eq!(ok(&server, &["ls", "d"]), "keep\n", "no half file");
    assert_eq!(get(&server, "d/new.bin"), None);
    put(&server, "d/new.bin", b"small now");
    assert_eq!(all_keys(&server), ["d/keep", "d/new.bin"], "the next put removed the orphans");
}
