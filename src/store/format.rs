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
//! copy <src> <dst>                               dst becomes a copy of src's item
//! rename <src> <dst>                             dst takes src's item; src is gone
//! rename <src> <dst> <flags> <expires-at> <value>   the same, carrying the item moved
//! delprefix <prefix>                             every key starting with prefix is gone
//! ```
//!
//! Values are escaped (see [`crate::escape`]); the value is everything after the single space
//! that follows the previous field, so it may contain spaces. Command words are
//! case-insensitive when read and lower case when written.
//!
//! Keys (and prefixes) are 1–250 bytes with no whitespace or control characters. A key that
//! is valid UTF-8 without a backslash is written as it is; any other is written escaped like a
//! value (`\\` for a backslash, `\xHH` for each byte that is not UTF-8), so the file stays
//! text that `grep` and editors treat as such. Files written before keys were escaped hold
//! such keys raw; they still load, because a key token is decoded only when it holds a
//! backslash and decodes to a valid key, and is taken as it is otherwise. The one ambiguity
//! left: an old raw key holding `\\` or `\xHH` (HH a printable byte) now reads back
//! unescaped. Line-protocol requests carry keys raw ([`KeyText::Raw`]).
//!
//! `copy` and `rename` depend on the state they are replayed on (src's item at that point).
//! That is exact at start-up, which replays the whole file in order; but a compaction
//! replays the records written while it ran (the tail) on top of a walk of the index that
//! may already show later writes. So while a compaction runs, the writer writes a copy as a
//! plain `set`/`setmeta` of dst and a rename in its second form, carrying the item: both then
//! say everything they do, as `set`, `del`, `flush` and `delprefix` always do.
//!
//! Because the line protocol accepts these same lines, replaying the file through it
//! (`nc 127.0.0.1 7878 < database.txt`) rebuilds the database (except for the second form of
//! `rename`, which only start-up reads, and escaped keys, which come back escaped), and
//! expiry survives because it is absolute. CAS uniques are not stored: they are regenerated
//! from a clock at start-up (see `store::writer`).

use std::borrow::Cow;
use std::fmt;

use crate::escape::{escape_into, unescape, EscapeError};
use crate::protocol::push_decimal;

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
    Copy {
        src: Vec<u8>,
        dst: Vec<u8>,
    },
    Rename {
        src: Vec<u8>,
        dst: Vec<u8>,
        /// The item moved, in the form written while a compaction runs.
        moved: Option<Moved>,
    },
    DelPrefix {
        prefix: Vec<u8>,
    },
}

/// The item a `rename` record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub value: Vec<u8>,
    pub flags: u32,
    /// Unix seconds; 0 means never.
    pub expires_at: u64,
}

/// How keys are written in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyText {
    /// As they are: line-protocol requests.
    Raw,
    /// Escaped unless plain UTF-8 (see the module notes): `database.txt`.
    Escaped,
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
pub const COPY_USAGE: &str = "copy <src> <dst>";
pub const RENAME_USAGE: &str = "rename <src> <dst>";
pub const DELPREFIX_USAGE: &str = "delprefix <prefix>";

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
    ["set", "setmeta", "del", "flush", "delprefix"].iter().any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
}

/// A record borrowed from the line it was parsed from: start-up replays millions of these, and
/// most keys and values contain no escape, so they are not copied until they reach the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef<'a> {
    Set { key: Cow<'a, [u8]>, value: Cow<'a, [u8]>, flags: u32, expires_at: u64 },
    Del { key: Cow<'a, [u8]> },
    Flush,
    Copy { src: Cow<'a, [u8]>, dst: Cow<'a, [u8]> },
    Rename { src: Cow<'a, [u8]>, dst: Cow<'a, [u8]>, moved: Option<MovedRef<'a>> },
    DelPrefix { prefix: Cow<'a, [u8]> },
}

/// [`Moved`], borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedRef<'a> {
    pub value: Cow<'a, [u8]>,
    pub flags: u32,
    pub expires_at: u64,
}

/// Parses `<flags> <expires-at> <value>` (the tail of `setmeta` and of a moving `rename`); the
/// value is returned as its escaped text.
fn parse_meta<'a>(args: Option<&'a [u8]>, usage: &'static str) -> Result<(u32, u64, &'a [u8]), FormatError> {
    let (flags, args) = split_token(args.ok_or(FormatError::WrongArgs(usage))?);
    let (expires, value) = split_token(args.ok_or(FormatError::WrongArgs(usage))?);
    let value = value.ok_or(FormatError::WrongArgs(usage))?;
    let flags = parse_number(flags).ok_or(FormatError::BadNumber("flags"))?;
    let expires_at =
        parse_number::<u32>(expires).map(u64::from).ok_or(FormatError::BadNumber("expires-at"))?;
    Ok((flags, expires_at, value))
}

