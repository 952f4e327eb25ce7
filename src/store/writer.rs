//! The write path: a write group run by the callers' own threads.
//!
//! A connection thread that writes queues its ops. If no write is being committed, it
//! becomes the group's leader: it takes every request queued so far (its own first), and
//! under the write lock decides them (`decide`), encodes their records, appends them with
//! one `pwrite` and, with `--fsync always`, one `fdatasync` (`log`), applies the effects to
//! the index, and answers the others. Threads that arrive meanwhile queue behind it and wait
//! once; when the leader is done it hands leadership to the first of them, whose group (all
//! that queued during the fsync) commits next. So a write crosses no thread when nobody else
//! is writing, and fifty clients writing at once share one fsync instead of queueing for
//! fifty (the write groups of LevelDB and RocksDB).
//!
//! A reader never sees a value that could still be lost: the index changes only after the
//! append (and its fsync) succeeded.
//!
//! CAS uniques come from a hybrid clock: `max(now in µs, last + 1)` at each batch (one more
//! per item within it), continued from the uniques given to the items loaded at start-up, so
//! they keep growing across restarts without being stored (unless the wall clock steps back
//! by more than the server's uptime). The clock is read here, never in `decide`.
//!
//! Background work runs where it fits: the compactor thread installs its new log under the
//! write lock; a maintenance thread fsyncs (`everysec`) and drops expired items from memory.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};

use super::compaction::{self, Compaction, Waiter as CompactionWaiter};
use super::decide::{decide, Decision, Effect, Inputs};
use super::disk::{Disk, DiskFile};
use super::files;
use super::format::{
    encode_copy, encode_del, encode_delprefix, encode_flush, encode_rename, encode_rename_moving, encode_set,
    encode_set_text,
};
use super::logfile::{LogFile, SyncTarget};
use super::reserve::Reserve;
use super::snapshot::Items;
use super::{unix_now, FsyncPolicy, Shared, StoreConfig, StoreError, WriteOp, WriteOutcome};

pub(crate) type Reply = Result<WriteOutcome, StoreError>;

/// Most writes, and most key and value bytes, taken into one group: bound the record buffer
/// (values are escaped into it, up to 4× their size) and the time to the first answer.
const MAX_GROUP_OPS: usize = 4096;
const MAX_GROUP_BYTES: usize = 16 << 20;

/// After a failed (or postponed) compaction, automatic compaction waits this long before
/// trying again, doubling up to `MAX_COMPACT_BACKOFF`: on a nearly full disk each attempt's
/// temporary file takes the space writes need.
const FIRST_COMPACT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_COMPACT_BACKOFF: Duration = Duration::from_secs(600);

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

/// Where a thread waiting in the group is told its answers, or that it leads next. A
/// thread has at most one request queued (writes are synchronous), so one per thread.
#[derive(Default)]
struct Waiter {
    state: Mutex<WaitState>,
    wake: Condvar,
}

#[derive(Default)]
struct WaitState {
    replies: Option<Vec<Reply>>,
    lead: bool,
}

enum Woken {
    Answered(Vec<Reply>),
    Lead,
}

impl WaitState {
    /// What the waiter was told, if anything yet (answers first).
    fn take(&mut self) -> Option<Woken> {
        if let Some(replies) = self.replies.take() {
            return Some(Woken::Answered(replies));
        }
        std::mem::take(&mut self.lead).then_some(Woken::Lead)
    }
}

/// How many times a waiting writer yields the CPU before it sleeps.
const SPIN_YIELDS: usize = 3;

thread_local! {
    static WAITER: Arc<Waiter> = Arc::default();
}

impl Waiter {
    fn current() -> Arc<Waiter> {
        WAITER.with(Arc::clone)
    }

    fn wait(&self) -> Woken {
        // A group's commit is short unless it fsyncs: give the leader the CPU a few times
        // before sleeping, so that an answer that comes meanwhile costs no futex wait and
        // wake (on a shared core, the thread-per-connection shape's main cost per write).
        for _ in 0..SPIN_YIELDS {
            std::thread::yield_now();
            if let Some(woken) = self.state.lock().take() {
                return woken;
            }
        }
        let mut state = self.state.lock();
        loop {
            if let Some(woken) = state.take() {
                return woken;
            }
            self.wake.wait(&mut state);
        }
    }

