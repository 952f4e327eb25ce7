//! The three wire protocols kvbench speaks, GET and SET only: request encoders that append to
//! a reused buffer and reply parsers that work in place on the read buffer.
//!
//! | protocol    | get                    | set                                  |
//! |-------------|------------------------|--------------------------------------|
//! | `line`      | `get K\n` → `VALUE V\n` / `NOT_FOUND\n` | `set K V\n` → `STORED\n` |
//! | `memcached` | `get K\r\n` → `VALUE K 0 N\r\nV\r\nEND\r\n` / `END\r\n` | `set K 0 0 N\r\nV\r\n` → `STORED\r\n` |
//! | `resp`      | `*2 $3 GET $n K` → `$N V` / `$-1` | `*3 $3 SET $n K $N V` → `+OK` |
//!
//! A parser answers `Ok(None)` when the buffer does not yet hold a whole reply (read more),
//! and `Err` when the bytes cannot be a reply at all (the run stops: the numbers would be
//! meaningless).

use std::ops::Range;

use crate::protocol::push_decimal;

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// textkv's line protocol (`--listen`).
    Line,
    /// memcached's ASCII protocol (memcached, `kvserver --memcached`).
    Memcached,
    /// Redis RESP2, GET and SET only.
    Resp,
}

/// One parsed reply; ranges index into the buffer given to [`Protocol::parse_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Value(Range<usize>),
    NotFound,
    Stored,
    /// An error reply (the whole line), counted but not fatal.
    Error(Range<usize>),
}

fn parse_decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')))
}

/// The first line of `buf`: (its content without `\r\n`/`\n`, bytes up to and including `\n`).
fn first_line(buf: &[u8]) -> Option<(Range<usize>, usize)> {
    let newline = buf.iter().position(|&b| b == b'\n')?;
    let end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
    Some((0..end, newline + 1))
}

