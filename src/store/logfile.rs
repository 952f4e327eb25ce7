//! The log file as the write path sees it: append a batch's records at the end, make them as
//! durable as `--fsync` asks, and make sure a failed append leaves nothing behind.
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
//! to have been changed by another process (its length or identity is not what this server
//! made it): writing on would overwrite what the other process wrote.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::cut;
use super::disk::{Disk, DiskFile};
use super::{FsyncPolicy, StoreError};

/// How often the log's name is checked to still lead to the file being written.
const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The file the background syncer (`everysec`) flushes; swapped by compaction.
pub(crate) struct SyncTarget {
    pub(crate) file: Mutex<Arc<dyn DiskFile>>,
    pub(crate) dirty: AtomicBool,
    /// A background fsync failed: writes are refused from then on (it is never retried).
    pub(crate) failed: Mutex<Option<String>>,
}

impl SyncTarget {
    /// `everysec`: fsyncs the current log if something was written since the last call.
    pub(crate) fn sync_if_dirty(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) && self.failed.lock().is_none() {
            let file = Arc::clone(&self.file.lock());
            if let Err(e) = file.sync_data() {
                *self.failed.lock() = Some(format!("a background fsync failed ({e})"));
            }
        }
    }
}

pub(crate) struct LogFile {
    path: PathBuf,
    disk: Arc<dyn Disk>,
    file: Arc<dyn DiskFile>,
    len: u64,
    fsync: FsyncPolicy,
    /// A failed batch whose cut-back also failed: retry before writing anything else.
    needs_cut: bool,
    /// The directory fsync after a compaction's rename failed: retry it before anything
    /// more is acknowledged, or the new log's name might not survive a power loss.
    needs_dir_sync: bool,
    /// Why every write is refused until restart.
    refusal: Option<String>,
    last_identity_check: Instant,
    sync_target: Arc<SyncTarget>,
    pub(crate) fsyncs: u64,
}

