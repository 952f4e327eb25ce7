//! How replies are shown: raw (the protocol's lines, for scripts and pipes) or as redis-cli
//! shows them on a terminal.
//!
//! | reply | shown |
//! |---|---|
//! | `STORED`, `OK`, `DELETED` | `OK` |
//! | `NOT_FOUND` | `(nil)` |
//! | `INT <n>` | `(integer) <n>` |
//! | `VALUE <escaped>` | `"<escaped>"` (escaped, so it can be pasted back into `set`) |
//! | `ERROR <reason>` | `(error) <reason>` |
//! | `KEY`/`VALUE`/`NOT_FOUND` lines of `keys`, `scan`, `mget` | numbered: `1) "a"` |
//! | `CURSOR <c>` | `cursor <c>` |
//! | `STAT <name> <value>`, `END` | `<name>:<value>`, nothing |
//!
//! Anything else (`PONG`, `ITEM …`, `EXISTS`, `help`'s lines) is shown as it is.

use std::io::{self, Write};

/// Shows the reply lines of one request.
pub fn show(lines: &[Vec<u8>], human: bool, out: &mut impl Write) -> io::Result<()> {
    if !human {
        for line in lines {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let listing = lines.len() > 1 || lines.first().is_some_and(|l| l == b"END");
    let mut n = 0;
    for line in lines {
        if listing {
            if line == b"END" {
                if n == 0 && lines.len() == 1 {
                    writeln!(out, "(empty list)")?;
                }
                continue;
            }
            if let Some(stat) = line.strip_prefix(b"STAT ") {
                let text = String::from_utf8_lossy(stat);
                writeln!(out, "{}", text.replacen(' ', ":", 1))?;
                continue;
            }
            if let Some(cursor) = line.strip_prefix(b"CURSOR ") {
                writeln!(out, "cursor {}", String::from_utf8_lossy(cursor))?;
                continue;
            }
            let item = match line.strip_prefix(b"KEY ") {
                Some(key) => quoted(key),
                None if line.starts_with(b"VALUE ") || line == b"NOT_FOUND" => single(line),
                None => {
                    // `help` and other text: as it is.
                    writeln!(out, "{}", String::from_utf8_lossy(line))?;
                    continue;
                }
            };
            n += 1;
            writeln!(out, "{n}) {item}")?;
        } else {
            writeln!(out, "{}", single(line))?;
        }
    }
    Ok(())
}

fn single(line: &[u8]) -> String {
    match line {
        b"STORED" | b"OK" | b"DELETED" => "OK".into(),
        b"NOT_FOUND" => "(nil)".into(),
        _ => {
            if let Some(n) = line.strip_prefix(b"INT ") {
                format!("(integer) {}", String::from_utf8_lossy(n))
            } else if let Some(value) = line.strip_prefix(b"VALUE ") {
                quoted(value)
            } else if let Some(reason) = line.strip_prefix(b"ERROR ") {
                format!("(error) {}", String::from_utf8_lossy(reason))
            } else {
                String::from_utf8_lossy(line).into_owned()
            }
        }
    }
}

/// Wire text (already escaped, so one line) in double quotes; a `"` inside is shown `\"`.
fn quoted(text: &[u8]) -> String {
    format!("\"{}\"", String::from_utf8_lossy(text).replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(lines: &[&str]) -> String {
        let lines: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        let mut out = Vec::new();
        show(&lines, true, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_look_like_redis_cli() {
        assert_eq!(human(&["STORED"]), "OK\n");
        assert_eq!(human(&["NOT_FOUND"]), "(nil)\n");
        assert_eq!(human(&["INT 3"]), "(integer) 3\n");
        assert_eq!(human(&["VALUE hello world\\n"]), "\"hello world\\n\"\n");
        assert_eq!(human(&["ERROR unknown command 'x'"]), "(error) unknown command 'x'\n");
        assert_eq!(human(&["KEY a", "KEY b", "END"]), "1) \"a\"\n2) \"b\"\n");
        assert_eq!(human(&["END"]), "(empty list)\n");
        assert_eq!(human(&["CURSOR 0", "END"]), "cursor 0\n");
        assert_eq!(human(&["VALUE 1", "NOT_FOUND", "END"]), "1) \"1\"\n2) (nil)\n");
        assert_eq!(human(&["CURSOR 0", "KEY a", "END"]), "cursor 0\n1) \"a\"\n");
        assert_eq!(human(&["STAT keys 3", "STAT pid 9", "END"]), "keys:3\npid:9\n");
        assert_eq!(human(&["get <key>  VALUE", "ping  PONG", "END"]), "get <key>  VALUE\nping  PONG\n");
    }

    #[test]
    fn raw_is_the_protocol() {
        let mut out = Vec::new();
        show(&[b"STORED".to_vec(), b"INT 2".to_vec()], false, &mut out).unwrap();
        assert_eq!(out, b"STORED\nINT 2\n");
    }
}
