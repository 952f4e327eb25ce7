//! The storage engine: an exact-match index in memory and an append-only text log on disk.
//!
//! Reads ([`Store::get`], [`Store::next_keys`]) go straight to the index and never wait for the
//! disk. Writes ([`Store::write`]) join a write group (`writer`): the caller that leads it
//! decides every queued write against the current state (`decide`, a pure function, so
//! `add`, `cas`, `incr`… are atomic), appends the group's records to the log and makes them
//! durable once per group according to the [`FsyncPolicy`] (`logfile`), applies them to the index
//! and only then answers. The engine knows nothing about protocols: the line and memcached
//! front ends both speak [`WriteOp`], and the engine checks the keys it is given.
//!
//! Modules: `decide` (what a batch does), `writer` (the write group and what the write lock
//! protects), `logfile` (appending, fsync, cut-back, refusal), `format` (one record per line),
//! `recovery` (start-up replay), `compaction`, `index` (the in-memory map), `value` (a
//! write's value and its escaped text), `cut`, `reserve` and `files` (small file-system
//! rules), `snapshot` (every item with its CAS unique, for a replicated store's Raft
//! snapshots).

mod compaction;
mod cut;
pub mod decide;
mod disk;
mod files;
pub mod format;
pub mod index;
mod logfile;
#[cfg(test)]
mod power_loss;
pub mod recovery;
mod reserve;
pub mod snapshot;
mod value;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use format::KeyError;
use index::Index;
pub use index::{Item, ItemRef, KeyCursor};

pub use recovery::LoadError;
pub use value::Value;

/// When a write is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// fsync every batch before acknowledging it: an acknowledged write survives a crash of
    /// the process, the kernel or the power.
    Always,
    /// Acknowledge after write(2), fsync in the background about once a second: a process
    /// crash loses nothing, a power loss or kernel crash loses at most about the last second.
    Everysec,
    /// Acknowledge after write(2), leave flushing to the OS: a process crash loses nothing, a
    /// power loss or kernel crash loses whatever the kernel had not written back (typically up
    /// to 30 s on Linux).
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Everysec => "everysec",
            FsyncPolicy::Never => "never",
        })
    }
}

/// Everything the engine needs to know to open a database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub fsync: FsyncPolicy,
    /// Largest value accepted, also after `append`/`prepend`.
    pub max_value_bytes: usize,
    /// Compact automatically only once the log is at least this large…
    pub compact_min_bytes: u64,
    /// …and more than this fraction of its records are dead.
    pub compact_garbage_ratio: f64,
    /// Truncate at the first malformed line (keeping a backup) instead of refusing to start.
    pub repair: bool,
    /// Disk space kept in `<db>.reserve` for compaction, so that a full disk can still be
    /// recovered by compacting; 0 keeps none.
    pub compact_reserve_bytes: u64,
    /// A cluster member's store: items leave memory when they expire only where the
    /// replicated log says ([`Store::sweep_expired_at`]), never by this machine's clock, so
    /// that every member decides every later entry on the same items.
    pub replicated: bool,
    /// How often items that expired are dropped from memory (`--expiry-sweep-secs`); on a
    /// replicated store, how often the leader asks for it through the log.
    pub sweep_every: Duration,
}

impl StoreConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            fsync: FsyncPolicy::Always,
            max_value_bytes: 1 << 20,
            compact_min_bytes: 16 << 20,
            compact_garbage_ratio: 0.5,
            repair: false,
            compact_reserve_bytes: 16 << 20,
            replicated: false,
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// How a storage command decides whether to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Always.
    Set,
    /// Only if the key is absent.
    Add,
    /// Only if the key is present.
    Replace,
    /// Add the data after the existing value (present keys only; flags and expiry kept).
    Append,
    /// Add the data before the existing value (present keys only; flags and expiry kept).
    Prepend,
    /// Only if the item's CAS unique still equals this one.
    Cas(u64),
    /// Append to a present key (flags and expiry kept), or store the data as a new item when
    /// the key is absent (Redis's APPEND).
    AppendOrCreate,
}