impl LogFile {
    pub(crate) fn new(
        path: &Path,
        disk: Arc<dyn Disk>,
        file: Arc<dyn DiskFile>,
        len: u64,
        fsync: FsyncPolicy,
    ) -> LogFile {
        let sync_target = Arc::new(SyncTarget {
            file: Mutex::new(Arc::clone(&file)),
            dirty: AtomicBool::new(false),
            failed: Mutex::new(None),
        });
        LogFile {
            path: path.to_path_buf(),
            disk,
            file,
            len,
            fsync,
            needs_cut: false,
            needs_dir_sync: false,
            refusal: None,
            last_identity_check: Instant::now(),
            sync_target,
            fsyncs: 0,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn file(&self) -> &dyn DiskFile {
        &*self.file
    }

    pub(crate) fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub(crate) fn sync_target(&self) -> &Arc<SyncTarget> {
        &self.sync_target
    }

    /// Why writes are refused, if they are; a pending cut counts (the log's end is in doubt).
    pub(crate) fn unwritable(&self) -> Option<StoreError> {
        if let Some(why) = &self.refusal {
            Some(StoreError::Refused(why.clone()))
        } else if self.needs_cut {
            Some(StoreError::Io("a refused write is still to be cut off the log".into()))
        } else {
            None
        }
    }

    /// Switches to the log a compaction installed.
    pub(crate) fn replace(&mut self, file: Arc<dyn DiskFile>, len: u64, dir_synced: bool) {
        self.file = file;
        self.len = len;
        self.needs_dir_sync = !dir_synced;
        *self.sync_target.file.lock() = Arc::clone(&self.file);
    }

    /// Appends `buf` at the end of the log and makes it as durable as the policy asks. On
    /// failure nothing of `buf` stays in the log (or, if the cut-back fails, the cut is
    /// recorded and pending; see the module doc).
    pub(crate) fn append(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        // Only the everysec syncer sets `failed`: the other policies skip the lock.
        if self.refusal.is_none() && self.fsync == FsyncPolicy::Everysec {
            let failed = self.sync_target.failed.lock().clone();
            if let Some(why) = failed {
                self.refuse(why);
            }
        }
        if let Some(why) = &self.refusal {
            return Err(StoreError::Refused(why.clone()));
        }
        if self.needs_cut {
            cut::cut_to(&self.path, &*self.file, self.len).map_err(|e| StoreError::from(&e))?;
            self.needs_cut = false;
            log::info!("cut the refused write off {}; writing again", self.path.display());
        }
        if self.needs_dir_sync {
            self.disk.sync_dir(&self.path).map_err(|e| StoreError::from(&e))?;
            self.needs_dir_sync = false;
        }
        self.check_the_file_is_ours()?;
        if let Err(e) = self.file.write_at(buf, self.len) {
            self.cut_back();
            return Err(StoreError::from(&e));
        }
        match self.fsync {
            FsyncPolicy::Always => {
                self.fsyncs += 1;
                if let Err(e) = self.file.sync_data() {
                    self.refuse(format!("an fsync of {} failed ({e})", self.path.display()));
                    self.cut_back();
                    return Err(StoreError::from(&e));
                }
            }
            FsyncPolicy::Everysec => self.sync_target.dirty.store(true, Ordering::Relaxed),
            FsyncPolicy::Never => {}
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// At shutdown: finishes a pending cut (a truncate, unlike an fsync, may simply be
    /// tried again), then fsyncs.
    pub(crate) fn close(&mut self) {
        for attempt in 1..=3 {
            if !self.needs_cut {
                break;
            }
            match cut::cut_to(&self.path, &*self.file, self.len) {
                Ok(()) => {
                    self.needs_cut = false;
                    log::info!("cut the refused write off {} at shutdown", self.path.display());
                }
                Err(e) if attempt < 3 => {
                    log::warn!("cutting the refused write off at shutdown failed ({e}); again")
                }
                Err(e) => log::error!(
                    "could not cut the refused write off {} at shutdown ({e}); the next start will",
                    self.path.display()
                ),
            }
        }
        match self.file.sync_data() {
            Ok(()) => log::info!("{} is synced", self.path.display()),
            Err(e) => log::error!("final fsync of {} failed: {e}", self.path.display()),
        }
    }

    /// From now on every write is refused, until restart.
    fn refuse(&mut self, why: String) {
        log::error!("{why}: refusing every write until the server is restarted");
        self.refusal = Some(why);
    }

    /// Cuts the log back to its acknowledged length after a failed append; if that fails,
    /// records the cut durably so that it happens before the next write or the next start.
    fn cut_back(&mut self) {
        let Err(e) = cut::cut_to(&self.path, &*self.file, self.len) else { return };
        self.needs_cut = true;
        log::error!("could not cut a refused write off {}: {e}", self.path.display());
        match cut::record(&self.path, self.len) {
            Ok(()) => log::warn!(
                "recorded in {} that {} must be cut back to {} bytes: retried before the next write, at \
                 shutdown and at the next start",
                cut::marker_path(&self.path).display(),
                self.path.display(),
                self.len
            ),
            Err(e) => log::error!(
                "could not record the pending cut in {} either ({e}): if the server stops before a cut \
                 succeeds, the refused write may be replayed at the next start",
                cut::marker_path(&self.path).display()
            ),
        }
    }

    /// Refuses to write into a log someone else changed: its length must be the one this
    /// server left (one fstat per batch), and its name must still lead to the file being
    /// written (checked about once a second). Appending past a line added by hand would
    /// overwrite it, and writing to a file renamed or deleted away would lose every write.
    fn check_the_file_is_ours(&mut self) -> Result<(), StoreError> {
        let len = self.file.len().map_err(|e| StoreError::from(&e))?;
        let changed = if len != self.len {
            Some(format!(
                "{} was changed by another process (it is {len} bytes long, this server wrote {})",
                self.path.display(),
                self.len
            ))
        } else if self.last_identity_check.elapsed() >= IDENTITY_CHECK_EVERY {
            self.last_identity_check = Instant::now();
            let ours = self.file.identity().map_err(|e| StoreError::from(&e))?;
            let same = self.disk.identity(&self.path).is_ok_and(|named| named == ours);
            (!same).then(|| {
                format!(
                    "{} no longer names the file this server writes (it was replaced, moved or deleted)",
                    self.path.display()
                )
            })
        } else {
            None
        };
        match changed {
            Some(why) => {
                let why = format!("{why}; restart the server to load the file as it is now");
                self.refuse(why.clone());
                Err(StoreError::Refused(why))
            }
            None => Ok(()),
        }
    }
}
