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
//! the index. If even the truncation fails, every later batch first retries it, so a half
//! record can never end up in the middle of the log.
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
use super::format::{encode_del, encode_flush, encode_set, parse_number, MAX_EXPIRES_AT};
use super::index::{Item, ItemRef};
use super::mailbox::{wake_all, Mailbox, Reply};
use super::{unix_now, FsyncPolicy, Shared, StoreConfig, StoreError, StoreMode, WriteOp, WriteOutcome};

/// Most writes, and most key and value bytes, taken into one batch: bound the batch buffer
/// (values are escaped into it, up to 4× their size) and the time to the first ack.
const MAX_BATCH: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;

/// How often expired items are dropped from memory (also after every compaction).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

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
}

pub(crate) struct Writer {
    path: PathBuf,
    file: Arc<File>,
    file_len: u64,
    /// A failed batch whose truncation also failed: retry before writing anything else.
    needs_truncate: bool,
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
        let sync_target =
            Arc::new(SyncTarget { file: Mutex::new(Arc::clone(&file)), dirty: AtomicBool::new(false) });
        if config.fsync == FsyncPolicy::Everysec {
            let target = Arc::clone(&sync_target);
            std::thread::Builder::new().name("syncer".into()).spawn(move || run_syncer(&target))?;
        }
        let counters = &shared.counters;
        Ok(Writer {
            path: config.path.clone(),
            file,
            file_len,
            needs_truncate: false,
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
            if let Err(e) = self.append(&buf) {
                if writes.len() > 1 {
                    // One write too large for the space left must not sink the rest of its
                    // batch: decide and commit each one on its own (nothing of the failed
                    // batch reached the file or the index).
                    log::warn!(
                        "batch write to {} failed ({e}); retrying its writes one by one",
                        self.path.display()
                    );
                    for write in std::mem::take(writes) {
                        self.write_batch(&mut vec![write]);
                    }
                    return;
                }
                let error = StoreError::from(&e);
                log::error!("write to {} failed, {} writes refused: {e}", self.path.display(), writes.len());
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
    /// failure the file is cut back to its previous length.
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.needs_truncate {
            self.file.set_len(self.file_len)?;
            self.needs_truncate = false;
        }
        if self.needs_dir_sync {
            compaction::sync_dir(&self.path)?;
            self.needs_dir_sync = false;
        }
        let result = self.file.write_all_at(buf, self.file_len).and_then(|()| match self.fsync {
            FsyncPolicy::Always => {
                self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.file.sync_data()
            }
            FsyncPolicy::Everysec => {
                self.sync_target.dirty.store(true, Ordering::Relaxed);
                Ok(())
            }
            FsyncPolicy::Never => Ok(()),
        });
        match result {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(truncate_error) = self.file.set_len(self.file_len) {
                    log::error!("could not cut a failed write off {}: {truncate_error}", self.path.display());
                    self.needs_truncate = true;
                }
                Err(e)
            }
        }
    }

    fn maybe_auto_compact(&mut self) {
        if self.compaction.is_none()
            && !self.stopping
            && self.file_len >= self.compact_min_bytes
            && garbage_ratio(self.records, self.live_keys) > self.compact_garbage_ratio
        {
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
        if self.stopping {
            if let Some(reply) = reply {
                let _ = reply.send(Err(StoreError::Closed));
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
                self.needs_truncate = false;
                self.needs_dir_sync = !installed.dir_synced;
                *self.sync_target.file.lock() = Arc::clone(&self.file);
                self.shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
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
            Err(e) => {
                log::error!("compaction of {} failed, keeping the old log: {e}", self.path.display());
                Err(StoreError::from(&e))
            }
        };
        // Answered only now, so a caller that sees `OK` also sees the new file in `stats`.
        for waiter in waiters {
            let _ = waiter.send(reply.clone());
        }
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
                log::error!("background fsync failed: {e}");
                target.dirty.store(true, Ordering::Relaxed);
            }
        }
    }
}
