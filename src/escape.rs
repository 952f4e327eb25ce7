//! Value escaping shared by the line protocol and `database.txt`.
//!
//! Any byte string must survive a trip through one text line, so the bytes that would break a
//! line (or be invisible in it) are written as escapes:
//!
//! | byte(s)                              | written as |
//! |--------------------------------------|------------|
//! | `\`                                  | `\\`       |
//! | newline, carriage return, tab        | `\n` `\r` `\t` |
//! | other control bytes, DEL             | `\xHH`     |
//! | bytes that are not valid UTF-8       | `\xHH`     |
//!
//! Valid UTF-8 text other than control characters is written as it is, so `database.txt`
//! stays readable for people. Decoding accepts exactly these escapes (hex digits in either
//! case) and rejects anything else, so a typo is reported instead of silently stored.

use std::fmt;

/// Why an escaped value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscapeError {
    /// A backslash at the very end of the value.
    TrailingBackslash,
    /// `\` followed by a character that starts no escape.
    UnknownEscape(u8),
    /// `\x` not followed by two hex digits.
    BadHex,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EscapeError::TrailingBackslash => write!(f, "bad escape: trailing backslash"),
            EscapeError::UnknownEscape(b) if b.is_ascii_graphic() => {
                write!(f, "bad escape: \\{}", *b as char)
            }
            EscapeError::UnknownEscape(b) => write!(f, "bad escape: \\ followed by byte {b:#04x}"),
            EscapeError::BadHex => write!(f, "bad escape: \\x needs two hex digits"),
        }
    }
}

impl std::error::Error for EscapeError {}

/// Appends the escaped form of `value` to `out`.
pub fn escape_into(value: &[u8], out: &mut Vec<u8>) {
    // Fast path for the common case, plain printable ASCII: one copy, no UTF-8 decoding.
    if value.iter().all(|&b| (b' '..=b'~').contains(&b) && b != b'\\') {
        out.extend_from_slice(value);
        return;
    }
    for chunk in value.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        // Fast path: runs of printable bytes are copied in one go.
        let mut run_start = 0;
        for (i, &b) in valid.iter().enumerate() {
            if b == b'\\' || b < 0x20 || b == 0x7f {
                out.extend_from_slice(&valid[run_start..i]);
                push_escaped_byte(b, out);
                run_start = i + 1;
            }
        }
        out.extend_from_slice(&valid[run_start..]);
        for &b in chunk.invalid() {
            push_hex(b, out);
        }
    }
}

/// Returns the escaped form of `value`.
pub fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    escape_into(value, &mut out);
    out
}

fn push_escaped_byte(b: u8, out: &mut Vec<u8>) {
    match b {
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => push_hex(b, out),
    }
}

fn push_hex(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// Decodes an escaped value.
pub fn unescape(text: &[u8]) -> Result<Vec<u8>, EscapeError> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (byte, used) = match after.first() {
            None => return Err(EscapeError::TrailingBackslash),
            Some(b'\\') => (b'\\', 1),
            Some(b'n') => (b'\n', 1),
            Some(b'r') => (b'\r', 1),
            Some(b't') => (b'\t', 1),
            Some(b'x') => match (after.get(1).and_then(hex_value), after.get(2).and_then(hex_value)) {
                (Some(hi), Some(lo)) => ((hi << 4) | lo, 3),
                _ => return Err(EscapeError::BadHex),
            },
            Some(&other) => return Err(EscapeError::UnknownEscape(other)),
        };
        out.push(byte);
        rest = &after[used..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

fn hex_value(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn printable_text_is_left_alone() {
        assert_eq!(escape(b"hello world"), b"hello world");
        assert_eq!(escape("grüße ☃".as_bytes()), "grüße ☃".as_bytes());
    }

    #[test]
    fn line_breaking_and_invisible_bytes_are_escaped() {
        assert_eq!(escape(b"a\nb\rc\td\\e"), b"a\\nb\\rc\\td\\\\e");
        assert_eq!(escape(b"\x00\x1f\x7f"), b"\\x00\\x1f\\x7f");
        assert_eq!(escape(b"\xff\xfe"), b"\\xff\\xfe");
    }

    #[test]
    fn unescape_accepts_every_escape_in_both_cases() {
        assert_eq!(unescape(b"\\n\\r\\t\\\\\\x41\\x4a\\x4A").unwrap(), b"\n\r\t\\AJJ");
    }

    #[test]
    fn unescape_rejects_malformed_escapes() {
        assert_eq!(unescape(b"abc\\"), Err(EscapeError::TrailingBackslash));
        assert_eq!(unescape(b"\\q"), Err(EscapeError::UnknownEscape(b'q')));
        assert_eq!(unescape(b"\\x4"), Err(EscapeError::BadHex));
        assert_eq!(unescape(b"\\xzz"), Err(EscapeError::BadHex));
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let escaped = escape(&value);
            prop_assert!(!escaped.contains(&b'\n'));
            prop_assert!(!escaped.contains(&b'\r'));
            prop_assert_eq!(unescape(&escaped).unwrap(), value);
        }

        #[test]
        fn any_utf8_text_round_trips(value in ".*") {
            prop_assert_eq!(unescape(&escape(value.as_bytes())).unwrap(), value.as_bytes());
        }
    }
}