    fn answer(&self, replies: Vec<Reply>) {
        self.state.lock().replies = Some(replies);
        self.wake.notify_one();
    }

    fn promote(&self) {
        self.state.lock().lead = true;
        self.wake.notify_one();
    }
}

struct Request {
    ops: Vec<WriteOp>,
    waiter: Arc<Waiter>,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// A leader is committing (or has been promoted and is about to).
    leading: bool,
    closed: bool,
}

/// The write group and the state behind the write lock.
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    /// Signalled when the group goes idle (for shutdown).
    idle: Condvar,
    engine: Mutex<Engine>,
}

/// What the write lock protects: the log, the CAS clock, counters, compaction control.
struct Engine {
    shared: Arc<Shared>,
    log: LogFile,
    max_value_bytes: usize,
    compact_min_bytes: u64,
    compact_garbage_ratio: f64,
    last_cas: u64,
    records: u64,
    live_keys: u64,
    last_sweep: Instant,
    /// See [`StoreConfig::replicated`].
    replicated: bool,
    sweep_every: Duration,
    compaction: Option<Compaction>,
    reserve: Arc<Reserve>,
    auto_compact_not_before: Instant,
    compact_backoff: Duration,
    stopping: bool,
    /// The log is closed (shutdown done).
    closed: bool,
    /// Reused record buffer.
    buf: Vec<u8>,
    /// The writer, for the compactor thread to call back into.
    writer: Weak<Writer>,
}

impl Writer {
    pub(crate) fn start(
        config: &StoreConfig,
        disk: Arc<dyn Disk>,
        file: Arc<dyn DiskFile>,
        file_len: u64,
        last_cas: u64,
        shared: Arc<Shared>,
    ) -> io::Result<Arc<Writer>> {
        let reserve = Reserve::new(&config.path, config.compact_reserve_bytes);
        reserve.fill();
        let counters = &shared.counters;
        let records = counters.records.load(Ordering::Relaxed);
        let live_keys = counters.live_keys.load(Ordering::Relaxed);
        let log = LogFile::new(&config.path, disk, file, file_len, config.fsync);
        let sync_target = Arc::clone(log.sync_target());
        let writer = Arc::new_cyclic(|writer| Writer {
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
            engine: Mutex::new(Engine {
                shared,
                log,
                max_value_bytes: config.max_value_bytes,
                compact_min_bytes: config.compact_min_bytes,
                compact_garbage_ratio: config.compact_garbage_ratio,
                last_cas,
                records,
                live_keys,
                last_sweep: Instant::now(),
                replicated: config.replicated,
                sweep_every: config.sweep_every,
                compaction: None,
                reserve: Arc::new(reserve),
                auto_compact_not_before: Instant::now(),
                compact_backoff: FIRST_COMPACT_BACKOFF,
                stopping: false,
                closed: false,
                buf: Vec::new(),
                writer: writer.clone(),
            }),
        });
        let everysec = config.fsync == FsyncPolicy::Everysec;
        let weak = Arc::downgrade(&writer);
        std::thread::Builder::new()
            .name("maintenance".into())
            .spawn(move || run_maintenance(&weak, &sync_target, everysec))?;
        Ok(writer)
    }

    /// Commits `ops` in order and returns their outcomes once they are durable.
    pub(crate) fn write_many(&self, ops: Vec<WriteOp>) -> Vec<Reply> {
        if ops.is_empty() {
            return Vec::new();
        }
        let count = ops.len();
        let me = Waiter::current();
        {
            let mut queue = self.queue.lock();
            if queue.closed {
                return closed(count);
            }
            queue.requests.push_back(Request { ops, waiter: Arc::clone(&me) });
            if queue.leading {
                drop(queue);
                match me.wait() {
                    Woken::Answered(replies) => return replies,
                    Woken::Lead => {}
                }
            } else {
                queue.leading = true;
            }
        }
        self.lead(&me).unwrap_or_else(|| closed(count))
    }

