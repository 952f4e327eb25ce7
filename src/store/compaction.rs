//! Compaction: rewrite the log to hold only live items, without stopping writes.
//!
//! 1. The writer starts a compaction at a batch boundary and notes the old log's length.
//!    From then on it appends every batch to the old log as usual; what lies past that
//!    length (the tail) is every write made since the start.
//! 2. A background thread walks the index one shard at a time and writes every live item
//!    to `<db>.compact`, then fsyncs it. The walk is not a point-in-time snapshot: an item
//!    may be seen before or after a concurrent write. That is fine because every write made
//!    since the start is in the tail, and replaying the tail after the walk yields the final
//!    state whatever the walk saw (records are idempotent: `set`, `del`, `flush`).
//! 3. The writer, between two batches, copies the tail from the old log to the temporary
//!    file, fsyncs it, gives it the old log's permissions, renames it over the log and fsyncs
//!    the directory, so a crash at any point leaves either the complete old log or the
//!    complete new one. Writes wait only for this last step. If the directory fsync fails,
//!    the writer retries it before it acknowledges anything more (`Installed::dir_synced`).
//!
//! A temporary file left by a crash is removed at the next start. The temporary file is
//! always created afresh (never opened through whatever name was there, see `files`), and
//! it is locked before the rename, so the lock that keeps a second server off the log
//! passes to the new log with its name.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::disk::{Disk, DiskFile};
use super::files::{remove_if_present, sibling};
use super::format::encode_set;
use super::index::SHARDS;
use super::{unix_now, Shared, StoreError};

pub(crate) type Waiter = Sender<Result<(), StoreError>>;

/// The live set, written and synced to the temporary file.
pub(crate) struct Snapshot {
    file: Arc<dyn DiskFile>,
    len: u64,
    records: u64,
    /// The old log's tail is already copied up to this offset (see `catch_up`).
    copied_to: u64,
}

/// The new log, in place.
pub(crate) struct Installed {
    pub file: Arc<dyn DiskFile>,
    pub len: u64,
    pub records: u64,
    /// Whether the directory fsync after the rename succeeded; if not, the rename may not
    /// survive a power loss and must be made durable before more writes are acknowledged.
    pub dir_synced: bool,
}

/// A compaction in progress, owned by the writer.
pub(crate) struct Compaction {
    waiters: Vec<Waiter>,
}

pub(crate) fn temp_path(path: &Path) -> PathBuf {
    sibling(path, ".compact")
}

/// Removes a temporary file left by a compaction that a crash interrupted: the log it was
/// meant to replace is still complete.
pub(crate) fn remove_stale_temp(path: &Path) -> io::Result<()> {
    let temp = temp_path(path);
    if remove_if_present(&temp)? {
        log::warn!("removed {} left by an interrupted compaction", temp.display());
    }
    Ok(())
}

impl Compaction {
    /// Spawns the snapshot thread, which hands its result to `done` (the writer's install
    /// step). `start_len` is the old log's length now.
    pub(crate) fn start(
        disk: &Arc<dyn Disk>,
        path: &Path,
        start_len: u64,
        shared: Arc<Shared>,
        done: impl FnOnce(io::Result<Snapshot>) + Send + 'static,
        waiter: Option<Waiter>,
    ) -> Result<Compaction, (io::Error, Option<Waiter>)> {
        let path = path.to_path_buf();
        let disk = Arc::clone(disk);
        let spawned = std::thread::Builder::new().name("compactor".into()).spawn(move || {
            // A panic must still reach `done`, or the compaction would never end.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_snapshot(&*disk, &path, &shared, start_len)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("the compaction thread panicked")));
            done(result);
        });
        match spawned {
            Ok(_) => Ok(Compaction { waiters: waiter.into_iter().collect() }),
            Err(e) => Err((e, waiter)),
        }
    }

    pub(crate) fn add_waiter(&mut self, waiter: Option<Waiter>) {
        self.waiters.extend(waiter);
    }

    /// Completes the compaction: copies the rest of the tail, `old[copied_to..old_len]`
    /// (`catch_up` copied the part before it), after the snapshot, fsyncs, renames, fsyncs
    /// the directory. Returns the outcome and the callers
    /// to answer once the writer has switched to the new file.
    pub(crate) fn install(
        self,
        snapshot: io::Result<Snapshot>,
        disk: &dyn Disk,
        path: &Path,
        old: &dyn DiskFile,
        old_len: u64,
    ) -> (io::Result<Installed>, Vec<Waiter>) {
        let temp = temp_path(path);
        let result = snapshot.and_then(|snapshot| {
            let (tail_len, tail_records) =
                copy_tail(old, snapshot.copied_to, old_len, &*snapshot.file, snapshot.len)?;
            snapshot.file.sync_data()?;
            // The lock that keeps other servers off the log goes on the new log before it
            // gets the log's name: a server started at any moment finds the file it opens locked.
            snapshot.file.lock()?;
            disk.rename(&temp, path)?;
            // From here on the new file *is* the log: the writer must switch to it even if the
            // directory fsync fails, and retries that fsync before acknowledging more writes.
            let dir_synced = match disk.sync_dir(path) {
                Ok(()) => true,
                Err(e) => {
                    log::error!("fsync of the directory of {} failed after compaction: {e}", path.display());
                    false
                }
            };
            Ok(Installed {
                file: snapshot.file,
                len: snapshot.len + tail_len,
                records: snapshot.records + tail_records,
                dir_synced,
            })
        });
        if result.is_err() {
            let _ = disk.remove(&temp);
        }
        (result, self.waiters)
    }
}

