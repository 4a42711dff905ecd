//! Extended attributes: all of a file's or directory's attributes form one record, sealed and
//! bound to its backing inode (`cipher::xattr`) and kept in the backing extended attribute
//! `user.cryptvol`, absent while there are none (docs/FORMAT.md).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileType;
use nix::errno::Errno;

use super::CryptFs;
use crate::cipher::xattr::{self, Attributes, MAX_SEALED_LEN};
use crate::fs::error::FsError;
use crate::fs::inode::Inode;
use crate::fs::sys;
use crate::keys::VolumeKeys;

/// The backing extended attribute holding the sealed record.
const BACKING_ATTR: &CStr = c"user.cryptvol";

/// `setxattr` flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

impl CryptFs {
    /// The value of attribute `name` of inode `ino`. The first access to an inode reads its
    /// record; later ones (such as the kernel's `security.capability` check before writes) are
    /// answered from memory, and an object this mount created starts with none.
    pub(crate) fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let inode = self.inodes.get(ino)?;
        if !holds_attributes(&inode) {
            return Err(FsError::NoAttribute);
        }
        let attrs = self.attributes(&inode, &*self.keys()?)?;
        attrs.get(name.as_bytes()).cloned().ok_or(FsError::NoAttribute)
    }

    /// The attribute names of inode `ino`, each followed by a NUL byte.
    pub(crate) fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inodes.get(ino)?;
        if !holds_attributes(&inode) {
            return Ok(Vec::new());
        }
        let attrs = self.attributes(&inode, &*self.keys()?)?;
        let mut names = Vec::new();
        for name in attrs.keys() {
            names.extend_from_slice(name);
            names.push(0);
        }
        Ok(names)
    }

    /// Sets attribute `name` of inode `ino` to `value`, honouring `XATTR_CREATE`/`XATTR_REPLACE`.
    pub(crate) fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<(), FsError> {
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(FsError::Backing { op: "setxattr", errno: Errno::EINVAL });
        }
        let name = checked_name(name)?;
        self.change_attributes(ino, |attrs| {
            match (attrs.contains_key(name), flags) {
                (true, XATTR_CREATE) => return Err(FsError::AttributeExists),
                (false, XATTR_REPLACE) => return Err(FsError::NoAttribute),
                _ => {}
            }
            attrs.insert(name.to_vec(), value.to_vec());
            Ok(())
        })
    }

    /// Removes attribute `name` of inode `ino`.
    pub(crate) fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let name = checked_name(name)?;
        self.change_attributes(ino, |attrs| attrs.remove(name).map(drop).ok_or(FsError::NoAttribute))
    }

    fn change_attributes(
        &self,
        ino: u64,
        change: impl FnOnce(&mut Attributes) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let keys = self.keys()?;
        let inode = self.inodes.get(ino)?;
        if !holds_attributes(&inode) {
            // Linux itself refuses `user.` attributes on other objects; the rest are not stored.
            return Err(FsError::Backing { op: "setxattr", errno: Errno::EPERM });
        }
        let mut cached = inode.xattrs.lock();
        let mut attrs = match &*cached {
            Some(attrs) => Attributes::clone(attrs),
            None => self.read_attributes(&inode, &keys)?,
        };
        change(&mut attrs)?;
        if attrs.is_empty() {
            remove_record(inode.fd.as_fd())?;
        } else {
            let sealed = xattr::seal(keys.xattrs(), inode.backing_ino, &attrs)
                .map_err(|_| FsError::Random)?
                .ok_or(FsError::XattrTooLarge)?;
            write_record(inode.fd.as_fd(), &sealed)?;
        }
        *cached = Some(Arc::new(attrs));
        Ok(())
    }

    /// The attributes of `inode`, from the cache or read and opened once.
    fn attributes(&self, inode: &Inode, keys: &VolumeKeys) -> Result<Arc<Attributes>, FsError> {
        let mut cached = inode.xattrs.lock();
        if let Some(attrs) = &*cached {
            return Ok(Arc::clone(attrs));
        }
        let attrs = Arc::new(self.read_attributes(inode, keys)?);
        *cached = Some(Arc::clone(&attrs));
        Ok(attrs)
    }

    fn read_attributes(&self, inode: &Inode, keys: &VolumeKeys) -> Result<Attributes, FsError> {
        match read_record(inode.fd.as_fd(), inode.backing_ino)? {
            None => Ok(Attributes::new()),
            Some(sealed) => xattr::open(keys.xattrs(), inode.backing_ino, &sealed)
                .map_err(|_| FsError::XattrRecord { ino: inode.backing_ino }),
        }
    }
}

/// Regular files and directories hold attributes; the kernel refuses `user.` attributes on
/// anything else, and the backing store cannot hold them there either.
fn holds_attributes(inode: &Inode) -> bool {
    matches!(inode.kind, FileType::RegularFile | FileType::Directory)
}

fn checked_name(name: &OsStr) -> Result<&[u8], FsError> {
    let name = name.as_bytes();
    match name.len() {
        0 => Err(FsError::Backing { op: "setxattr", errno: Errno::EINVAL }),
        1..=xattr::MAX_NAME_LEN => Ok(name),
        _ => Err(FsError::Backing { op: "setxattr", errno: Errno::ERANGE }),
    }
}

fn read_record(fd: BorrowedFd<'_>, ino: u64) -> Result<Option<Vec<u8>>, FsError> {
    let path = sys::proc_path(fd);
    let mut buf = vec![0u8; MAX_SEALED_LEN];
    // SAFETY: `path` and the name are NUL-terminated strings; `buf` is valid for writes of
    // `buf.len()` bytes, which is the size passed.
    let len =
        unsafe { libc::getxattr(path.as_ptr(), BACKING_ATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len >= 0 {
        buf.truncate(len as usize);
        return Ok(Some(buf));
    }
    match Errno::last() {
        // No record, or a backing store without extended attributes: no attributes.
        Errno::ENODATA | Errno::EOPNOTSUPP => Ok(None),
        // Longer than any record this format writes.
        Errno::ERANGE => Err(FsError::XattrRecord { ino }),
        errno => Err(FsError::Backing { op: "getxattr", errno }),
    }
}

fn write_record(fd: BorrowedFd<'_>, sealed: &[u8]) -> Result<(), FsError> {
    let path = sys::proc_path(fd);
    // SAFETY: `path` and the name are NUL-terminated strings; `sealed` is valid for reads of
    // `sealed.len()` bytes, which is the size passed.
    let rc = unsafe {
        libc::setxattr(path.as_ptr(), BACKING_ATTR.as_ptr(), sealed.as_ptr().cast(), sealed.len(), 0)
    };
    if rc == 0 {
        return Ok(());
    }
    match Errno::last() {
        // The backing file system has no room for the record (ext4 keeps one block per inode).
        Errno::ENOSPC | Errno::E2BIG => Err(FsError::XattrTooLarge),
        errno => Err(FsError::Backing { op: "setxattr", errno }),
    }
}

fn remove_record(fd: BorrowedFd<'_>) -> Result<(), FsError> {
    let path = sys::proc_path(fd);
    // SAFETY: `path` and the name are NUL-terminated strings.
    let rc = unsafe { libc::removexattr(path.as_ptr(), BACKING_ATTR.as_ptr()) };
    match rc {
        0 => Ok(()),
        _ => match Errno::last() {
            Errno::ENODATA => Ok(()),
            errno => Err(FsError::Backing { op: "removexattr", errno }),
        },
    }
}