/// A `set` or `setmeta` line with its value still escaped: the line protocol decodes the
/// value itself ([`crate::store::Value::from_escaped`]), keeping its text for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLine<'a> {
    pub key: Cow<'a, [u8]>,
    pub flags: u32,
    pub expires_at: u64,
    pub value_text: &'a [u8],
}

impl<'a> SetLine<'a> {
    /// Parses `line` (without its line ending) when it is a `set` or `setmeta` line; `None`
    /// when it is another command.
    pub fn parse_as(line: &'a [u8], keys: KeyText) -> Option<Result<SetLine<'a>, FormatError>> {
        let (word, rest) = split_token(line);
        if word.eq_ignore_ascii_case(b"set") {
            Some(SetLine::parse_set(rest, keys))
        } else if word.eq_ignore_ascii_case(b"setmeta") {
            Some(SetLine::parse_setmeta(rest, keys))
        } else {
            None
        }
    }

    /// `<key> <value>`
    fn parse_set(rest: Option<&'a [u8]>, keys: KeyText) -> Result<SetLine<'a>, FormatError> {
        let (key, value) = split_token(rest.ok_or(FormatError::WrongArgs(SET_USAGE))?);
        let value_text = value.ok_or(FormatError::WrongArgs(SET_USAGE))?;
        Ok(SetLine { key: decode_key(key, keys)?, flags: 0, expires_at: 0, value_text })
    }

    /// `<key> <flags> <expires-at> <value>`
    fn parse_setmeta(rest: Option<&'a [u8]>, keys: KeyText) -> Result<SetLine<'a>, FormatError> {
        let (key, args) = split_token(rest.ok_or(FormatError::WrongArgs(SETMETA_USAGE))?);
        let key = decode_key(key, keys)?;
        let (flags, expires_at, value_text) = parse_meta(args, SETMETA_USAGE)?;
        Ok(SetLine { key, flags, expires_at, value_text })
    }
}

/// The arguments of a command that takes exactly `N` keys.
fn keys_only<'a, const N: usize>(
    rest: Option<&'a [u8]>,
    keys: KeyText,
    usage: &'static str,
) -> Result<[Cow<'a, [u8]>; N], FormatError> {
    let tokens: Vec<&[u8]> = rest.ok_or(FormatError::WrongArgs(usage))?.split(|&b| b == b' ').collect();
    if tokens.len() != N {
        return Err(FormatError::WrongArgs(usage));
    }
    let decoded: Vec<Cow<'a, [u8]>> =
        tokens.into_iter().map(|token| decode_key(token, keys)).collect::<Result<_, _>>()?;
    decoded.try_into().map_err(|_| FormatError::WrongArgs(usage))
}

impl<'a> RecordRef<'a> {
    /// Parses one line of `database.txt` (without its line ending).
    pub fn parse(line: &'a [u8]) -> Result<RecordRef<'a>, FormatError> {
        RecordRef::parse_as(line, KeyText::Escaped)
    }

    /// Parses one line (without its line ending) whose keys are written as `keys` says.
    pub fn parse_as(line: &'a [u8], keys: KeyText) -> Result<RecordRef<'a>, FormatError> {
        if let Some(set) = SetLine::parse_as(line, keys) {
            let SetLine { key, flags, expires_at, value_text } = set?;
            let value = unescape_cow(value_text).map_err(FormatError::Escape)?;
            return Ok(RecordRef::Set { key, value, flags, expires_at });
        }
        let (word, rest) = split_token(line);
        let key_of = |text: &'a [u8]| decode_key(text, keys);
        if word.eq_ignore_ascii_case(b"flush") {
            match rest {
                None => Ok(RecordRef::Flush),
                Some(_) => Err(FormatError::WrongArgs(FLUSH_USAGE)),
            }
        } else if word.eq_ignore_ascii_case(b"del") {
            let [key] = keys_only(rest, keys, DEL_USAGE)?;
            Ok(RecordRef::Del { key })
        } else if word.eq_ignore_ascii_case(b"copy") {
            let [src, dst] = keys_only(rest, keys, COPY_USAGE)?;
            Ok(RecordRef::Copy { src, dst })
        } else if word.eq_ignore_ascii_case(b"rename") {
            let (src, args) = split_token(rest.ok_or(FormatError::WrongArgs(RENAME_USAGE))?);
            let (dst, args) = split_token(args.ok_or(FormatError::WrongArgs(RENAME_USAGE))?);
            let (src, dst) = (key_of(src)?, key_of(dst)?);
            let moved = match args {
                None => None,
                Some(_) => {
                    let (flags, expires_at, value) = parse_meta(args, RENAME_USAGE)?;
                    let value = unescape_cow(value).map_err(FormatError::Escape)?;
                    Some(MovedRef { value, flags, expires_at })
                }
            };
            Ok(RecordRef::Rename { src, dst, moved })
        } else if word.eq_ignore_ascii_case(b"delprefix") {
            let [prefix] = keys_only(rest, keys, DELPREFIX_USAGE)?;
            Ok(RecordRef::DelPrefix { prefix })
        } else {
            Err(FormatError::unknown_command(word))
        }
    }

    pub fn into_owned(self) -> Record {
        match self {
            RecordRef::Set { key, value, flags, expires_at } => {
                Record::Set { key: key.into_owned(), value: value.into_owned(), flags, expires_at }
            }
            RecordRef::Del { key } => Record::Del { key: key.into_owned() },
            RecordRef::Flush => Record::Flush,
            RecordRef::Copy { src, dst } => Record::Copy { src: src.into_owned(), dst: dst.into_owned() },
            RecordRef::Rename { src, dst, moved } => Record::Rename {
                src: src.into_owned(),
                dst: dst.into_owned(),
                moved: moved.map(|m| Moved {
                    value: m.value.into_owned(),
                    flags: m.flags,
                    expires_at: m.expires_at,
                }),
            },
            RecordRef::DelPrefix { prefix } => Record::DelPrefix { prefix: prefix.into_owned() },
        }
    }
}

/// Reads a key token: as it is for [`KeyText::Raw`]; for [`KeyText::Escaped`], unescaped when
/// it holds a backslash and the result is a valid key (else as it is: an old file's raw key).
fn decode_key(text: &[u8], keys: KeyText) -> Result<Cow<'_, [u8]>, FormatError> {
    if keys == KeyText::Escaped && text.contains(&b'\\') {
        if let Ok(key) = unescape(text) {
            if validate_key(&key).is_ok() {
                return Ok(Cow::Owned(key));
            }
        }
    }
    validate_key(text)?;
    Ok(Cow::Borrowed(text))
}

/// Appends a key as `database.txt` holds it: as it is when it is UTF-8 without a backslash,
/// else escaped.
pub fn encode_key(key: &[u8], out: &mut Vec<u8>) {
    if !key.contains(&b'\\') && std::str::from_utf8(key).is_ok() {
        out.extend_from_slice(key);
    } else {
        escape_into(key, out);
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
    /// Parses one line of `database.txt` (without its line ending).
    pub fn parse(line: &[u8]) -> Result<Record, FormatError> {
        RecordRef::parse(line).map(RecordRef::into_owned)
    }

    /// Parses one line-protocol request line (keys raw).
    pub fn parse_request(line: &[u8]) -> Result<Record, FormatError> {
        RecordRef::parse_as(line, KeyText::Raw).map(RecordRef::into_owned)
    }

    /// Appends this record as one line of `database.txt`, newline included.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Set { key, value, flags, expires_at } => encode_set(key, value, *flags, *expires_at, out),
            Record::Del { key } => encode_del(key, out),
            Record::Flush => encode_flush(out),
            Record::Copy { src, dst } => encode_copy(src, dst, out),
            Record::Rename { src, dst, moved: None } => encode_rename(src, dst, out),
            Record::Rename { src, dst, moved: Some(m) } => {
                encode_rename_moving(src, dst, &m.value, m.flags, m.expires_at, out)
            }
            Record::DelPrefix { prefix } => encode_delprefix(prefix, out),
        }
    }
}

/// Appends a `set`/`setmeta` line for an item, newline included.
pub fn encode_set(key: &[u8], value: &[u8], flags: u32, expires_at: u64, out: &mut Vec<u8>) {
    encode_set_head(key, flags, expires_at, out);
    escape_into(value, out);
    out.push(b'\n');
}

/// [`encode_set`] for a value given as its canonical escaped text (what [`escape_into`] writes
/// for it: see [`crate::store::Value`]), which is copied as it is.
pub fn encode_set_text(key: &[u8], value_text: &[u8], flags: u32, expires_at: u64, out: &mut Vec<u8>) {
    encode_set_head(key, flags, expires_at, out);
    out.extend_from_slice(value_text);
    out.push(b'\n');
}

/// `set <key> ` or `setmeta <key> <flags> <expires-at> `.
fn encode_set_head(key: &[u8], flags: u32, expires_at: u64, out: &mut Vec<u8>) {
    if flags == 0 && expires_at == 0 {
        out.extend_from_slice(b"set ");
        encode_key(key, out);
    } else {
        out.extend_from_slice(b"setmeta ");
        encode_key(key, out);
        encode_meta(flags, expires_at, out);
    }
    out.push(b' ');
}

/// Appends ` <flags> <expires-at>`.
fn encode_meta(flags: u32, expires_at: u64, out: &mut Vec<u8>) {
    out.push(b' ');
    push_decimal(u64::from(flags), out);
    out.push(b' ');
    push_decimal(expires_at, out);
}

/// Appends `<command> <key>…`, newline included.
fn encode_keys_line(command: &[u8], keys: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(command);
    for key in keys {
        out.push(b' ');
        encode_key(key, out);
    }
    out.push(b'\n');
}

/// Appends a `del` line, newline included.
pub fn encode_del(key: &[u8], out: &mut Vec<u8>) {
    encode_keys_line(b"del", &[key], out);
}

/// Appends a `copy` line, newline included.
pub fn encode_copy(src: &[u8], dst: &[u8], out: &mut Vec<u8>) {
    encode_keys_line(b"copy", &[src, dst], out);
}

/// Appends a `rename` line, newline included.
pub fn encode_rename(src: &[u8], dst: &[u8], out: &mut Vec<u8>) {
    encode_keys_line(b"rename", &[src, dst], out);
}

/// Appends `rename <src> <dst> <flags> <expires-at> <value>` (the form that carries the
/// item moved), newline included.
pub fn encode_rename_moving(
    src: &[u8],
    dst: &[u8],
    value: &[u8],
    flags: u32,
    expires_at: u64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"rename ");
    encode_key(src, out);
    out.push(b' ');
    encode_key(dst, out);
    encode_meta(flags, expires_at, out);
    out.push(b' ');
    escape_into(value, out);
    out.push(b'\n');
}

/// Appends a `delprefix` line, newline included.
pub fn encode_delprefix(prefix: &[u8], out: &mut Vec<u8>) {
    encode_keys_line(b"delprefix", &[prefix], out);
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

    #[test]
    fn copy_rename_and_delprefix_are_one_line_each() {
        let line = |r: Record| String::from_utf8(encoded(&r)).unwrap();
        assert_eq!(line(Record::Copy { src: b"a".to_vec(), dst: b"b".to_vec() }), "copy a b\n");
        assert_eq!(
            line(Record::Rename { src: b"a".to_vec(), dst: b"b".to_vec(), moved: None }),
            "rename a b\n"
        );
        let moved = Moved { value: b"two words\n".to_vec(), flags: 3, expires_at: 0 };
        assert_eq!(
            line(Record::Rename { src: b"a".to_vec(), dst: b"b".to_vec(), moved: Some(moved) }),
            "rename a b 3 0 two words\\n\n"
        );
        assert_eq!(line(Record::DelPrefix { prefix: b"dir/".to_vec() }), "delprefix dir/\n");
        assert_eq!(
            Record::parse(b"RENAME a b"),
            Ok(Record::Rename { src: b"a".to_vec(), dst: b"b".to_vec(), moved: None })
        );
        assert_eq!(Record::parse(b"copy a"), Err(FormatError::WrongArgs(COPY_USAGE)));
        assert_eq!(Record::parse(b"copy a b c"), Err(FormatError::WrongArgs(COPY_USAGE)));
        assert_eq!(Record::parse(b"rename a"), Err(FormatError::WrongArgs(RENAME_USAGE)));
        assert_eq!(Record::parse(b"rename a b 1"), Err(FormatError::WrongArgs(RENAME_USAGE)));
        assert_eq!(Record::parse(b"rename a b x 0 v"), Err(FormatError::BadNumber("flags")));
        assert_eq!(Record::parse(b"delprefix"), Err(FormatError::WrongArgs(DELPREFIX_USAGE)));
        assert_eq!(Record::parse(b"delprefix a b"), Err(FormatError::WrongArgs(DELPREFIX_USAGE)));
        assert_eq!(Record::parse(b"delprefix "), Err(FormatError::Key(KeyError::Empty)));
        assert_eq!(Record::parse(b"copy a \x01"), Err(FormatError::Key(KeyError::BadByte)));
    }

    #[test]
    fn keys_that_are_not_plain_utf8_are_escaped_in_the_file_but_raw_in_requests() {
        let r = Record::Set { key: b"k\xff\\x".to_vec(), value: b"v".to_vec(), flags: 0, expires_at: 0 };
        assert_eq!(encoded(&r), b"set k\\xff\\\\x v\n");
        assert_eq!(Record::parse(b"set k\\xff\\\\x v"), Ok(r));
        let utf8 = Record::Del { key: "ключ".as_bytes().to_vec() };
        assert_eq!(encoded(&utf8), "del ключ\n".as_bytes(), "UTF-8 keys stay readable");
        // A request's key is taken as it is, backslashes and all.
        assert_eq!(
            Record::parse_request(b"set k\\xff v"),
            Ok(Record::Set { key: b"k\\xff".to_vec(), value: b"v".to_vec(), flags: 0, expires_at: 0 })
        );
    }

    #[test]
    fn old_files_with_raw_keys_still_load() {
        let raw = |line: &[u8], key: &[u8]| match Record::parse(line) {
            Ok(Record::Set { key: got, .. }) => assert_eq!(got, key, "{}", String::from_utf8_lossy(line)),
            other => panic!("{other:?}"),
        };
        raw(b"set k\xff v", b"k\xff");
        raw(b"set C:\\temp v", b"C:\\temp"); // \t would be a tab: not a key, so taken raw
        raw(b"set a\\q v", b"a\\q"); // not an escape
        raw(b"set a\\ v", b"a\\"); // a trailing backslash
        raw(b"set a\\x0 v", b"a\\x0");
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=MAX_KEY_BYTES)
            .prop_filter("DEL is a control byte", |k| !k.contains(&0x7f))
    }