    /// Commits the group at the head of the queue (the caller's request is its first), answers
    /// the others, hands leadership on, and returns the caller's own answers.
    fn lead(&self, me: &Arc<Waiter>) -> Option<Vec<Reply>> {
        let group = self.take_group();
        let ops = group.iter().flat_map(|request| request.ops.iter());
        let committed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.engine.lock().commit_group(ops)));
        let mut replies = committed.unwrap_or_else(|_| {
            log::error!("a write group panicked; its writes are answered as refused");
            let count = group.iter().map(|request| request.ops.len()).sum();
            vec![Err(StoreError::Refused("internal error in the write path".into())); count]
        });
        let mut mine = None;
        // Answers in order: each request's share from the front of what is left.
        let mut rest = replies.drain(..);
        for request in &group {
            let share: Vec<Reply> = rest.by_ref().take(request.ops.len()).collect();
            if Arc::ptr_eq(&request.waiter, me) {
                mine = Some(share);
            } else {
                request.waiter.answer(share);
            }
        }
        let mut queue = self.queue.lock();
        match queue.requests.front() {
            Some(next) => next.waiter.promote(),
            None => {
                queue.leading = false;
                self.idle.notify_all();
            }
        }
        mine
    }

    fn take_group(&self) -> Vec<Request> {
        let mut queue = self.queue.lock();
        let (mut ops, mut bytes) = (0, 0);
        let mut group = Vec::new();
        while let Some(request) = queue.requests.front() {
            if !group.is_empty() && (ops >= MAX_GROUP_OPS || bytes >= MAX_GROUP_BYTES) {
                break;
            }
            ops += request.ops.len();
            bytes += request.ops.iter().map(WriteOp::payload_len).sum::<usize>();
            group.extend(queue.requests.pop_front());
        }
        group
    }

    /// Applies a batch committed by a replicated log with the log's inputs (see
    /// [`super::Store::apply_committed`]). It takes the write lock directly: on a cluster
    /// node every write comes this way, from the one raft thread, so there is no group.
    pub(crate) fn apply_committed(
        &self,
        ops: &[WriteOp],
        inputs: Inputs,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if self.queue.lock().closed {
            return Err(StoreError::Closed);
        }
        let mut engine = self.engine.lock();
        let outcomes = engine.commit_with(ops.iter(), inputs)?;
        engine.maybe_auto_compact();
        Ok(outcomes)
    }

    /// See [`super::Store::sweep_expired_at`].
    pub(crate) fn sweep_expired_at(&self, now: u64) {
        self.engine.lock().sweep_expired(now);
    }

    /// Encodes every item under the write lock (see [`super::Store::export_items`]).
    pub(crate) fn export_items(&self) -> Vec<u8> {
        let engine = self.engine.lock();
        let mut out = Vec::with_capacity(engine.log.len() as usize);
        super::snapshot::encode_items(&engine.shared.index, &mut out);
        out
    }

    /// Makes `items` the whole state (see [`super::Store::replace_all`]). A running
    /// compaction is let finish first: its install would rename its copy over the new log.
    pub(crate) fn replace_all(&self, items: Items) -> Result<(), StoreError> {
        loop {
            if self.queue.lock().closed {
                return Err(StoreError::Closed);
            }
            let mut engine = self.engine.lock();
            if engine.compaction.is_none() {
                return engine.replace_all(&items);
            }
            drop(engine);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Rewrites the log to hold only live items; returns once the new log is in place.
    pub(crate) fn compact(&self) -> Result<(), StoreError> {
        let (reply_tx, reply_rx): (CompactionWaiter, Receiver<_>) = crossbeam_channel::bounded(1);
        self.engine.lock().start_compaction(Some(reply_tx));
        reply_rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Refuses new writes, lets queued ones and a running compaction finish, and closes the
    /// log (finishing a pending cut, fsyncing). Idempotent.
    pub(crate) fn shutdown(&self) {
        {
            let mut queue = self.queue.lock();
            queue.closed = true;
            while queue.leading {
                self.idle.wait(&mut queue);
            }
        }
        self.engine.lock().stopping = true;
        while self.engine.lock().compaction.is_some() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut engine = self.engine.lock();
        if !std::mem::replace(&mut engine.closed, true) {
            engine.log.close();
        }
    }
}

fn closed(count: usize) -> Vec<Reply> {
    vec![Err(StoreError::Closed); count]
}

impl Engine {
    /// Decides, logs and applies one group of ops; one answer per op, in order.
    fn commit_group<'a>(&mut self, ops: impl Iterator<Item = &'a WriteOp> + Clone) -> Vec<Reply> {
        let replies = self.commit(ops);
        self.sweep_if_due();
        self.maybe_auto_compact();
        replies
    }

    fn commit<'a>(&mut self, ops: impl Iterator<Item = &'a WriteOp> + Clone) -> Vec<Reply> {
        let now = unix_now();
        let first_cas = now_micros().max(self.last_cas + 1);
        let inputs = Inputs { now, first_cas, max_value_bytes: self.max_value_bytes };
        let decision = decide(&self.shared.index, ops.clone(), inputs);
        let appended = self.append_effects(&decision.effects);
        if let Err(error) = appended {
            let count = decision.outcomes.len();
            if count > 1 && error == StoreError::OutOfSpace {
                // One write too large for the space left must not sink the rest of its
                // group: decide and commit each on its own (nothing of the failed group
                // reached the file or the index).
                log::warn!(
                    "write to {} failed ({error}); retrying its writes one by one",
                    self.log.path().display()
                );
                return ops.flat_map(|op| self.commit(std::iter::once(op))).collect();
            }
            log::error!("write to {} failed, {count} writes refused: {error}", self.log.path().display());
            self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            return vec![Err(error); count];
        }
        self.apply_decision(&decision);
        decision.outcomes.into_iter().map(Ok).collect()
    }

    /// After its records are in the log: the CAS clock, the counters and the index follow the
    /// decision.
    fn apply_decision(&mut self, decision: &Decision<'_>) {
        self.last_cas = decision.next_cas.saturating_sub(1).max(self.last_cas);
        self.records += decision.effects.len() as u64;
        for effect in &decision.effects {
            self.apply(effect);
        }
        self.shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.publish_counters();
    }

    /// Encodes `effects` as records and appends them to the log in one write.
    fn append_effects(&mut self, effects: &[Effect<'_>]) -> Result<(), StoreError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // While a compaction runs, its tail is replayed over a walk of the index that may
        // already show later writes, so copies and renames are written in the forms that
        // carry their item (see `format`).
        let compacting = self.compaction.is_some();
        for effect in effects {
            match effect {
                // A request's canonical text is the record's value as it is: the value is
                // not escaped again (the bytes are the same as `encode_set` would write).
                Effect::Set { key, value_text: Some(text), flags, expires_at, .. } => {
                    encode_set_text(key, text, *flags, *expires_at, &mut buf)
                }
                Effect::Set { key, value, value_text: None, flags, expires_at, .. } => {
                    encode_set(key, value, *flags, *expires_at, &mut buf)
                }
                Effect::Del { key } => encode_del(key, &mut buf),
                Effect::Flush => encode_flush(&mut buf),
                Effect::Copy { src, dst, value, flags, expires_at, remove_source, .. } => {
                    match (compacting, remove_source) {
                        (false, false) => encode_copy(src, dst, &mut buf),
                        (false, true) => encode_rename(src, dst, &mut buf),
                        (true, false) => encode_set(dst, value, *flags, *expires_at, &mut buf),
                        (true, true) => encode_rename_moving(src, dst, value, *flags, *expires_at, &mut buf),
                    }
                }
                Effect::DelPrefix { prefix } => encode_delprefix(prefix, &mut buf),
            }
        }
        let appended = if buf.is_empty() { Ok(()) } else { self.log.append(&buf) };
        self.buf = buf;
        appended
    }

    /// The replicated path: decides with the inputs given (no clock read here), logs and
    /// applies, all or nothing. Unlike [`Engine::commit`] a failed batch is not split and
    /// retried op by op — its inputs are fixed by the log, so the caller retries it whole.
    fn commit_with<'a>(
        &mut self,
        ops: impl Iterator<Item = &'a WriteOp> + Clone,
        inputs: Inputs,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if self.closed {
            return Err(StoreError::Closed);
        }
        let decision = decide(&self.shared.index, ops, inputs);
        if let Err(error) = self.append_effects(&decision.effects) {
            log::error!(
                "write to {} failed, committed batch not applied: {error}",
                self.log.path().display()
            );
            self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        self.apply_decision(&decision);
        self.sweep_if_due();
        Ok(decision.outcomes)
    }

    /// Writes `items` as a fresh log (temporary file, fsync, lock, rename, directory fsync:
    /// compaction's steps) and makes them the index, all under the write lock.
    fn replace_all(&mut self, items: &Items) -> Result<(), StoreError> {
        if self.closed {
            return Err(StoreError::Closed);
        }
        if let Some(error) = self.log.unwritable() {
            return Err(error);
        }
        let path = self.log.path().to_path_buf();
        let disk = Arc::clone(self.log.disk());
        let temp = compaction::temp_path(&path);
        let written = (|| {
            let file = disk.create_fresh(&temp, &path)?;
            let mut chunk =
                b"# textkv database, restored from a cluster snapshot; one record per line\n".to_vec();
            let mut len = 0u64;
            for (key, item) in items {
                encode_set(key, &item.value, item.flags, item.expires_at, &mut chunk);
                if chunk.len() >= 1 << 20 {
                    file.write_at(&chunk, len)?;
                    len += chunk.len() as u64;
                    chunk.clear();
                }
            }
            file.write_at(&chunk, len)?;
            len += chunk.len() as u64;
            file.sync_data()?;
            file.lock()?;
            disk.rename(&temp, &path)?;
            Ok::<_, io::Error>((file, len))
        })();
        let (file, len) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = disk.remove(&temp);
                log::error!("cannot write {} from a snapshot: {e}", path.display());
                return Err(StoreError::from(&e));
            }
        };
        let dir_synced = disk.sync_dir(&path).is_ok();
        self.log.replace(file, len, dir_synced);
        let index = &self.shared.index;
        index.clear();
        for (key, item) in items {
            index.insert(key, item.as_ref());
            self.last_cas = self.last_cas.max(item.cas);
        }
        self.records = items.len() as u64;
        self.live_keys = index.len() as u64;
        self.publish_counters();
        log::info!("{} replaced by a snapshot of {} items ({len} bytes)", path.display(), items.len());
        Ok(())
    }

    fn apply(&mut self, effect: &Effect<'_>) {
        let index = &self.shared.index;
        match effect {
            Effect::Set { key, .. } => {
                let item = effect.item().expect("a set has an item");
                if !index.insert(key, item) {
                    self.live_keys += 1;
                }
            }
            Effect::Del { key } => {
                if index.remove(key) {
                    self.live_keys -= 1;
                }
            }
            Effect::Flush => {
                index.clear();
                self.live_keys = 0;
            }
            Effect::Copy { src, dst, remove_source, .. } => {
                let item = effect.item().expect("a copy has an item");
                if !index.insert(dst, item) {
                    self.live_keys += 1;
                }
                if *remove_source && index.remove(src) {
                    self.live_keys -= 1;
                }
            }
            Effect::DelPrefix { prefix } => {
                self.live_keys -= index.remove_prefix(prefix) as u64;
            }
        }
    }

    fn publish_counters(&self) {
        let c = &self.shared.counters;
        c.records.store(self.records, Ordering::Relaxed);
        c.live_keys.store(self.live_keys, Ordering::Relaxed);
        c.fsyncs.store(self.log.fsyncs, Ordering::Relaxed);
        // Release: the compactor copies the log up to this length (`compaction::catch_up`).
        c.file_bytes.store(self.log.len(), Ordering::Release);
    }

    fn maybe_auto_compact(&mut self) {
        if self.compaction.is_some()
            || self.stopping
            || Instant::now() < self.auto_compact_not_before
            || self.log.len() < self.compact_min_bytes
            || garbage_ratio(self.records, self.live_keys) <= self.compact_garbage_ratio
        {
            return;
        }
        // The copy holds about the live share of the log; one that cannot fit would only take
        // the room writes need until it fails.
        let needed = (self.log.len() as f64 * (1.0 - garbage_ratio(self.records, self.live_keys))) as u64;
        let room =
            files::free_bytes(self.log.path()).unwrap_or(u64::MAX).saturating_add(self.reserve.held_bytes());
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
            self.log.len(),
            self.records,
            self.live_keys
        );
        self.start_compaction(None);
    }

    fn start_compaction(&mut self, reply: Option<CompactionWaiter>) {
        // A pending cut or a refusal means the log's end is in doubt: a compaction would copy
        // it (or replace a file someone else wrote).
        let refused = if self.stopping { Some(StoreError::Closed) } else { self.log.unwritable() };
        if let Some(error) = refused {
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
            return;
        }
        if let Some(running) = &mut self.compaction {
            running.add_waiter(reply);
            return;
        }
        let writer = self.writer.clone();
        let done = move |snapshot| {
            if let Some(writer) = writer.upgrade() {
                writer.engine.lock().finish_compaction(snapshot);
            }
        };
        match Compaction::start(
            self.log.disk(),
            self.log.path(),
            self.log.len(),
            Arc::clone(&self.shared),
            done,
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
        }
    }

    fn finish_compaction(&mut self, snapshot: io::Result<compaction::Snapshot>) {
        let Some(compaction) = self.compaction.take() else { return };
        self.shared.counters.compacting.store(false, Ordering::Relaxed);
        let held_since = Instant::now();
        let path = self.log.path().to_path_buf();
        let disk = Arc::clone(self.log.disk());
        let (result, waiters) = compaction.install(snapshot, &*disk, &path, self.log.file(), self.log.len());
        let reply = match result {
            Ok(installed) => {
                let old_len = self.log.len();
                self.log.replace(installed.file, installed.len, installed.dir_synced);
                self.records = installed.records;
                self.shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
                self.compact_backoff = FIRST_COMPACT_BACKOFF;
                let reserve = Arc::clone(&self.reserve);
                // Written again off the write path: it is up to --compact-reserve-bytes of I/O.
                if let Err(e) =
                    std::thread::Builder::new().name("reserve".into()).spawn(move || reserve.fill())
                {
                    log::warn!("could not start refilling the disk reserve: {e}");
                }
                if !self.replicated {
                    self.sweep_expired(unix_now());
                }
                log::info!(
                    "compacted {}: {old_len} -> {} bytes, {} records; writes held {} ms for the switch",
                    path.display(),
                    self.log.len(),
                    self.records,
                    held_since.elapsed().as_millis()
                );
                Ok(())
            }
            Err(e) if StoreError::from(&e) == StoreError::OutOfSpace && self.reserve.release() => {
                log::warn!(
                    "compaction of {} ran out of disk space ({e}): released the disk reserve, retrying",
                    path.display()
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
                log::error!("compaction of {} failed, keeping the old log: {e}", path.display());
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

    /// Sweeps by this machine's clock once `sweep_every` has passed since the last sweep;
    /// never on a replicated store, whose sweeps come from its log (`sweep_expired`).
    fn sweep_if_due(&mut self) {
        if !self.replicated && self.last_sweep.elapsed() >= self.sweep_every {
            self.sweep_expired(unix_now());
        }
    }

    /// Drops items expired at `now` from the index. Their records stay in the log until the
    /// next compaction (which skips them, as start-up does); until then they count as garbage.
    fn sweep_expired(&mut self, now: u64) {
        let removed = self.shared.index.remove_expired(now);
        self.live_keys -= removed as u64;
        self.last_sweep = Instant::now();
        self.publish_counters();
        if removed > 0 {
            log::debug!("dropped {removed} expired items from memory");
        }
    }
}

/// Once a second: `everysec`'s fsync, the expiry sweep when it is due, and a check for an
/// automatic compaction. Ends when the store is dropped or shut down.
fn run_maintenance(writer: &Weak<Writer>, sync_target: &SyncTarget, everysec: bool) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(writer) = writer.upgrade() else { return };
        if writer.queue.lock().closed {
            return;
        }
        if everysec {
            sync_target.sync_if_dirty();
        }
        let mut engine = writer.engine.lock();
        engine.sweep_if_due();
        // The tail a compaction copied may itself be mostly garbage; no write may follow.
        engine.maybe_auto_compact();
    }
}
