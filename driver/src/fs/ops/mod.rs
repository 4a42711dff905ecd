//! The encrypted file system in domain terms: every operation takes node ids, plaintext names and
//! byte ranges and returns attributes, data or an [`FsError`]. The FUSE adapter only decodes
//! requests, calls in here and encodes replies.

mod io;
mod namespace;
mod xattr;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmodat, utimensat, FchmodatFlags, FileStat, Mode, UtimensatFlags};
use nix::sys::statvfs::{fstatvfs, Statvfs};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use parking_lot::{Mutex, RwLock};

use crate::cipher::content::{backing_size, plain_size_conservative, BlockCipher, FileId};
use crate::cipher::names::{BackingName, NameCipher};
use crate::cipher::symlink;
use crate::keys::VolumeKeys;

use super::capacity::{self, Capacity};
use super::content::{CipherSource, Content, MAX_FILE_SIZE};
use super::dir;
use super::error::{BackingResult, FsError};
use super::inode::{kind_of, Inode, InodeTable, ROOT};
use super::sys;
use super::LockCause;

/// Who asks for a new file, directory or link: it will own it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The attribute changes of one `setattr`.
#[derive(Debug, Default)]
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// One entry of a directory listing, ready for the kernel.
#[derive(Debug, Clone)]
pub(crate) struct ListEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

struct OpenFile {
    inode: Arc<Inode>,
    file: File,
}

struct OpenDir {
    inode: Arc<Inode>,
    entries: Mutex<Arc<Vec<ListEntry>>>,
}

enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<OpenDir>),
}

/// Permission bits a caller may set (`S_ISUID`, `S_ISGID`, sticky and rwx).
const PERM_MASK: u32 = 0o7777;

/// The mounted view of one volume.
pub(crate) struct CryptFs {
    volume_id: String,
    read_only: bool,
    keys: RwLock<Option<Arc<VolumeKeys>>>,
    /// [`LockCause::code`] of the lock in force, 0 when the volume is not locked.
    lock: AtomicU8,
    inodes: InodeTable,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    capacity: Capacity,
}

/// What `statfs` reports: the volume's capacity and usage when it has a limit, in 4 KiB blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VolumeStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// Per-file ciphers come from the inode's cache.
struct InodeCiphers<'a> {
    inode: &'a Inode,
    keys: &'a VolumeKeys,
}

impl CipherSource for InodeCiphers<'_> {
    fn cipher(&self, file_id: &FileId) -> Result<Arc<BlockCipher>, FsError> {
        Ok(self.inode.cipher(self.keys, file_id))
    }
}

