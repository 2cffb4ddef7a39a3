//! Files as both paths see them: a source opened twice (through the page cache, and with
//! `O_DIRECT` where the file system allows it) and a target written to a temporary file that only
//! replaces the real one once every byte is on disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gpubridge_core::{Error, IoErrorKind, Result};
use parking_lot::Mutex;

use crate::plan::ALIGN;

/// Whether a piece of `len` bytes at file offset `offset` into memory at `ptr` may go through
/// `O_DIRECT`.
fn direct_ok(offset: u64, ptr: *const u8, len: usize) -> bool {
    offset.is_multiple_of(ALIGN)
        && (ptr as usize).is_multiple_of(ALIGN as usize)
        && (len as u64).is_multiple_of(ALIGN)
}

/// An open file to read from.
#[derive(Debug)]
pub(crate) struct Source {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    /// Why the aligned body is read through the page cache, once that is known.
    buffered_why: Mutex<Option<String>>,
    size: u64,
}

impl Source {
    /// Opens `path` for reading; with `direct`, a second descriptor with `O_DIRECT` too. A file
    /// system that refuses `O_DIRECT` leaves the file readable through the page cache, and the
    /// reason is kept ([`Source::buffered_reason`]).
    ///
    /// # Errors
    /// [`Error::Io`]: not found, permission denied, a directory.
    pub(crate) fn open(path: &Path, direct: bool) -> Result<Self> {
        let buffered = File::open(path).map_err(|e| Error::io(path, "opening for reading", &e))?;
        let meta = buffered
            .metadata()
            .map_err(|e| Error::io(path, "reading metadata", &e))?;
        if meta.is_dir() {
            return Err(Error::Io {
                path: path.to_owned(),
                kind: IoErrorKind::Other,
                message: "is a directory, not a file".to_owned(),
            });
        }
        let mut why = None;
        let direct = if direct {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    why = Some(format!("the file system refused O_DIRECT ({e})"));
                    None
                }
            }
        } else {
            why = Some("storage.direct_io = false".to_owned());
            None
        };
        Ok(Self {
            path: path.to_owned(),
            buffered,
            direct,
            buffered_why: Mutex::new(why),
            size: meta.len(),
        })
    }

    /// The `O_DIRECT` descriptor, where the file system allows one (for cuFile's registration).
    #[cfg(feature = "gds")]
    pub(crate) fn direct_file(&self) -> Option<&File> {
        self.direct.as_ref()
    }

    /// Why the aligned body was (or will be) read through the page cache, if it was.
    pub(crate) fn buffered_reason(&self) -> Option<String> {
        self.buffered_why.lock().clone()
    }

    /// The block device the file lives on, when its aligned body is read with `O_DIRECT` (the
    /// key under which a read's depth is remembered).
    pub(crate) fn direct_device(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.direct_usable()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.dev())
    }

    fn direct_usable(&self) -> Option<&File> {
        self.direct
            .as_ref()
            .filter(|_| self.buffered_why.lock().is_none())
    }

    /// Checks that `len` bytes at `offset` lie inside the file.
    ///
    /// # Errors
    /// [`IoErrorKind::Truncated`] when the file ends before the range does.
    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::Io {
                path: self.path.clone(),
                kind: IoErrorKind::Truncated,
                message: format!(
                    "bytes {offset}..{} were asked for, but the file has {} bytes",
                    offset as u128 + len as u128,
                    self.size
                ),
            });
        }
        Ok(())
    }

    /// Fills `buf` with the bytes at `offset`, through `O_DIRECT` where the offset, the length and
    /// the memory are aligned and the file system allows it, else through the page cache.
    ///
    /// # Errors
    /// [`IoErrorKind::ShortRead`] when the file ends early (it shrank since it was opened); the
    /// operating system's error otherwise.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let rest = &mut buf[done..];
            let direct = self
                .direct_usable()
                .filter(|_| direct_ok(at, rest.as_ptr(), rest.len()));
            let file = direct.unwrap_or(&self.buffered);
            match file.read_at(rest, at) {
                Ok(0) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        kind: IoErrorKind::ShortRead,
                        message: format!(
                            "end of file at byte {at} while reading {} bytes at {offset} (the file had {} bytes when opened)",
                            buf.len(),
                            self.size
                        ),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if direct.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
                    // Some file systems accept the O_DIRECT flag at open and refuse the reads.
                    let mut why = self.buffered_why.lock();
                    if why.is_none() {
                        tracing::info!(path = %self.path.display(), "O_DIRECT read refused ({e}); reading this file through the page cache");
                        *why = Some(format!("the file system refused an O_DIRECT read ({e})"));
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        &self.path,
                        &format!("reading {} bytes at {at}", rest.len()),
                        &e,
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Writes all of `buf` at `offset` of `file`.
///
/// # Errors
/// [`IoErrorKind::DiskFull`] for `ENOSPC`/`EDQUOT`, the operating system's error otherwise.
pub(crate) fn write_all_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match file.write_at(&buf[done..], at) {
            Ok(0) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    kind: IoErrorKind::Other,
                    message: format!(
                        "the file system wrote 0 of {} bytes at {at}",
                        buf.len() - done
                    ),
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::io(
                    path,
                    &format!("writing {} bytes at {at}", buf.len() - done),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file being written: bytes go to a temporary file beside `path`, which [`Target::commit`]
/// syncs and renames over `path` (then syncs the directory). Dropped uncommitted, the temporary
/// file is removed, so `path` never holds a partial write.
#[derive(Debug)]
pub(crate) struct Target {
    path: PathBuf,
    temp: PathBuf,
    buffered: File,
    direct: Option<File>,
    buffered_why: Option<String>,
    committed: bool,
    #[cfg(feature = "fault-injection")]
    budget: Option<AtomicU64>,
}

impl Target {
    /// Creates the temporary file beside `path` (and an `O_DIRECT` descriptor of it, with
    /// `direct`, where the file system allows it).
    ///
    /// # Errors
    /// [`Error::Io`]: the directory is missing or not writable, the disk is full.
    pub(crate) fn create(path: &Path, direct: bool, create_dirs: bool) -> Result<Self> {
        let name = path.file_name().ok_or_else(|| Error::Io {
            path: path.to_owned(),
            kind: IoErrorKind::Other,
            message: "the path names no file".to_owned(),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if create_dirs {
            create_dirs_durably(&dir).map_err(|e| Error::io(path, "creating its directory", &e))?;
        }
        let temp = dir.join(format!(
            ".{}.gpubridge-tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let buffered = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .map_err(|e| Error::io(path, "creating a temporary file beside it", &e))?;
        let mut why = None;
        let direct = if direct {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&temp)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    why = Some(format!("the file system refused O_DIRECT ({e})"));
                    None
                }
            }
        } else {
            why = Some("storage.direct_io = false".to_owned());
            None
        };
        Ok(Self {
            path: path.to_owned(),
            temp,
            buffered,
            direct,
            buffered_why: why,
            committed: false,
            #[cfg(feature = "fault-injection")]
            budget: None,
        })
    }

    /// The final path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The `O_DIRECT` descriptor of the temporary file (for cuFile's registration).
    #[cfg(feature = "gds")]
    pub(crate) fn direct_file(&self) -> Option<&File> {
        self.direct.as_ref()
    }

    /// Why the aligned body goes through the page cache, if it does.
    pub(crate) fn buffered_reason(&self) -> Option<String> {
        self.buffered_why.clone()
    }

    /// Gives the file its final length with its blocks allocated (`fallocate`), so that every
    /// task writes inside the file into blocks that already exist. On ext4 and XFS concurrent
    /// `O_DIRECT` writes into allocated blocks run side by side, where writes into holes or past
    /// the end of the file take the inode's lock one at a time; and a disk too small for the file
    /// is known before a byte is written. A file system without `fallocate` gets a sparse file
    /// of that length instead (`ftruncate`).
    ///
    /// # Errors
    /// [`IoErrorKind::DiskFull`] when the disk cannot hold `len` bytes; the operating system's
    /// error otherwise.
    pub(crate) fn reserve(&self, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        if len > 0 {
            let Ok(size) = libc::off_t::try_from(len) else {
                return Err(Error::Io {
                    path: self.path.clone(),
                    kind: IoErrorKind::Other,
                    message: format!("{len} bytes is more than a file can hold"),
                });
            };
            let e = loop {
                // SAFETY: the descriptor is open for the whole call; fallocate reads no memory
                // of ours.
                let rc = unsafe { libc::fallocate(self.buffered.as_raw_fd(), 0, 0, size) };
                if rc == 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    break e;
                }
            };
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {}
                _ => {
                    return Err(Error::io(
                        &self.path,
                        &format!("allocating {len} bytes for the temporary file"),
                        &e,
                    ))
                }
            }
        }
        self.buffered
            .set_len(len)
            .map_err(|e| Error::io(&self.path, "sizing the temporary file", &e))
    }

    /// Fault injection: writes fail with `ENOSPC` once `bytes` have been written.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn fail_after(&mut self, bytes: Option<u64>) {
        self.budget = bytes.map(AtomicU64::new);
    }

    /// Writes `buf` at `offset`, through `O_DIRECT` where aligned and allowed.
    ///
    /// # Errors
    /// [`IoErrorKind::DiskFull`] for `ENOSPC`; the operating system's error otherwise.
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(budget) = &self.budget {
            let n = buf.len() as u64;
            if budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n))
                .is_err()
            {
                return Err(Error::io(
                    &self.path,
                    &format!("writing {n} bytes at {offset} (injected fault)"),
                    &io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        let file = self
            .direct
            .as_ref()
            .filter(|_| direct_ok(offset, buf.as_ptr(), buf.len()))
            .unwrap_or(&self.buffered);
        write_all_at(file, &self.path, buf, offset)
    }

    /// Makes the write durable and visible: fsync, rename over the final path, fsync the
    /// directory.
    ///
    /// # Errors
    /// [`Error::Io`] from any step; the temporary file is removed and the final path untouched
    /// (unless the rename itself happened).
    ///
    /// A file that `path` named before is held open (`O_PATH`) across the rename and the
    /// directory's fsync, and let go afterwards on a thread of its own: the last close frees its
    /// blocks, which takes time in proportion to its size (40 ms for 256 MiB on the build
    /// machine's ext4, mounted with `discard`), and the save is durable before that. Without
    /// the hold, the rename itself would free them while the caller waits.
    pub(crate) fn commit(mut self) -> Result<()> {
        self.buffered
            .sync_all()
            .map_err(|e| Error::io(&self.path, "syncing the temporary file", &e))?;
        let replaced = hold(&self.path);
        std::fs::rename(&self.temp, &self.path)
            .map_err(|e| Error::io(&self.path, "renaming the temporary file over it", &e))?;
        self.committed = true;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let synced = File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.path, "syncing its directory", &e));
        if let Some(old) = replaced {
            // Where no thread can be started, the closure (and the descriptor) drops here.
            let _ = crate::blocking::spawn(move || drop(old));
        }
        synced
    }
}

/// An `O_PATH` descriptor of what `path` names now (not following a final symlink, which is what
/// a rename over `path` replaces), keeping its inode alive while it is open; `None` when nothing
/// is there (or it cannot be opened, which only costs the deferral).
fn hold(path: &Path) -> Option<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path for the call; O_PATH reads no memory of ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a descriptor `open` just returned, owned by nothing else.
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_file(&self.temp) {
                tracing::warn!(path = %self.temp.display(), "removing an abandoned temporary file failed: {e}");
            }
        }
    }
}