/// One write, decided by the writer thread against the state it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Store {
        key: Vec<u8>,
        value: Value,
        flags: u32,
        expires_at: u64,
        mode: StoreMode,
    },
    /// Delete; with `cas`, only if the item's CAS unique equals it.
    Delete {
        key: Vec<u8>,
        cas: Option<u64>,
    },
    /// Set a new expiry (0 = never) and return the item.
    Touch {
        key: Vec<u8>,
        expires_at: u64,
    },
    /// memcached's incr/decr on a decimal value: incr wraps at 2^64, decr stops at 0. With
    /// `cas`, only if the item's CAS unique equals it (meta `ma … C<cas>`). All of meta `ma`
    /// and binary incr/decr is this one write: `create` makes an absent key a counter instead
    /// of `NotFound`, and `expires_at` gives a present one a new expiry.
    Arith {
        key: Vec<u8>,
        delta: u64,
        incr: bool,
        cas: Option<u64>,
        /// For an absent key: store `initial` (the delta is not applied) with this expiry.
        create: Option<NewCounter>,
        /// For a present key: its new expiry (0 = never); None keeps it.
        expires_at: Option<u64>,
    },
    /// Delete every item.
    Flush,
    /// `copy`/`rename`: `dst` takes a copy of `src`'s item (value, flags, expiry; a new CAS),
    /// and with `remove_source` `src` is deleted, in one log record. With `only_if_absent`,
    /// nothing happens when `dst` is present. `src == dst` changes nothing.
    Copy {
        src: Vec<u8>,
        dst: Vec<u8>,
        remove_source: bool,
        only_if_absent: bool,
    },
    /// Delete every key starting with `prefix` (not empty), in one log record.
    DeletePrefix {
        prefix: Vec<u8>,
    },
}

/// The item [`WriteOp::Arith`] creates for an absent key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewCounter {
    pub initial: u64,
    pub expires_at: u64,
}

