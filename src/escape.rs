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
//!
//! One value has many escaped texts (`A` and `\x41`, `\xff` and `\xFF`); the one [`escape`]
//! writes is its *canonical* form, and [`unescape_canonical`] tells whether a text is it, so a
//! request that already carries the canonical text can have it written to `database.txt` as
//! it is, without escaping the value again.

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

/// Input bytes escaped per step of [`escape_into`]: the output buffer is zeroed ahead of each
/// step (safe code cannot write into spare capacity), so a step's room stays in the L1 cache.
const ESCAPE_STEP: usize = 4096;

/// Appends the escaped form of `value` to `out`.
///
/// One pass over the bytes. Eight plain bytes (printable ASCII but `\`) are checked at once and
/// copied together, so text costs little more than a copy; any other byte's output comes from
/// a table (four bytes written, its length added), so random binary data costs no branch per
/// byte. Only a byte that could start a UTF-8 sequence (a lead byte followed by a continuation
/// byte) takes the slow check.
pub fn escape_into(value: &[u8], out: &mut Vec<u8>) {
    // Room for the worst case (every byte `\xHH`) up front: the pages of a large value are
    // touched only as they are written, and no step has to grow the vector.
    out.reserve(value.len() * 4 + 64);
    let mut at = 0;
    while at < value.len() {
        let step_end = (at + ESCAPE_STEP).min(value.len());
        let start = out.len();
        // A step may run past its end by one group of eight bytes and a UTF-8 sequence.
        out.resize(start + (step_end - at + 16) * 4, 0);
        let written = escape_step(value, &mut at, step_end, &mut out[start..]);
        out.truncate(start + written);
    }
}

/// Escapes `value` from `*at` until at least `end` into `buf`; returns the bytes written and
/// leaves `*at` after the last byte read.
fn escape_step(value: &[u8], at: &mut usize, end: usize, buf: &mut [u8]) -> usize {
    let (mut i, mut written) = (*at, 0);
    while i < end {
        copy_plain_words(value, &mut i, end, buf, &mut written);
        if i >= end {
            break;
        }
        // The next eight bytes one by one before the next try at a plain word.
        let stop = (i + 8).min(value.len());
        while i < stop {
            let b = value[i];
            let next = value.get(i + 1).copied().unwrap_or(0);
            // A lead byte followed by a continuation byte: one rarely taken branch.
            if (UTF8_CLASS[b as usize] & LEAD) * continuation(next) != 0 {
                let len = utf8_sequence_at(&value[i..]);
                if len > 0 {
                    buf[written..written + len].copy_from_slice(&value[i..i + len]);
                    written += len;
                    i += len;
                    continue;
                }
            }
            let (bytes, len) = ESCAPES[b as usize];
            buf[written..written + 4].copy_from_slice(&bytes);
            written += len as usize;
            i += 1;
        }
    }
    *at = i;
    written
}

/// Copies `src` from `*at` into `dst` from `*written` eight bytes at a time while they are
/// plain ([`is_plain_word`]) and `*at` is before `limit`: the escaper's and the decoder's
/// fast path for text.
#[inline(always)]
fn copy_plain_words(src: &[u8], at: &mut usize, limit: usize, dst: &mut [u8], written: &mut usize) {
    while *at < limit {
        let Some(word) = src.get(*at..*at + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) else { return };
        if !is_plain_word(u64::from_le_bytes(word)) {
            return;
        }
        dst[*written..*written + 8].copy_from_slice(&word);
        *written += 8;
        *at += 8;
    }
}

/// Whether all eight bytes of `word` are written as they are: `0x20..=0x7e` but `\`.
fn is_plain_word(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The classic bit tricks: each is non-zero exactly when some byte is below 0x20, above
    // 0x7e, or a backslash.
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let above_tilde = (word.wrapping_add(ONES) | word) & HIGH;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let has_backslash = backslash.wrapping_sub(ONES) & !backslash & HIGH;
    below_space | above_tilde | has_backslash == 0
}

