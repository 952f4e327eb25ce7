//! The disk reserve: room kept aside so that a full disk can be recovered by compacting.
//!
//! Compaction writes a second copy of the live set before it can free the old log, so on a
//! disk that writes have filled it has nowhere to go. The store keeps `<db>.reserve`, a file
//! of zeros written out in full (not a sparse file: its blocks are really allocated), and
//! deletes it when a compaction runs out of space, then retries the compaction in the room it
//! freed. After a compaction the reserve is written again, in the background, if there is
//! room. A compaction of a live set larger than the reserve plus the free space still fails:
//! the reserve bounds what is guaranteed (`--compact-reserve-bytes`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::files::{create_fresh, remove_if_present, sibling};

pub(crate) struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Whether the file is there in full. Serialises filling and releasing.
    held: Mutex<bool>,
}

impl Reserve {
    pub(crate) fn new(db: &Path, bytes: u64) -> Reserve {
        Reserve { path: sibling(db, ".reserve"), bytes, held: Mutex::new(false) }
    }

    /// Makes sure the reserve file is there in full; logs (and otherwise ignores) a failure,
    /// since a server on a full disk must still start so that it can be compacted.
    pub(crate) fn fill(&self) {
        let mut held = self.held.lock();
        if *held {
            return;
        }
        if self.bytes == 0 {
            if let Err(e) = remove_if_present(&self.path) {
                log::warn!("could not remove {}: {e}", self.path.display());
            }
            return;
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.file_type().is_file() && meta.len() == self.bytes => {
                *held = true;
                return;
            }
            _ => {}
        }
        match self.write_out() {
            Ok(()) => *held = true,
            Err(e) => {
                let _ = remove_if_present(&self.path);
                log::warn!(
                    "could not reserve {} bytes for compaction in {}: {e}; until there is room, a full disk \
                     cannot be recovered by compacting",
                    self.bytes,
                    self.path.display()
                );
            }
        }
    }

    fn write_out(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        let file = create_fresh(&self.path, fs::Permissions::from_mode(0o600))?;
        let len =
            libc::off_t::try_from(self.bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain syscall on a descriptor this function owns.
        // glibc falls back to writing the blocks where the file system has no fallocate.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => Ok(()),
            error => Err(io::Error::from_raw_os_error(error)),
        }
    }

    /// Bytes the reserve holds now.
    pub(crate) fn held_bytes(&self) -> u64 {
        if *self.held.lock() {
            self.bytes
        } else {
            0
        }
    }

    /// Deletes the reserve to make room; `true` if there was one to delete.
    pub(crate) fn release(&self) -> bool {
        let mut held = self.held.lock();
        if !*held {
            return false;
        }
        *held = false;
        match remove_if_present(&self.path) {
            Ok(_) => true,
            Err(e) => {
                log::error!("could not delete {} to make room: {e}", self.path.display());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_in_full_released_once_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.txt");
        let reserve = Reserve::new(&db, 3 << 20 | 5);
        reserve.fill();
        let path = dir.path().join("db.txt.reserve");
        assert_eq!(fs::metadata(&path).unwrap().len(), 3 << 20 | 5);
        assert!(reserve.release());
        assert!(!path.exists());
        assert!(!reserve.release(), "nothing left to release");
        reserve.fill();
        assert_eq!(fs::metadata(&path).unwrap().len(), 3 << 20 | 5);
        // A reserve of 0 removes a file left by an earlier setting.
        Reserve::new(&db, 0).fill();
        assert!(!path.exists());
    }
}
