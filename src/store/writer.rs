//! The writer thread: the only code that writes the log or changes the index.
//!
//! Each turn it takes every message already queued (group commit), decides each write
//! against the index plus the earlier writes of the same batch, appends the records of the
//! whole batch with one `pwrite` at the end of the file, makes them durable with one
//! `fdatasync` (policy `always`), applies them to the index and then acknowledges them. So a
//! reader never sees a value that could still be lost, and fifty clients writing at once
//! share one fsync instead of queueing for fifty.
//!
//! A failed append or fsync (full disk, I/O error) is undone by truncating the file back to
//! where the batch started; the batch is answered with the error and nothing of it reaches
//! the index. If even the truncation fails, the length to cut back to is recorded in a
//! marker file and the cut is retried before the next write, at shutdown and at the next
//! start (see `cut`), so an error reply means the write did not happen, also after a restart.
//!
//! A failed fsync is never retried: Linux may drop the dirty pages and clear the error, so
//! a second fsync could succeed and acknowledge data that is gone (PostgreSQL's "fsyncgate").
//! From then on every write is refused until the server is restarted and recovery decides,
//! from what is really in the file, what is there. The same happens when the log turns out
//! to have been changed by another process (its length or identity is not what the writer
//! made it): writing on would overwrite what the other process wrote.
//!
//! CAS uniques come from a hybrid clock: `max(now in µs, last + 1)`, continued from the
//! uniques given to the items loaded at start-up, so they keep growing across restarts
//! without being stored (unless the wall clock steps back by more than the server's uptime).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::compaction::{self, Compaction};
use super::cut;
use super::files::{self, sync_dir};
use super::format::{encode_del, encode_flush, encode_set, parse_number, MAX_EXPIRES_AT};
use super::index::{Item, ItemRef};
use super::mailbox::{wake_all, Mailbox, Reply};
use super::reserve::Reserve;
use super::{unix_now, FsyncPolicy, Shared, StoreConfig, StoreError, StoreMode, WriteOp, WriteOutcome};

/// Most writes, and most key and value bytes, taken into one batch: bound the batch buffer
/// (values are escaped into it, up to 4× their size) and the time to the first ack.
const MAX_BATCH: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;

/// How often expired items are dropped from memory (also after every compaction).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// After a failed compaction, automatic compaction waits this long before trying again,
/// doubling up to `MAX_COMPACT_BACKOFF`: on a nearly full disk each attempt's temporary file
/// takes the space writes need.
const FIRST_COMPACT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_COMPACT_BACKOFF: Duration = Duration::from_secs(600);

/// How often the writer checks that the log's name still leads to the file it writes.
const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) enum Msg {
    Write {
        op: WriteOp,
        reply: Arc<Mailbox>,
    },
    /// Start a compaction (if none is running) and answer when it has finished.
    Compact {
        reply: Option<Sender<Result<(), StoreError>>>,
    },
    /// The background snapshot is written and synced (or failed).
    SnapshotDone(io::Result<compaction::Snapshot>),
    Shutdown,
}

/// A change decided for the log and the index.
enum Effect {
    Set(Vec<u8>, Item),
    Del(Vec<u8>),
    Flush,
}

/// The state of a key as seen by later writes of the batch being decided.
enum Pending {
    /// Set by the batch's effect at this index.
    Present(usize),
    Absent,
}

/// The file the background syncer (`everysec`) flushes; swapped by compaction.
pub(crate) struct SyncTarget {
    file: Mutex<Arc<File>>,
    dirty: AtomicBool,
    /// A background fsync failed: the writer refuses writes from then on (never retried).
    failed: Mutex<Option<String>>,
}

pub(crate) struct Writer {
    path: PathBuf,
    file: Arc<File>,
    file_len: u64,
    /// A failed batch whose cut-back also failed: retry before writing anything else.
    needs_cut: bool,
    /// Why every write is refused until restart (a failed fsync, a log changed by others).
    refusal: Option<String>,
    last_identity_check: Instant,
    /// The directory fsync after a compaction's rename failed: retry it before anything
    /// more is acknowledged, or the new log's name might not survive a power loss.
    needs_dir_sync: bool,
    last_sweep: Instant,
    shared: Arc<Shared>,
    fsync: FsyncPolicy,
    max_value_bytes: usize,
    compact_min_bytes: u64,
    compact_garbage_ratio: f64,
    last_cas: u64,
    records: u64,
    live_keys: u64,
    compaction: Option<Compaction>,
    reserve: Arc<Reserve>,
    /// Automatic compaction waits until then after a failure.
    auto_compact_not_before: Instant,
    compact_backoff: Duration,
    sync_target: Arc<SyncTarget>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    stopping: bool,
}

