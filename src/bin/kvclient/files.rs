//! Files of any size stored under one key: plain values, or chunks plus a manifest.
//!
//! A file no larger than the server's value limit (`STAT max_value_bytes`, 1 MiB when the
//! server does not say) is stored as the plain value of its key, so `get` and every other
//! client see it as it is. A larger file is split into chunks of exactly that limit (the last
//! one shorter), stored under keys derived from the file's key, and the file's key holds a
//! one-line manifest:
//!
//! ```text
//! docs/big.iso~chunk.3fa94c01.0 … docs/big.iso~chunk.3fa94c01.199    the chunks
//! docs/big.iso   textkv-file v1 size=209715200 chunks=200 chunk_bytes=1048576 sha256=<64 hex> id=3fa94c01
//! ```
//!
//! - **Writing**: every upload gets a fresh random id; its chunks are written first
//!   (pipelined), the manifest last, in one `set` — one atomic record on the server. So a
//!   reader sees the old version or the new one, never a half-written file, and a client
//!   killed mid-upload leaves the previous manifest and its chunks untouched.
//! - **Old chunks** (any id other than the one the key's manifest now names: the previous
//!   version, or orphans of a crashed upload) are deleted after the manifest is in place, one
//!   `delprefix <key>~chunk.<id>.` each. Orphans are never visible: `ls` hides chunk keys.
//! - **Reading** fetches the manifest, then streams the chunks a few at a time (memory: a
//!   few chunks, whatever the size), checking each chunk's length, the total size and the
//!   SHA-256. A chunk missing mid-read means the file was replaced meanwhile: an error, never a
//!   mix of two versions.
//! - **Ambiguity**: a small file whose content starts with the manifest's magic is stored
//!   chunked (one chunk) rather than plain, so kvclient never mistakes a file it wrote for a
//!   manifest. A value `set` by hand to look like a manifest is read as one.
//! - **Simplifications**: two clients writing the same file at the same time are not
//!   supported (the last manifest wins, but the loser's cleanup may remove the winner's
//!   chunks only if they raced past each other's manifest); chunk keys add
//!   [`CHUNK_KEY_OVERHEAD`] bytes, so a chunked file's key is at most 250 minus that.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use textkv::client::{parse_value, Client, ClientError};
use textkv::escape::escape_into;
use textkv::store::format::MAX_KEY_BYTES;

use crate::error::{Error, Result};

/// The start of every manifest value.
pub const MANIFEST_MAGIC: &[u8] = b"textkv-file v1 ";
/// A manifest is one short line; values longer than this are never manifests.
pub const MAX_MANIFEST_BYTES: u64 = 256;
/// The value limit assumed when `stats` does not report `max_value_bytes`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// What a chunk key adds to its file's key: `~chunk.` + 8 hex digits + `.` + up to 10 digits.
pub const CHUNK_KEY_OVERHEAD: usize = CHUNK_MARK.len() + ID_LEN + 1 + 10;
const CHUNK_MARK: &[u8] = b"~chunk.";
const ID_LEN: usize = 8;
/// Chunk requests in flight at once: enough to keep the connection busy, few enough that a
/// transfer holds only a few chunks in memory.
const CHUNK_WINDOW: usize = 8;
/// Transfers smaller than this get no progress bar.
const PROGRESS_THRESHOLD: u64 = 4 << 20;

/// The manifest of a chunked file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub sha256: [u8; 32],
    /// The upload id in the chunk keys.
    pub id: String,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut text = String::from_utf8_lossy(MANIFEST_MAGIC).into_owned();
        let _ = write!(
            text,
            "size={} chunks={} chunk_bytes={} sha256={} id={}",
            self.size,
            self.chunks,
            self.chunk_bytes,
            hex(&self.sha256),
            self.id
        );
        text.into_bytes()
    }

    /// The manifest in `value`, or `None` when the value is not one (any other value).
    pub fn parse(value: &[u8]) -> Option<Manifest> {
        let fields = std::str::from_utf8(value.strip_prefix(MANIFEST_MAGIC)?).ok()?;
        let (mut size, mut chunks, mut chunk_bytes, mut sha256, mut id) = (None, None, None, None, None);
        for field in fields.split(' ') {
            match field.split_once('=')? {
                ("size", v) => size = v.parse().ok(),
                ("chunks", v) => chunks = v.parse().ok(),
                ("chunk_bytes", v) => chunk_bytes = v.parse().ok(),
                ("sha256", v) => sha256 = unhex32(v),
                ("id", v) if is_id(v.as_bytes()) => id = Some(v.to_string()),
                _ => return None,
            }
        }
        let manifest =
            Manifest { size: size?, chunks: chunks?, chunk_bytes: chunk_bytes?, sha256: sha256?, id: id? };
        let consistent = manifest.chunk_bytes > 0
            && manifest.chunks == manifest.size.div_ceil(manifest.chunk_bytes).max(1)
            || manifest.size == 0 && manifest.chunks == 0;
        consistent.then_some(manifest)
    }

    /// The expected length of chunk `n`.
    fn chunk_len(&self, n: u64) -> u64 {
        if n + 1 < self.chunks {
            self.chunk_bytes
        } else {
            self.size - self.chunk_bytes * n
        }
    }
}