/// Copies `old[from..to]` to `new` at `at` in bounded chunks; returns the bytes and records
/// (lines) copied.
fn copy_tail(old: &dyn DiskFile, from: u64, to: u64, new: &dyn DiskFile, at: u64) -> io::Result<(u64, u64)> {
    let mut chunk = vec![0; 1 << 20];
    let (mut offset, mut records) = (from, 0u64);
    while offset < to {
        let n = chunk.len().min((to - offset) as usize);
        old.read_at(&mut chunk[..n], offset)?;
        new.write_at(&chunk[..n], at + (offset - from))?;
        records += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        offset += n as u64;
    }
    Ok((to - from, records))
}

/// Bytes of snapshot written between two fdatasyncs of the temporary file, so the kernel
/// writes it back steadily instead of in one burst at the end that would stall the writer's
/// own fsyncs (and the final fsync, which writes wait for, has little left to do).
const SYNC_EVERY: u64 = 16 << 20;

fn write_snapshot(disk: &dyn Disk, path: &Path, shared: &Shared, start_len: u64) -> io::Result<Snapshot> {
    // The new log replaces the old one: it keeps the old one's permissions (a log made
    // private with chmod 600 must not become readable by a compaction).
    let file = disk.create_fresh(&temp_path(path), path)?;
    let now = unix_now();
    let header = format!("# textkv database, compacted at Unix time {now}; one record per line\n");
    file.write_at(header.as_bytes(), 0)?;
    let mut len = header.len() as u64;
    let mut synced = 0u64;
    let mut records = 0u64;
    let mut chunk = Vec::with_capacity(1 << 20);
    for shard in 0..SHARDS {
        chunk.clear();
        shared.index.for_each_in_shard(shard, now, |key, item| {
            encode_set(key, item.value, item.flags, item.expires_at, &mut chunk);
            records += 1;
        });
        // The shard's lock is released: I/O happens while the writer can update it.
        file.write_at(&chunk, len)?;
        len += chunk.len() as u64;
        if len - synced >= SYNC_EVERY {
            file.sync_data()?;
            synced = len;
        }
    }
    let mut snapshot = Snapshot { file, len, records, copied_to: start_len };
    catch_up(disk, path, shared, &mut snapshot)?;
    Ok(snapshot)
}

/// Copies the old log's tail written so far, and again while it keeps growing, so that the
/// writer (which holds up every write while it finishes a compaction) has only a small rest
/// to copy and fsync. The old log is read through its path, which names it until the
/// writer's rename; the writer publishes its length only after the bytes are written.
fn catch_up(disk: &dyn Disk, path: &Path, shared: &Shared, snapshot: &mut Snapshot) -> io::Result<()> {
    const SMALL_REST: u64 = 1 << 20;
    const ROUNDS: usize = 8;
    let old = disk.open(path)?;
    for _ in 0..ROUNDS {
        let end = shared.counters.file_bytes.load(Ordering::Acquire);
        if end.saturating_sub(snapshot.copied_to) < SMALL_REST {
            break;
        }
        let (bytes, records) = copy_tail(&*old, snapshot.copied_to, end, &*snapshot.file, snapshot.len)?;
        snapshot.len += bytes;
        snapshot.records += records;
        snapshot.copied_to = end;
    }
    snapshot.file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::OsDisk;
    use crate::store::{Store, StoreConfig, StoreMode, WriteOp};
    use std::fs::{self, File, OpenOptions};

    #[test]
    fn a_compaction_and_its_expiry_sweep_are_not_counted_as_write_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("db.txt"))).unwrap();
        let set = WriteOp::Store {
            key: b"k".to_vec(),
            value: b"v".to_vec().into(),
            flags: 0,
            expires_at: 0,
            mode: StoreMode::Set,
        };
        store.write(set).unwrap();
        assert_eq!(store.stats().batches, 1);
        store.compact().unwrap();
        assert_eq!(store.stats().compactions, 1);
        assert_eq!(store.stats().batches, 1, "only the one write's batch");
    }

    #[test]
    fn install_copies_only_the_part_of_the_tail_catch_up_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.txt");
        // The old log: the live set when the compaction started, then a tail of two writes.
        fs::write(&path, "set a 1\nset b 2\nset c 3\n").unwrap();
        let start_len = "set a 1\n".len() as u64;
        // The snapshot holds the live set, and catch_up has already copied `set b 2`.
        let temp = temp_path(&path);
        fs::write(&temp, "set a 1\nset b 2\n").unwrap();
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(&temp).unwrap());
        let snapshot = Snapshot { file, len: 16, records: 2, copied_to: start_len + 8 };
        let old = File::open(&path).unwrap();
        let (installed, _) =
            Compaction { waiters: Vec::new() }.install(Ok(snapshot), &OsDisk, &path, &old, 24);
        let installed = installed.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "set a 1\nset b 2\nset c 3\n");
        assert_eq!((installed.len, installed.records), (24, 3));
        assert!(!temp.exists());
    }
}