impl CryptFs {
    /// Opens the encrypted view of `backing_dir`, whose `.cvdir` must already exist.
    pub(crate) fn new(
        backing_dir: &Path,
        keys: Arc<VolumeKeys>,
        volume_id: String,
        read_only: bool,
    ) -> Result<Self, FsError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(backing_dir, flags, Mode::empty()).op("open")?;
        let st = sys::stat(root.as_fd())?;
        let dir_id = dir::read_dir_id(root.as_fd(), st.st_ino)?;
        let used = capacity::scan(backing_dir)?;
        Ok(CryptFs {
            volume_id,
            read_only,
            keys: RwLock::new(Some(keys)),
            lock: AtomicU8::new(0),
            inodes: InodeTable::new(root, &st, dir_id),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            capacity: Capacity::new(used),
        })
    }

    /// The volume id, for logs.
    pub(crate) fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Drops the volume keys and every cached per-file key. Later operations fail with
    /// [`FsError::Locked`]; handles keep working only for metadata.
    pub(crate) fn drop_keys(&self) {
        self.keys.write().take();
        self.inodes.forget_ciphers();
    }

    /// Locks the volume: every later request is answered with `cause`'s errno, and the keys are
    /// dropped. The lock is in force before the keys go, so no request sees [`FsError::Locked`].
    pub(crate) fn lock(&self, cause: LockCause) {
        self.lock.store(cause.code(), Ordering::SeqCst);
        self.drop_keys();
    }

    /// Serves the volume again with `keys` (the same data key, unwrapped again).
    pub(crate) fn unlock(&self, keys: Arc<VolumeKeys>) {
        *self.keys.write() = Some(keys);
        self.lock.store(0, Ordering::SeqCst);
    }

    /// The lock in force, if any.
    #[inline]
    pub(crate) fn lock_cause(&self) -> Option<LockCause> {
        LockCause::from_code(self.lock.load(Ordering::Relaxed))
    }

    /// The node ids the kernel currently knows (the root included).
    pub(crate) fn known_inodes(&self) -> Vec<u64> {
        self.inodes.ids()
    }

    /// Sets the capacity writes are checked against (`None`: no limit); takes effect at once.
    pub(crate) fn set_capacity(&self, bytes: Option<u64>) {
        self.capacity.set_limit(bytes);
    }

    /// `(capacity, usage)` in backing bytes.
    pub(crate) fn usage(&self) -> (Option<u64>, u64) {
        self.capacity.get()
    }

    /// Runs `change` on backing file `file` (whose inode lock the caller holds exclusively), which
    /// leaves the file `new_plain(old plaintext size)` bytes long. The backing bytes it will add are
    /// reserved first, so a change that would pass the capacity fails with ENOSPC before anything
    /// is written; afterwards the usage is set to what really changed. A file unlinked while open
    /// no longer counts (its space was given back at the unlink).
    fn charged<T>(
        &self,
        file: &File,
        new_plain: impl FnOnce(u64) -> u64,
        change: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let st = sys::stat(file.as_fd())?;
        if st.st_nlink == 0 {
            return change();
        }
        let before = st.st_size as u64;
        let plain = new_plain(plain_size_conservative(before));
        let predicted = if plain > MAX_FILE_SIZE { before } else { backing_size(plain) };
        let reserved = predicted.saturating_sub(before);
        self.capacity.reserve(reserved)?;
        let result = change();
        let after = sys::stat(file.as_fd()).map_or(predicted, |st| st.st_size as u64);
        self.capacity.settle(reserved, before, after);
        result
    }

    fn keys(&self) -> Result<Arc<VolumeKeys>, FsError> {
        self.keys.read().clone().ok_or(FsError::Locked)
    }

    // ---- attributes -------------------------------------------------------------------------

    fn attr_of(&self, ino: u64, st: &FileStat) -> FileAttr {
        let kind = kind_of(st.st_mode);
        let size = match kind {
            FileType::RegularFile => plain_size_conservative(st.st_size as u64),
            FileType::Symlink => symlink::target_len(st.st_size as u64).unwrap_or(0),
            FileType::Directory => st.st_size as u64,
            FileType::NamedPipe | FileType::Socket | FileType::CharDevice | FileType::BlockDevice => 0,
        };
        // `du` counts the plaintext a file holds, in 4 KiB blocks as ext4 would (every block of a
        // file is allocated), not the backing store's slightly larger ciphertext.
        let blocks = match kind {
            FileType::RegularFile => size.div_ceil(4096) * 8,
            _ => st.st_blocks as u64,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: system_time(st.st_atime, st.st_atime_nsec),
            mtime: system_time(st.st_mtime, st.st_mtime_nsec),
            ctime: system_time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind,
            perm: (st.st_mode & PERM_MASK) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, inode: &Inode) -> Result<FileAttr, FsError> {
        let moved = inode.moved();
        let fd = moved.as_deref().map_or(inode.fd.as_fd(), AsFd::as_fd);
        Ok(self.attr_of(inode.ino, &sys::stat(fd)?))
    }

    /// Adds backing object `fd` to the inode table (one kernel reference) and returns its attributes.
    fn remember(&self, fd: OwnedFd) -> Result<FileAttr, FsError> {
        let st = sys::stat(fd.as_fd())?;
        let inode = self.inodes.remember(fd, &st)?;
        Ok(self.attr_of(inode.ino, &st))
    }

    /// Attributes of inode `ino`.
    pub(crate) fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        self.attr(&*self.inodes.get(ino)?)
    }

    // ---- names ------------------------------------------------------------------------------

    fn backing_name(&self, parent: &Inode, name: &OsStr) -> Result<BackingName, FsError> {
        let keys = self.keys()?;
        dir::encrypt_name(&NameCipher::new(keys.names()), parent.dir_id()?, name)
    }

    /// Looks up `name` in directory `parent`; counts a kernel reference on success.
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let fd = sys::open_path(parent.fd.as_fd(), OsStr::new(backing.entry()))?;
        let attr = self.remember(fd)?;
        if attr.kind == FileType::Symlink {
            self.inodes.get(attr.ino.0)?.bind_link(parent.dir_id()?, name.as_bytes());
        }
        Ok(attr)
    }

    /// Drops `count` kernel references to `ino`.
    pub(crate) fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    /// Owner of a new object in `parent`: the caller, or the directory's group when it is setgid.
    fn new_owner(&self, parent: &Inode, caller: Caller) -> Result<(Uid, Gid, bool), FsError> {
        let st = sys::stat(parent.fd.as_fd())?;
        let setgid = st.st_mode & libc::S_ISGID != 0;
        let gid = if setgid { st.st_gid } else { caller.gid };
        Ok((Uid::from_raw(caller.uid), Gid::from_raw(gid), setgid))
    }

    /// The plaintext target of symlink `ino`.
    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let keys = self.keys()?;
        let inode = self.inodes.get(ino)?;
        let moved = inode.moved();
        let fd = moved.as_deref().map_or(inode.fd.as_fd(), AsFd::as_fd);
        let stored = nix::fcntl::readlinkat(fd, "").op("readlinkat")?;
        let failed = FsError::SymlinkTarget { ino: inode.backing_ino };
        let binding = inode.link.lock().clone().ok_or(failed)?;
        let link = symlink::Link { dir_id: &binding.0, name: &binding.1 };
        symlink::decrypt_target(keys.symlinks(), link, stored.as_bytes())
            .map_err(|_| FsError::SymlinkTarget { ino: inode.backing_ino })
    }

    // ---- attributes changes -----------------------------------------------------------------

    /// Applies `set` to inode `ino` and returns the new attributes.
    pub(crate) fn setattr(&self, ino: u64, set: SetAttr) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let moved = inode.moved();
        let fd = moved.as_deref().map_or(inode.fd.as_fd(), AsFd::as_fd);
        if set.uid.is_some() || set.gid.is_some() {
            let (uid, gid) = (set.uid.map(Uid::from_raw), set.gid.map(Gid::from_raw));
            fchownat(fd, "", uid, gid, AtFlags::AT_EMPTY_PATH).op("fchownat")?;
        }
        if let Some(mode) = set.mode {
            let path = sys::proc_path(fd);
            let mode = Mode::from_bits_truncate(mode & PERM_MASK);
            fchmodat(AT_FDCWD, path.as_c_str(), mode, FchmodatFlags::FollowSymlink).op("fchmodat")?;
        }
        if let Some(size) = set.size {
            self.truncate(&inode, set.fh, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let path = sys::proc_path(fd);
            let (atime, mtime) = (time_spec(set.atime), time_spec(set.mtime));
            utimensat(AT_FDCWD, path.as_c_str(), &atime, &mtime, UtimensatFlags::FollowSymlink)
                .op("utimensat")?;
        }
        self.attr(&inode)
    }

    fn truncate(&self, inode: &Inode, fh: Option<u64>, size: u64) -> Result<(), FsError> {
        if inode.kind != FileType::RegularFile {
            return Err(FsError::Backing { op: "truncate", errno: Errno::EINVAL });
        }
        let keys = self.keys()?;
        let handle = fh.and_then(|fh| self.file_handle(fh).ok()).filter(|h| h.inode.ino == inode.ino);
        let reopened;
        let file = match &handle {
            Some(handle) => &handle.file,
            None => {
                reopened = sys::reopen(inode.fd.as_fd(), OFlag::O_RDWR)?;
                &reopened
            }
        };
        let _exclusive = inode.content.write();
        let ciphers = InodeCiphers { inode, keys: &keys };
        self.charged(file, |_| size, || Content::new(file, inode.backing_ino, &ciphers).set_len(size))
    }

    /// The volume's statistics: its capacity and usage when it has a limit (free space is also
    /// bounded by the backing store's), else the backing file system's own figures.
    pub(crate) fn statfs(&self) -> Result<VolumeStats, FsError> {
        let root = self.inodes.get(ROOT)?;
        let backing = fstatvfs(root.fd.as_fd()).op("fstatvfs")?;
        Ok(volume_stats(&backing, self.capacity.get()))
    }
}