impl WriteOp {
    /// The keys the op names (none for a flush; a `copy`'s two; a prefix counts as one):
    /// each is checked against the key rules before the op is carried out.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let (first, second): (Option<&[u8]>, Option<&[u8]>) = match self {
            WriteOp::Store { key, .. }
            | WriteOp::Delete { key, .. }
            | WriteOp::Touch { key, .. }
            | WriteOp::Arith { key, .. } => (Some(key), None),
            WriteOp::Copy { src, dst, .. } => (Some(src), Some(dst)),
            WriteOp::DeletePrefix { prefix } => (Some(prefix), None),
            WriteOp::Flush => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// Key and value bytes the op carries (what it costs in a batch).
    pub fn payload_len(&self) -> usize {
        match self {
            WriteOp::Store { key, value, .. } => key.len() + value.held_bytes(),
            WriteOp::Delete { key, .. } | WriteOp::Touch { key, .. } | WriteOp::Arith { key, .. } => {
                key.len()
            }
            WriteOp::Copy { src, dst, .. } => src.len() + dst.len(),
            WriteOp::DeletePrefix { prefix } => prefix.len(),
            WriteOp::Flush => 0,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Stored {
        cas: u64,
    },
    /// The mode's condition did not hold (add on a present key, replace on an absent one…).
    NotStored,
    /// The CAS unique did not match.
    Exists,
    NotFound,
    Deleted,
    Touched(Item),
    Counter {
        value: u64,
        cas: u64,
        /// The item's expiry as stored (clamped to what the log can hold).
        expires_at: u64,
    },
    /// incr/decr on a value that is not a decimal number.
    NonNumeric,
    /// The resulting value would exceed `max_value_bytes`.
    TooLarge,
    Flushed,
    /// `Copy` done.
    Copied,
    /// `DeletePrefix` deleted this many live items.
    Count(u64),
}

/// Why a write was not carried out. Nothing of it reached the index, and the log holds no
/// part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The disk is full or the file hit its size limit.
    OutOfSpace,
    /// Another I/O error; the text is the OS's.
    Io(String),
    /// The engine does not store this key (the protocols check keys first; this is the
    /// engine's own guard).
    InvalidKey(KeyError),
    /// The store is shutting down.
    Closed,
    /// The store refuses every write until it is restarted (a failed fsync, or a log file
    /// changed by someone else); the text says why.
    Refused(String),
    /// A replicated store cannot take the write now (`no leader`); the text is the reply.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::OutOfSpace => write!(f, "out of disk space"),
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
            StoreError::InvalidKey(e) => e.fmt(f),
            StoreError::Closed => write!(f, "server is shutting down"),
            StoreError::Refused(why) => write!(f, "writes refused until restart: {why}"),
            StoreError::Unavailable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<&io::Error> for StoreError {
    fn from(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded => {
                StoreError::OutOfSpace
            }
            _ => StoreError::Io(e.to_string()),
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Locked(PathBuf),
    Io(PathBuf, io::Error),
    /// The path names something the store must not serve (the text says why).
    Unsuitable(PathBuf, String),
    Load(LoadError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Locked(path) => {
                write!(f, "{} is in use by another kvserver process (the file is locked)", path.display())
            }
            OpenError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            OpenError::Unsuitable(path, why) => write!(f, "{}: {why}", path.display()),
            OpenError::Load(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}

/// Counters the writer keeps for `stats`; written by the writer only.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    file_bytes: AtomicU64,
    records: AtomicU64,
    live_keys: AtomicU64,
    compactions: AtomicU64,
    compacting: AtomicBool,
    write_errors: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
}

/// A snapshot of the engine's state for `stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    /// Items in the index (expired ones not yet dropped included).
    pub keys: u64,
    pub file_bytes: u64,
    /// Records in the log.
    pub records: u64,
    /// Fraction of the log's records that no longer describe a live item.
    pub garbage_ratio: f64,
    pub compactions: u64,
    pub compacting: bool,
    pub write_errors: u64,
    pub batches: u64,
    pub fsyncs: u64,
    pub fsync: FsyncPolicy,
    pub load_millis: u64,
}

/// State shared by the callers, the writer and the background threads.
pub(crate) struct Shared {
    index: Index,
    counters: Counters,
}

/// The engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    shared: Arc<Shared>,
    writer: Arc<writer::Writer>,
    fsync: FsyncPolicy,
    load_millis: u64,
    /// The database file (symbolic link resolved), for [`Store::disk_free_bytes`].
    path: PathBuf,
}

/// Current time in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The file a database path names: a symbolic link is followed once, here, so that
/// compaction renames its new log over the real file (not over the link, which would leave
/// the real file stale) and the lock is taken on the file every name of it shares.
fn resolve(path: &Path) -> Result<PathBuf, OpenError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let unfollowable = |e: io::Error| {
                OpenError::Unsuitable(
                    path.to_path_buf(),
                    format!("a symbolic link that cannot be followed: {e}"),
                )
            };
            let real = match fs::canonicalize(path) {
                Ok(real) => real,
                // A link to a database yet to be created: the file is made where it points.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let target = path
                        .parent()
                        .unwrap_or(Path::new("."))
                        .join(fs::read_link(path).map_err(unfollowable)?);
                    let name = target.file_name().ok_or_else(|| unfollowable(e))?.to_owned();
                    fs::canonicalize(target.parent().unwrap_or(Path::new(".")))
                        .map_err(unfollowable)?
                        .join(name)
                }
                Err(e) => return Err(unfollowable(e)),
            };
            log::info!("{} is a symbolic link to {}: serving that file", path.display(), real.display());
            Ok(real)
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// Opens (creating if missing) the log and takes an exclusive OS lock on the file itself,
/// so a second server is kept off it under any name (another path, a symbolic or a hard
/// link) and no lock file can be deleted from under a running server. The lock lives as
/// long as the writer's handle on the log; compaction locks the new log before it renames
/// it into place.
fn open_locked(path: &Path) -> Result<File, OpenError> {
    let io_err = |e| OpenError::Io(path.to_path_buf(), e);
    let existed = path.exists();
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::Unsuitable(path.to_path_buf(), "not a regular file".into()));
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(path.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    // Compaction replaces the file by rename: another hard link would keep the old contents
    // under its name, and a server started on it later would silently lose every write since.
    if meta.nlink() > 1 {
        return Err(OpenError::Unsuitable(
            path.to_path_buf(),
            format!(
                "has {} hard links; compaction replaces the file, which would leave the other names \
                 stale: remove the extra links (a symbolic link is fine)",
                meta.nlink()
            ),
        ));
    }
    if !existed {
        // A new file's directory entry is durable only once its directory is synced.
        file.sync_all().and_then(|()| files::sync_dir(path)).map_err(io_err)?;
    }
    Ok(file)
}

impl Store {
    /// Locks, loads and opens the database, and starts the writer thread.
    pub fn open(mut config: StoreConfig) -> Result<Store, OpenError> {
        config.path = resolve(&config.path)?;
        let path = config.path.clone();
        let io_err = |e| OpenError::Io(path.clone(), e);
        let file = open_locked(&path)?;
        cut::finish_recorded(&path, &file).map_err(io_err)?;
        compaction::remove_stale_temp(&path).map_err(io_err)?;

        let started = Instant::now();
        let index = Index::default();
        // CAS uniques come from one clock-driven counter (see `writer`): loaded items continue
        // it from the current time, so no unique handed out before this start is reissued.
        let mut last_cas = writer::now_micros();
        let options = recovery::LoadOptions {
            now: unix_now(),
            repair: config.repair,
            max_value_bytes: config.max_value_bytes,
        };
        let report = recovery::load(&path, &index, &options, || {
            last_cas += 1;
            last_cas
        })
        .map_err(OpenError::Load)?;
        // What was loaded is served: after a crash of an `everysec`/`never` run it may still
        // sit only in the page cache, where a power loss could take back values clients have
        // now read. Make it durable first.
        file.sync_all().and_then(|()| files::sync_dir(&path)).map_err(io_err)?;
        let load_millis = started.elapsed().as_millis() as u64;
        let shared = Arc::new(Shared { index, counters: Counters::default() });
        let live = shared.index.len() as u64;
        shared.counters.live_keys.store(live, Ordering::Relaxed);
        shared.counters.records.store(report.records, Ordering::Relaxed);
        shared.counters.file_bytes.store(report.file_len, Ordering::Relaxed);

        let writer = writer::Writer::start(
            &config,
            Arc::new(disk::OsDisk),
            Arc::new(file),
            report.file_len,
            last_cas,
            Arc::clone(&shared),
        )
        .map_err(io_err)?;
        Ok(Store { shared, writer, fsync: config.fsync, load_millis, path })
    }