/// `<key>~chunk.` — the start of every chunk key of `key`, whatever the upload.
pub fn chunk_family(key: &[u8]) -> Vec<u8> {
    [key, CHUNK_MARK].concat()
}

/// `<key>~chunk.<id>.<n>`
pub fn chunk_key(key: &[u8], id: &str, n: u64) -> Vec<u8> {
    let mut out = chunk_family(key);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(format!(".{n}").as_bytes());
    out
}

/// Is `name` (a key, or its last path component) a chunk key? `ls` hides those.
pub fn is_chunk_key(name: &[u8]) -> bool {
    upload_id(name).is_some()
}

/// The upload id of chunk key `name`: the `<id>` of `…~chunk.<id>.<n>`.
fn upload_id(name: &[u8]) -> Option<&[u8]> {
    let digits = name.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let rest = name.strip_suffix(&name[name.len() - digits..]).filter(|_| digits > 0)?;
    let rest = rest.strip_suffix(b".")?;
    let (before, id) = rest.split_at(rest.len().checked_sub(ID_LEN)?);
    (before.ends_with(CHUNK_MARK) && is_id(id)).then_some(id)
}

fn is_id(id: &[u8]) -> bool {
    id.len() == ID_LEN && id.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A fresh random upload id (std's per-process random hasher keys, no extra crate).
fn new_upload_id() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    format!("{:08x}", hasher.finish() as u32)
}

/// What a key holds, as a file.
#[derive(Debug)]
pub enum Stored {
    Missing,
    Plain(Vec<u8>),
    Chunked(Manifest),
}

impl Stored {
    /// The file's size in bytes (0 when missing).
    pub fn size(&self) -> u64 {
        match self {
            Stored::Missing => 0,
            Stored::Plain(value) => value.len() as u64,
            Stored::Chunked(manifest) => manifest.size,
        }
    }
}

pub fn lookup(client: &mut Client, key: &[u8]) -> Result<Stored> {
    Ok(match client.get(key)? {
        None => Stored::Missing,
        Some(value) => match Manifest::parse(&value) {
            Some(manifest) => Stored::Chunked(manifest),
            None => Stored::Plain(value),
        },
    })
}

/// The server's value limit: `STAT max_value_bytes`, or [`DEFAULT_MAX_VALUE_BYTES`].
pub fn max_value_bytes(client: &mut Client) -> Result<usize> {
    let stats = client.stats()?;
    Ok(stats
        .iter()
        .find(|(name, _)| name == "max_value_bytes")
        .and_then(|(_, value)| value.parse().ok())
        .filter(|&limit: &usize| limit > 0)
        .unwrap_or(DEFAULT_MAX_VALUE_BYTES))
}

/// A progress bar on standard error when it is a terminal and the transfer is big enough;
/// hidden otherwise (pipes, scripts, tests).
pub fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let big = total.is_none_or(|total| total >= PROGRESS_THRESHOLD);
    if !io::stderr().is_terminal() || !big {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Stores everything `source` yields under `key` (plain or chunked, as the module says) and
/// returns the number of bytes stored.
pub fn put(client: &mut Client, key: &[u8], source: impl Read, bar: &ProgressBar) -> Result<u64> {
    let limit = max_value_bytes(client)?;
    let mut source = BufReader::with_capacity(64 * 1024, source);
    let mut first = Vec::with_capacity(limit.min(1 << 20));
    read_up_to(&mut source, limit, &mut first)?;
    let at_end = source.fill_buf()?.is_empty();
    if at_end && !first.starts_with(MANIFEST_MAGIC) {
        client.set(key, &first)?;
        bar.inc(first.len() as u64);
        remove_stale_chunks(client, key)?;
        return Ok(first.len() as u64);
    }
    check_chunked_key(key)?;
    let id = new_upload_id();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunks = 0u64;
    let mut pending = Some(first);
    let mut read_failure = None;
    let requests = std::iter::from_fn(|| {
        let chunk = match pending.take() {
            Some(chunk) => chunk,
            None => {
                let mut chunk = Vec::with_capacity(limit.min(1 << 20));
                if let Err(e) = read_up_to(&mut source, limit, &mut chunk) {
                    read_failure = Some(e);
                    return None;
                }
                if chunk.is_empty() {
                    return None;
                }
                chunk
            }
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        let mut line = Vec::with_capacity(chunk.len() + 64);
        line.extend_from_slice(b"set ");
        line.extend_from_slice(&chunk_key(key, &id, chunks));
        line.push(b' ');
        escape_into(&chunk, &mut line);
        chunks += 1;
        Some(Ok(line))
    });
    client.pipelined(requests, CHUNK_WINDOW, |_, reply| match reply.concat().as_slice() {
        b"STORED" => {
            bar.inc(limit as u64);
            Ok(())
        }
        other => Err(server_reply_error(other)),
    })?;
    if let Some(e) = read_failure {
        return Err(Error::Io(e));
    }
    let manifest = Manifest { size, chunks, chunk_bytes: limit as u64, sha256: hasher.finalize().into(), id };
    client.set(key, &manifest.encode())?;
    bar.set_position(size);
    remove_stale_chunks(client, key)?;
    Ok(size)
}

/// Reads until `out` holds `limit` bytes or the source ends.
fn read_up_to(source: &mut impl Read, limit: usize, out: &mut Vec<u8>) -> io::Result<()> {
    source.take((limit - out.len()) as u64).read_to_end(out).map(drop)
}

fn check_chunked_key(key: &[u8]) -> Result<()> {
    if key.len() + CHUNK_KEY_OVERHEAD > MAX_KEY_BYTES {
        return Err(Error::Refused(format!(
            "key too long for a file stored in chunks (max {} bytes)",
            MAX_KEY_BYTES - CHUNK_KEY_OVERHEAD
        )));
    }
    Ok(())
}

fn server_reply_error(reply: &[u8]) -> ClientError {
    match reply.strip_prefix(b"ERROR ") {
        Some(reason) => ClientError::Server(String::from_utf8_lossy(reason).into_owned()),
        None => ClientError::Protocol(String::from_utf8_lossy(reply).into_owned()),
    }
}

/// Deletes the chunks of `key` that its current value does not name: those of older
/// versions and of crashed uploads (all of them when the key is plain or gone). The family is
/// listed with `keys <key>~chunk.` (a few hundred keys for a file of a few hundred MB) and the
/// stale chunks deleted with pipelined `del`s.
pub fn remove_stale_chunks(client: &mut Client, key: &[u8]) -> Result<()> {
    let keep = match lookup(client, key)? {
        Stored::Chunked(manifest) => Some(manifest.id),
        _ => None,
    };
    remove_chunks(client, key, keep.as_deref())
}

/// Deletes every chunk of `key` but those of upload `keep`: after `set`/`del` replaced or
/// removed what may have been a chunked file (`keep` = `None`), or after a new manifest.
pub fn remove_chunks(client: &mut Client, key: &[u8], keep: Option<&str>) -> Result<()> {
    let family = chunk_family(key);
    let stale: Vec<Vec<u8>> = client
        .keys_with_prefix(&family)?
        .into_iter()
        .filter(|chunk| {
            // Exactly `<key>~chunk.<id>.<n>`: not the chunks of a file named `<key>~chunk.x/…`.
            let Some(rest) = chunk.strip_prefix(family.as_slice()) else { return false };
            let (id, n) = rest.split_at(rest.len().min(ID_LEN));
            is_id(id)
                && n.len() > 1
                && n[0] == b'.'
                && n[1..].iter().all(u8::is_ascii_digit)
                && keep.map(str::as_bytes) != Some(id)
        })
        .collect();
    let requests = stale.iter().map(|chunk| Ok([b"del ", chunk.as_slice()].concat()));
    client.pipelined(requests, 128, |_, reply| match reply.concat().as_slice() {
        b"DELETED" | b"NOT_FOUND" => Ok(()),
        other => Err(server_reply_error(other)),
    })?;
    Ok(())
}

/// Writes the file under `key` to `out`; `None` when there is no such key.
pub fn get(client: &mut Client, key: &[u8], out: &mut impl Write, what: &str) -> Result<Option<u64>> {
    let manifest = match lookup(client, key)? {
        Stored::Missing => return Ok(None),
        Stored::Plain(value) => {
            out.write_all(&value)?;
            return Ok(Some(value.len() as u64));
        }
        Stored::Chunked(manifest) => manifest,
    };
    let bar = progress(Some(manifest.size), what);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut write_failure = None;
    let requests =
        (0..manifest.chunks).map(|n| Ok([b"get ", chunk_key(key, &manifest.id, n).as_slice()].concat()));
    client
        .pipelined(requests, CHUNK_WINDOW, |n, reply| {
            let line = reply.concat();
            let chunk = match parse_value(&line) {
                Some(Some(chunk)) => chunk,
                Some(None) => {
                    return Err(ClientError::Protocol(format!(
                        "{} changed while it was being read (chunk {n} is gone); try again",
                        String::from_utf8_lossy(key)
                    )))
                }
                None => return Err(server_reply_error(&line)),
            };
            if chunk.len() as u64 != manifest.chunk_len(n as u64) {
                return Err(ClientError::Protocol(format!(
                    "chunk {n} of {} has {} bytes, its manifest says {}",
                    String::from_utf8_lossy(key),
                    chunk.len(),
                    manifest.chunk_len(n as u64)
                )));
            }
            hasher.update(&chunk);
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
            if let Err(e) = out.write_all(&chunk) {
                write_failure = Some(e);
                return Err(ClientError::Protocol("local write failed".into()));
            }
            Ok(())
        })
        .map_err(|e| match write_failure.take() {
            Some(io_error) => Error::Io(io_error),
            None => Error::Client(e),
        })?;
    bar.finish_and_clear();
    let digest: [u8; 32] = hasher.finalize().into();
    if written != manifest.size || digest != manifest.sha256 {
        return Err(Error::Refused(format!(
            "{} is damaged: read {written} bytes with SHA-256 {}, its manifest says {} bytes with {}",
            String::from_utf8_lossy(key),
            hex(&digest),
            manifest.size,
            hex(&manifest.sha256)
        )));
    }
    Ok(Some(written))
}

/// Downloads `key` into the local file `path`: written beside it under a temporary name and
/// renamed into place only once complete and checked, so `path` is never left half written.
pub fn get_to_file(client: &mut Client, key: &[u8], path: &Path) -> Result<Option<u64>> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = dir.join(format!(".{name}.kvclient-{}", std::process::id()));
    let result = (|| {
        let mut file = io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&partial)?);
        let got = get(client, key, &mut file, &name)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(got)
    })();
    match result {
        Ok(Some(size)) => {
            std::fs::rename(&partial, path)?;
            Ok(Some(size))
        }
        other => {
            let _ = std::fs::remove_file(&partial);
            other
        }
    }
}

