//! Directory commands over keys with `/` as paths: ls, mkdir, rm, cp, mv, stat, du, df.
//!
//! Listing uses `scan <cursor> match <dir>/*` a page at a time, so memory grows with the
//! entries of the one directory shown, never with the database; per-entry facts (`ls -l`,
//! `du`) are asked for with pipelined `stat`s. A listing shows each file once: chunk keys
//! (see [`crate::files`]) are hidden, and a chunked file shows its real size. A key ending in
//! `/` is a directory marker (made by `mkdir`), shown as the directory itself.
//!
//! Simplifications: `rm -r` is one atomic `delprefix`; `cp -r` and `mv` of a directory are
//! not atomic as a whole (each file is: chunks are copied before the manifests naming them,
//! and the source's leftovers are removed last with one `delprefix`).

use std::collections::BTreeMap;
use std::io::{self, BufRead, IsTerminal, Write};

use textkv::client::{glob_escape, parse_stat, parse_value, Client, ClientError, ItemStat};

use crate::error::{Error, Result};
use crate::files::{self, is_chunk_key, Manifest, Stored, MAX_MANIFEST_BYTES};
use crate::paths::{as_dir, base_name, checked_key, file_key};

/// Requests in flight for per-entry `stat`s and `copy`s.
const WINDOW: usize = 128;

/// `<dir>*` as a `scan` pattern matching every key under `dir` (everything for the root).
fn under(dir: &[u8]) -> Vec<u8> {
    let mut pattern = glob_escape(dir);
    pattern.push(b'*');
    pattern
}

