//! kvclient stores exactly what the user meant: keys checked, values from stdin byte for
//! byte, files of any size through `put`/`get -o` (chunks + manifest), crash-safe uploads.
//! Everything against the real kvserver binary.

mod common;
#[path = "kvclient_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::{temp_db, Server};
use support::{kill_mid_upload, kvclient, noise, run_measured, text};

/// The chunk keys the server holds for `key` (all uploads).
fn chunks_of(server: &Server, key: &str) -> Vec<String> {
    let reply = server.client().request(format!("keys {key}~chunk.").as_bytes()).unwrap();
    reply
        .iter()
        .filter_map(|l| l.strip_prefix(b"KEY "))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[test]
fn keys_with_spaces_or_control_bytes_are_refused_and_nothing_is_stored() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    for args in [
        &["set", "bad key", "v"][..],
        &["get", "bad key"],
        &["set", "tab\tkey", "v"],
        &["del", "ok", "bad key"],
    ] {
        let out = kvclient(server.addr, args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("bad key") && stderr.contains("without spaces or control characters"),
            "{stderr}"
        );
    }
    assert_eq!(server.client().request(b"keys").unwrap(), [b"END".to_vec()], "nothing was stored");
}

#[test]
fn set_x_stores_standard_input_byte_for_byte() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-value-bytes", "4096"]);
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let out = kvclient(server.addr, &["set", "bin", "-x"], &every_byte);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server.client().get(b"bin").unwrap().as_deref(), Some(&every_byte[..]));
    let out = kvclient(server.addr, &["get", "bin"], b"");
    assert_eq!(out.stdout, every_byte, "get prints the bytes, NUL and all");
    // A value above the server's limit is refused before anything is sent, with the way out.
    let out = kvclient(server.addr, &["set", "big", "-x"], &noise(5000, 1));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kvclient put - big"), "{out:?}");
    assert_eq!(server.client().get(b"big").unwrap(), None);
}

#[test]
fn del_takes_several_keys_and_replies_are_raw_or_human() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    for key in ["a", "b", "c"] {
        server.client().set(key.as_bytes(), b"1").unwrap();
    }
    let out = kvclient(server.addr, &["del", "a", "b", "missing"], b"");
    assert_eq!((out.status.code(), text(&out).as_str()), (Some(0), "2\n"));
    let out = kvclient(server.addr, &["--no-raw", "del", "c"], b"");
    assert_eq!(text(&out), "(integer) 1\n");
    let out = kvclient(server.addr, &["del", "a", "b"], b"");
    assert_eq!((out.status.code(), text(&out).as_str()), (Some(1), "0\n"), "none existed: exit 1");
    let out = kvclient(server.addr, &["--no-raw"], b"set k v\nget k\nget nope\nbogus\n");
    assert_eq!(text(&out), "OK\n\"v\"\n(nil)\n(error) unknown command 'bogus'\n");
}

#[test]
fn repeat_runs_a_command_count_times_with_an_interval() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let started = Instant::now();
    let out = kvclient(server.addr, &["-r", "3", "-i", "0.2", "ping"], b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "PONG\nPONG\nPONG\n");
    assert!(started.elapsed() >= Duration::from_millis(400), "two intervals of 0.2 s");
}

/// Puts `data` under `key` from a file and from stdin, and reads it back three ways.
fn round_trip(server: &Server, dir: &std::path::Path, key: &str, data: &[u8]) {
    let local = dir.join("in.bin");
    std::fs::write(&local, data).unwrap();
    let out = kvclient(server.addr, &["put", local.to_str().unwrap(), key], b"");
    assert!(out.status.success(), "put {key}: {out:?}");
    let copy = dir.join("out.bin");
    let out = kvclient(server.addr, &["get", key, "-o", copy.to_str().unwrap()], b"");
    assert!(out.status.success(), "get {key}: {out:?}");
    assert!(std::fs::read(&copy).unwrap() == data, "{key}: get -o file differs ({} bytes)", data.len());
    let out = kvclient(server.addr, &["put", "-", key], data);
    assert!(out.status.success(), "put - {key}: {out:?}");
    let out = kvclient(server.addr, &["get", key, "-o", "-"], b"");
    assert!(out.status.success() && out.stdout == data, "{key}: get -o - differs");
    let out = kvclient(server.addr, &["get", key], b"");
    assert!(out.stdout == data, "{key}: get differs");
}

