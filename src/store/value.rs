//! [`Value`]: the value a write carries, and its text in `database.txt` when a request
//! already held it.
//!
//! The line protocol sends values escaped exactly as `database.txt` stores them (see
//! [`crate::escape`]). The index needs the bytes, so a request's value is decoded once; but
//! when the client's text is canonical (the bytes the server's escaper would write: kvclient
//! and anyone else using the escaper send that), the log record takes the text as it is
//! instead of escaping the bytes again — for binary data that is most of a write's CPU. A
//! text that spells the value another way (`\x41`, upper-case hex, a raw tab) is not kept:
//! that write is escaped as any other, so the file's bytes are the same either way.
//!
//! Memory: a value whose text is its bytes (plain text without escapes) keeps one copy;
//! another keeps both until its write is done. Values built by the server (memcached data,
//! append, incr) and values replicated through a cluster's log carry no text.

use std::fmt;
use std::ops::Deref;

use crate::escape::{unescape_canonical, EscapeError};

/// A value's bytes and, when known, its canonical escaped text.
#[derive(Clone, Default)]
pub struct Value {
    bytes: Vec<u8>,
    text: Text,
}

#[derive(Clone, Default)]
enum Text {
    /// Not known: escape the bytes to write them.
    #[default]
    Unknown,
    /// The bytes are their own escaped text.
    Bytes,
    /// The canonical escaped text.
    Escaped(Vec<u8>),
}

impl Value {
    /// Decodes a request's escaped value, keeping its text when it is canonical.
    pub fn from_escaped(text: &[u8]) -> Result<Value, EscapeError> {
        let (bytes, canonical) = unescape_canonical(text)?;
        let text = match canonical {
            false => Text::Unknown,
            true if bytes.len() == text.len() => Text::Bytes,
            true => Text::Escaped(text.to_vec()),
        };
        Ok(Value { bytes, text })
    }

    /// The value's text as `database.txt` holds it, when the request carried it (see the
    /// module notes); `None` means: escape the bytes.
    pub fn file_text(&self) -> Option<&[u8]> {
        match &self.text {
            Text::Unknown => None,
            Text::Bytes => Some(&self.bytes),
            Text::Escaped(text) => Some(text),
        }
    }

    /// Bytes held: the value's and its text's (what the value costs in a batch).
    pub fn held_bytes(&self) -> usize {
        self.bytes.len() + if let Text::Escaped(text) = &self.text { text.len() } else { 0 }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value { bytes, text: Text::Unknown }
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Value {
        Value::from(bytes.to_vec())
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::from(text.as_bytes())
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Values are equal when their bytes are: the text, when kept, is the canonical one, a
/// function of the bytes.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.bytes, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::escape;

    #[test]
    fn a_canonical_text_is_kept_and_another_spelling_is_not() {
        let plain = Value::from_escaped(b"hello world").unwrap();
        assert_eq!((&plain[..], plain.file_text()), (&b"hello world"[..], Some(&b"hello world"[..])));
        assert_eq!(plain.held_bytes(), 11, "plain text is held once");
        let escaped = Value::from_escaped(br"a\nb\xff").unwrap();
        assert_eq!(&escaped[..], b"a\nb\xff");
        assert_eq!(escaped.file_text(), Some(&br"a\nb\xff"[..]));
        assert_eq!(escaped.held_bytes(), 4 + 8);
        for other in [&br"\x41"[..], br"\xFF", b"raw\ttab", br"\xc3\xa9"] {
            let value = Value::from_escaped(other).unwrap();
            assert_eq!(value.file_text(), None, "{}", String::from_utf8_lossy(other));
            assert_eq!(&value[..], &crate::escape::unescape(other).unwrap()[..]);
        }
        assert_eq!(Value::from_escaped(br"\q"), Err(EscapeError::UnknownEscape(b'q')));
        assert_eq!(Value::from(b"x".to_vec()).file_text(), None);
    }

    proptest::proptest! {
        #[test]
        fn a_kept_text_is_what_the_escaper_writes(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let carried = Value::from_escaped(&escape(&value)).unwrap();
            proptest::prop_assert_eq!(&carried[..], &value[..]);
            proptest::prop_assert_eq!(carried.file_text(), Some(&escape(&value)[..]));
        }
    }
}