impl std::fmt::Debug for CryptFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptFs").field("volume_id", &self.volume_id).finish_non_exhaustive()
    }
}

const STATFS_BLOCK: u64 = 4096;

fn volume_stats(backing: &Statvfs, (limit, used): (Option<u64>, u64)) -> VolumeStats {
    let frag = backing.fragment_size().max(1);
    let backing_avail = backing.blocks_available() * frag / STATFS_BLOCK;
    let (blocks, blocks_free, blocks_available) = match limit {
        Some(limit) => {
            let free = limit.saturating_sub(used) / STATFS_BLOCK;
            (limit / STATFS_BLOCK, free.min(backing_avail), free.min(backing_avail))
        }
        None => (
            backing.blocks() * frag / STATFS_BLOCK,
            backing.blocks_free() * frag / STATFS_BLOCK,
            backing_avail,
        ),
    };
    VolumeStats {
        block_size: STATFS_BLOCK as u32,
        blocks,
        blocks_free,
        blocks_available,
        files: backing.files(),
        files_free: backing.files_free(),
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn time_spec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(at)) => match at.duration_since(UNIX_EPOCH) {
            Ok(after) => TimeSpec::from_duration(after),
            Err(before) => {
                let before = before.duration();
                let (secs, nanos) = (before.as_secs() as i64, before.subsec_nanos() as i64);
                if nanos == 0 {
                    TimeSpec::new(-secs, 0)
                } else {
                    TimeSpec::new(-secs - 1, 1_000_000_000 - nanos)
                }
            }
        },
    }
}
