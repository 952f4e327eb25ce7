//! The file operations the write path and compaction make, behind a small interface, so a
//! simulated disk can stand in for the real one in tests (`sim`).
//!
//! Only what a power loss can undo goes through here: writes at an offset, fdatasync,
//! truncation, creating a file, renaming it, removing it and fsyncing a directory. What
//! concerns the real machine alone (the lock, the disk reserve, free space, a symlinked
//! path) stays with the real file system in `Store::open`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use super::files;

/// One open file.
pub(crate) trait DiskFile: Send + Sync {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and size) durable.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// What identifies the file on its disk (device and inode), if the disk knows it.
    fn identity(&self) -> io::Result<(u64, u64)>;
    /// Takes the exclusive lock that keeps other servers off (see `Store::open`).
    fn lock(&self) -> io::Result<()>;
}

/// A directory tree of such files.
pub(crate) trait Disk: Send + Sync {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Creates `path` afresh (see `files::create_fresh`) with the permissions of `like`.
    fn create_fresh(&self, path: &Path, like: &Path) -> io::Result<Arc<dyn DiskFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks `path`; `Ok(false)` if nothing was there.
    fn remove(&self, path: &Path) -> io::Result<bool>;
    /// Makes renames, creations and removals in `path`'s directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The identity of the file `path` names now.
    fn identity(&self, path: &Path) -> io::Result<(u64, u64)>;
}

/// The real file system.
pub(crate) struct OsDisk;

impl DiskFile for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn identity(&self) -> io::Result<(u64, u64)> {
        let meta = self.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    fn lock(&self) -> io::Result<()> {
        self.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => {
                io::Error::new(io::ErrorKind::WouldBlock, "another process holds a lock on the file")
            }
            fs::TryLockError::Error(e) => e,
        })
    }
}

