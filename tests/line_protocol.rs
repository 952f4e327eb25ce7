//! The line protocol, byte for byte, against the real server.

mod common;

use std::io::Write;

use common::{temp_db, transcript, Server};

#[test]
fn transcript_of_every_command() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let reply = transcript(
        server.addr,
        b"ping\nset k hello world\nGET k\nset k2  spaced \nget k2\nkeys\nkeys k2\ndel k\ndel k\nget k\nflush\nkeys\nquit\nping\n",
    );
    // `keys` is not sorted overall (shard order): either order of k and k2 is right.
    let reply = String::from_utf8(reply).unwrap().replace("KEY k2\nKEY k\nEND", "KEY k\nKEY k2\nEND");
    assert_eq!(
        reply,
        "PONG\nSTORED\nVALUE hello world\nSTORED\nVALUE  spaced \nKEY k\nKEY k2\nEND\nKEY k2\nEND\n\
         DELETED\nNOT_FOUND\nNOT_FOUND\nOK\nEND\n"
    );
}

#[test]
fn crlf_line_endings_are_accepted() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    assert_eq!(transcript(server.addr, b"set a 1\r\nget a\r\n"), b"STORED\nVALUE 1\n");
}

#[test]
fn escapes_round_trip_and_get_output_pastes_into_set() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut client = server.client();
    let value: Vec<u8> = (0..=255u8).chain(b"tail\\n".iter().copied()).collect();
    client.set(b"bin", &value).unwrap();
    assert_eq!(client.get(b"bin").unwrap().unwrap(), value);
    let shown = client.request(b"get bin").unwrap().remove(0);
    let escaped = shown.strip_prefix(b"VALUE ").unwrap();
    client.request(&[b"set copy ", escaped].concat()).unwrap();
    assert_eq!(client.get(b"copy").unwrap().unwrap(), value);
}

/// Random values of every kind, each sent once in the escaper's own spelling (which the server
/// writes to the log as it is) and once in another spelling of the same bytes (which it
/// decodes and escapes): both give the same `database.txt` bytes as the escaper's record, and
/// every value loads back after a kill -9.
#[test]
fn a_value_in_any_spelling_is_logged_as_the_escaper_writes_it_and_loads_back() {
    use textkv::escape::escape;
    use textkv::store::format::encode_set;
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut client = server.client();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut expected_log = Vec::new();
    let mut values = Vec::new();
    for i in 0..200 {
        let len = (next() % 3000) as usize;
        let value: Vec<u8> = match i % 4 {
            0 => (0..len).map(|_| next() as u8).collect(),
            1 => (0..len).map(|_| b"ab \\\n\t~"[(next() % 7) as usize]).collect(),
            2 => "grüße ☃ \u{1F600}\u{80}\r\n".repeat(len / 20 + 1).into_bytes(),
            _ => (0..len)
                .map(|_| [b'x', 0xc3, 0xa9, 0xe2, 0x98, 0x83, 0xff, 0][(next() % 8) as usize])
                .collect(),
        };
        let canonical = escape(&value);
        // Another spelling: every byte as upper-case `\xHH`.
        let other: Vec<u8> = value.iter().flat_map(|b| format!("\\x{b:02X}").into_bytes()).collect();
        for (n, text) in [canonical, other].iter().enumerate() {
            let key = format!("k{i}.{n}");
            let (command, flags, expires_at) =
                if i % 3 == 0 { ("set", 0, 0) } else { ("setmeta", 7, 4_000_000_000u64) };
            let head = match command {
                "set" => format!("set {key} "),
                _ => format!("setmeta {key} {flags} {expires_at} "),
            };
            let reply = client.request(&[head.as_bytes(), text].concat()).unwrap();
            assert_eq!(reply, [b"STORED".to_vec()], "{key}");
            encode_set(key.as_bytes(), &value, flags, expires_at, &mut expected_log);
            values.push((key, value.clone()));
        }
    }
    assert_eq!(std::fs::read(&db).unwrap(), expected_log, "the log holds the escaper's records");
    server.kill();
    let server = Server::start(&db, &[]);
    let mut client = server.client();
    for (key, value) in &values {
        assert_eq!(client.get(key.as_bytes()).unwrap().as_ref(), Some(value), "{key}");
    }
}

