//! Key patterns for `keys` and `scan … match`: Redis-style globs over bytes.
//!
//! ```text
//! *        any run of bytes, the empty one included
//! ?        any one byte
//! [abc]    one of a, b, c;  [a-z] a range;  [^a-z] or [!a-z] anything but
//! \x       the byte x itself (so \*, \?, \[ and \\ match *, ?, [ and \)
//! ```
//!
//! A pattern without `*`, `?` or `[` is a prefix (what `keys <prefix>` always meant). A `[`
//! without its `]` matches itself. Matching is by bytes (a key need not be UTF-8) and takes
//! O(key × pattern) time at worst: one backtracking point, the last `*`, never a recursion.
//! The literal bytes before the first metacharacter are checked first as a prefix, which is
//! what most patterns (`user:*`) spend their time on.

/// A parsed `keys`/`scan` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    /// Keys starting with these bytes.
    Prefix(Vec<u8>),
    /// Keys matching the glob; `literal` is its (unescaped) bytes before the first
    /// metacharacter, which every match starts with.
    Glob { glob: Vec<u8>, literal: Vec<u8> },
}

impl KeyPattern {
    /// A glob when `pattern` holds `*`, `?` or `[`, else a prefix.
    pub fn new(pattern: &[u8]) -> KeyPattern {
        if !pattern.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
            return KeyPattern::Prefix(pattern.to_vec());
        }
        let mut literal = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' | b'?' | b'[' => break,
                b'\\' if i + 1 < pattern.len() => {
                    literal.push(pattern[i + 1]);
                    i += 2;
                }
                b => {
                    literal.push(b);
                    i += 1;
                }
            }
        }
        KeyPattern::Glob { glob: pattern.to_vec(), literal }
    }

    /// A pattern that every key matches.
    pub fn any() -> KeyPattern {
        KeyPattern::Prefix(Vec::new())
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyPattern::Prefix(prefix) => key.starts_with(prefix),
            KeyPattern::Glob { glob, literal } => key.starts_with(literal) && glob_matches(glob, key),
        }
    }
}

/// One pattern element at the start of `pattern`: what it matches and its length in bytes.
enum Token<'a> {
    Star,
    AnyByte,
    /// A `[...]` class: the bytes between the brackets (after a leading `^`/`!`), negated or not.
    Class(&'a [u8], bool),
    Literal(u8),
}

fn token(pattern: &[u8]) -> (Token<'_>, usize) {
    match pattern[0] {
        b'*' => (Token::Star, 1),
        b'?' => (Token::AnyByte, 1),
        b'\\' if pattern.len() > 1 => (Token::Literal(pattern[1]), 2),
        b'[' => {
            let negated = matches!(pattern.get(1), Some(b'^' | b'!'));
            let start = 1 + usize::from(negated);
            // The closing bracket: the first `]` after at least one class byte (so `[]a]`
            // holds `]`), skipping escaped bytes.
            let mut i = start;
            while i < pattern.len() {
                match pattern[i] {
                    b'\\' => i += 2,
                    b']' if i > start => return (Token::Class(&pattern[start..i], negated), i + 1),
                    _ => i += 1,
                }
            }
            (Token::Literal(b'['), 1)
        }
        b => (Token::Literal(b), 1),
    }
}

fn class_matches(class: &[u8], byte: u8) -> bool {
    let mut i = 0;
    while i < class.len() {
        let (low, used) = match class[i] {
            b'\\' if i + 1 < class.len() => (class[i + 1], 2),
            b => (b, 1),
        };
        i += used;
        if class.get(i) == Some(&b'-') && i + 1 < class.len() {
            let (high, used) = match class[i + 1] {
                b'\\' if i + 2 < class.len() => (class[i + 2], 2),
                b => (b, 1),
            };
            i += 1 + used;
            let (low, high) = if low <= high { (low, high) } else { (high, low) };
            if (low..=high).contains(&byte) {
                return true;
            }
        } else if low == byte {
            return true;
        }
    }
    false
}

/// Does all of `key` match `glob`?
pub fn glob_matches(glob: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the key position it was tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        if p < glob.len() {
            let (token, len) = token(&glob[p..]);
            let step = match token {
                Token::Star => {
                    backtrack = Some((p + len, k));
                    p += len;
                    continue;
                }
                Token::AnyByte => k < key.len(),
                Token::Class(class, negated) => k < key.len() && class_matches(class, key[k]) != negated,
                Token::Literal(b) => key.get(k) == Some(&b),
            };
            if step {
                p += len;
                k += 1;
                continue;
            }
        } else if k == key.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte, or fail.
        match backtrack {
            Some((resume, tried)) if tried < key.len() => {
                backtrack = Some((resume, tried + 1));
                p = resume;
                k = tried + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        KeyPattern::new(pattern.as_bytes()).matches(key.as_bytes())
    }

    #[test]
    fn without_metacharacters_a_pattern_is_a_prefix() {
        assert!(m("user:", "user:1"));
        assert!(m("", "anything"));
        assert!(!m("user:", "use"));
        assert!(m("a\\b", "a\\bc"), "a backslash alone is literal in a prefix");
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("*", ""));
        assert!(m("*", "abc"));
        assert!(m("user:*", "user:"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:email"));
        assert!(m("*name", "user:42:name"));
        assert!(m("a*b*c", "aXXbYYbZZc"));
        assert!(!m("a*b*c", "aXXbYYbZZ"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("**", "x"));
        assert!(m("*?", "x"));
        assert!(!m("?*?", "x"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("k[0-9]", "k7"));
        assert!(!m("k[0-9]", "kx"));
        assert!(m("k[9-0]", "k5"), "a reversed range is the same range");
        assert!(m("k[^0-9]", "kx"));
        assert!(m("k[!0-9]", "kx"));
        assert!(!m("k[^0-9]", "k1"));
        assert!(m("k[]a]", "k]"), "a ] first in a class is a member");
        assert!(m("k[a-]", "k-"));
        assert!(m("k[", "k["), "an unclosed [ is literal");
        assert!(m("k[ab", "k[ab"));
    }

    #[test]
    fn backslash_escapes_metacharacters() {
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("a\\?*", "a?x"));
        assert!(m("\\[x]*", "[x]y"));
        assert!(m("a\\\\*", "a\\b"));
        assert!(m("k[\\]]", "k]"));
    }

    #[test]
    fn matching_is_by_bytes() {
        let pattern = KeyPattern::new(b"k?\xff*");
        assert!(pattern.matches(b"k\x80\xffz"));
        assert!(!pattern.matches(b"k\x80\xfe"));
    }

    #[test]
    fn the_literal_prefix_is_unescaped() {
        assert_eq!(
            KeyPattern::new(b"a\\*b*"),
            KeyPattern::Glob { glob: b"a\\*b*".to_vec(), literal: b"a*b".to_vec() }
        );
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let key = "a".repeat(250);
        let pattern = format!("{}b", "a*".repeat(100));
        // A recursive matcher would try ~250^100 splits here; this one at most 250 × 201 steps.
        assert!(!m(&pattern, &key));
        assert!(m(&format!("{}a", "a*".repeat(100)), &key));
    }
}