/// Deletes the file under `key` (its manifest first, so it vanishes at once, then its
/// chunks); `false` when there was none.
pub fn remove(client: &mut Client, key: &[u8]) -> Result<bool> {
    let existed = client.del(key)?;
    remove_stale_chunks(client, key)?;
    Ok(existed)
}

/// Copies the file `src` to `dst` (a server-side `copy` for a plain value; chunk by chunk,
/// then the manifest, for a chunked one); `false` when `src` is missing.
pub fn copy(client: &mut Client, src: &[u8], dst: &[u8]) -> Result<bool> {
    if src == dst {
        return Ok(!matches!(lookup(client, src)?, Stored::Missing));
    }
    match lookup(client, src)? {
        Stored::Missing => return Ok(false),
        Stored::Plain(_) => {
            if client.copy_or_rename(src, dst, false, false)? != textkv::client::Transfer::Done {
                return Ok(false);
            }
        }
        Stored::Chunked(manifest) => {
            check_chunked_key(dst)?;
            let requests = (0..manifest.chunks).map(|n| {
                let from = chunk_key(src, &manifest.id, n);
                let to = chunk_key(dst, &manifest.id, n);
                Ok([b"copy ".as_slice(), &from, b" ", &to].concat())
            });
            client.pipelined(requests, 64, |n, reply| match reply.concat().as_slice() {
                b"OK" => Ok(()),
                b"NOT_FOUND" => Err(ClientError::Protocol(format!(
                    "{} changed while it was being copied (chunk {n} is gone); try again",
                    String::from_utf8_lossy(src)
                ))),
                other => Err(server_reply_error(other)),
            })?;
            client.set(dst, &manifest.encode())?;
        }
    }
    remove_stale_chunks(client, dst)?;
    Ok(true)
}

