//! The `database.txt` record format: one record is one line, and one line is one
//! line-protocol command.
//!
//! ```text
//! # comments and blank lines are ignored
//! set <key> <value>                              flags 0, never expires
//! setmeta <key> <flags> <expires-at> <value>     memcached flags (u32) and absolute expiry
//!                                                (Unix seconds as u32, 0 = never)
//! del <key>
//! flush                                          every key before this line is gone
//! ```
//!
//! Values are escaped (see [`crate::escape`]); the value is everything after the single space
//! that follows the previous field, so it may contain spaces. Keys are 1–250 bytes with no
//! whitespace or control characters and are written as they are. Command words are
//! case-insensitive when read and lower case when written.
//!
//! Because the line protocol accepts these same lines, replaying the file through it
//! (`nc 127.0.0.1 7878 < database.txt`) rebuilds the database, and expiry survives because it
//! is absolute. CAS uniques are not stored: they are regenerated from a clock at start-up (see
//! `store::writer`).

use std::borrow::Cow;
use std::fmt;

use crate::escape::{escape_into, unescape, EscapeError};

/// Latest expiry time that can be stored (Unix seconds, in 2106); later ones are clamped to
/// it when written, so every record the server writes can be read back.
pub const MAX_EXPIRES_AT: u64 = u32::MAX as u64;

/// Longest key accepted anywhere, as in memcached.
pub const MAX_KEY_BYTES: usize = 250;

/// One line of the log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        /// Unix seconds; 0 means never.
        expires_at: u64,
    },
    Del {
        key: Vec<u8>,
    },
    Flush,
}

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    UnknownCommand(String),
    WrongArgs(&'static str),
    Key(KeyError),
    BadNumber(&'static str),
    Escape(EscapeError),
}

/// Why a key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    BadByte,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "empty key"),
            KeyError::TooLong => write!(f, "key too long (max {MAX_KEY_BYTES} bytes)"),
            KeyError::BadByte => write!(f, "key contains whitespace or control characters"),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::UnknownCommand(c) => write!(f, "unknown command '{c}'"),
            FormatError::WrongArgs(usage) => write!(f, "wrong number of arguments, usage: {usage}"),
            FormatError::Key(e) => e.fmt(f),
            FormatError::BadNumber(what) => write!(f, "bad number for {what}"),
            FormatError::Escape(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FormatError {}

impl FormatError {
    /// The command word is shown escaped: a line may hold a raw `\r`, an ANSI escape or
    /// invalid UTF-8, and an error reply or log line must stay one clean line of text.
    pub fn unknown_command(word: &[u8]) -> FormatError {
        FormatError::UnknownCommand(String::from_utf8_lossy(&crate::escape::escape(word)).into_owned())
    }
}

impl From<KeyError> for FormatError {
    fn from(e: KeyError) -> Self {
        FormatError::Key(e)
    }
}

/// Checks the key rules shared by every protocol.
pub fn validate_key(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        Err(KeyError::Empty)
    } else if key.len() > MAX_KEY_BYTES {
        Err(KeyError::TooLong)
    } else if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        Err(KeyError::BadByte)
    } else {
        Ok(())
    }
}

pub const SET_USAGE: &str = "set <key> <value>";
pub const SETMETA_USAGE: &str = "setmeta <key> <flags> <expires-at> <value>";
pub const DEL_USAGE: &str = "del <key>";
pub const FLUSH_USAGE: &str = "flush";

/// Splits off the first space-separated token. The rest keeps everything after exactly one
/// space, which is what lets a value begin or end with spaces.
pub fn split_token(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    }
}

/// Is `word` one of the record commands (so the line protocol should hand it to
/// [`Record::parse`])?
pub fn is_record_command(word: &[u8]) -> bool {
    ["set", "setmeta", "del", "flush"].iter().any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
}

/// A record borrowed from the line it was parsed from: start-up replays millions of these, and
/// most values contain no escape, so they are not copied until they reach the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef<'a> {
    Set { key: &'a [u8], value: Cow<'a, [u8]>, flags: u32, expires_at: u64 },
    Del { key: &'a [u8] },
    Flush,
}

