//! The encrypted file system in domain terms: every operation takes node ids, plaintext names and
//! byte ranges and returns attributes, data or an [`FsError`]. The FUSE adapter only decodes
//! requests, calls in here and encodes replies.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
};
use nix::sys::statvfs::{fstatvfs, Statvfs};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use parking_lot::{Mutex, RwLock};

use crate::cipher::content::{plain_size_conservative, BlockCipher, FileId};
use crate::cipher::names::{BackingName, NameCipher};
use crate::cipher::{symlink, CipherError};
use crate::keys::VolumeKeys;

use super::content::{CipherSource, Content};
use super::dir::{self, DirEntry};
use super::error::{BackingResult, FsError};
use super::inode::{kind_of, Inode, InodeTable, ROOT};
use super::sys;

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
    inodes: InodeTable,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
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
        Ok(CryptFs {
            volume_id,
            read_only,
            keys: RwLock::new(Some(keys)),
            inodes: InodeTable::new(root, &st, dir_id),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
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
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: st.st_blocks as u64,
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
        Ok(self.attr_of(inode.ino, &sys::stat(inode.fd.as_fd())?))
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
        self.remember(fd)
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

    /// Removes a just-created entry after a later step failed (best effort: the error that
    /// caused the cleanup is what gets reported).
    fn undo_create(&self, parent: &Inode, name: &BackingName, flags: UnlinkatFlags) {
        let _ = unlinkat(parent.fd.as_fd(), name.entry(), flags);
        let _ = dir::remove_side_file(parent.fd.as_fd(), name);
    }

    /// Creates and opens regular file `name` in `parent`.
    pub(crate) fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<(FileAttr, u64), FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let file = self.create_file(&parent, &backing, mode, caller)?;
        let opened = (|| {
            let path_fd = sys::open_path(parent.fd.as_fd(), OsStr::new(backing.entry()))?;
            let attr = self.remember(path_fd)?;
            Ok((attr, self.inodes.get(attr.ino.0)?))
        })();
        let (attr, inode) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                self.undo_create(&parent, &backing, UnlinkatFlags::NoRemoveDir);
                return Err(err);
            }
        };
        let fh = self.insert_handle(Handle::File(Arc::new(OpenFile { inode, file })));
        Ok((attr, fh))
    }

    fn create_file(
        &self,
        parent: &Inode,
        name: &BackingName,
        mode: u32,
        caller: Caller,
    ) -> Result<File, FsError> {
        let (uid, gid, _) = self.new_owner(parent, caller)?;
        dir::create_side_file(parent.fd.as_fd(), name)?;
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let created = openat(parent.fd.as_fd(), name.entry(), flags, Mode::from_bits_truncate(0o600));
        let fd = match created.op("openat") {
            Ok(fd) => fd,
            Err(err) => {
                if matches!(err, FsError::Backing { errno, .. } if errno != Errno::EEXIST) {
                    let _ = dir::remove_side_file(parent.fd.as_fd(), name);
                }
                return Err(err);
            }
        };
        // Ownership first: chown clears set-id bits, which the chmod then sets as asked.
        let owned = fchown(&fd, Some(uid), Some(gid))
            .op("fchown")
            .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(mode & PERM_MASK)).op("fchmod"));
        if let Err(err) = owned {
            self.undo_create(parent, name, UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        Ok(File::from(fd))
    }

    /// Creates a regular file, FIFO or socket. Device nodes are refused.
    pub(crate) fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<FileAttr, FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                drop(self.create_file(&parent, &backing, mode, caller)?);
                return self.adopt(&parent, &backing, UnlinkatFlags::NoRemoveDir);
            }
            libc::S_IFIFO => SFlag::S_IFIFO,
            libc::S_IFSOCK => SFlag::S_IFSOCK,
            _ => return Err(FsError::DeviceNode),
        };
        let (uid, gid, _) = self.new_owner(&parent, caller)?;
        dir::create_side_file(parent.fd.as_fd(), &backing)?;
        let made = mknodat(parent.fd.as_fd(), backing.entry(), kind, Mode::from_bits_truncate(0o600), 0)
            .op("mknodat");
        if let Err(err) = made {
            let _ = dir::remove_side_file(parent.fd.as_fd(), &backing);
            return Err(err);
        }
        let owned =
            fchownat(parent.fd.as_fd(), backing.entry(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .op("fchownat")
                .and_then(|()| {
                    let perm = Mode::from_bits_truncate(mode & PERM_MASK);
                    fchmodat(parent.fd.as_fd(), backing.entry(), perm, FchmodatFlags::NoFollowSymlink)
                        .op("fchmodat")
                });
        if let Err(err) = owned {
            self.undo_create(&parent, &backing, UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        self.adopt(&parent, &backing, UnlinkatFlags::NoRemoveDir)
    }

    /// Opens a just-created entry into the inode table; removes it again if that fails.
    fn adopt(&self, parent: &Inode, name: &BackingName, undo: UnlinkatFlags) -> Result<FileAttr, FsError> {
        let adopted =
            sys::open_path(parent.fd.as_fd(), OsStr::new(name.entry())).and_then(|fd| self.remember(fd));
        if adopted.is_err() {
            self.undo_create(parent, name, undo);
        }
        adopted
    }

    /// Creates directory `name` in `parent`. The directory is built under a hidden temporary
    /// name with its id already written, then renamed into place, so it is never visible
    /// without its id.
    pub(crate) fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<FileAttr, FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let (uid, gid, setgid) = self.new_owner(&parent, caller)?;
        let mut perm = mode & PERM_MASK;
        if setgid {
            perm |= libc::S_ISGID;
        }
        let tmp = sys::temp_name()?;
        mkdirat(parent.fd.as_fd(), tmp.as_c_str(), Mode::from_bits_truncate(0o700)).op("mkdirat")?;
        let built = (|| {
            let tmp_fd = sys::open_path(parent.fd.as_fd(), sys::os(&tmp))?;
            dir::write_dir_id(tmp_fd.as_fd(), &dir::new_dir_id()?)?;
            fchownat(parent.fd.as_fd(), tmp.as_c_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .op("fchownat")?;
            let perm = Mode::from_bits_truncate(perm);
            fchmodat(parent.fd.as_fd(), tmp.as_c_str(), perm, FchmodatFlags::FollowSymlink).op("fchmodat")?;
            dir::create_side_file(parent.fd.as_fd(), &backing)?;
            let renamed = renameat2(
                parent.fd.as_fd(),
                tmp.as_c_str(),
                parent.fd.as_fd(),
                backing.entry(),
                RenameFlags::RENAME_NOREPLACE,
            );
            if let Err(errno) = renamed {
                if errno != Errno::EEXIST {
                    let _ = dir::remove_side_file(parent.fd.as_fd(), &backing);
                }
                return Err(FsError::Backing { op: "renameat2", errno });
            }
            Ok(tmp_fd)
        })();
        match built {
            Ok(fd) => {
                let attr = self.remember(fd);
                if attr.is_err() {
                    self.remove_dir_entry(&parent, &backing);
                }
                attr
            }
            Err(err) => {
                if let Ok(tmp_fd) = sys::open_path(parent.fd.as_fd(), sys::os(&tmp)) {
                    let _ = dir::remove_dir_id(tmp_fd.as_fd());
                }
                let _ = unlinkat(parent.fd.as_fd(), tmp.as_c_str(), UnlinkatFlags::RemoveDir);
                Err(err)
            }
        }
    }

    /// Best-effort removal of an empty directory this file system just made.
    fn remove_dir_entry(&self, parent: &Inode, name: &BackingName) {
        if let Ok(fd) = sys::open_path(parent.fd.as_fd(), OsStr::new(name.entry())) {
            let _ = dir::remove_dir_id(fd.as_fd());
        }
        self.undo_create(parent, name, UnlinkatFlags::RemoveDir);
    }

    /// Creates symlink `name` in `parent` pointing at `target`.
    pub(crate) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<FileAttr, FsError> {
        let keys = self.keys()?;
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let encoded = symlink::encrypt_target(keys.symlinks(), target.as_os_str().as_bytes()).map_err(
            |err| match err {
                CipherError::TargetTooLong => FsError::TargetTooLong,
                CipherError::EmptyTarget => FsError::Backing { op: "symlink", errno: Errno::ENOENT },
                CipherError::Random(_) => FsError::Random,
                CipherError::Authentication
                | CipherError::Malformed
                | CipherError::InvalidName
                | CipherError::NameTooLong
                | CipherError::BlockTooLong => FsError::InvalidName,
            },
        )?;
        let (uid, gid, _) = self.new_owner(&parent, caller)?;
        dir::create_side_file(parent.fd.as_fd(), &backing)?;
        if let Err(errno) = symlinkat(encoded.as_str(), parent.fd.as_fd(), backing.entry()) {
            if errno != Errno::EEXIST {
                let _ = dir::remove_side_file(parent.fd.as_fd(), &backing);
            }
            return Err(FsError::Backing { op: "symlinkat", errno });
        }
        let owned =
            fchownat(parent.fd.as_fd(), backing.entry(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .op("fchownat");
        if let Err(err) = owned {
            self.undo_create(&parent, &backing, UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        self.adopt(&parent, &backing, UnlinkatFlags::NoRemoveDir)
    }

    /// The plaintext target of symlink `ino`.
    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let keys = self.keys()?;
        let inode = self.inodes.get(ino)?;
        let stored = nix::fcntl::readlinkat(inode.fd.as_fd(), "").op("readlinkat")?;
        symlink::decrypt_target(keys.symlinks(), stored.as_bytes())
            .map_err(|_| FsError::SymlinkTarget { ino: inode.backing_ino })
    }

    /// Adds hard link `name` in `parent` to inode `ino`.
    pub(crate) fn link(&self, ino: u64, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        dir::create_side_file(parent.fd.as_fd(), &backing)?;
        let source = sys::proc_path(inode.fd.as_fd());
        let linked = linkat(
            AT_FDCWD,
            source.as_c_str(),
            parent.fd.as_fd(),
            backing.entry(),
            AtFlags::AT_SYMLINK_FOLLOW,
        );
        if let Err(errno) = linked {
            if errno != Errno::EEXIST {
                let _ = dir::remove_side_file(parent.fd.as_fd(), &backing);
            }
            return Err(FsError::Backing { op: "linkat", errno });
        }
        let inode = self.inodes.bump(inode.ino)?;
        self.attr(&inode)
    }

    /// Removes non-directory `name` from `parent`.
    pub(crate) fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        unlinkat(parent.fd.as_fd(), backing.entry(), UnlinkatFlags::NoRemoveDir).op("unlinkat")?;
        dir::remove_side_file(parent.fd.as_fd(), &backing)
    }

    /// Removes empty directory `name` from `parent`.
    pub(crate) fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        let fd = sys::open_path(parent.fd.as_fd(), OsStr::new(backing.entry()))?;
        self.clear_empty_dir(&fd, || {
            unlinkat(parent.fd.as_fd(), backing.entry(), UnlinkatFlags::RemoveDir).op("unlinkat")
        })?;
        dir::remove_side_file(parent.fd.as_fd(), &backing)
    }

    /// Runs `remove` (which removes or replaces directory `fd`) after taking away the directory's
    /// id file, provided it holds no entries; puts the id back if `remove` fails.
    fn clear_empty_dir(
        &self,
        fd: &OwnedFd,
        remove: impl FnOnce() -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let st = sys::stat(fd.as_fd())?;
        if kind_of(st.st_mode) != FileType::Directory {
            return Err(FsError::Backing { op: "rmdir", errno: Errno::ENOTDIR });
        }
        if !dir::is_empty(fd.as_fd())? {
            return Err(FsError::NotEmpty);
        }
        let id = dir::read_dir_id(fd.as_fd(), st.st_ino).ok();
        if id.is_some() {
            dir::remove_dir_id(fd.as_fd())?;
        }
        let removed = remove();
        if removed.is_err() {
            if let Some(id) = id {
                let _ = dir::write_dir_id(fd.as_fd(), &id);
            }
        }
        removed
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, with `renameat2` flags.
    pub(crate) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        let flags = RenameFlags::from_bits(flags)
            .filter(|f| !f.contains(RenameFlags::RENAME_WHITEOUT))
            .ok_or(FsError::Backing { op: "renameat2", errno: Errno::EINVAL })?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let from_dir = self.inodes.get(parent)?;
        let to_dir = self.inodes.get(new_parent)?;
        let from = self.backing_name(&from_dir, name)?;
        let to = self.backing_name(&to_dir, new_name)?;
        if from_dir.ino == to_dir.ino && from == to {
            // Renaming an entry onto itself changes nothing, as POSIX requires.
            return sys::open_path(from_dir.fd.as_fd(), OsStr::new(from.entry())).map(drop);
        }

        let source = sys::open_path(from_dir.fd.as_fd(), OsStr::new(from.entry()))?;
        let source_is_dir = kind_of(sys::stat(source.as_fd())?.st_mode) == FileType::Directory;
        let target = match sys::open_path(to_dir.fd.as_fd(), OsStr::new(to.entry())) {
            Ok(fd) => Some(fd),
            Err(FsError::Backing { errno: Errno::ENOENT, .. }) => None,
            Err(err) => return Err(err),
        };
        dir::create_side_file(to_dir.fd.as_fd(), &to)?;

        let do_rename = || {
            renameat2(from_dir.fd.as_fd(), from.entry(), to_dir.fd.as_fd(), to.entry(), flags).op("renameat2")
        };
        let target_is_dir = match &target {
            Some(fd) => kind_of(sys::stat(fd.as_fd())?.st_mode) == FileType::Directory,
            None => false,
        };
        let renamed = match &target {
            // Replacing a directory: the backing one holds its id file, so it only becomes
            // removable once that is gone, and only when it holds nothing else.
            Some(fd) if source_is_dir && target_is_dir && !exchange => self.clear_empty_dir(fd, do_rename),
            Some(_) | None => do_rename(),
        };
        if let Err(err) = renamed {
            if target.is_none() {
                let _ = dir::remove_side_file(to_dir.fd.as_fd(), &to);
            }
            return Err(err);
        }
        // After a plain rename the old name is gone (unless it was a hard link of the target,
        // which POSIX leaves in place); after an exchange both names still exist.
        let old_name_left = sys::open_path(from_dir.fd.as_fd(), OsStr::new(from.entry())).is_ok();
        if !exchange && !old_name_left {
            dir::remove_side_file(from_dir.fd.as_fd(), &from)?;
        }
        Ok(())
    }

    // ---- attributes changes -----------------------------------------------------------------

    /// Applies `set` to inode `ino` and returns the new attributes.
    pub(crate) fn setattr(&self, ino: u64, set: SetAttr) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        if set.uid.is_some() || set.gid.is_some() {
            let (uid, gid) = (set.uid.map(Uid::from_raw), set.gid.map(Gid::from_raw));
            fchownat(inode.fd.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH).op("fchownat")?;
        }
        if let Some(mode) = set.mode {
            let path = sys::proc_path(inode.fd.as_fd());
            let mode = Mode::from_bits_truncate(mode & PERM_MASK);
            fchmodat(AT_FDCWD, path.as_c_str(), mode, FchmodatFlags::FollowSymlink).op("fchmodat")?;
        }
        if let Some(size) = set.size {
            self.truncate(&inode, set.fh, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let path = sys::proc_path(inode.fd.as_fd());
            let (atime, mtime) = (time_spec(set.atime), time_spec(set.mtime));
            utimensat(
                AT_FDCWD,
                path.as_c_str(),
                &atime,
                &mtime,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
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
        Content::new(file, inode.backing_ino, &ciphers).set_len(size)
    }

    // ---- file I/O ---------------------------------------------------------------------------

    fn insert_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<OpenFile>, FsError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::File(file)) => Ok(Arc::clone(file)),
            Some(Handle::Dir(_)) | None => Err(FsError::UnknownHandle(fh)),
        }
    }

    fn dir_handle(&self, fh: u64) -> Result<Arc<OpenDir>, FsError> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(dir)) => Ok(Arc::clone(dir)),
            Some(Handle::File(_)) | None => Err(FsError::UnknownHandle(fh)),
        }
    }

    /// Opens regular file `ino`. The backing file is always opened read-write (a partial-block
    /// write must read the block it changes), or read-only on a read-only mount.
    pub(crate) fn open(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileType::RegularFile {
            return Err(FsError::Backing { op: "open", errno: Errno::EINVAL });
        }
        let flags = if self.read_only { OFlag::O_RDONLY } else { OFlag::O_RDWR };
        let file = sys::reopen(inode.fd.as_fd(), flags)?;
        Ok(self.insert_handle(Handle::File(Arc::new(OpenFile { inode, file }))))
    }

    /// Reads up to `size` bytes at `offset`.
    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let keys = self.keys()?;
        let handle = self.file_handle(fh)?;
        let inode = &*handle.inode;
        let _shared = inode.content.read();
        let ciphers = InodeCiphers { inode, keys: &keys };
        Content::new(&handle.file, inode.backing_ino, &ciphers).read(offset, size as usize)
    }

    /// Writes `data` at `offset`, or at end of file when `append` is set (`O_APPEND`).
    pub(crate) fn write(&self, fh: u64, offset: u64, data: &[u8], append: bool) -> Result<u32, FsError> {
        let keys = self.keys()?;
        let handle = self.file_handle(fh)?;
        let inode = &*handle.inode;
        let _exclusive = inode.content.write();
        let ciphers = InodeCiphers { inode, keys: &keys };
        let content = Content::new(&handle.file, inode.backing_ino, &ciphers);
        if append {
            content.append(data)?;
        } else {
            content.write(offset, data)?;
        }
        Ok(data.len() as u32)
    }

    /// Flushes a file's data (and metadata unless `datasync`) to the backing store.
    pub(crate) fn fsync(&self, fh: u64, datasync: bool) -> Result<(), FsError> {
        let handle = self.file_handle(fh)?;
        let synced = if datasync { handle.file.sync_data() } else { handle.file.sync_all() };
        synced.map_err(FsError::Io)
    }

    /// Checks that `fh` is open; this file system buffers nothing, so a flush has nothing to do.
    pub(crate) fn flush(&self, fh: u64) -> Result<(), FsError> {
        self.file_handle(fh).map(drop)
    }

    /// Closes a file or directory handle.
    pub(crate) fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    // ---- directories ------------------------------------------------------------------------

    /// Opens directory `ino` for listing.
    pub(crate) fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        inode.dir_id()?;
        let entries = Mutex::new(Arc::new(Vec::new()));
        Ok(self.insert_handle(Handle::Dir(Arc::new(OpenDir { inode, entries }))))
    }

    /// The listing of open directory `fh` from position `offset`. Offset 0 (a fresh or rewound
    /// stream) reads and decrypts the directory; later offsets page through that snapshot.
    pub(crate) fn readdir(&self, fh: u64, offset: u64) -> Result<(Arc<Vec<ListEntry>>, usize), FsError> {
        let handle = self.dir_handle(fh)?;
        let mut entries = handle.entries.lock();
        if offset == 0 {
            *entries = Arc::new(self.list(&handle.inode)?);
        }
        Ok((Arc::clone(&entries), offset as usize))
    }

    fn list(&self, dir: &Inode) -> Result<Vec<ListEntry>, FsError> {
        let keys = self.keys()?;
        let decrypted =
            dir::list(dir.fd.as_fd(), dir.backing_ino, dir.dir_id()?, &NameCipher::new(keys.names()))?;
        let parent_ino = if dir.ino == ROOT {
            ROOT
        } else {
            let st = fstatat(dir.fd.as_fd(), "..", AtFlags::AT_SYMLINK_NOFOLLOW).op("fstatat")?;
            self.inodes.node_id(st.st_ino)
        };
        let mut entries = Vec::with_capacity(decrypted.len() + 2);
        entries.push(ListEntry { ino: dir.ino, kind: FileType::Directory, name: ".".into() });
        entries.push(ListEntry { ino: parent_ino, kind: FileType::Directory, name: "..".into() });
        for DirEntry { name, backing_ino, kind } in decrypted {
            let ino = self.inodes.node_id(backing_ino);
            entries.push(ListEntry { ino, kind, name: OsString::from(std::ffi::OsStr::from_bytes(&name)) });
        }
        Ok(entries)
    }

    /// Statistics of the backing file system.
    pub(crate) fn statfs(&self) -> Result<Statvfs, FsError> {
        let root = self.inodes.get(ROOT)?;
        fstatvfs(root.fd.as_fd()).op("fstatvfs")
    }
}

impl std::fmt::Debug for CryptFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptFs").field("volume_id", &self.volume_id).finish_non_exhaustive()
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