fn bad(buf: &[u8], line: Range<usize>) -> String {
    let shown = &buf[line.start..line.end.min(line.start + 120)];
    format!("unexpected reply: {:?}", String::from_utf8_lossy(shown))
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Line => "line",
            Protocol::Memcached => "memcached",
            Protocol::Resp => "resp",
        }
    }

    /// Appends a GET of `key`.
    pub fn push_get(self, key: &[u8], out: &mut Vec<u8>) {
        match self {
            Protocol::Line => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(key);
                out.push(b'\n');
            }
            Protocol::Memcached => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(key);
                out.extend_from_slice(b"\r\n");
            }
            Protocol::Resp => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$");
                push_decimal(key.len() as u64, out);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(key);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends a SET of `key`; the value is written by `value` (so it goes straight into the
    /// request buffer) and must be `len` bytes of printable ASCII without spaces.
    pub fn push_set(self, key: &[u8], len: usize, out: &mut Vec<u8>, value: impl FnOnce(&mut Vec<u8>)) {
        match self {
            Protocol::Line => {
                out.extend_from_slice(b"set ");
                out.extend_from_slice(key);
                out.push(b' ');
                value(out);
                out.push(b'\n');
            }
            Protocol::Memcached => {
                out.extend_from_slice(b"set ");
                out.extend_from_slice(key);
                out.extend_from_slice(b" 0 0 ");
                push_decimal(len as u64, out);
                out.extend_from_slice(b"\r\n");
                value(out);
                out.extend_from_slice(b"\r\n");
            }
            Protocol::Resp => {
                out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$");
                push_decimal(key.len() as u64, out);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(key);
                out.extend_from_slice(b"\r\n$");
                push_decimal(len as u64, out);
                out.extend_from_slice(b"\r\n");
                value(out);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Parses the reply at the start of `buf`: `Ok(Some((bytes used, reply)))`, `Ok(None)` if
    /// incomplete, `Err` if it is no reply of this protocol.
    pub fn parse_reply(self, buf: &[u8]) -> Result<Option<(usize, Reply)>, String> {
        let Some((line, used)) = first_line(buf) else { return Ok(None) };
        let text = &buf[line.clone()];
        match self {
            Protocol::Line => {
                let reply = if let Some(value) = text.strip_prefix(b"VALUE ") {
                    Reply::Value(line.end - value.len()..line.end)
                } else if text == b"NOT_FOUND" {
                    Reply::NotFound
                } else if text == b"STORED" {
                    Reply::Stored
                } else if text.starts_with(b"ERROR") {
                    Reply::Error(line)
                } else {
                    return Err(bad(buf, line));
                };
                Ok(Some((used, reply)))
            }
            Protocol::Memcached => {
                if text == b"END" {
                    Ok(Some((used, Reply::NotFound)))
                } else if text == b"STORED" {
                    Ok(Some((used, Reply::Stored)))
                } else if text.starts_with(b"VALUE ") {
                    // VALUE <key> <flags> <bytes> [<cas>]
                    let len = text
                        .split(|&b| b == b' ')
                        .nth(3)
                        .and_then(parse_decimal)
                        .ok_or_else(|| bad(buf, line.clone()))?;
                    let data = used..used + len;
                    let total = data.end + 2 + b"END\r\n".len();
                    if buf.len() < total {
                        return Ok(None);
                    }
                    if &buf[data.end..total] != b"\r\nEND\r\n" {
                        return Err(bad(buf, line));
                    }
                    Ok(Some((total, Reply::Value(data))))
                } else if text.starts_with(b"ERROR")
                    || text.starts_with(b"CLIENT_ERROR")
                    || text.starts_with(b"SERVER_ERROR")
                    || text == b"NOT_STORED"
                {
                    Ok(Some((used, Reply::Error(line))))
                } else {
                    Err(bad(buf, line))
                }
            }
            Protocol::Resp => match text.first() {
                Some(b'$') if text == b"$-1" => Ok(Some((used, Reply::NotFound))),
                Some(b'$') => {
                    let len = parse_decimal(&text[1..]).ok_or_else(|| bad(buf, line.clone()))?;
                    let data = used..used + len;
                    if buf.len() < data.end + 2 {
                        return Ok(None);
                    }
                    if &buf[data.end..data.end + 2] != b"\r\n" {
                        return Err(bad(buf, line));
                    }
                    Ok(Some((data.end + 2, Reply::Value(data))))
                }
                Some(b'+') if text == b"+OK" => Ok(Some((used, Reply::Stored))),
                Some(b'-') => Ok(Some((used, Reply::Error(line)))),
                _ => Err(bad(buf, line)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(protocol: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        protocol.push_set(b"k1", 3, &mut out, |out| out.extend_from_slice(b"abc"));
        out
    }

    fn get(protocol: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        protocol.push_get(b"k1", &mut out);
        out
    }

    #[test]
    fn requests_are_encoded_per_protocol() {
        assert_eq!(set(Protocol::Line), b"set k1 abc\n");
        assert_eq!(get(Protocol::Line), b"get k1\n");
        assert_eq!(set(Protocol::Memcached), b"set k1 0 0 3\r\nabc\r\n");
        assert_eq!(get(Protocol::Memcached), b"get k1\r\n");
        assert_eq!(set(Protocol::Resp), b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$3\r\nabc\r\n");
        assert_eq!(get(Protocol::Resp), b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n");
    }

    fn parse(protocol: Protocol, buf: &[u8]) -> Option<(usize, Reply)> {
        protocol.parse_reply(buf).unwrap()
    }

    #[test]
    fn line_replies() {
        let p = Protocol::Line;
        assert_eq!(parse(p, b"VALUE abc\nSTORED\n"), Some((10, Reply::Value(6..9))));
        assert_eq!(parse(p, b"NOT_FOUND\r\n"), Some((11, Reply::NotFound)));
        assert_eq!(parse(p, b"STORED\n"), Some((7, Reply::Stored)));
        assert_eq!(parse(p, b"ERROR boom\n"), Some((11, Reply::Error(0..10))));
        assert_eq!(parse(p, b"VALUE ab"), None);
        assert!(p.parse_reply(b"WHAT\n").is_err());
    }

    #[test]
    fn memcached_replies() {
        let p = Protocol::Memcached;
        let hit = b"VALUE k1 0 3\r\nabc\r\nEND\r\n";
        assert_eq!(parse(p, hit), Some((hit.len(), Reply::Value(14..17))));
        for cut in 0..hit.len() {
            assert_eq!(parse(p, &hit[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(p, b"END\r\n"), Some((5, Reply::NotFound)));
        assert_eq!(parse(p, b"STORED\r\n"), Some((8, Reply::Stored)));
        assert_eq!(parse(p, b"SERVER_ERROR out of memory\r\n"), Some((28, Reply::Error(0..26))));
        assert!(p.parse_reply(b"VALUE k1 0 3\r\nabcXXEND\r\n").is_err());
    }

    #[test]
    fn resp_replies() {
        let p = Protocol::Resp;
        assert_eq!(parse(p, b"$3\r\nabc\r\n"), Some((9, Reply::Value(4..7))));
        assert_eq!(parse(p, b"$3\r\nab"), None);
        assert_eq!(parse(p, b"$-1\r\n"), Some((5, Reply::NotFound)));
        assert_eq!(parse(p, b"+OK\r\n"), Some((5, Reply::Stored)));
        assert_eq!(parse(p, b"-ERR x\r\n"), Some((8, Reply::Error(0..6))));
        assert!(p.parse_reply(b":1\r\n").is_err());
    }
}