impl<'a> RecordRef<'a> {
    /// Parses one line (without its line ending).
    pub fn parse(line: &'a [u8]) -> Result<RecordRef<'a>, FormatError> {
        let (word, rest) = split_token(line);
        let value_of = |text: &'a [u8]| unescape_cow(text).map_err(FormatError::Escape);
        if word.eq_ignore_ascii_case(b"set") {
            let (key, value) = split_token(rest.ok_or(FormatError::WrongArgs(SET_USAGE))?);
            let value = value.ok_or(FormatError::WrongArgs(SET_USAGE))?;
            validate_key(key)?;
            Ok(RecordRef::Set { key, value: value_of(value)?, flags: 0, expires_at: 0 })
        } else if word.eq_ignore_ascii_case(b"setmeta") {
            let args = rest.ok_or(FormatError::WrongArgs(SETMETA_USAGE))?;
            let (key, args) = split_token(args);
            let (flags, args) = split_token(args.ok_or(FormatError::WrongArgs(SETMETA_USAGE))?);
            let (expires, value) = split_token(args.ok_or(FormatError::WrongArgs(SETMETA_USAGE))?);
            let value = value.ok_or(FormatError::WrongArgs(SETMETA_USAGE))?;
            validate_key(key)?;
            Ok(RecordRef::Set {
                key,
                flags: parse_number(flags).ok_or(FormatError::BadNumber("flags"))?,
                expires_at: parse_number::<u32>(expires)
                    .map(u64::from)
                    .ok_or(FormatError::BadNumber("expires-at"))?,
                value: value_of(value)?,
            })
        } else if word.eq_ignore_ascii_case(b"del") {
            let key = rest.ok_or(FormatError::WrongArgs(DEL_USAGE))?;
            if key.contains(&b' ') {
                return Err(FormatError::WrongArgs(DEL_USAGE));
            }
            validate_key(key)?;
            Ok(RecordRef::Del { key })
        } else if word.eq_ignore_ascii_case(b"flush") {
            match rest {
                None => Ok(RecordRef::Flush),
                Some(_) => Err(FormatError::WrongArgs(FLUSH_USAGE)),
            }
        } else {
            Err(FormatError::unknown_command(word))
        }
    }

    pub fn into_owned(self) -> Record {
        match self {
            RecordRef::Set { key, value, flags, expires_at } => {
                Record::Set { key: key.to_vec(), value: value.into_owned(), flags, expires_at }
            }
            RecordRef::Del { key } => Record::Del { key: key.to_vec() },
            RecordRef::Flush => Record::Flush,
        }
    }
}

/// Unescapes without copying when there is nothing to unescape.
fn unescape_cow(text: &[u8]) -> Result<Cow<'_, [u8]>, EscapeError> {
    if text.contains(&b'\\') {
        unescape(text).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(text))
    }
}

impl Record {
    /// Parses one line (without its line ending).
    pub fn parse(line: &[u8]) -> Result<Record, FormatError> {
        RecordRef::parse(line).map(RecordRef::into_owned)
    }

    /// Appends this record as one line, newline included.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Set { key, value, flags, expires_at } => encode_set(key, value, *flags, *expires_at, out),
            Record::Del { key } => encode_del(key, out),
            Record::Flush => encode_flush(out),
        }
    }
}

/// Appends a `set`/`setmeta` line for an item, newline included.
pub fn encode_set(key: &[u8], value: &[u8], flags: u32, expires_at: u64, out: &mut Vec<u8>) {
    if flags == 0 && expires_at == 0 {
        out.extend_from_slice(b"set ");
        out.extend_from_slice(key);
    } else {
        out.extend_from_slice(b"setmeta ");
        out.extend_from_slice(key);
        out.extend_from_slice(format!(" {flags} {expires_at}").as_bytes());
    }
    out.push(b' ');
    escape_into(value, out);
    out.push(b'\n');
}

/// Appends a `del` line, newline included.
pub fn encode_del(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"del ");
    out.extend_from_slice(key);
    out.push(b'\n');
}

pub fn encode_flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"flush\n");
}

