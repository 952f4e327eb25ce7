//! Start-up recovery: replay `database.txt` into the index.
//!
//! Three outcomes for a damaged file, decided by where the damage is:
//! - The last line has no newline: a write that was cut short by a crash. It was never
//!   acknowledged (acknowledgement follows the whole batch, newlines included), so it is cut
//!   off the file and a warning is logged.
//! - Any other malformed line: the file was damaged some other way and guessing would risk
//!   silently dropping acknowledged data, so loading stops with `path:line: reason`.
//! - The same with `repair`: a backup copy of the whole file is kept beside it and the file is
//!   truncated at the first bad line.
//!
//! Values are checked against what an item can hold: a value of 4 GiB or more (the index
//! keeps lengths in 32 bits) is a bad line like any other; a value larger than
//! `--max-value-bytes` (a limit lowered since it was written) is loaded as it is, with a
//! warning naming its line, because it was acknowledged and dropping it would lose it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::files::sync_dir;
use super::format::{FormatError, MovedRef, RecordRef};
use super::index::{is_expired, Index, ItemRef};
use super::unix_now;

/// What loading found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Length of the file after any repair.
    pub file_len: u64,
    /// Records (non-comment lines) kept in the file.
    pub records: u64,
    /// Bytes of a torn final line that were cut off.
    pub torn_bytes: u64,
    /// Where the damaged original was copied, when `repair` cut the file.
    pub backup: Option<PathBuf>,
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Unix time: items expired by then are not loaded.
    pub now: u64,
    /// Truncate at the first malformed line (keeping a backup) instead of failing.
    pub repair: bool,
    /// Values larger than this are loaded with a warning.
    pub max_value_bytes: usize,
}

/// Why a line cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadLine {
    Format(FormatError),
    /// The value is too large for an item (4 GiB or more).
    ValueTooLarge(usize),
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadLine::Format(e) => e.fmt(f),
            BadLine::ValueTooLarge(len) => {
                write!(f, "value of {len} bytes is larger than an item can hold (4 GiB)")
            }
        }
    }
}

/// Why the database could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Io(io::Error),
    Corrupt { path: PathBuf, line: u64, reason: BadLine },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "{e}"),
            LoadError::Corrupt { path, line, reason } => write!(
                f,
                "{}:{line}: {reason} (start with --repair to keep a backup and truncate the file here)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> Self {
        LoadError::Io(e)
    }
}

/// Replays `path` into `index`, giving every item a CAS unique from `next_cas`. Expired items
/// are skipped. The file is created if missing.
pub fn load(
    path: &Path,
    index: &Index,
    options: &LoadOptions,
    mut next_cas: impl FnMut() -> u64,
) -> Result<LoadReport, LoadError> {
    let LoadOptions { now, repair, max_value_bytes } = *options;
    let existed = path.exists();
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    if !existed {
        // A new file's directory entry is durable only once its directory is synced.
        file.sync_all()?;
        sync_dir(path)?;
    }
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut report = LoadReport::default();
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut line_number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        line_number += 1;
        if line.last() != Some(&b'\n') {
            log::warn!(
                "{}:{line_number}: cutting off a torn final line of {read} bytes (an unacknowledged write interrupted by a crash)",
                path.display()
            );
            report.torn_bytes = read as u64;
            file.set_len(offset)?;
            file.sync_all()?;
            break;
        }
        let content = strip_line_ending(&line);
        if !is_comment_or_blank(content) {
            match RecordRef::parse(content).map_err(BadLine::Format).and_then(check_value_size) {
                Ok(record) => {
                    if let RecordRef::Set { value, .. } = &record {
                        if value.len() > max_value_bytes {
                            log::warn!(
                                "{}:{line_number}: value of {} bytes is larger than --max-value-bytes ({max_value_bytes}); loaded as it is",
                                path.display(),
                                value.len()
                            );
                        }
                    }
                    apply(index, record, now, &mut next_cas);
                    report.records += 1;
                }
                Err(reason) if repair => {
                    let backup = write_backup(path)?;
                    sync_dir(path)?;
                    log::warn!(
                        "{}:{line_number}: {reason}; repaired: kept a backup in {} and truncated the file at this line ({} bytes dropped)",
                        path.display(),
                        backup.display(),
                        file.metadata()?.len() - offset
                    );
                    file.set_len(offset)?;
                    file.sync_all()?;
                    report.backup = Some(backup);
                    break;
                }
                Err(reason) => {
                    return Err(LoadError::Corrupt { path: path.to_path_buf(), line: line_number, reason })
                }
            }
        }
        offset += read as u64;
    }
    report.file_len = offset;
    Ok(report)
}

