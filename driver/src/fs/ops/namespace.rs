//! Namespace operations: creating, linking, renaming and removing entries. Every new entry gets
//! its long-name side file before it appears, and its owner and mode before it is handed out.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{FileAttr, FileType};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, AtFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

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
        inode.starts_without_attributes();
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
                match &attr {
                    Ok(attr) => self.inodes.get(attr.ino.0)?.starts_without_attributes(),
                    Err(_) => self.remove_dir_entry(&parent, &backing),
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
        let link = symlink::Link { dir_id: parent.dir_id()?, name: name.as_bytes() };
        let encoded = symlink::encrypt_target(keys.symlinks(), link, target.as_os_str().as_bytes())
            .map_err(target_error)?;
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
        let attr = self.adopt(&parent, &backing, UnlinkatFlags::NoRemoveDir)?;
        self.inodes.get(attr.ino.0)?.bind_link(link.dir_id, link.name);
        Ok(attr)
    }

    /// Makes a copy of symlink `fd`, bound to `old`, with its target bound to `new` instead (a
    /// rename must re-encrypt it), under a temporary name in `new_parent`, with the owner and
    /// times of the original. Returns the temporary name.
    fn rebound_link(
        &self,
        fd: &OwnedFd,
        old: symlink::Link<'_>,
        new_parent: &Inode,
        new: symlink::Link<'_>,
    ) -> Result<CString, FsError> {
        let keys = self.keys()?;
        let st = sys::stat(fd.as_fd())?;
        let stored = nix::fcntl::readlinkat(fd.as_fd(), "").op("readlinkat")?;
        let target = symlink::decrypt_target(keys.symlinks(), old, stored.as_bytes())
            .map_err(|_| FsError::SymlinkTarget { ino: st.st_ino })?;
        let encoded = symlink::encrypt_target(keys.symlinks(), new, &target).map_err(target_error)?;
        let tmp = sys::temp_name()?;
        let dir = new_parent.fd.as_fd();
        symlinkat(encoded.as_str(), dir, tmp.as_c_str()).op("symlinkat")?;
        let copied = fchownat(
            dir,
            tmp.as_c_str(),
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .op("fchownat")
        .and_then(|()| {
            let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
            let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
            utimensat(dir, tmp.as_c_str(), &atime, &mtime, UtimensatFlags::NoFollowSymlink).op("utimensat")
        });
        if let Err(err) = copied {
            let _ = unlinkat(dir, tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        Ok(tmp)
    }

    fn follow_moved_link(&self, old_ino: u64, dir: &Inode, name: &BackingName, link: symlink::Link<'_>) {
        for inode in self.inodes.standing_for(old_ino) {
            if let Ok(fd) = sys::open_path(dir.fd.as_fd(), OsStr::new(name.entry())) {
                if let Ok(st) = sys::stat(fd.as_fd()) {
                    inode.move_link(fd, st.st_ino, link.dir_id, link.name);
                }
            }
        }
    }

    /// Adds hard link `name` in `parent` to inode `ino`.
    pub(crate) fn link(&self, ino: u64, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        if inode.kind == FileType::Symlink {
            // A symlink's target is bound to its one name (docs/SEMANTICS.md).
            return Err(FsError::Backing { op: "linkat", errno: Errno::EPERM });
        }
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
        let freed = last_link_size(parent.fd.as_fd(), backing.entry());
        unlinkat(parent.fd.as_fd(), backing.entry(), UnlinkatFlags::NoRemoveDir).op("unlinkat")?;
        self.capacity.release(freed);
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
        let source_stat = sys::stat(source.as_fd())?;
        let (source_is_dir, source_ino) =
            (kind_of(source_stat.st_mode) == FileType::Directory, source_stat.st_ino);
        let target = match sys::open_path(to_dir.fd.as_fd(), OsStr::new(to.entry())) {
            Ok(fd) => Some(fd),
            Err(FsError::Backing { errno: Errno::ENOENT, .. }) => None,
            Err(err) => return Err(err),
        };
        let target_stat = target.as_ref().map(|fd| sys::stat(fd.as_fd())).transpose()?;
        // A symlink that changes name gets its target re-encrypted for the new name: a copy is
        // made under a temporary name first and takes the old one's place.
        let (from_link, to_link) = (
            symlink::Link { dir_id: from_dir.dir_id()?, name: name.as_bytes() },
            symlink::Link { dir_id: to_dir.dir_id()?, name: new_name.as_bytes() },
        );
        let source_copy = match kind_of(source_stat.st_mode) {
            FileType::Symlink => Some(self.rebound_link(&source, from_link, &to_dir, to_link)?),
            _ => None,
        };
        let target_copy = match (&target, target_stat) {
            (Some(fd), Some(st)) if exchange && kind_of(st.st_mode) == FileType::Symlink => {
                match self.rebound_link(fd, to_link, &from_dir, from_link) {
                    Ok(tmp) => Some(tmp),
                    Err(err) => {
                        remove_temp(&to_dir, source_copy.as_ref());
                        return Err(err);
                    }
                }
            }
            _ => None,
        };
        if let Err(err) = dir::create_side_file(to_dir.fd.as_fd(), &to) {
            remove_temp(&to_dir, source_copy.as_ref());
            remove_temp(&from_dir, target_copy.as_ref());
            return Err(err);
        }

        let (from_fd, to_fd) = (from_dir.fd.as_fd(), to_dir.fd.as_fd());
        let do_rename = || {
            match (&source_copy, exchange) {
                (Some(copy), false) => {
                    renameat2(to_fd, copy.as_c_str(), to_fd, to.entry(), flags).op("renameat2")?;
                    unlinkat(from_fd, from.entry(), UnlinkatFlags::NoRemoveDir).op("unlinkat")?;
                }
                _ => {
                    renameat2(from_fd, from.entry(), to_fd, to.entry(), flags).op("renameat2")?;
                    if let Some(copy) = &source_copy {
                        renameat(to_fd, copy.as_c_str(), to_fd, to.entry()).op("renameat")?;
                    }
                    if let Some(copy) = &target_copy {
                        renameat(from_fd, copy.as_c_str(), from_fd, from.entry()).op("renameat")?;
                    }
                }
            }
            Ok(())
        };
        let target_is_dir = target_stat.is_some_and(|st| kind_of(st.st_mode) == FileType::Directory);
        // A regular file replaced through its last link gives its space back.
        let freed = match target_stat {
            Some(st) if !exchange && st.st_ino != source_ino && st.st_nlink == 1 && is_regular(&st) => {
                st.st_size as u64
            }
            Some(_) | None => 0,
        };
        let renamed = match &target {
            // Replacing a directory: the backing one holds its id file, so it only becomes
            // removable once that is gone, and only when it holds nothing else.
            Some(fd) if source_is_dir && target_is_dir && !exchange => self.clear_empty_dir(fd, do_rename),
            Some(_) | None => do_rename(),
        };
        if let Err(err) = renamed {
            remove_temp(&to_dir, source_copy.as_ref());
            remove_temp(&from_dir, target_copy.as_ref());
            if target.is_none() {
                let _ = dir::remove_side_file(to_dir.fd.as_fd(), &to);
            }
            return Err(err);
        }
        self.capacity.release(freed);
        // The kernel keeps the node ids of renamed symlinks until it looks their names up again:
        // point them at the re-encrypted copies.
        if source_copy.is_some() {
            self.follow_moved_link(source_stat.st_ino, &to_dir, &to, to_link);
        }
        if let (Some(_), Some(st)) = (&target_copy, target_stat) {
            self.follow_moved_link(st.st_ino, &from_dir, &from, from_link);
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

fn is_regular(st: &FileStat) -> bool {
    kind_of(st.st_mode) == FileType::RegularFile
}

/// The backing size of entry `name` of `dir` if it is a regular file's last link (what removing
/// it frees), else 0.
fn last_link_size(dir: BorrowedFd<'_>, name: &str) -> u64 {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_nlink == 1 && is_regular(&st) => st.st_size as u64,
        Ok(_) | Err(_) => 0,
    }
}

/// Removes a temporary entry this file system made in `dir` (best effort, after a failure).
fn remove_temp(dir: &Inode, name: Option<&CString>) {
    if let Some(name) = name {
        let _ = unlinkat(dir.fd.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir);
    }
}

fn target_error(err: CipherError) -> FsError {
    match err {
        CipherError::TargetTooLong => FsError::TargetTooLong,
        CipherError::EmptyTarget => FsError::Backing { op: "symlink", errno: Errno::ENOENT },
        CipherError::Random(_) => FsError::Random,
        CipherError::Authentication
        | CipherError::Malformed
        | CipherError::InvalidName
        | CipherError::NameTooLong
        | CipherError::BlockTooLong => FsError::InvalidName,
    }
}
