//! Keys given on the command line, and keys seen as paths.
//!
//! **Keys are never quoted or rewritten**: a key is 1–250 bytes with no whitespace or control
//! bytes (the server's rule), and kvclient refuses anything else before sending it, with exit
//! code 2 — `set "bad key" v` is an error, not a key `bad` with the value `key v`.
//!
//! **Paths**: keys with `/` are paths in a tree whose root is the empty prefix. A directory
//! `d/` exists while any key starts with `d/`; `mkdir d` stores the marker key `d/` (empty
//! value) so an empty directory exists too. The prompt has a current directory (`cd`), and
//! paths given to the file and directory commands are relative to it unless they start with
//! `/`; `.` and `..` work as in a shell (`..` at the root stays there), and repeated or
//! trailing slashes are normalised away except that a trailing `/` marks a directory.

use textkv::store::format::validate_key;

use crate::error::{Error, Result};

/// Checks a key given by the user, with an error that says what is wrong and why.
pub fn checked_key(key: &[u8]) -> Result<&[u8]> {
    validate_key(key).map_err(|e| {
        Error::Refused(format!(
            "bad key {:?}: {e}; keys are 1-250 bytes without spaces or control characters (kvclient does not quote keys)",
            String::from_utf8_lossy(key)
        ))
    })?;
    Ok(key)
}

/// A path resolved against the current directory `cwd` (`""` or `"a/b/"`). The result has
/// no leading `/`; it ends with `/` when it names a directory explicitly (`d/`, `.`, `..`,
/// or the root, which is `""`).
pub fn resolve(cwd: &[u8], path: &[u8]) -> Vec<u8> {
    let (base, path) = match path.strip_prefix(b"/") {
        Some(rest) => (&b""[..], rest),
        None => (cwd, path),
    };
    let mut parts: Vec<&[u8]> = base.split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
    let mut names_dir = path.is_empty() || path.ends_with(b"/");
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" => {}
            b"." => names_dir = true,
            b".." => {
                parts.pop();
                names_dir = true;
            }
            name => {
                parts.push(name);
                names_dir = false;
            }
        }
    }
    names_dir |= path.ends_with(b"/");
    let mut out = parts.join(&b'/');
    if names_dir && !out.is_empty() {
        out.push(b'/');
    }
    out
}

/// `path` as a directory prefix: `""` for the root, else ending with `/`.
pub fn as_dir(path: &[u8]) -> Vec<u8> {
    let mut dir = path.to_vec();
    if !dir.is_empty() && !dir.ends_with(b"/") {
        dir.push(b'/');
    }
    dir
}

/// The last component of a path (`a/b/c` → `c`, `a/b/` → `b`).
pub fn base_name(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed)
}

/// A file key (not a directory, not the root) checked against the key rules.
pub fn file_key(path: Vec<u8>, shown_as: &str) -> Result<Vec<u8>> {
    if path.is_empty() || path.ends_with(b"/") {
        return Err(Error::Refused(format!("{shown_as}: is a directory, not a file")));
    }
    checked_key(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cwd: &str, path: &str) -> String {
        String::from_utf8(resolve(cwd.as_bytes(), path.as_bytes())).unwrap()
    }

    #[test]
    fn paths_resolve_like_a_shell() {
        assert_eq!(r("", "a"), "a");
        assert_eq!(r("", "a/b/"), "a/b/");
        assert_eq!(r("docs/", "x.txt"), "docs/x.txt");
        assert_eq!(r("docs/", "/x.txt"), "x.txt");
        assert_eq!(r("docs/old/", ".."), "docs/");
        assert_eq!(r("docs/old/", "../new/f"), "docs/new/f");
        assert_eq!(r("docs/", "../.."), "");
        assert_eq!(r("docs/", "."), "docs/");
        assert_eq!(r("docs/", ""), "docs/");
        assert_eq!(r("", "a//b"), "a/b");
        assert_eq!(r("", "/"), "");
        assert_eq!(r("a/", "b/./c/.."), "a/b/");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        assert!(checked_key(b"user:1").is_ok());
        let error = checked_key(b"bad key").unwrap_err().to_string();
        assert!(error.contains("\"bad key\"") && error.contains("without spaces"), "{error}");
        assert!(checked_key(b"nul\0byte").is_err());
        assert!(checked_key(b"").is_err());
        assert!(checked_key(&[b'k'; 251]).is_err());
        assert_eq!(checked_key(b"tab\tkey").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn names_and_dirs() {
        assert_eq!(base_name(b"a/b/c"), b"c");
        assert_eq!(base_name(b"a/b/"), b"b");
        assert_eq!(base_name(b"c"), b"c");
        assert_eq!(as_dir(b"a"), b"a/");
        assert_eq!(as_dir(b""), b"");
        assert!(file_key(b"d/".to_vec(), "d/").is_err());
    }
}
