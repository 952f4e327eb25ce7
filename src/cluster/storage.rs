//! The node's Raft state on disk: `<db>.raft/raft.log`, one append-only file of records.
//!
//! ```text
//! record  = kind:u8  len:u32 LE  crc32(payload):u32 LE  payload[len]
//! kind    'M'  members: the `--initial-cluster` text this node was formed with
//!         'C'  conf state (protobuf `ConfState`): who votes
//!         'H'  hard state (protobuf `HardState`): term, vote, commit
//!         'E'  one log entry (protobuf `Entry`)
//! ```
//!
//! Loading replays the file: the last `M`, `C` and `H` win; an `E` whose index is at or below
//! the last one loaded replaces the log from that index on (Raft overwrote a tail that a new
//! leader never had), so a truncation is just another append. Everything Raft asks to keep is
//! appended and, with `--fsync always`, fdatasync'ed before the messages that depend on it
//! leave the node (see `node`); `everysec` syncs about once a second and `never` leaves it to
//! the OS — a power loss can then take back a vote, which Raft's safety does not allow for,
//! so a cluster that must survive power loss runs `always`.
//!
//! A record cut by a crash at the end of the file (short, or with a bad checksum) is cut off
//! at start with a warning: it was never synced, so nothing depended on it. A bad record
//! before the end is corruption and stops the start.
//!
//! Simplification for now: no snapshots and no log compaction. Every entry stays in the file
//! and in memory (`first_index` is always 1), and the node's database is rebuilt from the
//! whole log at each start (see `mod.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::store::FsyncPolicy;

const HEADER: usize = 9;

/// Records larger than this are corruption (an entry holds at most a few batches of values).
const MAX_RECORD: usize = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Members = b'M' as isize,
    Conf = b'C' as isize,
    Hard = b'H' as isize,
    Entry = b'E' as isize,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [Kind::Members, Kind::Conf, Kind::Hard, Kind::Entry].into_iter().find(|k| *k as u8 == b)
    }
}

/// The Raft state of this node, in memory and in its file. Raft (`raw_node`) reads it
/// through [`raft::Storage`]; the raft thread writes it.
pub struct DiskStorage {
    path: PathBuf,
    file: File,
    fsync: FsyncPolicy,
    /// Appended since the last fdatasync.
    dirty: bool,
    members: Option<String>,
    conf: ConfState,
    hard: HardState,
    /// Entries 1..=len (no compaction yet).
    entries: Vec<Entry>,
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
        let path = dir.join("raft.log");
        let existed = path.exists();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        if !existed {
            file.sync_all()?;
            File::open(&dir)?.sync_all()?;
        }
        let bytes = fs::read(&path)?;
        let mut storage = DiskStorage {
            path: path.clone(),
            file: file.try_clone()?,
            fsync,
            dirty: false,
            members: None,
            conf: ConfState::default(),
            hard: HardState::default(),
            entries: Vec::new(),
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
        }
        file.flush()?;
        Ok(storage)
    }

    /// Replays `bytes`; returns the length of the good prefix.
    fn replay(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let mut at = 0;
        while at < bytes.len() {
            let Some(header) = bytes.get(at..at + HEADER) else { break };
            let kind = Kind::from_byte(header[0]);
            let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
            let end = at + HEADER + len;
            let whole = len <= MAX_RECORD && end <= bytes.len();
            let sound = whole && kind.is_some() && crc32fast::hash(&bytes[at + HEADER..end]) == crc;
            if !sound {
                // Torn only if nothing sound could follow: a record reaching past the end, or
                // a bad final record.
                if !whole || end == bytes.len() {
                    break;
                }
                return Err(corrupt(&self.path, at, "bad checksum or record kind"));
            }
            let payload = &bytes[at + HEADER..end];
            let bad = |what: &str| corrupt(&self.path, at, what);
            match kind {
                Some(Kind::Members) => {
                    self.members = Some(String::from_utf8(payload.to_vec()).map_err(|_| bad("members"))?)
                }
                Some(Kind::Conf) => {
                    self.conf = ConfState::parse_from_bytes(payload).map_err(|_| bad("conf"))?
                }
                Some(Kind::Hard) => {
                    self.hard = HardState::parse_from_bytes(payload).map_err(|_| bad("hard"))?
                }
                Some(Kind::Entry) => {
                    let entry = Entry::parse_from_bytes(payload).map_err(|_| bad("entry"))?;
                    if entry.index == 0 || entry.index > self.entries.len() as u64 + 1 {
                        return Err(bad("entry index out of sequence"));
                    }
                    self.entries.truncate(entry.index as usize - 1);
                    self.entries.push(entry);
                }
                None => unreachable!("checked as sound"),
            }
            at = end;
        }
        Ok(at as u64)
    }

    /// Whether this node has been formed (its first start wrote the members and voters).
    pub fn initialized(&self) -> bool {
        self.members.is_some() && !self.conf.voters.is_empty()
    }

    /// The `--initial-cluster` text the node was formed with.
    pub fn members(&self) -> Option<&str> {
        self.members.as_deref()
    }

    /// First start: records the members and the voters, durably.
    pub fn initialize(&mut self, members: &str, voters: Vec<u64>) -> io::Result<()> {
        let conf = ConfState { voters, ..Default::default() };
        self.append_record(Kind::Members, members.as_bytes())?;
        self.append_record(Kind::Conf, &conf.write_to_bytes().map_err(io::Error::other)?)?;
        self.members = Some(members.to_string());
        self.conf = conf;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Appends `entries` (replacing any tail from the first one's index on).
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        for entry in entries {
            let at = entry.index as usize;
            if at == 0 || at > self.entries.len() + 1 {
                return Err(io::Error::other(format!(
                    "raft appended entry {at} after {}: not continuous",
                    self.entries.len()
                )));
            }
            self.append_record(Kind::Entry, &entry.write_to_bytes().map_err(io::Error::other)?)?;
            self.entries.truncate(at - 1);
            self.entries.push(entry.clone());
        }
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard: &HardState) -> io::Result<()> {
        if *hard != self.hard {
            self.append_record(Kind::Hard, &hard.write_to_bytes().map_err(io::Error::other)?)?;
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
        if self.dirty && self.fsync == FsyncPolicy::Always {
            self.file.sync_data()?;
            self.dirty = false;
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
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.push(kind as u8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all(&record)?;
        self.dirty = true;
        Ok(())
    }

    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
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
        if low == 0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let range = self.entries.get(low as usize - 1..high as usize - 1).ok_or_else(unavailable)?;
        let mut entries = range.to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        match index {
            0 => Ok(0),
            _ => self.entries.get(index as usize - 1).map(|e| e.term).ok_or_else(unavailable),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Never asked for while the log is never compacted (every follower can be sent entries).
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
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
}
