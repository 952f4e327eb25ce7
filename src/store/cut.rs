//! A write that failed must not come back: the pending cut.
//!
//! When an append or its fsync fails, the bytes of the refused batch may already be in the
//! file (in the page cache, or on disk). The writer cuts the file back to where the batch
//! started. If even that truncation fails, a replay at the next start would apply writes
//! that were answered with an error, so the writer records the length to cut back to in
//! `<db>.cut` (one decimal number, fsynced, its directory fsynced) and accepts no more
//! writes until the cut is done. The cut is retried before the next write and at shutdown,
//! and carried out before anything is loaded at the next start; only then is the marker
//! removed. Only if the marker cannot be written either (the disk refuses every write) is
//! a refused batch left to chance; the log then says so.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::disk::DiskFile;
use super::files::{create_fresh, remove_if_present, sibling, sync_dir};

pub(crate) fn marker_path(db: &Path) -> PathBuf {
    sibling(db, ".cut")
}

/// Records durably that `db` must be cut back to `len` bytes before it is used again.
pub(crate) fn record(db: &Path, len: u64) -> io::Result<()> {
    let marker = marker_path(db);
    let mut file = create_fresh(&marker, fs::metadata(db)?.permissions())?;
    writeln!(file, "{len}")?;
    file.sync_all()?;
    sync_dir(&marker)
}

/// Cuts `file` (the log at `db`) back to `len` and makes the new length durable, then
/// removes the marker if there is one. On failure the marker (if any) stays.
pub(crate) fn cut_to(db: &Path, file: &dyn DiskFile, len: u64) -> io::Result<()> {
    if file.len()? > len {
        file.set_len(len)?;
    }
    file.sync_data()?;
    if remove_if_present(&marker_path(db))? {
        sync_dir(db)?;
    }
    Ok(())
}

/// At start-up, before loading: carries out a cut recorded by an earlier run.
pub(crate) fn finish_recorded(db: &Path, file: &File) -> io::Result<()> {
    let marker = marker_path(db);
    let text = match fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len: u64 = text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold a length ({:?}); check the file and remove it",
                marker.display(),
                text.trim()
            ),
        )
    })?;
    let found = file.metadata()?.len();
    log::warn!(
        "{} records a refused write the last run could not cut off: cutting {} from {found} back to {len} bytes",
        marker.display(),
        db.display()
    );
    cut_to(db, file, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn a_recorded_cut_is_carried_out_at_the_next_start_and_the_marker_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.txt");
        fs::write(&db, "set a 1\nflush\n").unwrap();
        record(&db, 8).unwrap();
        assert_eq!(fs::read_to_string(marker_path(&db)).unwrap(), "8\n");
        let file = OpenOptions::new().read(true).write(true).open(&db).unwrap();
        finish_recorded(&db, &file).unwrap();
        assert_eq!(fs::read(&db).unwrap(), b"set a 1\n");
        assert!(!marker_path(&db).exists());
        // Nothing recorded: nothing happens.
        finish_recorded(&db, &file).unwrap();
        assert_eq!(fs::read(&db).unwrap(), b"set a 1\n");
    }

    #[test]
    fn a_marker_that_holds_no_length_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.txt");
        fs::write(&db, "set a 1\n").unwrap();
        fs::write(marker_path(&db), "junk").unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&db).unwrap();
        let err = finish_recorded(&db, &file).unwrap_err().to_string();
        assert!(err.contains("does not hold a length"), "{err}");
        assert_eq!(fs::read(&db).unwrap(), b"set a 1\n", "left untouched");
    }
}