#[test]
fn errors_name_the_problem_and_the_connection_keeps_working() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-value-bytes", "8", "--max-line-bytes", "400"]);
    let long_key = "k".repeat(251);
    let request = format!(
        "nope\nget\nget a b\nset k\nset {long_key} v\nset k 123456789\nset k 12345678\nset k \\z\nkeys a b\n\
         set tab\tkey v\nget k\n"
    );
    let reply = String::from_utf8(transcript(server.addr, request.as_bytes())).unwrap();
    assert_eq!(
        reply,
        "ERROR unknown command 'nope'\n\
         ERROR wrong number of arguments, usage: get <key>\n\
         ERROR wrong number of arguments, usage: get <key>\n\
         ERROR wrong number of arguments, usage: set <key> <value>\n\
         ERROR key too long (max 250 bytes)\n\
         ERROR value too large (max 8 bytes)\n\
         STORED\n\
         ERROR bad escape: \\z\n\
         ERROR wrong number of arguments, usage: keys [<pattern>]\n\
         ERROR key contains whitespace or control characters\n\
         VALUE 12345678\n"
    );
}

#[test]
fn an_overlong_line_is_refused_without_buffering_it_and_the_next_line_works() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &["--max-line-bytes", "1024"]);
    let mut stream = server.raw();
    stream.write_all(b"set before 1\nset huge ").unwrap();
    // 4 MiB of one line in pieces: far more than the limit.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..64 {
        stream.write_all(&chunk).unwrap();
    }
    stream.write_all(b"\nget before\n").unwrap();
    let expected = b"STORED\nERROR line too long (max 1024 bytes)\nVALUE 1\n";
    assert_eq!(common::read_exact_reply(&mut stream, expected.len()), expected);
    assert_eq!(server.client().get(b"huge").unwrap(), None);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2000 {
        request.extend_from_slice(format!("set key{i} value{i}\nget key{i}\n").as_bytes());
        expected.extend_from_slice(format!("STORED\nVALUE value{i}\n").as_bytes());
    }
    assert_eq!(transcript(server.addr, &request), expected);
}

#[test]
fn comment_and_blank_lines_get_no_reply_so_database_files_replay() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/database.txt")).unwrap();
    let reply = String::from_utf8(transcript(server.addr, &file)).unwrap();
    assert!(reply.lines().all(|l| l == "STORED" || l == "DELETED"), "{reply}");
    let mut client = server.client();
    assert_eq!(client.get(b"user:2:name").unwrap().unwrap(), b"Grace Brewster Murray Hopper");
    assert_eq!(client.get(b"motd").unwrap().unwrap(), b"Line one\nLine two");
}

/// `keys` over a listing far larger than one part of a reply (about 64 KiB): every key once,
/// shard order, and a request pipelined behind it is answered after its `END`.
#[test]
fn a_long_keys_listing_is_streamed_complete_and_in_order_with_pipelined_requests() {
    let (_dir, db) = temp_db();
    common::write_numbered_keys(&db, 30_000, 20);
    let server = Server::start(&db, &[]);
    let reply = transcript(server.addr, b"keys\nping\nkeys key:000000000002\nping\n");
    let text = String::from_utf8(reply).unwrap();
    let (first, rest) = text.split_once("END\nPONG\n").expect("the first listing ends before the ping");
    let mut listed: Vec<&str> = first.lines().map(|l| l.strip_prefix("KEY ").unwrap()).collect();
    assert!(first.len() > 4 * 64 * 1024, "the listing spans several parts");
    listed.sort_unstable();
    let expected: Vec<String> = (0..30_000).map(|i| common::numbered_key(i, 20)).collect();
    assert_eq!(listed, expected, "every key exactly once");
    let (second, tail) = rest.split_once("END\n").unwrap();
    assert_eq!(second.lines().count(), 10_000, "keys key:…2 lists key:…20000 to 29999");
    assert_eq!(tail, "PONG\n");
}