/// Creates `dir` and its missing ancestors, then syncs each new directory's parent, so that the
/// new entries are on disk before a file in them is committed (whose own commit syncs `dir`).
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_owned());
        at = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Drops `path`'s pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)` after an
/// `fdatasync`), so that the next read comes from the disk. Used by the benchmarks to measure cold
/// reads where `/proc/sys/vm/drop_caches` is not writable (containers).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or the advice is refused.
pub fn evict_from_page_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path).map_err(|e| Error::io(path, "opening to evict its pages", &e))?;
    f.sync_data()
        .map_err(|e| Error::io(path, "syncing before evicting its pages", &e))?;
    // SAFETY: `f` is an open descriptor for the whole call; fadvise only advises the kernel
    // about its page cache and touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(Error::io(
            path,
            "posix_fadvise(DONTNEED)",
            &io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_to_a_full_device_is_disk_full() {
        // /dev/full answers every write with ENOSPC: the kernel's own disk-full error.
        let f = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let e = write_all_at(&f, Path::new("/dev/full"), &[1u8; 8192], 0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Io {
                    kind: IoErrorKind::DiskFull,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_a_short_read() {
        let dir = std::env::temp_dir().join(format!("gpubridge-shrink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, vec![7u8; 10000]).unwrap();
        let src = Source::open(&p, true).unwrap();
        src.check_range(0, 10000).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(5000)
            .unwrap();
        let mut buf = vec![0u8; 10000];
        let e = src.read_exact_at(&mut buf, 0).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Io {
                    kind: IoErrorKind::ShortRead,
                    ..
                }
            ),
            "{e}"
        );
        assert!(buf[..5000].iter().all(|b| *b == 7));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_system_without_o_direct_is_read_through_the_page_cache_with_the_reason() {
        // procfs takes no O_DIRECT: the open is refused and the file is read buffered.
        let p = Path::new("/proc/self/status");
        let src = Source::open(p, true).unwrap();
        assert!(src.direct.is_none());
        let why = src.buffered_reason().expect("a reason");
        assert!(
            why.starts_with("the file system refused O_DIRECT ("),
            "{why}"
        );
        let mut buf = [0u8; 5];
        src.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"Name:");
    }

    #[test]
    fn an_operating_system_read_error_is_an_io_error_naming_the_range() {
        // Reading this process's memory at address 0 (never mapped) fails with EIO.
        let p = Path::new("/proc/self/mem");
        let src = Source::open(p, false).unwrap();
        assert_eq!(
            src.buffered_reason().as_deref(),
            Some("storage.direct_io = false")
        );
        let mut buf = [0u8; 16];
        let e = src.read_exact_at(&mut buf, 0).unwrap_err();
        match &e {
            Error::Io {
                path,
                kind: IoErrorKind::Other,
                message,
            } => {
                assert_eq!(path, p);
                assert!(message.starts_with("reading 16 bytes at 0: "), "{message}");
            }
            other => panic!("expected an Io error, got {other:?}"),
        }
    }

    #[test]
    fn a_reserved_target_has_its_length_and_its_blocks_before_any_write() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("gpubridge-reserve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let t = Target::create(&p, true, false).unwrap();
        t.reserve(3 << 20).unwrap();
        let meta = std::fs::metadata(&t.temp).unwrap();
        assert_eq!(meta.len(), 3 << 20);
        // Allocated, not a hole (every file system the tests run on has fallocate).
        assert!(meta.blocks() * 512 >= 3 << 20, "{} blocks", meta.blocks());
        t.reserve(0).unwrap();
        assert_eq!(std::fs::metadata(&t.temp).unwrap().len(), 0);
        drop(t);
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abandoned_target_whose_temporary_file_is_already_gone_drops_quietly() {
        let dir = std::env::temp_dir().join(format!("gpubridge-abandon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let t = Target::create(&p, false, false).unwrap();
        assert_eq!(t.path(), p);
        assert_eq!(
            t.buffered_reason().as_deref(),
            Some("storage.direct_io = false")
        );
        t.write_all_at(b"partial", 0).unwrap();
        std::fs::remove_file(&t.temp).unwrap();
        drop(t);
        assert!(!p.exists(), "an uncommitted target never becomes the file");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_commit_over_a_file_replaces_it_and_frees_the_old_one_once_let_go() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("gpubridge-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        // A reader that has the old file open still reads the old bytes after the commit.
        let old = File::open(&p).unwrap();
        let old_ino = old.metadata().unwrap().ino();
        let t = Target::create(&p, true, false).unwrap();
        t.reserve(4096).unwrap();
        let mut v = vec![0u8; 2 * 4096];
        let at = v.as_ptr().align_offset(4096);
        v[at..at + 4096].fill(9);
        t.write_all_at(&v[at..at + 4096], 0).unwrap();
        t.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), vec![9u8; 4096]);
        assert_ne!(std::fs::metadata(&p).unwrap().ino(), old_ino);
        let mut first = [0u8; 4];
        old.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(first, [7; 4]);
        drop(old);
        // Nothing but the new file is left in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // `hold`: an O_PATH descriptor of what is there (a symlink itself, not its target), none
        // where nothing is.
        std::os::unix::fs::symlink("f", dir.join("link")).unwrap();
        assert!(hold(&dir.join("link")).is_some());
        assert!(hold(&dir.join("missing")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