fn shown(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

/// Does any key start with `dir` (which ends with `/`)? Stops at the first one found.
pub fn dir_exists(client: &mut Client, dir: &[u8]) -> Result<bool> {
    if dir.is_empty() {
        return Ok(true);
    }
    let pattern = under(dir);
    let mut cursor = b"0".to_vec();
    loop {
        let (next, keys) = client.scan(&cursor, Some(&pattern), 1000)?;
        if !keys.is_empty() {
            return Ok(true);
        }
        if next == b"0" {
            return Ok(false);
        }
        cursor = next;
    }
}

/// What a path names.
enum Node {
    File(Stored),
    Dir(Vec<u8>),
    Missing,
}

/// A path without a trailing `/` is a file if such a key exists, else a directory if any key
/// is under it; with a trailing `/` it can only be a directory.
fn node(client: &mut Client, path: &[u8]) -> Result<Node> {
    if !path.is_empty() && !path.ends_with(b"/") {
        checked_key(path)?;
        let stored = files::lookup(client, path)?;
        if !matches!(stored, Stored::Missing) {
            return Ok(Node::File(stored));
        }
    }
    let dir = as_dir(path);
    Ok(if dir_exists(client, &dir)? { Node::Dir(dir) } else { Node::Missing })
}

fn no_such(path: &[u8]) -> Error {
    Error::NotFound(format!("{}: no such file or directory", shown(path)))
}

/// The entries directly in `dir`: name → is a directory. Chunk keys and the marker are not
/// entries.
fn entries(client: &mut Client, dir: &[u8]) -> Result<BTreeMap<Vec<u8>, bool>> {
    let mut entries = BTreeMap::new();
    client.scan_all(Some(&under(dir)), |_, key| {
        let rest = &key[dir.len()..];
        let last = rest.rsplit(|&b| b == b'/').next().unwrap_or(rest);
        if rest.is_empty() || is_chunk_key(last) {
            return Ok(());
        }
        match rest.iter().position(|&b| b == b'/') {
            Some(slash) => entries.insert(rest[..=slash].to_vec(), true),
            None => entries.insert(rest.to_vec(), false),
        };
        Ok(())
    })?;
    Ok(entries)
}

/// One line of `ls -l`.
struct Long {
    size: Option<u64>,
    mtime: Option<u64>,
}

/// `stat` of each key, pipelined; `None` for keys that vanished meanwhile.
fn stats(client: &mut Client, keys: &[Vec<u8>]) -> Result<Vec<Option<ItemStat>>> {
    let mut out = Vec::with_capacity(keys.len());
    let requests = keys.iter().map(|key| Ok([b"stat ", key.as_slice()].concat()));
    client.pipelined(requests, WINDOW, |_, reply| {
        let line = reply.concat();
        out.push(parse_stat(&line).ok_or_else(|| reply_error(&line))?);
        Ok(())
    })?;
    Ok(out)
}

/// The manifests among `keys` (`None` for plain values), fetched pipelined.
fn manifests(client: &mut Client, keys: &[Vec<u8>]) -> Result<Vec<Option<Manifest>>> {
    let mut out = Vec::with_capacity(keys.len());
    let requests = keys.iter().map(|key| Ok([b"get ", key.as_slice()].concat()));
    client.pipelined(requests, WINDOW, |_, reply| {
        let line = reply.concat();
        let value = parse_value(&line).ok_or_else(|| reply_error(&line))?;
        out.push(value.and_then(|value| Manifest::parse(&value)));
        Ok(())
    })?;
    Ok(out)
}

fn reply_error(line: &[u8]) -> ClientError {
    match line.strip_prefix(b"ERROR ") {
        Some(reason) => ClientError::Server(String::from_utf8_lossy(reason).into_owned()),
        None => ClientError::Protocol(String::from_utf8_lossy(line).into_owned()),
    }
}

/// The real size and time of each file key: its value's, or its manifest's size.
fn file_facts(client: &mut Client, keys: &[Vec<u8>]) -> Result<Vec<Long>> {
    let stats = stats(client, keys)?;
    let small: Vec<usize> = (0..keys.len())
        .filter(|&i| stats[i].as_ref().is_some_and(|s| s.size <= MAX_MANIFEST_BYTES))
        .collect();
    let small_keys: Vec<Vec<u8>> = small.iter().map(|&i| keys[i].clone()).collect();
    let mut facts: Vec<Long> = stats
        .iter()
        .map(|s| Long { size: s.as_ref().map(|s| s.size), mtime: s.as_ref().map(|s| s.mtime) })
        .collect();
    for (i, manifest) in small.into_iter().zip(manifests(client, &small_keys)?) {
        if let Some(manifest) = manifest {
            facts[i].size = Some(manifest.size);
        }
    }
    Ok(facts)
}

/// `ls [-l] [path]`.
pub fn ls(client: &mut Client, path: &[u8], long: bool, out: &mut impl Write) -> Result<()> {
    let (dir, names) = match node(client, path)? {
        Node::Missing => return Err(no_such(path)),
        Node::File(_) => {
            let (parent, name) = path.split_at(path.len() - base_name(path).len());
            (parent.to_vec(), BTreeMap::from([(name.to_vec(), false)]))
        }
        Node::Dir(dir) => {
            let names = entries(client, &dir)?;
            (dir, names)
        }
    };
    if !long {
        for name in names.keys() {
            out.write_all(name)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let files: Vec<Vec<u8>> =
        names.iter().filter(|(_, &d)| !d).map(|(n, _)| [&dir[..], n].concat()).collect();
    let mut facts = file_facts(client, &files)?.into_iter();
    for (name, is_dir) in &names {
        let (kind, size, time) = if *is_dir {
            ('d', "-".to_string(), "-".to_string())
        } else {
            let fact = facts.next().unwrap_or(Long { size: None, mtime: None });
            let Some(size) = fact.size else { continue }; // deleted since the scan
            ('-', size.to_string(), fact.mtime.map_or("-".into(), format_time))
        };
        writeln!(out, "{kind} {size:>12} {time:<16} {}", String::from_utf8_lossy(name))?;
    }
    Ok(())
}

/// `mkdir path`: stores the marker key `path/`.
pub fn mkdir(client: &mut Client, path: &[u8]) -> Result<()> {
    let dir = as_dir(path);
    if dir.is_empty() {
        return Err(Error::Refused("mkdir: / exists".into()));
    }
    checked_key(&dir)?;
    let file = &dir[..dir.len() - 1];
    if !matches!(files::lookup(client, file)?, Stored::Missing) {
        return Err(Error::Refused(format!("mkdir: {}: a file exists there", shown(file))));
    }
    client.set(&dir, b"")?;
    Ok(())
}

/// Asks on the terminal whether to go on; refused (exit 2) when standard input is not one.
fn confirm(question: &str) -> Result<bool> {
    if !io::stdin().is_terminal() {
        return Err(Error::Refused(format!(
            "{question}: not confirmed (standard input is not a terminal; use -f)"
        )));
    }
    eprint!("{question} [y/N] ");
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The files (not chunks, not markers) under `dir`, counted.
fn count_files(client: &mut Client, dir: &[u8]) -> Result<u64> {
    let mut count = 0;
    client.scan_all(Some(&under(dir)), |_, key| {
        let last = key.rsplit(|&b| b == b'/').next().unwrap_or(&key);
        if !key.ends_with(b"/") && !is_chunk_key(last) {
            count += 1;
        }
        Ok(())
    })?;
    Ok(count)
}

/// `rm [-r] [-f] path`.
pub fn rm(
    client: &mut Client,
    path: &[u8],
    recursive: bool,
    force: bool,
    out: &mut impl Write,
) -> Result<()> {
    match node(client, path)? {
        Node::Missing if force => Ok(()),
        Node::Missing => Err(no_such(path)),
        Node::File(_) => {
            files::remove(client, path)?;
            Ok(())
        }
        Node::Dir(_) if !recursive => {
            Err(Error::Refused(format!("rm: {}: is a directory (use rm -r)", shown(path))))
        }
        Node::Dir(dir) if dir.is_empty() => {
            Err(Error::Refused("rm: refusing to remove / (use flush to delete every key)".into()))
        }
        Node::Dir(dir) => {
            let files = count_files(client, &dir)?;
            if files > 0 && !force {
                let question = format!("rm: remove directory {} and the {files} file(s) in it?", shown(&dir));
                if !confirm(&question)? {
                    writeln!(out, "not removed")?;
                    return Ok(());
                }
            }
            client.delprefix(&dir)?;
            Ok(())
        }
    }
}

/// Where `cp`/`mv` put `src`: into `dst` when it names a directory, else at `dst`.
fn destination(client: &mut Client, src: &[u8], dst: &[u8]) -> Result<Vec<u8>> {
    let into_dir = dst.is_empty()
        || dst.ends_with(b"/")
        || (matches!(files::lookup(client, dst)?, Stored::Missing) && dir_exists(client, &as_dir(dst))?);
    Ok(if into_dir { [&as_dir(dst)[..], base_name(src)].concat() } else { dst.to_vec() })
}

/// `cp [-r] src dst` and `mv src dst`.
pub fn copy_or_move(
    client: &mut Client,
    src: &[u8],
    dst: &[u8],
    recursive: bool,
    remove_source: bool,
) -> Result<()> {
    let what = if remove_source { "mv" } else { "cp" };
    match node(client, src)? {
        Node::Missing => Err(no_such(src)),
        Node::File(_) => {
            let target = file_key(destination(client, src, dst)?, &shown(dst))?;
            let done = if remove_source {
                files::rename(client, src, &target)?
            } else {
                files::copy(client, src, &target)?
            };
            if done {
                Ok(())
            } else {
                Err(no_such(src))
            }
        }
        Node::Dir(_) if !recursive && !remove_source => {
            Err(Error::Refused(format!("cp: {}: is a directory (use cp -r)", shown(src))))
        }
        Node::Dir(dir) if dir.is_empty() => Err(Error::Refused(format!("{what}: cannot {what} /"))),
        Node::Dir(dir) => {
            let target = as_dir(&destination(client, &dir, dst)?);
            if target.starts_with(&dir) {
                return Err(Error::Refused(format!("{what}: cannot put {} inside itself", shown(&dir))));
            }
            checked_key(&target)?;
            copy_tree(client, &dir, &target, remove_source)
        }
    }
}

/// Copies (or moves) every key under `dir` to the same name under `target`: chunks first,
/// then the other keys (manifests, plain files, markers), so no copied manifest names a chunk
/// not yet there; a move then removes what is left of `dir`.
fn copy_tree(client: &mut Client, dir: &[u8], target: &[u8], remove_source: bool) -> Result<()> {
    for chunks_pass in [true, false] {
        let mut page = Vec::new();
        let mut pages = Vec::new();
        client.scan_all(Some(&under(dir)), |_, key| {
            let last = key.rsplit(|&b| b == b'/').next().unwrap_or(&key);
            if is_chunk_key(last) == chunks_pass {
                page.push(key);
            }
            if page.len() >= 1000 {
                pages.push(std::mem::take(&mut page));
            }
            Ok(())
        })?;
        pages.push(page);
        for keys in pages {
            let word: &[u8] = if remove_source && !chunks_pass { b"rename " } else { b"copy " };
            let requests = keys.iter().map(|key| {
                let to = [target, &key[dir.len()..]].concat();
                checked_key(&to)?;
                Ok([word, key, b" ", &to].concat())
            });
            client.pipelined(
                requests.map(|r: Result<Vec<u8>>| r.map_err(|e| ClientError::Protocol(e.to_string()))),
                WINDOW,
                |_, reply| {
                    match reply.concat().as_slice() {
                        b"OK" | b"NOT_FOUND" => Ok(()), // NOT_FOUND: deleted meanwhile
                        other => Err(reply_error(other)),
                    }
                },
            )?;
        }
    }
    if remove_source {
        client.delprefix(dir)?;
    }
    Ok(())
}

/// `stat path` / `info path`.
pub fn stat(client: &mut Client, path: &[u8], out: &mut impl Write) -> Result<()> {
    match node(client, path)? {
        Node::Missing => Err(no_such(path)),
        Node::File(stored) => {
            let item = client.stat(path)?.ok_or_else(|| no_such(path))?;
            writeln!(out, "path:     {}", shown(path))?;
            writeln!(out, "type:     file")?;
            writeln!(out, "size:     {}", stored.size())?;
            match &stored {
                Stored::Chunked(manifest) => {
                    writeln!(out, "stored:   {} chunks of {} bytes", manifest.chunks, manifest.chunk_bytes)?;
                    writeln!(out, "sha256:   {}", files::hex(&manifest.sha256))?;
                }
                _ => writeln!(out, "stored:   one value")?,
            }
            writeln!(out, "modified: {}", format_time(item.mtime))?;
            let expires = if item.expires_at == 0 { "never".into() } else { format_time(item.expires_at) };
            writeln!(out, "expires:  {expires}")?;
            writeln!(out, "flags:    {}", item.flags)?;
            Ok(())
        }
        Node::Dir(dir) => {
            let names = entries(client, &dir)?;
            let dirs = names.values().filter(|&&d| d).count();
            let (bytes, keys) = usage(client, &dir)?;
            writeln!(out, "path:     {}", shown(&dir))?;
            writeln!(out, "type:     directory")?;
            writeln!(out, "entries:  {} files, {dirs} directories", names.len() - dirs)?;
            writeln!(out, "usage:    {bytes} bytes in {keys} keys")?;
            Ok(())
        }
    }
}

/// Bytes stored (value sizes, chunks included) and keys under `dir`, a page at a time.
fn usage(client: &mut Client, dir: &[u8]) -> Result<(u64, u64)> {
    let (mut bytes, mut keys) = (0u64, 0u64);
    let mut cursor = b"0".to_vec();
    let pattern = under(dir);
    loop {
        let (next, page) = client.scan(&cursor, Some(&pattern), 1000)?;
        for item in stats(client, &page)?.into_iter().flatten() {
            bytes += item.size;
            keys += 1;
        }
        if next == b"0" {
            return Ok((bytes, keys));
        }
        cursor = next;
    }
}

/// `du [path]`: the bytes stored under a directory (chunks included) or in a file.
pub fn du(client: &mut Client, path: &[u8], out: &mut impl Write) -> Result<()> {
    let (bytes, shown_path) = match node(client, path)? {
        Node::Missing => return Err(no_such(path)),
        Node::File(stored) => (stored.size(), shown(path)),
        Node::Dir(dir) => (usage(client, &dir)?.0, shown(&dir)),
    };
    writeln!(out, "{bytes}\t{shown_path}")?;
    Ok(())
}

/// `df`: keys, database size and free disk space, from `stats`.
pub fn df(client: &mut Client, out: &mut impl Write) -> Result<()> {
    let stats = client.stats()?;
    let stat = |name: &str| {
        stats.iter().find(|(n, _)| n == name).map_or_else(|| "unknown".to_string(), |(_, v)| v.clone())
    };
    writeln!(out, "{:>12} {:>16} {:>16}", "keys", "db_bytes", "disk_free_bytes")?;
    writeln!(out, "{:>12} {:>16} {:>16}", stat("keys"), stat("db_bytes"), stat("disk_free_bytes"))?;
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM` (UTC), as `ls -l --time-style=+%F\ %R` shows them.
pub fn format_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_time(1_796_117_506), "2026-12-01 09:31");
    }

    #[test]
    fn scan_patterns_escape_the_directory() {
        assert_eq!(under(b"a*b/"), b"a\\*b/*");
        assert_eq!(under(b""), b"*");
    }
}