/// Fraction of `records` that are dead, given `live` live items.
pub(crate) fn garbage_ratio(records: u64, live: u64) -> f64 {
    if records == 0 {
        0.0
    } else {
        records.saturating_sub(live) as f64 / records as f64
    }
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Writer {
    pub(crate) fn new(
        config: &StoreConfig,
        file: File,
        file_len: u64,
        last_cas: u64,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        rx: Receiver<Msg>,
    ) -> io::Result<Writer> {
        let file = Arc::new(file);
        let sync_target = Arc::new(SyncTarget {
            file: Mutex::new(Arc::clone(&file)),
            dirty: AtomicBool::new(false),
            failed: Mutex::new(None),
        });
        if config.fsync == FsyncPolicy::Everysec {
            let target = Arc::clone(&sync_target);
            std::thread::Builder::new().name("syncer".into()).spawn(move || run_syncer(&target))?;
        }
        let reserve = Reserve::new(&config.path, config.compact_reserve_bytes);
        reserve.fill();
        let counters = &shared.counters;
        Ok(Writer {
            path: config.path.clone(),
            file,
            file_len,
            needs_cut: false,
            refusal: None,
            last_identity_check: Instant::now(),
            needs_dir_sync: false,
            last_sweep: Instant::now(),
            fsync: config.fsync,
            max_value_bytes: config.max_value_bytes,
            compact_min_bytes: config.compact_min_bytes,
            compact_garbage_ratio: config.compact_garbage_ratio,
            last_cas,
            records: counters.records.load(Ordering::Relaxed),
            live_keys: counters.live_keys.load(Ordering::Relaxed),
            shared,
            compaction: None,
            reserve: Arc::new(reserve),
            auto_compact_not_before: Instant::now(),
            compact_backoff: FIRST_COMPACT_BACKOFF,
            sync_target,
            tx,
            rx,
            stopping: false,
        })
    }

    pub(crate) fn run(mut self) {
        /// Marks the writer gone however `run` ends, panics included.
        struct Alive(Arc<Shared>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.writer_alive.store(false, Ordering::SeqCst);
            }
        }
        let _alive = Alive(Arc::clone(&self.shared));
        let mut writes: Vec<(WriteOp, Arc<Mailbox>)> = Vec::new();
        loop {
            if self.stopping && self.compaction.is_none() {
                break;
            }
            let first = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            let mut batch_bytes = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write { op, reply } => {
                        batch_bytes += op.payload_len();
                        writes.push((op, reply));
                    }
                    Msg::Compact { reply } => self.start_compaction(reply),
                    Msg::SnapshotDone(result) => self.finish_compaction(result),
                    Msg::Shutdown => self.stopping = true,
                }
                if writes.len() < MAX_BATCH && batch_bytes < MAX_BATCH_BYTES && !self.stopping {
                    next = self.rx.try_recv().ok();
                }
            }
            if !writes.is_empty() {
                self.write_batch(&mut writes);
            }
            if self.last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep_expired();
            }
            self.maybe_auto_compact();
        }
        if self.needs_cut {
            match cut::cut_to(&self.path, &self.file, self.file_len) {
                Ok(()) => log::info!("cut the refused write off {} at shutdown", self.path.display()),
                Err(e) => log::error!(
                    "could not cut the refused write off {} at shutdown ({e}); the next start will",
                    self.path.display()
                ),
            }
        }
        match self.file.sync_data() {
            Ok(()) => log::info!("writer stopped; {} is synced", self.path.display()),
            Err(e) => log::error!("final fsync of {} failed: {e}", self.path.display()),
        }
        // Returning drops the writer's handle on the sync target, which stops the syncer.
    }

    fn next_cas(&mut self) -> u64 {
        self.last_cas = now_micros().max(self.last_cas + 1);
        self.last_cas
    }

    fn write_batch(&mut self, writes: &mut Vec<(WriteOp, Arc<Mailbox>)>) {
        let now = unix_now();
        let mut pending: HashMap<Vec<u8>, Pending> = HashMap::new();
        let mut flushed = false;
        let mut effects = Vec::new();
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut buf = Vec::new();
        for (op, _) in writes.iter() {
            let (outcome, effect) = self.decide(op, now, &pending, &effects, flushed);
            if let Some(effect) = effect {
                match &effect {
                    Effect::Set(key, item) => {
                        encode_set(key, &item.value, item.flags, item.expires_at, &mut buf);
                        let state = if item.is_expired(now) {
                            Pending::Absent
                        } else {
                            Pending::Present(effects.len())
                        };
                        pending.insert(key.clone(), state);
                    }
                    Effect::Del(key) => {
                        encode_del(key, &mut buf);
                        pending.insert(key.clone(), Pending::Absent);
                    }
                    Effect::Flush => {
                        encode_flush(&mut buf);
                        pending.clear();
                        flushed = true;
                    }
                }
                effects.push(effect);
            }
            outcomes.push(outcome);
        }

        if !buf.is_empty() {
            if let Err(error) = self.append(&buf) {
                if writes.len() > 1 && error == StoreError::OutOfSpace {
                    // One write too large for the space left must not sink the rest of its
                    // batch: decide and commit each one on its own (nothing of the failed
                    // batch reached the file or the index).
                    log::warn!(
                        "batch write to {} failed ({error}); retrying its writes one by one",
                        self.path.display()
                    );
                    for write in std::mem::take(writes) {
                        self.write_batch(&mut vec![write]);
                    }
                    return;
                }
                log::error!(
                    "write to {} failed, {} writes refused: {error}",
                    self.path.display(),
                    writes.len()
                );
                self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                let count = writes.len();
                answer(writes, std::iter::repeat_n(Err(error), count));
                return;
            }
        }
        let record_count = effects.len() as u64;
        for effect in effects {
            self.apply(effect);
        }
        self.records += record_count;
        self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.publish_counters();
        answer(writes, outcomes.into_iter().map(Ok));
    }

    /// Decides one write. `pending` holds the keys earlier writes of this batch (`effects`)
    /// changed. The op is left intact so that a failed batch can be retried write by write.
    fn decide(
        &mut self,
        op: &WriteOp,
        now: u64,
        pending: &HashMap<Vec<u8>, Pending>,
        effects: &[Effect],
        flushed: bool,
    ) -> (WriteOutcome, Option<Effect>) {
        let index = &self.shared.index;
        let peek = |key: &[u8], f: &mut dyn FnMut(Option<ItemRef<'_>>)| match pending.get(key) {
            Some(&Pending::Present(at)) => match &effects[at] {
                Effect::Set(_, item) => f(Some(item.as_ref())),
                Effect::Del(_) | Effect::Flush => f(None),
            },
            Some(Pending::Absent) => f(None),
            None if flushed => f(None),
            None => index.with(key, now, |item| f(item)),
        };
        // The item as of this point in the batch, copied: for writes that build on its value.
        let current = |key: &[u8]| {
            let mut found = None;
            peek(key, &mut |item| found = item.map(|item| item.to_item()));
            found
        };
        // Only whether it is there and its CAS unique: no copy of the value.
        let current_cas = |key: &[u8]| {
            let mut found = None;
            peek(key, &mut |item| found = item.map(|item| item.cas));
            found
        };
        match op {
            WriteOp::Store { key, value, flags, expires_at, mode } => {
                let (value, flags, expires_at) = match *mode {
                    StoreMode::Set => (value.clone(), *flags, *expires_at),
                    StoreMode::Add => match current_cas(key) {
                        None => (value.clone(), *flags, *expires_at),
                        Some(_) => return (WriteOutcome::NotStored, None),
                    },
                    StoreMode::Replace => match current_cas(key) {
                        Some(_) => (value.clone(), *flags, *expires_at),
                        None => return (WriteOutcome::NotStored, None),
                    },
                    StoreMode::Cas(expected) => match current_cas(key) {
                        None => return (WriteOutcome::NotFound, None),
                        Some(cas) if cas != expected => return (WriteOutcome::Exists, None),
                        Some(_) => (value.clone(), *flags, *expires_at),
                    },
                    StoreMode::Append | StoreMode::Prepend => match current(key) {
                        None => return (WriteOutcome::NotStored, None),
                        Some(old) if *mode == StoreMode::Append => {
                            let mut joined = old.value.into_vec();
                            joined.extend_from_slice(value);
                            (joined, old.flags, old.expires_at)
                        }
                        Some(old) => {
                            let mut joined = value.clone();
                            joined.extend_from_slice(&old.value);
                            (joined, old.flags, old.expires_at)
                        }
                    },
                };
                if value.len() > self.max_value_bytes {
                    return (WriteOutcome::TooLarge, None);
                }
                let cas = self.next_cas();
                let expires_at = expires_at.min(MAX_EXPIRES_AT);
                let item = Item { value: value.into_boxed_slice(), flags, expires_at, cas };
                // An item stored already expired behaves as memcached's: the old value is gone
                // and the new one is never seen, so the log only needs the deletion.
                let effect = if item.is_expired(now) {
                    Effect::Del(key.clone())
                } else {
                    Effect::Set(key.clone(), item)
                };
                (WriteOutcome::Stored { cas }, Some(effect))
            }
            WriteOp::Delete { key, cas } => match current_cas(key) {
                None => (WriteOutcome::NotFound, None),
                Some(old) if cas.is_some_and(|c| c != old) => (WriteOutcome::Exists, None),
                Some(_) => (WriteOutcome::Deleted, Some(Effect::Del(key.clone()))),
            },
            WriteOp::Touch { key, expires_at } => match current(key) {
                None => (WriteOutcome::NotFound, None),
                Some(mut item) => {
                    item.expires_at = (*expires_at).min(MAX_EXPIRES_AT);
                    let effect = if item.is_expired(now) {
                        Effect::Del(key.clone())
                    } else {
                        Effect::Set(key.clone(), item.clone())
                    };
                    (WriteOutcome::Touched(item), Some(effect))
                }
            },
            WriteOp::Arith { key, delta, incr, cas } => match current(key) {
                None => (WriteOutcome::NotFound, None),
                Some(item) if cas.is_some_and(|c| c != item.cas) => (WriteOutcome::Exists, None),
                Some(mut item) => {
                    // memcached's rule: a decimal number of at most 20 digits that fits u64.
                    let Some(number) = parse_number::<u64>(&item.value) else {
                        return (WriteOutcome::NonNumeric, None);
                    };
                    let value =
                        if *incr { number.wrapping_add(*delta) } else { number.saturating_sub(*delta) };
                    item.value = value.to_string().into_bytes().into_boxed_slice();
                    item.cas = self.next_cas();
                    let cas = item.cas;
                    let expires_at = item.expires_at;
                    (WriteOutcome::Counter { value, cas, expires_at }, Some(Effect::Set(key.clone(), item)))
                }
            },
            WriteOp::Flush => (WriteOutcome::Flushed, Some(Effect::Flush)),
        }
    }

    fn apply(&mut self, effect: Effect) {
        let index = &self.shared.index;
        match effect {
            Effect::Set(key, item) => {
                if !index.insert(&key, item.as_ref()) {
                    self.live_keys += 1;
                }
            }
            Effect::Del(key) => {
                if index.remove(&key) {
                    self.live_keys -= 1;
                }
            }
            Effect::Flush => {
                index.clear();
                self.live_keys = 0;
            }
        }
    }

    fn publish_counters(&self) {
        let c = &self.shared.counters;
        c.records.store(self.records, Ordering::Relaxed);
        c.live_keys.store(self.live_keys, Ordering::Relaxed);
        // Release: the compactor copies the log up to this length (`compaction::catch_up`).
        c.file_bytes.store(self.file_len, Ordering::Release);
    }

    /// Appends `buf` at the end of the log and makes it as durable as the policy asks. On
    /// failure nothing of `buf` stays in the log (or, if the cut-back fails, the cut is
    /// recorded and pending; see the module doc).
    fn append(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if self.refusal.is_none() {
            let failed = self.sync_target.failed.lock().clone();
            if let Some(why) = failed {
                self.refuse(why);
            }
        }
        if let Some(why) = &self.refusal {
            return Err(StoreError::Refused(why.clone()));
        }
        if self.needs_cut {
            cut::cut_to(&self.path, &self.file, self.file_len).map_err(|e| StoreError::from(&e))?;
            self.needs_cut = false;
            log::info!("cut the refused write off {}; writing again", self.path.display());
        }
        if self.needs_dir_sync {
            sync_dir(&self.path).map_err(|e| StoreError::from(&e))?;
            self.needs_dir_sync = false;
        }
        self.check_the_file_is_ours()?;
        if let Err(e) = self.file.write_all_at(buf, self.file_len) {
            self.cut_back();
            return Err(StoreError::from(&e));
        }
        match self.fsync {
            FsyncPolicy::Always => {
                self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.file.sync_data() {
                    self.refuse(format!("an fsync of {} failed ({e})", self.path.display()));
                    self.cut_back();
                    return Err(StoreError::from(&e));
                }
            }
            FsyncPolicy::Everysec => self.sync_target.dirty.store(true, Ordering::Relaxed),
            FsyncPolicy::Never => {}
        }
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// From now on every write is refused, until restart.
    fn refuse(&mut self, why: String) {
        log::error!("{why}: refusing every write until the server is restarted");
        self.refusal = Some(why);
    }

    /// Cuts the log back to its acknowledged length after a failed append; if that fails,
    /// records the cut durably so that it happens before the next write or the next start.
    fn cut_back(&mut self) {
        let Err(e) = cut::cut_to(&self.path, &self.file, self.file_len) else { return };
        self.needs_cut = true;
        log::error!("could not cut a refused write off {}: {e}", self.path.display());
        match cut::record(&self.path, self.file_len) {
            Ok(()) => log::warn!(
                "recorded in {} that {} must be cut back to {} bytes: retried before the next write, at \
                 shutdown and at the next start",
                cut::marker_path(&self.path).display(),
                self.path.display(),
                self.file_len
            ),
            Err(e) => log::error!(
                "could not record the pending cut in {} either ({e}): if the server stops before a cut \
                 succeeds, the refused write may be replayed at the next start",
                cut::marker_path(&self.path).display()
            ),
        }
    }

    /// Refuses to write into a log someone else changed: its length must be the one the
    /// writer left (one fstat per batch), and its name must still lead to the file being
    /// written (checked about once a second). Appending past a line added by hand would
    /// overwrite it, and writing to a file renamed or deleted away would lose every write.
    fn check_the_file_is_ours(&mut self) -> Result<(), StoreError> {
        let meta = self.file.metadata().map_err(|e| StoreError::from(&e))?;
        let mut changed = None;
        if meta.len() != self.file_len {
            changed = Some(format!(
                "{} was changed by another process (it is {} bytes long, this server wrote {})",
                self.path.display(),
                meta.len(),
                self.file_len
            ));
        } else if self.last_identity_check.elapsed() >= IDENTITY_CHECK_EVERY {
            use std::os::unix::fs::MetadataExt;
            self.last_identity_check = Instant::now();
            let same = std::fs::metadata(&self.path)
                .is_ok_and(|named| (named.dev(), named.ino()) == (meta.dev(), meta.ino()));
            if !same {
                changed = Some(format!(
                    "{} no longer names the file this server writes (it was replaced, moved or deleted)",
                    self.path.display()
                ));
            }
        }
        match changed {
            Some(why) => {
                self.refuse(format!("{why}; restart the server to load the file as it is now"));
                Err(StoreError::Refused(self.refusal.clone().unwrap_or_default()))
            }
            None => Ok(()),
        }
    }

    fn maybe_auto_compact(&mut self) {
        if self.compaction.is_none()
            && !self.stopping
            && Instant::now() >= self.auto_compact_not_before
            && self.file_len >= self.compact_min_bytes
            && garbage_ratio(self.records, self.live_keys) > self.compact_garbage_ratio
        {
            // The copy holds about the live share of the log; one that cannot fit would only
            // take the room writes need until it fails.
            let needed = (self.file_len as f64 * (1.0 - garbage_ratio(self.records, self.live_keys))) as u64;
            let room =
                files::free_bytes(&self.path).unwrap_or(u64::MAX).saturating_add(self.reserve.held_bytes());
            if needed.saturating_add(needed / 8) > room {
                log::warn!(
                    "automatic compaction postponed: its copy needs about {needed} bytes and {room} are free \
                     (reserve included)"
                );
                self.back_off_compaction();
                return;
            }
            log::info!(
                "starting automatic compaction: {} bytes, {} records, {} live",
                self.file_len,
                self.records,
                self.live_keys
            );
            self.start_compaction(None);
        }
    }

    fn start_compaction(&mut self, reply: Option<Sender<Result<(), StoreError>>>) {
        // A pending cut or a refusal means the log's end is in doubt: a compaction would
        // copy it (or replace a file someone else wrote).
        let refused = if self.stopping {
            Some(StoreError::Closed)
        } else if let Some(why) = &self.refusal {
            Some(StoreError::Refused(why.clone()))
        } else if self.needs_cut {
            Some(StoreError::Io("a refused write is still to be cut off the log".into()))
        } else {
            None
        };
        if let Some(error) = refused {
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
            return;
        }
        match &mut self.compaction {
            Some(running) => running.add_waiter(reply),
            None => match Compaction::start(
                &self.path,
                self.file_len,
                Arc::clone(&self.shared),
                self.tx.clone(),
                reply,
            ) {
                Ok(compaction) => {
                    self.shared.counters.compacting.store(true, Ordering::Relaxed);
                    self.compaction = Some(compaction);
                }
                Err((e, reply)) => {
                    log::error!("could not start compaction: {e}");
                    self.back_off_compaction();
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(StoreError::from(&e)));
                    }
                }
            },
        }
    }

    fn finish_compaction(&mut self, snapshot: io::Result<compaction::Snapshot>) {
        let Some(compaction) = self.compaction.take() else { return };
        self.shared.counters.compacting.store(false, Ordering::Relaxed);
        let held_since = Instant::now();
        let (result, waiters) = compaction.install(snapshot, &self.path, &self.file, self.file_len);
        let reply = match result {
            Ok(installed) => {
                let old_len = self.file_len;
                self.file = Arc::new(installed.file);
                self.file_len = installed.len;
                self.records = installed.records;
                self.needs_dir_sync = !installed.dir_synced;
                *self.sync_target.file.lock() = Arc::clone(&self.file);
                self.shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
                self.compact_backoff = FIRST_COMPACT_BACKOFF;
                let reserve = Arc::clone(&self.reserve);
                // Written again off the write path: it is up to --compact-reserve-bytes of I/O.
                if let Err(e) =
                    std::thread::Builder::new().name("reserve".into()).spawn(move || reserve.fill())
                {
                    log::warn!("could not start refilling the disk reserve: {e}");
                }
                self.sweep_expired();
                log::info!(
                    "compacted {}: {old_len} -> {} bytes, {} records; writes held {} ms for the switch",
                    self.path.display(),
                    self.file_len,
                    self.records,
                    held_since.elapsed().as_millis()
                );
                Ok(())
            }
            Err(e) if StoreError::from(&e) == StoreError::OutOfSpace && self.reserve.release() => {
                log::warn!(
                    "compaction of {} ran out of disk space ({e}): released the disk reserve, retrying",
                    self.path.display()
                );
                self.start_compaction(None);
                match &mut self.compaction {
                    Some(retry) => {
                        for waiter in waiters {
                            retry.add_waiter(Some(waiter));
                        }
                        return;
                    }
                    None => Err(StoreError::from(&e)),
                }
            }
            Err(e) => {
                log::error!("compaction of {} failed, keeping the old log: {e}", self.path.display());
                self.back_off_compaction();
                Err(StoreError::from(&e))
            }
        };
        // Answered only now, so a caller that sees `OK` also sees the new file in `stats`.
        for waiter in waiters {
            let _ = waiter.send(reply.clone());
        }
    }

    fn back_off_compaction(&mut self) {
        self.auto_compact_not_before = Instant::now() + self.compact_backoff;
        log::warn!("automatic compaction paused for {} s after the failure", self.compact_backoff.as_secs());
        self.compact_backoff = (self.compact_backoff * 2).min(MAX_COMPACT_BACKOFF);
    }

    /// Drops expired items from the index. Their records stay in the log until the next
    /// compaction (which skips them, as start-up does); until then they count as garbage.
    fn sweep_expired(&mut self) {
        let removed = self.shared.index.remove_expired(unix_now());
        self.live_keys -= removed as u64;
        self.last_sweep = Instant::now();
        self.publish_counters();
        if removed > 0 {
            log::debug!("dropped {removed} expired items from memory");
        }
    }
}

/// Hands each write's answer to its caller's mailbox, then wakes each caller once.
fn answer(writes: &mut Vec<(WriteOp, Arc<Mailbox>)>, replies: impl Iterator<Item = Reply>) {
    let mut callers = Vec::with_capacity(writes.len());
    for ((_, mailbox), reply) in writes.drain(..).zip(replies) {
        mailbox.put(reply);
        callers.push(mailbox);
    }
    wake_all(&mut callers);
}

/// `everysec`: fsync the current log about once a second when something was written. Stops
/// once the writer has exited and dropped its handle to the sync target.
fn run_syncer(target: &Arc<SyncTarget>) {
    while Arc::strong_count(target) > 1 {
        std::thread::sleep(Duration::from_secs(1));
        if target.dirty.swap(false, Ordering::Relaxed) {
            let file = Arc::clone(&target.file.lock());
            if let Err(e) = file.sync_data() {
                // Not retried: a second fsync may succeed after the kernel dropped the pages.
                *target.failed.lock() = Some(format!("a background fsync failed ({e})"));
                return;
            }
        }
    }
}
