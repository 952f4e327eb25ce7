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
    // One pass over the bytes into room for the worst case (every byte `\\xHH`), cut to
    // size at the end. Each byte's output comes from a table (four bytes written, its length
    // added), so random binary data costs no branch per byte; only a byte that could start
    // a UTF-8 sequence (a lead byte followed by a continuation byte) takes the slow check.
    let start = out.len();
    out.resize(start + value.len() * 4 + 4, 0);
    let buf = &mut out[start..];
    let (mut at, mut written) = (0, 0);
    while at < value.len() {
        let b = value[at];
        let next = value.get(at + 1).copied().unwrap_or(0);
        if b >= 0xc2 && (0x80..0xc0).contains(&next) {
            let len = utf8_sequence_at(&value[at..]);
            if len > 0 {
                buf[written..written + len].copy_from_slice(&value[at..at + len]);
                written += len;
                at += len;
                continue;
            }
        }
        let (bytes, len) = ESCAPES[b as usize];
        buf[written..written + 4].copy_from_slice(&bytes);
        written += len as usize;
        at += 1;
    }
    out.truncate(start + written);
}

/// What each byte becomes outside a UTF-8 sequence: its escape, or itself.
const ESCAPES: [([u8; 4], u8); 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [([0u8; 4], 0u8); 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = match byte {
            b'\\' => ([b'\\', b'\\', 0, 0], 2),
            b'\n' => ([b'\\', b'n', 0, 0], 2),
            b'\r' => ([b'\\', b'r', 0, 0], 2),
            b'\t' => ([b'\\', b't', 0, 0], 2),
            0x20..=0x7e => ([byte, 0, 0, 0], 1),
            _ => ([b'\\', b'x', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]], 4),
        };
        b += 1;
    }
    table
};

/// The length of the valid UTF-8 sequence `bytes` starts with (lead byte 0x80 or more), or
/// 0 if it does not start with one.
fn utf8_sequence_at(bytes: &[u8]) -> usize {
    let len = match bytes[0] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return 0,
    };
    match bytes.get(..len) {
        Some(sequence) if std::str::from_utf8(sequence).is_ok() => len,
        _ => 0,
    }
}

/// Returns the escaped form of `value`.
pub fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    escape_into(value, &mut out);
    out
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

        /// The one-pass escaper keeps exactly what the UTF-8 decoder calls valid.
        #[test]
        fn escaping_keeps_valid_utf8_and_escapes_every_other_byte(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut expected = Vec::new();
            for chunk in value.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\\' => expected.extend_from_slice(b"\\\\"),
                        '\n' => expected.extend_from_slice(b"\\n"),
                        '\r' => expected.extend_from_slice(b"\\r"),
                        '\t' => expected.extend_from_slice(b"\\t"),
                        c if (c as u32) < 0x20 || c as u32 == 0x7f => expected.extend_from_slice(format!("\\x{:02x}", c as u32).as_bytes()),
                        c => expected.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
                for b in chunk.invalid() {
                    expected.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                }
            }
            prop_assert_eq!(escape(&value), expected);
        }

        #[test]
        fn any_utf8_text_round_trips(value in ".*") {
            prop_assert_eq!(unescape(&escape(value.as_bytes())).unwrap(), value.as_bytes());
        }
    }
}