    proptest! {
        /// The record written from a request's canonical text is byte for byte the one the
        /// escaper writes, and reads back as the value.
        #[test]
        fn a_set_written_from_its_text_is_the_escapers_record(
            key in key_strategy(),
            value in proptest::collection::vec(any::<u8>(), 0..300),
            flags in any::<u32>(),
            expires_at in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
        ) {
            let carried = crate::store::Value::from_escaped(&crate::escape::escape(&value)).unwrap();
            let (mut from_text, mut escaped) = (Vec::new(), Vec::new());
            encode_set_text(&key, carried.file_text().unwrap(), flags, expires_at, &mut from_text);
            encode_set(&key, &value, flags, expires_at, &mut escaped);
            prop_assert_eq!(&from_text, &escaped);
            prop_assert_eq!(
                Record::parse(&from_text[..from_text.len() - 1]).unwrap(),
                Record::Set { key, value, flags, expires_at }
            );
        }

        #[test]
        fn any_record_round_trips_through_one_line(
            key in key_strategy(),
            other in key_strategy(),
            value in proptest::collection::vec(any::<u8>(), 0..200),
            flags in any::<u32>(),
            expires_at in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
            kind in 0..7u8,
        ) {
            let record = match kind {
                0 => Record::Set { key, value, flags, expires_at },
                1 => Record::Del { key },
                2 => Record::Copy { src: key, dst: other },
                3 => Record::Rename { src: key, dst: other, moved: None },
                4 => Record::Rename { src: key, dst: other, moved: Some(Moved { value, flags, expires_at }) },
                5 => Record::DelPrefix { prefix: key },
                _ => Record::Flush,
            };
            let line = encoded(&record);
            prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert!(std::str::from_utf8(&line).is_ok(), "a record line is UTF-8 text");
            prop_assert_eq!(Record::parse(&line[..line.len() - 1]).unwrap(), record);
        }
    }
}