/// What a byte can be in UTF-8: the lead byte of a sequence of two, three or four bytes, or a
/// continuation byte. Tested with arithmetic on these bits rather than comparisons, which
/// would be compiled into branches that random data mispredicts.
const LEAD2: u8 = 1;
const LEAD3: u8 = 2;
const LEAD4: u8 = 4;
const LEAD: u8 = LEAD2 | LEAD3 | LEAD4;
const CONTINUATION_SHIFT: u8 = 3;
const UTF8_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            0xc2..=0xdf => LEAD2,
            0xe0..=0xef => LEAD3,
            0xf0..=0xf4 => LEAD4,
            0x80..=0xbf => 1 << CONTINUATION_SHIFT,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// 1 for a continuation byte, else 0.
#[inline(always)]
fn continuation(b: u8) -> u8 {
    UTF8_CLASS[b as usize] >> CONTINUATION_SHIFT
}

/// What each byte becomes outside a UTF-8 sequence: its escape, or itself. This table is the
/// one statement of the escaping rules: the escaper writes these, and the decoder calls an
/// escape canonical when it is the one written here for its byte.
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

/// The value of a hex digit: 0–15 for `0-9a-f`, 16–31 (the value plus 16) for `A-F`, and
/// `NOT_HEX` for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10 + UPPER_HEX,
            _ => NOT_HEX,
        };
        b += 1;
    }
    table
};
const NOT_HEX: u8 = 0x80;
const UPPER_HEX: u8 = 0x10;

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
    let mut out = Vec::new();
    escape_into(value, &mut out);
    out
}

/// Decodes an escaped value.
pub fn unescape(text: &[u8]) -> Result<Vec<u8>, EscapeError> {
    decode::<false>(text).map(|(value, _)| value)
}

/// Decodes an escaped value, and tells whether `text` is its canonical form: exactly what
/// [`escape`] makes of the value. A canonical text can be written to `database.txt` as it is;
/// another (`\x41` for `A`, upper-case hex, a raw tab, `\xc3\xa9` for `é`) decodes to the
/// same value but would be escaped differently.
pub fn unescape_canonical(text: &[u8]) -> Result<(Vec<u8>, bool), EscapeError> {
    decode::<true>(text)
}

/// The decoder behind [`unescape`] and (with `CHECK`) [`unescape_canonical`]. Each escape is
/// decoded with a table; a plain run is copied eight printable ASCII bytes at a time, else byte
/// by byte, and a run of other text is found with `memchr` and copied whole. With `CHECK`, `text` is canonical when
/// - every plain run is what the escaper leaves as it is (valid UTF-8 without control bytes),
/// - every escape is the one [`ESCAPES`] writes for its byte (so `\x` only for a byte the
///   table writes that way, in lower-case hex), and
/// - no run of consecutive `\xHH` escapes of bytes 0x80 and above holds a valid UTF-8
///   sequence (the escaper would have written it raw): checked wherever one could end. A sequence cannot start or end in a
///   plain run next to it: a valid plain run begins and ends on character boundaries, and
///   the escapes of bytes below 0x80 stop a sequence.
fn decode<const CHECK: bool>(text: &[u8]) -> Result<(Vec<u8>, bool), EscapeError> {
    // Decoding never makes a value longer than its text.
    let mut out = vec![0u8; text.len()];
    let (mut at, mut written) = (0, 0);
    let mut canonical = true;
    // The last four bytes of the current run of `\xHH` escapes of bytes 0x80 and above, the
    // latest in the low byte; a zero byte is outside the run (no high byte is zero). Kept
    // without branches: escaped binary data is random, so branches would be mispredicted.
    let mut high_run: u32 = 0;
    while at < text.len() {
        if text[at] != b'\\' {
            let start = at;
            // Bytes outside printable ASCII (UTF-8 text, or a raw control byte) seen in the run.
            let mut unusual = false;
            loop {
                // Eight plain bytes at a time (text), else up to eight one by one (escaped
                // binary data has a byte or two between escapes).
                copy_plain_words(text, &mut at, text.len(), &mut out, &mut written);
                let stop = (at + 8).min(text.len());
                while at < stop && text[at] != b'\\' {
                    let b = text[at];
                    unusual |= !(0x20..0x7f).contains(&b);
                    out[written] = b;
                    written += 1;
                    at += 1;
                }
                if at < stop || at == text.len() || text[at] == b'\\' {
                    break;
                }
                if unusual {
                    // Non-ASCII text: the rest of the run with `memchr`, checked below.
                    let end = memchr::memchr(b'\\', &text[at..]).map_or(text.len(), |i| at + i);
                    out[written..written + end - at].copy_from_slice(&text[at..end]);
                    written += end - at;
                    at = end;
                    break;
                }
            }
            if CHECK {
                high_run = 0;
                canonical &= !unusual || is_canonical_plain(&text[start..at]);
            }
            continue;
        }
        let (byte, used) = match text.get(at + 1) {
            Some(b'x') => {
                let digit = |offset| text.get(at + offset).map_or(NOT_HEX, |&d| HEX_VALUES[d as usize]);
                let (hi, lo) = (digit(2), digit(3));
                if (hi | lo) & NOT_HEX != 0 {
                    return Err(EscapeError::BadHex);
                }
                let byte = ((hi & 15) << 4) | (lo & 15);
                if CHECK {
                    // The table writes `\x` and lower-case hex for exactly the bytes it gives
                    // four bytes of output.
                    canonical &= (ESCAPES[byte as usize].1 == 4) & ((hi | lo) & UPPER_HEX == 0);
                }
                (byte, 4)
            }
            None => return Err(EscapeError::TrailingBackslash),
            Some(b'\\') => (b'\\', 2),
            Some(b'n') => (b'\n', 2),
            Some(b'r') => (b'\r', 2),
            Some(b't') => (b'\t', 2),
            Some(&other) => return Err(EscapeError::UnknownEscape(other)),
        };
        // (`\\`, `\n`, `\r` and `\t` are the only spellings of their bytes besides `\x`.)
        out[written] = byte;
        if CHECK {
            let high = 0u32.wrapping_sub(u32::from(byte >> 7)); // all ones for 0x80 and above
            high_run = ((high_run << 8) | u32::from(byte)) & high;
            canonical &= !ends_with_utf8_sequence(high_run);
        }
        written += 1;
        at += used;
    }
    out.truncate(written);
    Ok((out, canonical))
}

