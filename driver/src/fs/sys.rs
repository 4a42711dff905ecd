//! Thin wrappers over the `*at` system calls the file system is built on.
//!
//! Every backing object the kernel knows is held as an `O_PATH | O_NOFOLLOW` descriptor; these
//! helpers open, inspect and reopen through such descriptors so no path is ever resolved twice.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};

use super::error::{BackingResult, FsError};
use crate::cipher::random_bytes;

/// Opens `name` in directory `dir` as an `O_PATH` handle without following a final symlink.
pub(crate) fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, FsError> {
    openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).op("openat")
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub(crate) fn stat(fd: BorrowedFd<'_>) -> Result<FileStat, FsError> {
    fstat(fd).op("fstat")
}

/// `/proc/self/fd/N`: the path through which an `O_PATH` descriptor's object is reopened.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> CString {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match CString::new(path) {
        Ok(path) => path,
        Err(_) => unreachable!("a formatted integer holds no NUL byte"),
    }
}

/// Opens the object behind `fd` for I/O with `flags`.
pub(crate) fn reopen(fd: BorrowedFd<'_>, flags: OFlag) -> Result<File, FsError> {
    let path = proc_path(fd);
    let owned = nix::fcntl::open(path.as_c_str(), flags | OFlag::O_CLOEXEC, Mode::empty()).op("open")?;
    Ok(File::from(owned))
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is an I/O error.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), FsError> {
    file.read_exact_at(buf, offset).map_err(FsError::Io)
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> Result<(), FsError> {
    file.write_all_at(buf, offset).map_err(FsError::Io)
}

/// Truncates or extends a backing file.
pub(crate) fn set_len(file: &File, len: u64) -> Result<(), FsError> {
    file.set_len(len).map_err(FsError::Io)
}

/// Reserves backing space for `len` bytes at `offset` without changing the file's size
/// (`FALLOC_FL_KEEP_SIZE`), so the writes that follow cannot run out of space half way. A backing
/// file system without `fallocate` (`EOPNOTSUPP`) is not an error: the writes go ahead unreserved.
pub(crate) fn preallocate(file: &File, offset: u64, len: u64) -> Result<(), FsError> {
    if len == 0 {
        return Ok(());
    }
    match keep_size_fallocate(file, offset, len) {
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(errno) => Err(FsError::Backing { op: "fallocate", errno }),
    }
}

/// `fallocate(FALLOC_FL_KEEP_SIZE)` on a backing file.
pub(crate) fn keep_size_fallocate(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    let (offset, len) = (offset as libc::off_t, len as libc::off_t);
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// A name for a temporary entry: `.cvtmp-` and 16 random hex digits. The leading dot keeps it out
/// of directory listings.
pub(crate) fn temp_name() -> Result<CString, FsError> {
    let mut random = [0u8; 8];
    random_bytes(&mut random).map_err(|_| FsError::Random)?;
    CString::new(format!(".cvtmp-{}", hex::encode(random))).map_err(|_| FsError::Random)
}

/// Writes `contents` to a new file `name` in `dir` atomically: a temporary file is written,
/// synced and renamed over `name`.
pub(crate) fn write_file_atomic(dir: BorrowedFd<'_>, name: &CStr, contents: &[u8]) -> Result<(), FsError> {
    let tmp = temp_name()?;
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    let fd = openat(dir, tmp.as_c_str(), flags, Mode::from_bits_truncate(0o644)).op("openat")?;
    let file = File::from(fd);
    let written = write_all_at(&file, contents, 0).and_then(|()| file.sync_data().map_err(FsError::Io));
    drop(file);
    let renamed = written.and_then(|()| nix::fcntl::renameat(dir, tmp.as_c_str(), dir, name).op("renameat"));
    if renamed.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_c_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    renamed
}

/// Reads a small file `name` in `dir`, refusing anything longer than `max` bytes.
pub(crate) fn read_small_file(dir: BorrowedFd<'_>, name: &CStr, max: usize) -> Result<Vec<u8>, FsError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = File::from(openat(dir, name, flags, Mode::empty()).op("openat")?);
    let mut buf = vec![0u8; max + 1];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(FsError::Io(err)),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Raises the soft limit on open files to the hard limit: every inode the kernel knows holds one.
pub(crate) fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(errno) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%errno, "could not raise the open file limit");
            }
        }
    }
}

/// Fixes glibc's allocator thresholds for a process that serves FUSE mounts. Every serving
/// thread of fuser allocates a 16 MiB request buffer of which the kernel writes only the first
/// pages; taken from a fresh mapping, the rest never becomes resident. By default glibc raises its
/// mmap threshold each time a large mapped block is freed, after which such buffers come from the
/// heap, where zeroing them makes every page resident: some 26 MiB per idle staged volume. A fixed
/// threshold of 4 MiB keeps those buffers mapped, while the 1 MiB buffers of the data path still
/// come from the heap and are reused.
pub(crate) fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call from any thread at
    // any time, and a refused value leaves the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// The name bytes of a C string as an `OsStr`.
pub(crate) fn os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}
