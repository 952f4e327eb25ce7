//! The node's Raft state on disk, in `<db>.raft/`: `raft.log`, one append-only file of
//! records, and `snapshot`, the latest snapshot of the applied state.
//!
//! ```text
//! record  = kind:u8  len:u32 LE  crc32(payload):u32 LE  payload[len]
//! kind    'M'  members: `<id>=<peer-addr>,...`, every member's address (`--initial-cluster`
//!              on the first start, then rewritten as members come and go)
//!         'C'  conf state (protobuf `ConfState`): who votes
//!         'H'  hard state (protobuf `HardState`): term, vote, commit
//!         'T'  the log starts after index:u64 LE of term:u64 LE (written at the head of a
//!              compacted file, and when a snapshot from the leader replaces the log)
//!         'E'  one log entry (protobuf `Entry`)
//!         'N'  this node's incarnation: u64 LE (drawn when the state is created)
//!         'I'  a peer's incarnation as first seen: id:u64 LE incarnation:u64 LE (u64::MAX:
//!              that id was removed; see `membership`)
//!         'S'  (the `snapshot` file's only record) protobuf `Snapshot`: index, term and
//!              conf state of the last entry it covers, and the data (`cluster::snapshot`)
//! ```
//!
//! Loading replays the file: the last `M`, `C` and `H` win; a `T` empties the log; an `E`
//! whose index is at or below the last one loaded replaces the log from that index on (Raft
//! overwrote a tail that a new leader never had), so a truncation is just another append.
//! Everything Raft asks to keep is appended and, with `--fsync always`, fdatasync'ed before
//! the messages that depend on it leave the node (see `node`); `everysec` syncs about once a
//! second and `never` leaves it to the OS — a power loss can then take back a vote, which
//! Raft's safety does not allow for, so a cluster that must survive power loss runs `always`.
//!
//! A record cut by a crash at the end of the file (short, or with a bad checksum) is cut off
//! at start with a warning: it was never synced, so nothing depended on it. A bad record
//! before the end is corruption and stops the start.
//!
//! Snapshots and compaction: a snapshot is written to `snapshot.tmp`, fsynced, renamed over
//! `snapshot` and the directory fsynced ([`DiskStorage::save_snapshot`]) before anything
//! relies on it (a periodic one is written and fsynced as `snapshot.writing` on a thread of
//! its own, then renamed by the raft thread, [`DiskStorage::adopt_written_snapshot`]). Only then may the log be compacted behind it ([`DiskStorage::compact_to`]):
//! the kept state (`M`, `C`, `H`, a `T` and the entries after the compaction point) goes to
//! `raft.log.tmp`, fsynced and renamed over `raft.log` the same way, so a crash leaves one
//! whole file or the other. A snapshot newer than the log (a crash between installing a
//! leader's snapshot and writing its `T`) wins at load: the log is emptied up to it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::store::FsyncPolicy;

const HEADER: usize = 9;