/// Whether the run of escaped high bytes whose last four are `run` (see [`decode`]) ends with
/// a valid UTF-8 sequence. Checked after each byte, this finds every sequence in a run.
/// Two-byte sequences (any lead byte 0xc2–0xdf and a continuation byte) are told without a
/// branch; only the rare candidates for longer ones are checked with the UTF-8 decoder.
#[inline(always)]
fn ends_with_utf8_sequence(run: u32) -> bool {
    let [b3, b2, b1, b0] = run.to_be_bytes();
    // Each test is 0 or 1, combined with `&` and `|` so that only the rare candidates for a
    // longer sequence branch.
    let lead = |b: u8, bit: u8| u8::from(UTF8_CLASS[b as usize] & bit != 0);
    let two = lead(b1, LEAD2) & continuation(b0);
    let three = lead(b2, LEAD3) & continuation(b1) & continuation(b0);
    let four = lead(b3, LEAD4) & continuation(b2) & continuation(b1) & continuation(b0);
    let longer = (three | four) != 0
        && (three != 0 && std::str::from_utf8(&[b2, b1, b0]).is_ok()
            || four != 0 && std::str::from_utf8(&[b3, b2, b1, b0]).is_ok());
    (two != 0) | longer
}

/// Whether the escaper leaves `plain` (no backslash in it) as it is.
fn is_canonical_plain(plain: &[u8]) -> bool {
    if plain.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return true;
    }
    !plain.iter().any(|&b| b < 0x20 || b == 0x7f) && std::str::from_utf8(plain).is_ok()
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

    #[test]
    fn canonical_texts_are_told_from_other_spellings_of_the_same_value() {
        let canonical = |text: &[u8]| unescape_canonical(text).unwrap().1;
        for text in [&b""[..], b"plain", "grüße ☃".as_bytes(), br"a\\b\n\r\t", br"\x00\x1f\x7f", br"\xff\xc3"]
        {
            assert!(canonical(text), "{}", String::from_utf8_lossy(text));
        }
        for text in [
            &br"\x41"[..],            // printable
            br"\x5c",                 // a backslash is \\
            br"\x0a",                 // a newline is \n
            br"\xFF",                 // upper-case hex
            br"a\tb\x09",             // a tab is \t
            b"raw\ttab",              // a raw tab
            br"\xc3\xa9",             // valid UTF-8 (e acute) is written raw
            br"caf\xc3\xa9",          // after plain text
            br"\xe2\x98\x83",         // a snowman, escaped
            br"\xff\xf0\x9f\x98\x80", // a valid four-byte sequence after an invalid byte
            br"\x7f\xff\xc3\xa9",     // after a low escape and an invalid byte
            &[b'a', 0xff],            // raw invalid UTF-8
            &[0xc3],                  // a raw lead byte alone
        ] {
            assert!(!canonical(text), "{}", String::from_utf8_lossy(text));
        }
        assert!(canonical(br"\xc3("), "a lead byte before plain text stays escaped");
        assert!(canonical(br"bad\xff\xfe\xc3"));
    }

    /// The escaping rules written out plainly, character by character.
    fn reference_escape(value: &[u8]) -> Vec<u8> {
        let mut expected = Vec::new();
        for chunk in value.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => expected.extend_from_slice(br"\\"),
                    '\n' => expected.extend_from_slice(br"\n"),
                    '\r' => expected.extend_from_slice(br"\r"),
                    '\t' => expected.extend_from_slice(br"\t"),
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        expected.extend_from_slice(format!(r"\x{:02x}", c as u32).as_bytes())
                    }
                    c => expected.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            for b in chunk.invalid() {
                expected.extend_from_slice(format!(r"\x{b:02x}").as_bytes());
            }
        }
        expected
    }

    /// Up to ~12 KB of runs of printable text, UTF-8 text and random bytes.
    fn long_mixed_value() -> impl Strategy<Value = Vec<u8>> {
        let run = prop_oneof![
            proptest::collection::vec(0x20u8..0x7f, 0..200),
            "[a-zé☃😀\\\\ \n]{0,100}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..200),
        ];
        proptest::collection::vec(run, 0..60).prop_map(|runs| runs.concat())
    }

    /// Texts that mix the escaper's output with every other spelling of a byte.
    fn escaped_text() -> impl Strategy<Value = Vec<u8>> {
        let hex = |b: u8, upper: bool| if upper { format!(r"\x{b:02X}") } else { format!(r"\x{b:02x}") };
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(|v| escape(&v)),
            (any::<u8>(), any::<bool>()).prop_map(move |(b, upper)| hex(b, upper).into_bytes()),
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
            any::<char>().prop_map(move |c| c
                .to_string()
                .bytes()
                .map(|b| hex(b, false))
                .collect::<String>()
                .into_bytes()),
            proptest::sample::select(vec![
                &br"\n"[..],
                br"\r",
                br"\t",
                br"\\",
                b"\t",
                b"\r",
                b"\x7f",
                b"\x00",
                b"\xff",
                b"\xc3",
                b"\xa9",
                br"\xc3",
                br"\xa9"
            ])
            .prop_map(<[u8]>::to_vec),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
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
            prop_assert_eq!(escape(&value), reference_escape(&value));
        }

        /// Long values mixing text and binary runs cross the escaper's eight-byte words and
        /// its steps at every offset.
        #[test]
        fn long_mixed_values_escape_and_decode_as_short_ones_do(value in long_mixed_value()) {
            let escaped = escape(&value);
            prop_assert_eq!(&escaped, &reference_escape(&value));
            prop_assert_eq!(unescape_canonical(&escaped).unwrap(), (value, true));
        }

        /// The decoder calls a text canonical exactly when escaping its value gives it back.
        #[test]
        fn a_text_is_canonical_exactly_when_escaping_its_value_gives_it_back(text in escaped_text()) {
            match unescape_canonical(&text) {
                Ok((value, canonical)) => {
                    prop_assert_eq!(&value, &unescape(&text).unwrap());
                    prop_assert_eq!(canonical, escape(&value) == text, "{:?}", String::from_utf8_lossy(&text));
                }
                Err(e) => prop_assert_eq!(Err(e), unescape(&text)),
            }
        }

        #[test]
        fn what_the_escaper_writes_is_canonical(value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (back, canonical) = unescape_canonical(&escape(&value)).unwrap();
            prop_assert_eq!(back, value);
            prop_assert!(canonical);
        }

        #[test]
        fn any_utf8_text_round_trips(value in ".*") {
            prop_assert_eq!(unescape(&escape(value.as_bytes())).unwrap(), value.as_bytes());
        }
    }
}