/// The index keeps value lengths in 32 bits.
fn check_value_size(record: RecordRef<'_>) -> Result<RecordRef<'_>, BadLine> {
    match &record {
        RecordRef::Set { value, .. } | RecordRef::Rename { moved: Some(MovedRef { value, .. }), .. }
            if u32::try_from(value.len()).is_err() =>
        {
            Err(BadLine::ValueTooLarge(value.len()))
        }
        _ => Ok(record),
    }
}

/// Lines are `\n`-terminated; a `\r` before it (a file edited on Windows) is tolerated.
pub fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Comments (`#` first) and blank lines carry no record; people may add them by hand.
pub fn is_comment_or_blank(line: &[u8]) -> bool {
    line.first() == Some(&b'#') || line.iter().all(|b| b.is_ascii_whitespace())
}

fn apply(index: &Index, record: RecordRef<'_>, now: u64, next_cas: &mut impl FnMut() -> u64) {
    match record {
        RecordRef::Set { key, value, flags, expires_at } => {
            if is_expired(expires_at, now) {
                index.remove(&key);
            } else {
                index.insert(&key, ItemRef { value: &value, flags, expires_at, cas: next_cas() });
            }
        }
        RecordRef::Del { key } => {
            index.remove(&key);
        }
        RecordRef::Flush => index.clear(),
        RecordRef::Copy { src, dst } => copy_item(index, &src, &dst, false, now, next_cas),
        RecordRef::Rename { src, dst, moved: None } => copy_item(index, &src, &dst, true, now, next_cas),
        RecordRef::Rename { src, dst, moved: Some(moved) } => {
            // The form that carries the item: a `del` of src and a `set` of dst in one record.
            index.remove(&src);
            apply(
                index,
                RecordRef::Set {
                    key: dst,
                    value: moved.value,
                    flags: moved.flags,
                    expires_at: moved.expires_at,
                },
                now,
                next_cas,
            );
        }
        RecordRef::DelPrefix { prefix } => {
            index.remove_prefix(&prefix);
        }
    }
}

/// Replays `copy` (or `rename`, with `remove_source`). The writer writes one only when src is
/// present, so a src missing here expired before this start (loading skips expired items):
/// dst was given that same expired item, so it is gone too.
fn copy_item(
    index: &Index,
    src: &[u8],
    dst: &[u8],
    remove_source: bool,
    now: u64,
    next_cas: &mut impl FnMut() -> u64,
) {
    if src == dst {
        return;
    }
    match index.get(src, now) {
        Some(item) => {
            index.insert(dst, ItemRef { cas: next_cas(), ..item.as_ref() });
        }
        None => {
            index.remove(dst);
        }
    }
    if remove_source {
        index.remove(src);
    }
}

/// Copies the database to a new `<db>.corrupt-<unix time>.bak` (`…-2.bak`, `…-3.bak` when
/// a backup from the same second exists: an earlier backup holds lines a later repair no
/// longer has, so it is never overwritten), with the database's permissions, and fsyncs it:
/// the backup must be durable before the original is cut.
fn write_backup(path: &Path) -> io::Result<PathBuf> {
    let stamp = unix_now();
    for n in 1..=1000 {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(if n == 1 { format!(".corrupt-{stamp}.bak") } else { format!(".corrupt-{stamp}-{n}.bak") });
        let backup = path.with_file_name(name);
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&backup) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        file.set_permissions(fs::metadata(path)?.permissions())?;
        io::copy(&mut fs::File::open(path)?, &mut file)?;
        file.sync_all()?;
        return Ok(backup);
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "1,000 backups from this second already exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn repairing() -> LoadOptions {
        LoadOptions { now: 0, repair: true, max_value_bytes: 1 << 20 }
    }

    #[test]
    fn a_value_an_item_cannot_hold_is_a_bad_line_not_a_panic() {
        // 4 GiB of zeros: calloc-backed, so no memory is touched.
        let huge = Cow::Owned(vec![0u8; 1 << 32]);
        let record = RecordRef::Set { key: Cow::Borrowed(b"k"), value: huge, flags: 0, expires_at: 0 };
        let err = check_value_size(record).unwrap_err();
        assert_eq!(err, BadLine::ValueTooLarge(1 << 32));
        assert!(err.to_string().contains("larger than an item can hold"), "{err}");
    }

    #[test]
    fn a_value_over_the_limit_loads_with_a_warning() {
        let (report, index, _) =
            load_text(format!("set a {}\n", "x".repeat((1 << 20) + 1)).as_bytes(), false);
        report.unwrap();
        assert_eq!(index.get(b"a", 1000).unwrap().value.len(), (1 << 20) + 1);
    }

    fn load_text(text: &[u8], repair: bool) -> (Result<LoadReport, LoadError>, Index, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.txt");
        fs::write(&path, text).unwrap();
        let index = Index::default();
        let mut cas = 0;
        let options = LoadOptions { now: 1000, repair, max_value_bytes: 1 << 20 };
        let result = load(&path, &index, &options, || {
            cas += 1;
            cas
        });
        let after = fs::read(&path).unwrap();
        (result, index, after)
    }

    #[test]
    fn replays_sets_deletes_flushes_and_comments() {
        let text = b"# header\nset a 1\nset b 2\n\ndel a\nset c 3\nflush\nset d 4\nsetmeta e 5 0 five\n";
        let (report, index, _) = load_text(text, false);
        let report = report.unwrap();
        assert_eq!(report.records, 7);
        assert_eq!(report.file_len, text.len() as u64);
        assert_eq!(index.keys(b"", 1000).len(), 2);
        assert_eq!(index.get(b"e", 1000).unwrap().flags, 5);
    }

    #[test]
    fn expired_items_are_not_loaded() {
        let (report, index, _) = load_text(b"setmeta a 0 999 old\nsetmeta b 0 1001 new\n", false);
        report.unwrap();
        assert!(index.get(b"a", 1000).is_none());
        assert!(index.get(b"b", 1000).is_some());
    }

    #[test]
    fn a_torn_final_line_is_cut_off() {
        let (report, index, after) = load_text(b"set a 1\nset b 2", false);
        let report = report.unwrap();
        assert_eq!(report.torn_bytes, 7);
        assert_eq!(after, b"set a 1\n");
        assert!(index.get(b"b", 1000).is_none());
    }

    #[test]
    fn a_bad_middle_line_is_reported_with_its_number() {
        let (result, _, after) = load_text(b"set a 1\n# note\nset b\nset c 3\n", false);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("db.txt:3: wrong number of arguments"), "{err}");
        assert_eq!(after, b"set a 1\n# note\nset b\nset c 3\n", "an unrepaired file is left untouched");
    }

    #[test]
    fn repair_keeps_a_backup_and_truncates_at_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.txt");
        let original = b"set a 1\nset b \\q\nset c 3\n";
        fs::write(&path, original).unwrap();
        let index = Index::default();
        let report = load(&path, &index, &repairing(), || 1).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"set a 1\n");
        assert_eq!(fs::read(report.backup.unwrap()).unwrap(), original);
        assert!(index.get(b"a", 0).is_some());
        assert!(index.get(b"c", 0).is_none());
    }

    #[test]
    fn a_repair_never_overwrites_an_earlier_backup_from_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.txt");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        // Backups an earlier repair made this second (or the next two, should the clock tick).
        let earlier: Vec<PathBuf> =
            (now..now + 3).map(|t| dir.path().join(format!("db.txt.corrupt-{t}.bak"))).collect();
        for backup in &earlier {
            fs::write(backup, "earlier backup").unwrap();
        }
        let original = b"set a 1\nset c \\q\nset d 4\n";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let backup = load(&path, &Index::default(), &repairing(), || 1).unwrap().backup.unwrap();
        assert!(backup.to_string_lossy().ends_with("-2.bak"), "{}", backup.display());
        assert_eq!(fs::read(&backup).unwrap(), original);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&backup).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the backup keeps the database's permissions");
        for backup in &earlier {
            assert_eq!(fs::read(backup).unwrap(), b"earlier backup", "{} is intact", backup.display());
        }
        assert_eq!(fs::read(&path).unwrap(), b"set a 1\n");
    }
}