/// Records larger than this are corruption (an entry holds at most a few batches of values;
/// a snapshot at most what one peer frame carries).
const MAX_RECORD: usize = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Members = b'M' as isize,
    Conf = b'C' as isize,
    Hard = b'H' as isize,
    Start = b'T' as isize,
    Entry = b'E' as isize,
    Snapshot = b'S' as isize,
    Incarnation = b'N' as isize,
    Known = b'I' as isize,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [
            Kind::Members,
            Kind::Conf,
            Kind::Hard,
            Kind::Start,
            Kind::Entry,
            Kind::Snapshot,
            Kind::Incarnation,
            Kind::Known,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// One record's bytes.
fn record(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.push(kind as u8);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// Two numbers, as `T` and `I` records hold them.
fn pair_payload(first: u64, second: u64) -> [u8; 16] {
    let mut payload = [0; 16];
    payload[..8].copy_from_slice(&first.to_le_bytes());
    payload[8..].copy_from_slice(&second.to_le_bytes());
    payload
}

fn read_u64(payload: &[u8], at: usize) -> Option<u64> {
    payload.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

fn encode(message: &impl protobuf::Message) -> io::Result<Vec<u8>> {
    message.write_to_bytes().map_err(io::Error::other)
}

/// The Raft state of this node, in memory and in its files. Raft (`raw_node`) reads it
/// through [`raft::Storage`]; the raft thread writes it.
pub struct DiskStorage {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    fsync: FsyncPolicy,
    /// Appended since the last fdatasync.
    dirty: bool,
    /// Bytes in `raft.log`.
    file_len: u64,
    members: Option<String>,
    conf: ConfState,
    hard: HardState,
    /// The log holds the entries after this index (0 until the first compaction), whose
    /// term is `offset_term`.
    offset: u64,
    offset_term: u64,
    /// Entries `offset + 1 ..= offset + len`.
    entries: Vec<Entry>,
    /// The saved snapshot's index, term and conf state (index 0: none); its data stays in
    /// the `snapshot` file until a follower needs it.
    snapshot: SnapshotMetadata,
    /// Largest snapshot sent to a follower (`--max-snapshot-bytes`).
    max_snapshot_bytes: usize,
    /// Set when a follower needs a snapshot the saved one cannot serve (it predates that
    /// follower's joining): the raft thread takes a fresh one.
    snapshot_wanted: std::cell::Cell<bool>,
    /// When a snapshot too large to send was last logged.
    too_large_logged: std::cell::Cell<Option<std::time::Instant>>,
    /// This node's incarnation (0 until drawn).
    incarnation: u64,
    /// Each peer's incarnation as first seen (or `membership::REMOVED`).
    known: BTreeMap<u64, u64>,
}

impl DiskStorage {
    /// Opens (creating if missing) the Raft state of the database at `db`.
    pub fn open(db: &Path, fsync: FsyncPolicy) -> io::Result<DiskStorage> {
        let dir = state_dir(db);
        let created = !dir.exists();
        fs::create_dir_all(&dir)?;
        if created {
            sync_parent(&dir)?;
        }
        for stale in ["raft.log.tmp", "snapshot.tmp", WRITING] {
            match fs::remove_file(dir.join(stale)) {
                Ok(()) => log::warn!("removed {} left by an interrupted write", dir.join(stale).display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let path = dir.join("raft.log");
        let existed = path.exists();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        if !existed {
            file.sync_all()?;
            File::open(&dir)?.sync_all()?;
        }
        let bytes = fs::read(&path)?;
        let mut storage = DiskStorage {
            dir: dir.clone(),
            path: path.clone(),
            file: file.try_clone()?,
            fsync,
            dirty: false,
            file_len: bytes.len() as u64,
            members: None,
            conf: ConfState::default(),
            hard: HardState::default(),
            offset: 0,
            offset_term: 0,
            entries: Vec::new(),
            snapshot: SnapshotMetadata::default(),
            max_snapshot_bytes: usize::MAX,
            snapshot_wanted: std::cell::Cell::new(false),
            too_large_logged: std::cell::Cell::new(None),
            incarnation: 0,
            known: BTreeMap::new(),
        };
        let good = storage.replay(&bytes)?;
        if good < bytes.len() as u64 {
            log::warn!(
                "{}: cutting a torn record at the end ({} of {} bytes kept)",
                path.display(),
                good,
                bytes.len()
            );
            file.set_len(good)?;
            file.sync_all()?;
            storage.file_len = good;
        }
        file.flush()?;
        if let Some(snapshot) = storage.read_snapshot()? {
            storage.adopt_snapshot(snapshot.get_metadata().clone());
        }
        Ok(storage)
    }

    /// Replays `bytes`; returns the length of the good prefix.
    fn replay(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let mut at = 0;
        while at < bytes.len() {
            let Some((kind, payload, end)) = next_record(bytes, at, &self.path)? else { break };
            let bad = |what: &str| corrupt(&self.path, at, what);
            match kind {
                Kind::Members => {
                    self.members = Some(String::from_utf8(payload.to_vec()).map_err(|_| bad("members"))?)
                }
                Kind::Conf => self.conf = ConfState::parse_from_bytes(payload).map_err(|_| bad("conf"))?,
                Kind::Hard => self.hard = HardState::parse_from_bytes(payload).map_err(|_| bad("hard"))?,
                Kind::Start => {
                    let (Some(index), Some(term)) = (read_u64(payload, 0), read_u64(payload, 8)) else {
                        return Err(bad("log start"));
                    };
                    self.reset_log(index, term);
                }
                Kind::Incarnation => {
                    self.incarnation = read_u64(payload, 0).ok_or_else(|| bad("incarnation"))?
                }
                Kind::Known => {
                    let (Some(id), Some(incarnation)) = (read_u64(payload, 0), read_u64(payload, 8)) else {
                        return Err(bad("known incarnation"));
                    };
                    self.known.insert(id, incarnation);
                }
                Kind::Entry => {
                    let entry = Entry::parse_from_bytes(payload).map_err(|_| bad("entry"))?;
                    if entry.index <= self.offset || entry.index > self.last_index() + 1 {
                        return Err(bad("entry index out of sequence"));
                    }
                    self.entries.truncate((entry.index - self.offset - 1) as usize);
                    self.entries.push(entry);
                }
                Kind::Snapshot => return Err(bad("a snapshot record in the log")),
            }
            at = end;
        }
        Ok(at as u64)
    }

    /// Takes the saved snapshot's metadata; if the log does not reach it with the same term
    /// (a crash right after a leader's snapshot was saved), the snapshot wins.
    fn adopt_snapshot(&mut self, meta: SnapshotMetadata) {
        if meta.index > self.offset && self.term_of(meta.index) != Some(meta.term) {
            self.reset_log(meta.index, meta.term);
            self.conf = meta.get_conf_state().clone();
        }
        // It covers committed entries only (a commit index not yet synced may lag it).
        self.hard.commit = self.hard.commit.max(meta.index);
        self.snapshot = meta;
    }

    fn reset_log(&mut self, index: u64, term: u64) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        let at = index.checked_sub(self.offset + 1)?;
        self.entries.get(at as usize).map(|e| e.term)
    }

    /// Whether this node has been formed (its first start, or the snapshot that made it a
    /// member, wrote the members and voters).
    pub fn initialized(&self) -> bool {
        self.members.is_some() && !self.conf.voters.is_empty()
    }

    /// Every member's peer address, `<id>=<addr>,...`, as last saved.
    pub fn members(&self) -> Option<&str> {
        self.members.as_deref()
    }

    /// First start: records the members and the voters, durably.
    pub fn initialize(&mut self, members: &str, voters: Vec<u64>) -> io::Result<()> {
        self.set_members(members)?;
        self.set_conf(&ConfState { voters, ..Default::default() })?;
        self.sync_if_dirty()
    }

    /// Records the members' addresses (synced with the next `persist`).
    pub fn set_members(&mut self, members: &str) -> io::Result<()> {
        if self.members.as_deref() != Some(members) {
            self.append_record(Kind::Members, members.as_bytes())?;
            self.members = Some(members.to_string());
        }
        Ok(())
    }

    /// This node's incarnation, drawn and saved (durably) the first time it is asked for.
    pub fn incarnation(&mut self) -> io::Result<u64> {
        if self.incarnation == 0 {
            let incarnation = super::membership::new_incarnation();
            self.append_record(Kind::Incarnation, &incarnation.to_le_bytes())?;
            self.sync_if_dirty()?;
            self.incarnation = incarnation;
        }
        Ok(self.incarnation)
    }

    /// The incarnation first seen for member `id` (or `membership::REMOVED`).
    pub fn known_incarnation(&self, id: u64) -> Option<u64> {
        self.known.get(&id).copied()
    }

    /// Records member `id`'s incarnation, durably.
    pub fn record_incarnation(&mut self, id: u64, incarnation: u64) -> io::Result<()> {
        if self.known.get(&id) != Some(&incarnation) {
            self.append_record(Kind::Known, &pair_payload(id, incarnation))?;
            self.sync_if_dirty()?;
            self.known.insert(id, incarnation);
        }
        Ok(())
    }

    /// Whether a follower asked for a snapshot newer than the saved one (and clears it).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Records who votes after a configuration change (synced with the next `persist`).
    pub fn set_conf(&mut self, conf: &ConfState) -> io::Result<()> {
        if *conf != self.conf {
            self.append_record(Kind::Conf, &encode(conf)?)?;
            self.conf = conf.clone();
        }
        Ok(())
    }

    /// Appends `entries` (replacing any tail from the first one's index on).
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        // All of a Ready's entries in one write: a system call per entry was most of the
        // raft thread's writes under many concurrent writers.
        let mut records = Vec::new();
        let mut last = self.last_index();
        for entry in entries {
            if entry.index <= self.offset || entry.index > last + 1 {
                return Err(io::Error::other(format!(
                    "raft appended entry {} to a log of {}..={last}: not continuous",
                    entry.index,
                    self.offset + 1,
                )));
            }
            records.extend_from_slice(&record(Kind::Entry, &encode(entry)?));
            last = entry.index;
        }
        if records.is_empty() {
            return Ok(());
        }
        self.file.write_all(&records)?;
        self.file_len += records.len() as u64;
        self.dirty = true;
        for entry in entries {
            self.entries.truncate((entry.index - self.offset - 1) as usize);
            self.entries.push(entry.clone());
        }
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard: &HardState) -> io::Result<()> {
        if *hard != self.hard {
            self.append_record(Kind::Hard, &encode(hard)?)?;
            self.hard = hard.clone();
        }
        Ok(())
    }

    /// Records a new commit index (not synced on its own: a lost one is learnt again).
    pub fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        let mut hard = self.hard.clone();
        hard.commit = commit;
        self.set_hard_state(&hard)
    }

    /// Makes what was appended durable, as `--fsync always` asks, before Raft's messages that
    /// depend on it are sent.
    pub fn persist(&mut self) -> io::Result<()> {
        if self.fsync == FsyncPolicy::Always {
            self.sync_if_dirty()?;
        }
        Ok(())
    }

    /// `everysec`'s once-a-second sync.
    pub fn sync_if_dirty(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn append_record(&mut self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        let record = record(kind, payload);
        self.file.write_all(&record)?;
        self.file_len += record.len() as u64;
        self.dirty = true;
        Ok(())
    }

    pub fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    /// Index of the last entry the saved snapshot covers (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// Bytes in `raft.log` now.
    pub fn log_bytes(&self) -> u64 {
        self.file_len
    }

    /// Snapshots larger than this are not sent to a follower (see `snapshot`).
    pub fn set_max_snapshot_bytes(&mut self, max: usize) {
        self.max_snapshot_bytes = max;
    }

    /// The saved snapshot, data included, if there is one.
    pub fn read_snapshot(&self) -> io::Result<Option<Snapshot>> {
        let path = self.dir.join("snapshot");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |what: &str| corrupt(&path, 0, what);
        match next_record(&bytes, 0, &path)? {
            Some((Kind::Snapshot, payload, end)) if end == bytes.len() => {
                Snapshot::parse_from_bytes(payload).map(Some).map_err(|_| bad("snapshot"))
            }
            _ => Err(bad("not one whole snapshot record")),
        }
    }

    /// Writes `snapshot` as the saved one, durably (temporary file, fsync, rename, directory
    /// fsync), before anything may rely on it.
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let temp = self.dir.join("snapshot.tmp");
        replace_durably(&temp, &self.dir.join("snapshot"), &record(Kind::Snapshot, &encode(snapshot)?))?;
        self.snapshot = snapshot.get_metadata().clone();
        Ok(())
    }

    /// Where [`write_snapshot_file`] may write a snapshot off the raft thread: the directory
    /// and the temporary file [`DiskStorage::adopt_written_snapshot`] renames into place.
    pub fn snapshot_writing_path(&self) -> PathBuf {
        self.dir.join(WRITING)
    }

    /// Makes the snapshot written (and fsynced) at `snapshot_writing_path` the saved one —
    /// unless a newer one was saved meanwhile (a leader's), when it is dropped. Returns
    /// whether it was adopted.
    pub fn adopt_written_snapshot(&mut self, meta: SnapshotMetadata) -> io::Result<bool> {
        let written = self.snapshot_writing_path();
        if meta.index <= self.snapshot.index {
            fs::remove_file(&written)?;
            return Ok(false);
        }
        fs::rename(&written, self.dir.join("snapshot"))?;
        sync_parent(&written)?;
        self.snapshot = meta;
        Ok(true)
    }

    /// A leader's snapshot replaces this node's log: saved durably, then the log restarts
    /// after it, with its voters, and the commit index reaches it.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        self.save_snapshot(snapshot)?;
        let meta = snapshot.get_metadata();
        self.append_record(Kind::Start, &pair_payload(meta.index, meta.term))?;
        self.reset_log(meta.index, meta.term);
        self.set_conf(meta.get_conf_state())?;
        if self.hard.commit < meta.index {
            self.set_commit(meta.index)?;
        }
        self.sync_if_dirty()
    }

    /// Drops the entries up to `index` (at most the saved snapshot's): `raft.log` is
    /// rewritten with the rest, durably, and replaces the old file.
    pub fn compact_to(&mut self, index: u64) -> io::Result<()> {
        if index <= self.offset {
            return Ok(());
        }
        if index > self.snapshot.index || index > self.last_index() {
            return Err(io::Error::other(format!(
                "cannot compact the Raft log to {index}: the snapshot covers {} and the log ends at {}",
                self.snapshot.index,
                self.last_index()
            )));
        }
        let term = self
            .term_of(index)
            .ok_or_else(|| io::Error::other(format!("entry {index} is not in the log")))?;
        let keep = &self.entries[(index - self.offset) as usize..];
        let mut out = Vec::new();
        if let Some(members) = &self.members {
            out.extend(record(Kind::Members, members.as_bytes()));
        }
        if self.incarnation != 0 {
            out.extend(record(Kind::Incarnation, &self.incarnation.to_le_bytes()));
        }
        for (&id, &incarnation) in &self.known {
            out.extend(record(Kind::Known, &pair_payload(id, incarnation)));
        }
        out.extend(record(Kind::Conf, &encode(&self.conf)?));
        out.extend(record(Kind::Hard, &encode(&self.hard)?));
        out.extend(record(Kind::Start, &pair_payload(index, term)));
        for entry in keep {
            out.extend(record(Kind::Entry, &encode(entry)?));
        }
        replace_durably(&self.dir.join("raft.log.tmp"), &self.path, &out)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.file_len = out.len() as u64;
        self.dirty = false;
        self.entries.drain(..(index - self.offset) as usize);
        self.offset = index;
        self.offset_term = term;
        Ok(())
    }
}

/// The temporary file of a snapshot written off the raft thread.
const WRITING: &str = "snapshot.writing";

/// Writes `snapshot` to `path` and fsyncs it (on a thread of its own: the raft thread then
/// adopts it, see [`DiskStorage::adopt_written_snapshot`]).
pub fn write_snapshot_file(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(&record(Kind::Snapshot, &encode(snapshot)?))?;
    file.sync_all()
}

/// Writes `bytes` to `temp`, fsyncs it, renames it over `path` and fsyncs the directory.
fn replace_durably(temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(temp);
    }
    written?;
    sync_parent(path)
}

/// The record at `at`: `None` if it is torn (reaches past the end, or is the bad last one),
/// an error if a bad record is followed by more.
fn next_record<'a>(bytes: &'a [u8], at: usize, path: &Path) -> io::Result<Option<(Kind, &'a [u8], usize)>> {
    let Some(header) = bytes.get(at..at + HEADER) else { return Ok(None) };
    let kind = Kind::from_byte(header[0]);
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    let end = at + HEADER + len;
    let whole = len <= MAX_RECORD && end <= bytes.len();
    match kind {
        Some(kind) if whole && crc32fast::hash(&bytes[at + HEADER..end]) == crc => {
            Ok(Some((kind, &bytes[at + HEADER..end], end)))
        }
        // Torn only if nothing sound could follow: a record reaching past the end, or a bad
        // final record.
        _ if !whole || end == bytes.len() => Ok(None),
        _ => Err(corrupt(path, at, "bad checksum or record kind")),
    }
}