#[test]
fn files_of_every_kind_round_trip_byte_for_byte() {
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]); // the default 1 MiB value limit
    round_trip(&server, dir.path(), "bytes", &(0..=255u8).collect::<Vec<_>>());
    round_trip(&server, dir.path(), "empty", b"");
    let three_mb = noise(3_000_000, 7);
    round_trip(&server, dir.path(), "docs/three-mb.bin", &three_mb);
    let chunks = chunks_of(&server, "docs/three-mb.bin");
    assert_eq!(chunks.len(), 3, "3 MB in 1 MiB chunks, the old upload's chunks removed: {chunks:?}");
    // A small file that looks like a manifest is still stored as itself.
    round_trip(
        &server,
        dir.path(),
        "lookalike",
        b"textkv-file v1 size=1 chunks=1 chunk_bytes=1 sha256=00 id=0",
    );
    // Exactly the limit is one plain value; one byte more is two chunks.
    round_trip(&server, dir.path(), "at-limit", &noise(1 << 20, 3));
    assert!(chunks_of(&server, "at-limit").is_empty());
    round_trip(&server, dir.path(), "over-limit", &noise((1 << 20) + 1, 4));
    assert_eq!(chunks_of(&server, "over-limit").len(), 2);
    // A key ending in `/` takes the local file's name; `-o <directory>` the key's.
    let local = dir.path().join("named.txt");
    std::fs::write(&local, b"named").unwrap();
    assert!(kvclient(server.addr, &["put", local.to_str().unwrap(), "inbox/"], b"").status.success());
    assert_eq!(server.client().get(b"inbox/named.txt").unwrap().as_deref(), Some(&b"named"[..]));
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    assert!(kvclient(server.addr, &["get", "docs/three-mb.bin", "-o", downloads.to_str().unwrap()], b"")
        .status
        .success());
    assert!(std::fs::read(downloads.join("three-mb.bin")).unwrap() == three_mb);
    // Replacing a chunked file by a small one removes the chunks.
    round_trip(&server, dir.path(), "docs/three-mb.bin", b"now small");
    assert!(chunks_of(&server, "docs/three-mb.bin").is_empty());
}