    /// A store with an empty index on a simulated disk holding `config.path`, for the
    /// power-loss tests (nothing of the real machine: no lock, no reserve).
    #[cfg(test)]
    pub(crate) fn open_simulated(config: StoreConfig, disk: &disk::sim::SimDisk) -> Store {
        use disk::Disk;
        let file = disk.open(&config.path).expect("the simulated disk holds the log");
        let len = file.len().expect("a length");
        let shared = Arc::new(Shared { index: Index::default(), counters: Counters::default() });
        let disk: Arc<dyn Disk> = Arc::new(disk.clone());
        let writer = writer::Writer::start(&config, disk, file, len, 0, Arc::clone(&shared)).expect("writer");
        Store { shared, writer, fsync: config.fsync, load_millis: 0, path: config.path.clone() }
    }

    /// The live item under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Item> {
        self.shared.index.get(key, unix_now())
    }

    /// Runs `f` on the live item under `key` without copying its value (`f` runs under a
    /// read lock: keep it short, e.g. copy the value into a reply buffer).
    pub fn with_item<R>(&self, key: &[u8], f: impl FnOnce(Option<ItemRef<'_>>) -> R) -> R {
        self.shared.index.with(key, unix_now(), f)
    }

    /// Live keys starting with `prefix`, sorted, all at once: for tests and checks. The
    /// protocols list keys with [`Store::next_keys`], whose memory is bounded.
    pub fn keys(&self, prefix: &[u8]) -> Vec<Box<[u8]>> {
        self.shared.index.keys(prefix, unix_now())
    }

    /// The next live keys accepted by `wanted`, from `cursor` on (see [`Index::next_keys`]):
    /// the way to list keys with bounded memory, a part at a time.
    pub fn next_keys(
        &self,
        cursor: &mut KeyCursor,
        wanted: &dyn Fn(&[u8]) -> bool,
        max_keys: usize,
        max_bytes: usize,
    ) -> Vec<Box<[u8]>> {
        self.shared.index.next_keys(cursor, unix_now(), wanted, max_keys, max_bytes)
    }

    /// Visits the live items of index shard `shard` (0..[`index::SHARDS`]) under that shard's
    /// read lock: listings of every key (memcached's `lru_crawler metadump`) are answered a
    /// shard at a time, so none holds every key in memory at once.
    pub fn for_each_in_shard(&self, shard: usize, visit: impl FnMut(&[u8], ItemRef<'_>)) {
        self.shared.index.for_each_in_shard(shard, unix_now(), visit)
    }

    /// Live items and the bytes of their keys and values, for memcached's `curr_items` and
    /// `bytes`. Walks the whole index one shard at a time: meant for `stats`, not hot paths.
    pub fn usage(&self) -> (u64, u64) {
        let (mut items, mut bytes) = (0u64, 0u64);
        self.shared.index.for_each_shard(unix_now(), |key, item| {
            items += 1;
            bytes += (key.len() + item.value.len()) as u64;
        });
        (items, bytes)
    }

    /// Carries out one write and returns once it is durable under the fsync policy.
    pub fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.write_many([op]).pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Carries out several writes in order and returns their outcomes in the same order, once
    /// all are durable. They are submitted together, so they share one group and one fsync:
    /// this is what makes a pipelined stream of writes from one client fast. A write with an
    /// invalid key is refused ([`StoreError::InvalidKey`]); the others go on.
    pub fn write_many(
        &self,
        ops: impl IntoIterator<Item = WriteOp>,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        with_valid_keys(ops.into_iter().collect(), |ops| self.writer.write_many(ops))
    }

    /// Applies a batch a replicated log has committed (`cluster`), decided with the given
    /// inputs — the entry's time and CAS uniques, not this machine's clocks — through the same
    /// decide, log and index path as [`Store::write_many`], so every node that applies the same
    /// log reaches the same state. All or nothing: on `Err` nothing of the batch was logged
    /// or applied, and the caller retries it with the same inputs. The keys were checked by
    /// the node that took the request.
    pub fn apply_committed(
        &self,
        ops: &[WriteOp],
        inputs: decide::Inputs,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.writer.apply_committed(ops, inputs)
    }

    /// Every item with its CAS unique, expired ones included, at one point between two
    /// writes, in the `snapshot` format: what a cluster node's Raft snapshot holds.
    /// Drops the items expired at `now` from memory: on a replicated store, where an entry
    /// of the log asks for it, with that entry's time (see [`StoreConfig::replicated`]).
    pub fn sweep_expired_at(&self, now: u64) {
        self.writer.sweep_expired_at(now)
    }

    pub fn export_items(&self) -> Vec<u8> {
        self.writer.export_items()
    }

    /// Replaces the whole state with the items of a `snapshot` copy (a cluster node
    /// installing a Raft snapshot): the copy is decoded whole first, then written as the new
    /// log (fsynced and renamed into place, like a compaction) and made the index. On `Err`
    /// nothing changed.
    pub fn replace_all(&self, items: &[u8]) -> Result<(), StoreError> {
        let items = snapshot::decode_items(items).map_err(|e| StoreError::Io(e.to_string()))?;
        self.writer.replace_all(items)
    }

    /// Rewrites the log to hold only live items; returns when the new log is in place. Writes
    /// go on meanwhile. If a compaction is already running, waits for that one.
    pub fn compact(&self) -> Result<(), StoreError> {
        self.writer.compact()
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let records = c.records.load(Ordering::Relaxed);
        let live = c.live_keys.load(Ordering::Relaxed);
        StoreStats {
            keys: live,
            file_bytes: c.file_bytes.load(Ordering::Relaxed),
            records,
            garbage_ratio: writer::garbage_ratio(records, live),
            compactions: c.compactions.load(Ordering::Relaxed),
            compacting: c.compacting.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync: self.fsync,
            load_millis: self.load_millis,
        }
    }

    /// Bytes this process may still write on the file system holding the database (statvfs
    /// of its directory), for `df`-like reports.
    pub fn disk_free_bytes(&self) -> io::Result<u64> {
        files::free_bytes(&self.path)
    }

    /// Finishes every queued write (and a running compaction) and fsyncs the log. Later
    /// writes fail with [`StoreError::Closed`]. Idempotent.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

/// Refuses the ops whose key the engine does not store ([`StoreError::InvalidKey`]) and
/// hands the others to `commit`; the answers come back in the ops' order.
pub fn with_valid_keys(
    mut ops: Vec<WriteOp>,
    commit: impl FnOnce(Vec<WriteOp>) -> Vec<Result<WriteOutcome, StoreError>>,
) -> Vec<Result<WriteOutcome, StoreError>> {
    let refused: Vec<(usize, KeyError)> = ops
        .iter()
        .enumerate()
        .filter_map(|(at, op)| op.keys().find_map(|key| format::validate_key(key).err()).map(|e| (at, e)))
        .collect();
    if refused.is_empty() {
        return commit(ops);
    }
    for &(at, _) in refused.iter().rev() {
        ops.remove(at);
    }
    let mut accepted = commit(ops).into_iter();
    let mut refused = refused.into_iter().peekable();
    let total = accepted.len() + refused.len();
    (0..total)
        .map(|at| match refused.next_if(|&(bad, _)| bad == at) {
            Some((_, e)) => Err(StoreError::InvalidKey(e)),
            None => accepted.next().unwrap_or(Err(StoreError::Closed)),
        })
        .collect()
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}
