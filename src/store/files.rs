//! The small file-system rules every file the store creates or trusts follows.
//!
//! The database's directory may be writable by people other than the server's operator, so
//! nothing here follows a symbolic link or truncates a file it did not just create: a file
//! the store makes (compaction's temporary copy, the pending-cut marker, the disk reserve) is
//! created with `O_CREAT|O_EXCL`, which refuses to go through a link, after removing whatever
//! name was there (removing a link removes the link, never its target).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`database.txt` → `database.txt.compact`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// fsync the directory holding `path`, which makes a rename or a new name in it durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Creates `path` as a new, empty regular file with `permissions`, open for reading and
/// writing. Whatever was at `path` before (a stale file, or a link planted there) is
/// unlinked first, never opened.
pub(crate) fn create_fresh(path: &Path, permissions: Permissions) -> io::Result<File> {
    remove_if_present(path)?;
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
    file.set_permissions(permissions)?;
    Ok(file)
}

/// Unlinks `path`; `Ok(false)` if there was nothing to remove.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `stat` is plain data, filled in by the call; `dir` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(dir.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_fresh_replaces_a_planted_link_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let victim_mode = fs::metadata(&victim).unwrap().permissions().mode();
        let temp = dir.path().join("db.txt.compact");
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        let file = create_fresh(&temp, Permissions::from_mode(0o600)).unwrap();
        drop(file);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::metadata(&victim).unwrap().permissions().mode(), victim_mode, "not chmod-ed");
        let meta = fs::symlink_metadata(&temp).unwrap();
        assert!(meta.file_type().is_file(), "a regular file now, not a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0);
    }
}