/// Parses an unsigned decimal made only of ASCII digits (no sign, no spaces).
pub fn parse_number<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(r: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode_into(&mut out);
        out
    }

    #[test]
    fn plain_items_are_written_as_set_lines() {
        let r =
            Record::Set { key: b"user:1".to_vec(), value: b"Ada Lovelace".to_vec(), flags: 0, expires_at: 0 };
        assert_eq!(encoded(&r), b"set user:1 Ada Lovelace\n");
    }

    #[test]
    fn metadata_is_written_as_setmeta() {
        let r =
            Record::Set { key: b"k".to_vec(), value: b"v\n".to_vec(), flags: 7, expires_at: 1_800_000_000 };
        assert_eq!(encoded(&r), b"setmeta k 7 1800000000 v\\n\n");
    }

    #[test]
    fn value_keeps_leading_and_trailing_spaces() {
        assert_eq!(
            Record::parse(b"set k  two  spaces ").unwrap(),
            Record::Set { key: b"k".to_vec(), value: b" two  spaces ".to_vec(), flags: 0, expires_at: 0 }
        );
        assert_eq!(
            Record::parse(b"set k ").unwrap(),
            Record::Set { key: b"k".to_vec(), value: Vec::new(), flags: 0, expires_at: 0 }
        );
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(Record::parse(b"DEL k").unwrap(), Record::Del { key: b"k".to_vec() });
        assert_eq!(Record::parse(b"Flush").unwrap(), Record::Flush);
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        assert_eq!(Record::parse(b"set k"), Err(FormatError::WrongArgs(SET_USAGE)));
        assert_eq!(Record::parse(b"set"), Err(FormatError::WrongArgs(SET_USAGE)));
        assert_eq!(Record::parse(b"del a b"), Err(FormatError::WrongArgs(DEL_USAGE)));
        assert_eq!(Record::parse(b"flush now"), Err(FormatError::WrongArgs(FLUSH_USAGE)));
        assert_eq!(Record::parse(b"setmeta k x 0 v"), Err(FormatError::BadNumber("flags")));
        assert_eq!(Record::parse(b"setmeta k 4294967296 0 v"), Err(FormatError::BadNumber("flags")));
        assert_eq!(Record::parse(b"setmeta k 0 -1 v"), Err(FormatError::BadNumber("expires-at")));
        assert_eq!(Record::parse(b"setmeta k 0 4294967296 v"), Err(FormatError::BadNumber("expires-at")));
        assert_eq!(Record::parse(b"set k \\q"), Err(FormatError::Escape(EscapeError::UnknownEscape(b'q'))));
        assert!(matches!(Record::parse(b"sett k v"), Err(FormatError::UnknownCommand(_))));
        assert_eq!(
            Record::parse(b"s\re\x1b\xff k v").unwrap_err().to_string(),
            "unknown command 's\\re\\x1b\\xff'",
            "control bytes and invalid UTF-8 in the command word are escaped in the message"
        );
        assert_eq!(Record::parse(b"set \x01 v"), Err(FormatError::Key(KeyError::BadByte)));
        assert_eq!(Record::parse(b"set  v"), Err(FormatError::Key(KeyError::Empty)));
    }

    #[test]
    fn key_limits() {
        assert_eq!(validate_key(&[b'a'; MAX_KEY_BYTES]), Ok(()));
        assert_eq!(validate_key(&[b'a'; MAX_KEY_BYTES + 1]), Err(KeyError::TooLong));
        assert_eq!(validate_key("ключ".as_bytes()), Ok(()));
        assert_eq!(validate_key(b"a\tb"), Err(KeyError::BadByte));
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=MAX_KEY_BYTES)
            .prop_filter("DEL is a control byte", |k| !k.contains(&0x7f))
    }

    proptest! {
        #[test]
        fn any_record_round_trips_through_one_line(
            key in key_strategy(),
            value in proptest::collection::vec(any::<u8>(), 0..200),
            flags in any::<u32>(),
            expires_at in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
            kind in 0..3u8,
        ) {
            let record = match kind {
                0 => Record::Set { key, value, flags, expires_at },
                1 => Record::Del { key },
                _ => Record::Flush,
            };
            let line = encoded(&record);
            prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert_eq!(Record::parse(&line[..line.len() - 1]).unwrap(), record);
        }
    }
}