impl Disk for OsDisk {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(fs::OpenOptions::new().read(true).write(true).open(path)?))
    }

    fn create_fresh(&self, path: &Path, like: &Path) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(files::create_fresh(path, fs::metadata(like)?.permissions())?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<bool> {
        files::remove_if_present(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        files::sync_dir(path)
    }

    fn identity(&self, path: &Path) -> io::Result<(u64, u64)> {
        let meta = fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }
}

/// A simulated disk that keeps what was made durable apart from what was only written, and
/// can lose power.
///
/// The model: every file has a durable image; writes, truncations and creations go to a
/// list of pending operations on it, which `sync_data` makes durable. Names live in a
/// directory whose renames, creations and removals are likewise pending until `sync_dir`.
/// A power loss keeps the durable state plus a random prefix of each pending list (what the
/// kernel happened to write back, in order), the last operation of a kept prefix possibly
/// torn (a random part of a write), and from then on every operation fails with EIO.
#[cfg(test)]
pub(crate) mod sim {
    use std::collections::HashMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::{Disk, DiskFile};

    #[derive(Clone, Debug)]
    enum FileOp {
        Write { offset: u64, bytes: Vec<u8> },
        SetLen(u64),
    }

    #[derive(Clone, Debug)]
    enum DirOp {
        Link(PathBuf, usize),
        Unlink(PathBuf),
        /// Atomic, as rename(2) is: the old name goes as the new one comes.
        Rename(PathBuf, PathBuf),
    }

    #[derive(Default)]
    struct Inode {
        durable: Vec<u8>,
        /// What reads see: `durable` with `pending` applied.
        current: Vec<u8>,
        pending: Vec<FileOp>,
    }

    #[derive(Default)]
    struct State {
        inodes: Vec<Inode>,
        names: HashMap<PathBuf, usize>,
        durable_names: HashMap<PathBuf, usize>,
        dir_pending: Vec<DirOp>,
        powered_off: bool,
        syncs: u64,
        /// How long an fdatasync takes (a real disk's is milliseconds).
        sync_delay: std::time::Duration,
    }

    /// A small deterministic generator (xorshift), so a failing seed replays.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            if n == 0 {
                0
            } else {
                self.0 % n
            }
        }
    }

    fn apply(image: &mut Vec<u8>, op: &FileOp) {
        match op {
            FileOp::Write { offset, bytes } => {
                let end = *offset as usize + bytes.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset as usize..end].copy_from_slice(bytes);
            }
            FileOp::SetLen(len) => image.resize(*len as usize, 0),
        }
    }

    fn powered_off() -> io::Error {
        io::Error::other("simulated power loss")
    }

    #[derive(Default, Clone)]
    pub(crate) struct SimDisk {
        state: Arc<Mutex<State>>,
    }

    struct SimFile {
        disk: SimDisk,
        inode: usize,
    }

    impl SimDisk {
        /// A disk holding `path` with these durable contents.
        pub(crate) fn with_file(path: &Path, contents: &[u8]) -> SimDisk {
            let disk = SimDisk::default();
            {
                let mut state = disk.state.lock();
                state.inodes.push(Inode {
                    durable: contents.to_vec(),
                    current: contents.to_vec(),
                    pending: Vec::new(),
                });
                state.names.insert(path.to_path_buf(), 0);
                state.durable_names.insert(path.to_path_buf(), 0);
            }
            disk
        }

        /// Cuts the power: returns the durable contents of every name after the loss (as
        /// described in the module doc), and fails every later operation.
        pub(crate) fn power_loss(&self, rng: &mut Rng) -> HashMap<PathBuf, Vec<u8>> {
            let mut state = self.state.lock();
            state.powered_off = true;
            let kept = rng.below(state.dir_pending.len() as u64 + 1) as usize;
            let mut names = state.durable_names.clone();
            for op in &state.dir_pending[..kept] {
                match op {
                    DirOp::Link(name, inode) => {
                        names.insert(name.clone(), *inode);
                    }
                    DirOp::Unlink(name) => {
                        names.remove(name);
                    }
                    DirOp::Rename(from, to) => {
                        if let Some(inode) = names.remove(from) {
                            names.insert(to.clone(), inode);
                        }
                    }
                }
            }
            let mut images: HashMap<usize, Vec<u8>> = HashMap::new();
            names
                .into_iter()
                .map(|(name, inode)| {
                    let image = images
                        .entry(inode)
                        .or_insert_with(|| {
                            let inode = &state.inodes[inode];
                            let mut image = inode.durable.clone();
                            let kept = rng.below(inode.pending.len() as u64 + 1) as usize;
                            for (at, op) in inode.pending[..kept].iter().enumerate() {
                                match op {
                                    // The last write that reached the disk may be torn.
                                    FileOp::Write { offset, bytes }
                                        if at + 1 == kept && rng.below(2) == 0 =>
                                    {
                                        let part = rng.below(bytes.len() as u64 + 1) as usize;
                                        apply(
                                            &mut image,
                                            &FileOp::Write { offset: *offset, bytes: bytes[..part].to_vec() },
                                        );
                                    }
                                    op => apply(&mut image, op),
                                }
                            }
                            image
                        })
                        .clone();
                    (name, image)
                })
                .collect()
        }

        /// Makes every fdatasync take `delay`, as on a real disk.
        pub(crate) fn set_sync_delay(&self, delay: std::time::Duration) {
            self.state.lock().sync_delay = delay;
        }

        /// fdatasyncs so far.
        pub(crate) fn syncs(&self) -> u64 {
            self.state.lock().syncs
        }

        fn file_op(&self, inode: usize, op: FileOp) -> io::Result<()> {
            let mut state = self.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            let inode = &mut state.inodes[inode];
            apply(&mut inode.current, &op);
            inode.pending.push(op);
            Ok(())
        }

        fn dir_op(&self, op: DirOp) -> io::Result<()> {
            let mut state = self.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            match &op {
                DirOp::Link(name, inode) => {
                    state.names.insert(name.clone(), *inode);
                }
                DirOp::Unlink(name) => {
                    state.names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(inode) = state.names.remove(from) {
                        state.names.insert(to.clone(), inode);
                    }
                }
            }
            state.dir_pending.push(op);
            Ok(())
        }

        fn lookup(&self, path: &Path) -> io::Result<usize> {
            let state = self.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            state.names.get(path).copied().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    impl DiskFile for SimFile {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.disk.file_op(self.inode, FileOp::Write { offset, bytes: buf.to_vec() })
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let state = self.disk.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            let current = &state.inodes[self.inode].current;
            let end = offset as usize + buf.len();
            if end > current.len() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.copy_from_slice(&current[offset as usize..end]);
            Ok(())
        }

        fn sync_data(&self) -> io::Result<()> {
            let delay = self.disk.state.lock().sync_delay;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let mut state = self.disk.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            state.syncs += 1;
            let inode = &mut state.inodes[self.inode];
            inode.durable = inode.current.clone();
            inode.pending.clear();
            Ok(())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.disk.file_op(self.inode, FileOp::SetLen(len))
        }

        fn len(&self) -> io::Result<u64> {
            let state = self.disk.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            Ok(state.inodes[self.inode].current.len() as u64)
        }

        fn identity(&self) -> io::Result<(u64, u64)> {
            Ok((0, self.inode as u64))
        }

        fn lock(&self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Disk for SimDisk {
        fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
            let inode = self.lookup(path)?;
            Ok(Arc::new(SimFile { disk: self.clone(), inode }))
        }

        fn create_fresh(&self, path: &Path, _like: &Path) -> io::Result<Arc<dyn DiskFile>> {
            let inode = {
                let mut state = self.state.lock();
                if state.powered_off {
                    return Err(powered_off());
                }
                state.inodes.push(Inode::default());
                state.inodes.len() - 1
            };
            self.dir_op(DirOp::Link(path.to_path_buf(), inode))?;
            Ok(Arc::new(SimFile { disk: self.clone(), inode }))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.lookup(from)?;
            self.dir_op(DirOp::Rename(from.to_path_buf(), to.to_path_buf()))
        }

        fn remove(&self, path: &Path) -> io::Result<bool> {
            match self.lookup(path) {
                Ok(_) => self.dir_op(DirOp::Unlink(path.to_path_buf())).map(|()| true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        }

        fn sync_dir(&self, _path: &Path) -> io::Result<()> {
            let mut state = self.state.lock();
            if state.powered_off {
                return Err(powered_off());
            }
            state.durable_names = state.names.clone();
            state.dir_pending.clear();
            Ok(())
        }

        fn identity(&self, path: &Path) -> io::Result<(u64, u64)> {
            Ok((0, self.lookup(path)? as u64))
        }
    }
}