/// The issue's 200 MB file of random bytes (the worst case: 2.6× on the wire as `\xHH`),
/// with the default value limit: byte-identical after put and get, from a file and from
/// stdin, with the client's memory bounded by a few chunks and the server's by the data it
/// stores plus its per-connection buffers (never a second, escaped copy of the file).
#[test]
fn a_200_mb_file_streams_through_bounded_client_and_server_memory() {
    const SIZE: usize = 200_000_000;
    let (dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "never"]);
    let server_start_kib = common::faults::proc_status_kib(server.pid(), "VmRSS");
    let data = noise(SIZE, 11);
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let (code, put_kib) = run_measured(server.addr, &["put", local.to_str().unwrap(), "big"], None);
    assert_eq!(code, 0);
    let copy = dir.path().join("big.copy");
    let (code, get_kib) = run_measured(server.addr, &["get", "big", "-o", copy.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert!(std::fs::read(&copy).unwrap() == data, "download differs");
    std::fs::remove_file(&copy).unwrap();
    let (code, stdin_kib) = run_measured(server.addr, &["put", "-", "big2"], Some(&local));
    assert_eq!(code, 0);
    let server_peak_kib = common::faults::proc_status_kib(server.pid(), "VmHWM");
    eprintln!(
        "peak RSS: put {put_kib} KiB, get {get_kib} KiB, put from stdin {stdin_kib} KiB; server \
         {server_start_kib} -> {server_peak_kib} KiB holding two copies (file: {SIZE} bytes)"
    );
    // A few 1 MiB chunks (escaped on the wire up to 4x) are in memory at once, never the file.
    for (what, kib) in [("put", put_kib), ("get", get_kib), ("put -", stdin_kib)] {
        assert!(kib > 0 && kib < 32 * 1024, "{what} peaked at {kib} KiB for a {SIZE}-byte file");
    }
    // The server stores both uploads (2 × SIZE of values, as the design keeps them in
    // memory); beyond that, its buffers and the index's overhead only.
    let stored_kib = (2 * SIZE / 1024) as u64;
    assert!(
        server_peak_kib < server_start_kib + stored_kib + stored_kib / 4 + 64 * 1024,
        "server peaked at {server_peak_kib} KiB storing {stored_kib} KiB"
    );
}

#[test]
fn a_damaged_or_replaced_chunk_is_an_error_not_wrong_data() {
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let data = noise(2_500_000, 5);
    assert!(kvclient(server.addr, &["put", "-", "f"], &data).status.success());
    let chunks = chunks_of(&server, "f");
    let mut client = server.client();
    let original = client.get(chunks[1].as_bytes()).unwrap().unwrap();
    let mut damaged = original.clone();
    damaged[1000] ^= 1;
    client.set(chunks[1].as_bytes(), &damaged).unwrap();
    let target = dir.path().join("f.out");
    let out = kvclient(server.addr, &["get", "f", "-o", target.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"), "{out:?}");
    assert!(!target.exists(), "no file is left from a failed download");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("database.txt"))
        .collect();
    assert!(leftovers.is_empty(), "no partial download left: {leftovers:?}");
    client.del(chunks[2].as_bytes()).unwrap();
    let out = kvclient(server.addr, &["get", "f"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed while it was being read"), "{out:?}");
}

#[test]
fn killing_the_client_mid_upload_leaves_the_old_version_and_the_next_put_cleans_up() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let old = noise(3_000_000, 21);
    assert!(kvclient(server.addr, &["put", "-", "doc"], &old).status.success());
    let old_chunks = chunks_of(&server, "doc");
    assert_eq!(old_chunks.len(), 3);

    // A new version arrives on stdin; once some of its chunks are on the server, kill -9.
    kill_mid_upload(server.addr, "doc", &noise(5 << 20, 22), || {
        chunks_of(&server, "doc").len() >= old_chunks.len() + 3
    });

    let out = kvclient(server.addr, &["get", "doc"], b"");
    assert!(out.status.success() && out.stdout == old, "the old version is still read whole");
    let orphans = chunks_of(&server, "doc").len() - old_chunks.len();
    assert!(orphans >= 3, "the killed upload left chunks (invisible, see kvclient_dirs)");

    let new = noise(1_500_000, 23);
    assert!(kvclient(server.addr, &["put", "-", "doc"], &new).status.success());
    let chunks = chunks_of(&server, "doc");
    assert_eq!(chunks.len(), 2, "only the new version's chunks remain: {chunks:?}");
    assert!(kvclient(server.addr, &["get", "doc"], b"").stdout == new);
}

#[test]
fn set_and_del_over_a_chunked_file_leave_no_chunks_behind() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    assert!(kvclient(server.addr, &["put", "-", "f"], &noise(2_500_000, 31)).status.success());
    assert_eq!(chunks_of(&server, "f").len(), 3);
    assert!(kvclient(server.addr, &["set", "f", "plain", "now"], b"").status.success());
    assert!(chunks_of(&server, "f").is_empty(), "set replaced the whole file");
    assert_eq!(kvclient(server.addr, &["get", "f"], b"").stdout, b"plain now");
    assert!(kvclient(server.addr, &["put", "-", "f"], &noise(2_500_000, 32)).status.success());
    let out = kvclient(server.addr, &["del", "f"], b"");
    assert_eq!(text(&out), "1\n");
    assert!(chunks_of(&server, "f").is_empty(), "del removed the chunks too");
}