/// `<db>.raft`: the directory of the node's Raft state, named after its database.
pub fn state_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".raft");
    db.with_file_name(name)
}

fn sync_parent(dir: &Path) -> io::Result<()> {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

fn corrupt(path: &Path, at: usize, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: corrupt record at byte {at} ({what}); refusing to start", path.display()),
    )
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let (from, to) = ((low - self.offset - 1) as usize, (high - self.offset - 1) as usize);
        let range = self.entries.get(from..to).ok_or_else(unavailable)?;
        let mut entries = range.to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.offset {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(index).ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.offset + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    /// The saved snapshot, for a follower too far behind for the log. One that a peer frame
    /// cannot carry is refused with an error in the log (Raft then retries later).
    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let temporarily = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let snapshot = match self.read_snapshot() {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Err(temporarily()),
            Err(e) => {
                log::error!("cannot read the snapshot for member {to}: {e}");
                return Err(temporarily());
            }
        };
        let conf = snapshot.get_metadata().get_conf_state();
        if !conf.voters.contains(&to) && !conf.learners.contains(&to) {
            // It predates `to`'s joining: `to` would refuse it. Ask for a fresh one.
            self.snapshot_wanted.set(true);
            return Err(temporarily());
        }
        if snapshot.data.len() > self.max_snapshot_bytes {
            // Raft asks at every answer of that member: say it once a minute.
            let now = std::time::Instant::now();
            if self.too_large_logged.get().is_some_and(|at| now.duration_since(at).as_secs() < 60) {
                return Err(temporarily());
            }
            self.too_large_logged.set(Some(now));
            log::error!(
                "member {to} needs a snapshot, but it is {} bytes and --max-snapshot-bytes is {}: \
                 the database is too large to send",
                snapshot.data.len(),
                self.max_snapshot_bytes
            );
            return Err(temporarily());
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    fn hard(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    #[test]
    fn state_survives_a_reopen_and_a_tail_overwrite_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database.txt");
        assert_eq!(state_dir(&db), dir.path().join("database.txt.raft"));
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert!(!s.initialized());
        s.initialize("1=127.0.0.1:1,2=127.0.0.1:2", vec![1, 2]).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]).unwrap();
        s.set_hard_state(&hard(2, 1, 1)).unwrap();
        // A new leader of term 2 replaces entries 2 and 3.
        s.append(&[entry(2, 2, b"B")]).unwrap();
        s.persist().unwrap();
        drop(s);

        let s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert!(s.initialized());
        assert_eq!(s.members(), Some("1=127.0.0.1:1,2=127.0.0.1:2"));
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state, hard(2, 1, 1));
        assert_eq!(state.conf_state.voters, vec![1, 2]);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        let got = s.entries(1, 3, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got, vec![entry(1, 1, b"a"), entry(2, 2, b"B")]);
        assert!(s.term(3).is_err());
    }

    #[test]
    fn a_torn_final_record_is_cut_and_earlier_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database.txt");
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        s.initialize("1=127.0.0.1:1", vec![1]).unwrap();
        s.append(&[entry(1, 1, b"first"), entry(2, 1, b"second")]).unwrap();
        s.persist().unwrap();
        drop(s);
        let log = state_dir(&db).join("raft.log");
        let whole = fs::read(&log).unwrap();

        // Cut in the middle of the last record: it goes, the rest stays.
        fs::write(&log, &whole[..whole.len() - 3]).unwrap();
        let s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert_eq!(s.last_index(), 1);
        let kept = fs::read(&log).unwrap().len();
        assert!(kept < whole.len() - 3, "the torn bytes were cut from the file");
        drop(s);

        // A flipped byte inside an earlier record is corruption.
        let mut damaged = whole.clone();
        let second_to_last_payload =
            whole.len() - (HEADER + entry(2, 1, b"second").compute_size() as usize) - 2;
        damaged[second_to_last_payload] ^= 0xff;
        fs::write(&log, &damaged).unwrap();
        let err = DiskStorage::open(&db, FsyncPolicy::Always).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    fn snapshot_at(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Snapshot {
        let mut snapshot = Snapshot { data: data.to_vec().into(), ..Default::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(ConfState { voters, ..Default::default() });
        snapshot
    }

    #[test]
    fn compaction_keeps_the_entries_after_the_snapshot_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database.txt");
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        s.initialize("1=127.0.0.1:1,2=127.0.0.1:2", vec![1, 2]).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 8, format!("e{i}").as_bytes())).collect();
        s.append(&entries).unwrap();
        s.set_hard_state(&hard(2, 1, 10)).unwrap();
        s.persist().unwrap();
        // No compaction past the snapshot: the entries would be lost.
        assert!(s.compact_to(3).is_err());
        s.save_snapshot(&snapshot_at(8, 2, vec![1, 2], b"state at 8")).unwrap();
        let before = s.log_bytes();
        s.compact_to(6).unwrap();
        assert!(s.log_bytes() < before, "{} !< {before}", s.log_bytes());
        assert_eq!(s.log_bytes(), fs::metadata(state_dir(&db).join("raft.log")).unwrap().len());
        let check = |s: &DiskStorage| {
            assert_eq!((s.first_index().unwrap(), s.last_index()), (7, 10));
            assert_eq!(s.term(6).unwrap(), 1, "the compaction point keeps its term");
            assert_eq!(s.term(5), Err(raft::Error::Store(StorageError::Compacted)));
            let ctx = GetEntriesContext::empty(false);
            assert_eq!(s.entries(5, 8, None, ctx), Err(raft::Error::Store(StorageError::Compacted)));
            let ctx = GetEntriesContext::empty(false);
            assert_eq!(s.entries(7, 11, None, ctx).unwrap(), entries[6..].to_vec());
            assert_eq!(s.snapshot_index(), 8);
            let snapshot = s.snapshot(0, 2).unwrap();
            assert_eq!((snapshot.get_metadata().index, &snapshot.data[..]), (8, &b"state at 8"[..]));
            assert_eq!(s.initial_state().unwrap().hard_state, hard(2, 1, 10));
            assert_eq!(s.members(), Some("1=127.0.0.1:1,2=127.0.0.1:2"));
        };
        check(&s);
        drop(s);
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        check(&s);
        // A snapshot written off the raft thread is adopted only if newer than the saved one.
        let older = snapshot_at(7, 1, vec![1, 2], b"state at 7");
        write_snapshot_file(&s.snapshot_writing_path(), &older).unwrap();
        assert!(!s.adopt_written_snapshot(older.get_metadata().clone()).unwrap());
        assert!(!s.snapshot_writing_path().exists());
        check(&s);
        // Appending goes on after a compaction, and a snapshot too big to send is not sent.
        s.append(&[entry(11, 2, b"e11")]).unwrap();
        s.persist().unwrap();
        s.set_max_snapshot_bytes(4);
        assert_eq!(s.snapshot(0, 2), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)));
        let newer = snapshot_at(11, 2, vec![1, 2], b"state at 11");
        write_snapshot_file(&s.snapshot_writing_path(), &newer).unwrap();
        assert!(s.adopt_written_snapshot(newer.get_metadata().clone()).unwrap());
        drop(s);
        let s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert_eq!((s.last_index(), s.snapshot_index()), (11, 11));
        assert_eq!(&s.read_snapshot().unwrap().unwrap().data[..], b"state at 11");
    }

    #[test]
    fn a_leaders_snapshot_replaces_the_log_and_wins_over_a_log_that_does_not_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database.txt");
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        s.set_members("1=127.0.0.1:1").unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        s.install_snapshot(&snapshot_at(20, 3, vec![1, 2, 3], b"state at 20")).unwrap();
        assert!(s.initialized(), "the snapshot's voters make it a member");
        s.append(&[entry(21, 3, b"next")]).unwrap();
        s.persist().unwrap();
        drop(s);
        let s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index(), s.term(20).unwrap()), (21, 21, 3));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 20);
        drop(s);

        // A crash after the snapshot file was saved but before the log was reset: the
        // snapshot (of committed entries) wins over the log that does not reach it.
        let mut s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        s.save_snapshot(&snapshot_at(30, 4, vec![1, 2], b"state at 30")).unwrap();
        drop(s);
        let s = DiskStorage::open(&db, FsyncPolicy::Always).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index()), (31, 30));
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 30);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
    }
}