/// Moves the file `src` to `dst`: a server-side `rename` (atomic) for a plain value; for a
/// chunked one a copy and then the removal of `src` (at every moment each name holds a
/// whole file or nothing). `false` when `src` is missing.
pub fn rename(client: &mut Client, src: &[u8], dst: &[u8]) -> Result<bool> {
    if src == dst {
        return Ok(!matches!(lookup(client, src)?, Stored::Missing));
    }
    match lookup(client, src)? {
        Stored::Missing => Ok(false),
        Stored::Plain(_) => {
            let moved = client.copy_or_rename(src, dst, true, false)? == textkv::client::Transfer::Done;
            remove_stale_chunks(client, dst)?;
            Ok(moved)
        }
        Stored::Chunked(_) => {
            let copied = copy(client, src, dst)?;
            remove(client, src)?;
            Ok(copied)
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sample() -> Manifest {
        Manifest {
            size: 2_500_000,
            chunks: 3,
            chunk_bytes: 1 << 20,
            sha256: [0xab; 32],
            id: "0123abcd".into(),
        }
    }

    #[test]
    fn manifests_round_trip_and_reject_lookalikes() {
        let manifest = sample();
        let encoded = manifest.encode();
        assert!(encoded.len() as u64 <= MAX_MANIFEST_BYTES);
        assert_eq!(Manifest::parse(&encoded), Some(manifest.clone()));
        assert_eq!(Manifest::parse(b"hello"), None);
        let wrong_count = String::from_utf8(encoded.clone()).unwrap().replace("chunks=3", "chunks=4");
        assert_eq!(Manifest::parse(wrong_count.as_bytes()), None, "chunk count must match the size");
        let bad_id = String::from_utf8(encoded).unwrap().replace("0123abcd", "ZZ");
        assert_eq!(Manifest::parse(bad_id.as_bytes()), None);
        let empty =
            Manifest { size: 0, chunks: 0, chunk_bytes: 1024, sha256: [0; 32], id: "00000000".into() };
        assert_eq!(Manifest::parse(&empty.encode()), Some(empty));
    }

    #[test]
    fn chunk_lengths_follow_the_manifest() {
        let manifest = sample();
        assert_eq!(manifest.chunk_len(0), 1 << 20);
        assert_eq!(manifest.chunk_len(2), 2_500_000 - 2 * (1 << 20));
    }

    #[test]
    fn chunk_keys_are_recognised_and_nothing_else() {
        let key = chunk_key(b"docs/big.iso", "3fa94c01", 17);
        assert_eq!(key, b"docs/big.iso~chunk.3fa94c01.17");
        assert!(is_chunk_key(&key));
        assert_eq!(upload_id(&key), Some(&b"3fa94c01"[..]));
        assert!(key.len() - b"docs/big.iso".len() <= CHUNK_KEY_OVERHEAD);
        for not_chunk in
            [&b"big.iso"[..], b"a~chunk.3fa94c01.", b"a~chunk.3FA94C01.1", b"a~chunk.3fa94c0.1", b"~chunk"]
        {
            assert!(!is_chunk_key(not_chunk), "{}", String::from_utf8_lossy(not_chunk));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_manifest_round_trips(size in 0u64..1 << 40, chunk_bytes in 1u64..1 << 30, sha in proptest::array::uniform32(0u8..), id in 0u32..) {
            let chunks = if size == 0 { 0 } else { size.div_ceil(chunk_bytes) };
            let manifest = Manifest { size, chunks, chunk_bytes, sha256: sha, id: format!("{id:08x}") };
            let encoded = manifest.encode();
            proptest::prop_assert!(encoded.len() as u64 <= MAX_MANIFEST_BYTES);
            proptest::prop_assert_eq!(Manifest::parse(&encoded), Some(manifest));
        }
    }

    #[test]
    fn upload_ids_are_fresh() {
        let ids: HashSet<String> = (0..100).map(|_| new_upload_id()).collect();
        assert!(ids.len() > 95);
        assert!(ids.iter().all(|id| is_id(id.as_bytes())));
    }
}
