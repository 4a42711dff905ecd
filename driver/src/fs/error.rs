//! The errors of the encrypted file system and their one mapping to errno.

use std::path::PathBuf;

use nix::errno::Errno;

/// Why a file system operation, a mount or an unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call on the backing store failed; its errno is passed through.
    #[error("backing store: {op}: {errno}")]
    Backing {
        /// The system call.
        op: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// A content block failed authentication (tampered, moved, truncated or another key).
    #[error("content block {block} of inode {ino} failed authentication")]
    BlockAuthentication {
        /// The backing inode.
        ino: u64,
        /// The block index.
        block: u64,
    },
    /// A backing file's header is not a cryptvol file header.
    #[error("file header of inode {ino} is malformed")]
    FileHeader {
        /// The backing inode.
        ino: u64,
    },
    /// A backing file's size maps to no plaintext size.
    #[error("backing size {size} of inode {ino} is impossible for an encrypted file")]
    FileLayout {
        /// The backing inode.
        ino: u64,
        /// The backing size.
        size: u64,
    },
    /// A backing entry name does not decrypt in its directory.
    #[error("entry {entry:?} of directory inode {dir} failed to decrypt")]
    Name {
        /// The backing inode of the directory.
        dir: u64,
        /// The backing entry name (lossy UTF-8).
        entry: String,
    },
    /// A long-name side file is missing or does not belong to its entry.
    #[error("long-name side file of {entry:?} in directory inode {dir} is missing or wrong")]
    LongName {
        /// The backing inode of the directory.
        dir: u64,
        /// The backing entry name.
        entry: String,
    },
    /// A backing directory has no valid `.cvdir`.
    #[error("directory inode {ino} has no valid directory id")]
    DirId {
        /// The backing inode.
        ino: u64,
    },
    /// A symlink target failed to decode or authenticate.
    #[error("symlink target of inode {ino} failed to decrypt")]
    SymlinkTarget {
        /// The backing inode.
        ino: u64,
    },
    /// An extended attribute record failed to authenticate or parse (altered, moved from
    /// another file, or another key).
    #[error("extended attributes of inode {ino} failed to decrypt")]
    XattrRecord {
        /// The backing inode.
        ino: u64,
    },
    /// The extended attribute does not exist.
    #[error("no such attribute")]
    NoAttribute,
    /// The extended attribute exists and `XATTR_CREATE` was asked.
    #[error("attribute exists")]
    AttributeExists,
    /// The file's extended attributes would not fit in one record.
    #[error("no room for the extended attributes")]
    XattrTooLarge,
    /// A plaintext name is longer than 255 bytes.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A plaintext name is not a single path component.
    #[error("invalid name")]
    InvalidName,
    /// A symlink target is longer than the format stores.
    #[error("symlink target too long")]
    TargetTooLong,
    /// The request would make a file larger than the format's limit.
    #[error("file too large")]
    FileTooLarge,
    /// The change would take the volume past its capacity.
    #[error("the volume is full: the change would pass its capacity")]
    NoSpace,
    /// The kernel named an inode this file system does not know.
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// The kernel named a file handle this file system did not hand out.
    #[error("unknown file handle {0}")]
    UnknownHandle(u64),
    /// A directory still holds entries.
    #[error("directory not empty")]
    NotEmpty,
    /// Device nodes are refused: the backing store must never hold them.
    #[error("device nodes are not supported")]
    DeviceNode,
    /// The volume's keys were dropped by an unmount in progress. (A volume locked because its
    /// key was revoked answers with the lock's errno before reaching any operation.)
    #[error("the volume is locked: its keys were dropped")]
    Locked,
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// An I/O error on a backing file.
    #[error("backing file I/O: {0}")]
    Io(#[source] std::io::Error),
    /// `init_root` was given a directory that holds files but no volume root.
    #[error("{0} is not empty and holds no volume root")]
    NotAVolumeRoot(PathBuf),
    /// Mounting or unmounting failed.
    #[error("mount {path}: {source}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FsError {
    /// The errno reported to the kernel. Integrity failures are all EIO, never a partial answer.
    pub fn errno(&self) -> Errno {
        match self {
            FsError::Backing { errno, .. } => *errno,
            FsError::BlockAuthentication { .. }
            | FsError::FileHeader { .. }
            | FsError::FileLayout { .. }
            | FsError::Name { .. }
            | FsError::LongName { .. }
            | FsError::DirId { .. }
            | FsError::SymlinkTarget { .. }
            | FsError::XattrRecord { .. }
            | FsError::Random
            | FsError::Mount { .. } => Errno::EIO,
            FsError::NameTooLong | FsError::TargetTooLong => Errno::ENAMETOOLONG,
            FsError::InvalidName => Errno::EINVAL,
            FsError::FileTooLarge => Errno::EFBIG,
            FsError::NoSpace | FsError::XattrTooLarge => Errno::ENOSPC,
            FsError::NoAttribute => Errno::ENODATA,
            FsError::AttributeExists => Errno::EEXIST,
            FsError::UnknownInode(_) => Errno::ESTALE,
            FsError::UnknownHandle(_) => Errno::EBADF,
            FsError::NotEmpty | FsError::NotAVolumeRoot(_) => Errno::ENOTEMPTY,
            FsError::DeviceNode => Errno::EPERM,
            FsError::Locked => Errno::ENOKEY,
            FsError::Io(err) => err.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        }
    }

    /// What failed authentication, for the metrics; `None` for anything but integrity failures.
    pub fn integrity_kind(&self) -> Option<crate::metrics::AuthFailure> {
        use crate::metrics::AuthFailure;
        match self {
            FsError::BlockAuthentication { .. } => Some(AuthFailure::Block),
            FsError::FileHeader { .. } | FsError::FileLayout { .. } => Some(AuthFailure::FileHeader),
            FsError::Name { .. } | FsError::LongName { .. } => Some(AuthFailure::Name),
            FsError::DirId { .. } => Some(AuthFailure::DirId),
            FsError::SymlinkTarget { .. } => Some(AuthFailure::Symlink),
            FsError::XattrRecord { .. } => Some(AuthFailure::Xattr),
            FsError::Backing { .. }
            | FsError::NameTooLong
            | FsError::InvalidName
            | FsError::TargetTooLong
            | FsError::FileTooLarge
            | FsError::NoSpace
            | FsError::NoAttribute
            | FsError::AttributeExists
            | FsError::XattrTooLarge
            | FsError::UnknownInode(_)
            | FsError::UnknownHandle(_)
            | FsError::NotEmpty
            | FsError::DeviceNode
            | FsError::Locked
            | FsError::Random
            | FsError::Io(_)
            | FsError::NotAVolumeRoot(_)
            | FsError::Mount { .. } => None,
        }
    }

    /// True for failures that mean the backing store was altered or read with the wrong key:
    /// these are logged at error level, with the volume, the file and the block.
    pub fn is_integrity_failure(&self) -> bool {
        self.integrity_kind().is_some()
    }
}

/// Attaches the name of the failed system call to a nix error.
pub(crate) trait BackingResult<T> {
    fn op(self, op: &'static str) -> Result<T, FsError>;
}

impl<T> BackingResult<T> for nix::Result<T> {
    fn op(self, op: &'static str) -> Result<T, FsError> {
        self.map_err(|errno| FsError::Backing { op, errno })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_failures_are_eio() {
        let err = FsError::BlockAuthentication { ino: 5, block: 2 };
        assert_eq!(err.errno(), Errno::EIO);
        assert!(err.is_integrity_failure());
        assert_eq!(err.to_string(), "content block 2 of inode 5 failed authentication");
    }

    #[test]
    fn backing_errno_passes_through() {
        let err: Result<(), _> = Err::<(), _>(Errno::EEXIST).op("mkdirat");
        assert_eq!(err.unwrap_err().errno(), Errno::EEXIST);
        assert_eq!(FsError::NameTooLong.errno(), Errno::ENAMETOOLONG);
        assert_eq!(FsError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)).errno(), Errno::ENOSPC);
    }
}
