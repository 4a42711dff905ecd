//! Namespace operations: creating, linking, renaming and removing entries. Every new entry gets
//! its long-name side file before it appears, and its owner and mode before it is handed out.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{FileAttr, FileType};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{fchmod, fchmodat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, UnlinkatFlags};

use super::{Caller, CryptFs, Handle, OpenFile, PERM_MASK};
use crate::cipher::names::BackingName;
use crate::cipher::{symlink, CipherError};
use crate::fs::dir;
use crate::fs::error::{BackingResult, FsError};
use crate::fs::inode::{kind_of, Inode};
use crate::fs::sys;

impl CryptFs {
    /// Runs `make`, which creates entry `name` in `parent`, after writing a long name's side
    /// file. If `make` fails the side file goes again, unless the entry already existed (the side
    /// file is then that entry's own).
    fn make_entry<T>(
        &self,
        parent: &Inode,
        name: &BackingName,
        make: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        dir::create_side_file(parent.fd.as_fd(), name)?;
        let made = make();
        if let Err(err) = &made {
            if !matches!(err, FsError::Backing { errno: Errno::EEXIST, .. }) {
                let _ = dir::remove_side_file(parent.fd.as_fd(), name);
            }
        }
        made
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
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = self.make_entry(parent, name, || {
            openat(parent.fd.as_fd(), name.entry(), flags, Mode::from_bits_truncate(0o600)).op("openat")
        })?;
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
        self.make_entry(&parent, &backing, || {
            mknodat(parent.fd.as_fd(), backing.entry(), kind, Mode::from_bits_truncate(0o600), 0)
                .op("mknodat")
        })?;
        let owned =
            fchownat(parent.fd.as_fd(), backing.entry(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .op("fchownat")
                .and_then(|()| {
                    let perm = Mode::from_bits_truncate(mode & PERM_MASK);
                    // The entry is the FIFO or socket just made: there is no link to follow.
                    fchmodat(parent.fd.as_fd(), backing.entry(), perm, FchmodatFlags::FollowSymlink)
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
            self.make_entry(&parent, &backing, || {
                let (dir, noreplace) = (parent.fd.as_fd(), RenameFlags::RENAME_NOREPLACE);
                renameat2(dir, tmp.as_c_str(), dir, backing.entry(), noreplace).op("renameat2")
            })?;
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
        self.make_entry(&parent, &backing, || {
            symlinkat(encoded.as_str(), parent.fd.as_fd(), backing.entry()).op("symlinkat")
        })?;
        let owned =
            fchownat(parent.fd.as_fd(), backing.entry(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .op("fchownat");
        if let Err(err) = owned {
            self.undo_create(&parent, &backing, UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        self.adopt(&parent, &backing, UnlinkatFlags::NoRemoveDir)
    }

    /// Adds hard link `name` in `parent` to inode `ino`.
    pub(crate) fn link(&self, ino: u64, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let parent = self.inodes.get(parent)?;
        let backing = self.backing_name(&parent, name)?;
        // Following the /proc link of the O_PATH handle links the object itself, whatever its
        // type, without resolving any path on the backing store.
        let source = sys::proc_path(inode.fd.as_fd());
        self.make_entry(&parent, &backing, || {
            let follow = AtFlags::AT_SYMLINK_FOLLOW;
            linkat(AT_FDCWD, source.as_c_str(), parent.fd.as_fd(), backing.entry(), follow).op("linkat")
        })?;
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
}
