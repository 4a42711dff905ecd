//! File and directory handles: open, read, write, sync, list and release.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::FileType;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::fstatat;
use parking_lot::Mutex;

use super::{CryptFs, Handle, InodeCiphers, ListEntry, OpenDir, OpenFile};
use crate::cipher::content::plain_size_conservative;
use crate::cipher::names::NameCipher;
use crate::fs::content::Content;
use crate::fs::dir::{self, DirEntry};
use crate::fs::error::{BackingResult, FsError};
use crate::fs::inode::{Inode, ROOT};
use crate::fs::sys;

/// Most bytes one `copy_file_range` request copies.
const COPY_CHUNK: u64 = 64 << 20;
/// Bytes read and written per step of a copy.
const COPY_STEP: u64 = 1 << 20;

impl CryptFs {
    // ---- files ------------------------------------------------------------------------------

    pub(super) fn insert_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    pub(super) fn file_handle(&self, fh: u64) -> Result<Arc<OpenFile>, FsError> {
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
        let len = data.len() as u64;
        if append {
            self.charged(&handle.file, |old| old.saturating_add(len), || content.append(data))?;
        } else {
            let end = offset.saturating_add(len);
            self.charged(&handle.file, |old| old.max(end), || content.write(offset, data))?;
        }
        Ok(data.len() as u32)
    }

    /// `fallocate` mode 0 (grow to `offset + len`) or `FALLOC_FL_KEEP_SIZE` (reserve backing space);
    /// every other mode is refused with EOPNOTSUPP. Both are checked against the capacity.
    pub(crate) fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), FsError> {
        let keep_size = match mode {
            0 => false,
            libc::FALLOC_FL_KEEP_SIZE => true,
            _ => return Err(FsError::Backing { op: "fallocate", errno: Errno::EOPNOTSUPP }),
        };
        if len == 0 {
            return Err(FsError::Backing { op: "fallocate", errno: Errno::EINVAL });
        }
        let keys = self.keys()?;
        let handle = self.file_handle(fh)?;
        let inode = &*handle.inode;
        let _exclusive = inode.content.write();
        let ciphers = InodeCiphers { inode, keys: &keys };
        let content = Content::new(&handle.file, inode.backing_ino, &ciphers);
        let end = offset.saturating_add(len);
        // Keep-size reservations are checked as if the file grew, but not counted afterwards:
        // the usage is the backing sizes (docs/SEMANTICS.md).
        self.charged(&handle.file, |old| old.max(end), || content.allocate(offset, len, keep_size))
    }

    /// `copy_file_range`: copies up to `len` bytes (at most [`COPY_CHUNK`] per call; callers loop)
    /// by decrypting from `fh_in` and encrypting into `fh_out` under the target's own file
    /// identity, through the ordinary read and write paths. Returns the bytes copied, fewer at the
    /// end of the source.
    pub(crate) fn copy_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, FsError> {
        let mut copied = 0u64;
        let len = len.min(COPY_CHUNK);
        while copied < len {
            let step = (len - copied).min(COPY_STEP) as u32;
            let data = self.read(fh_in, offset_in + copied, step)?;
            if data.is_empty() {
                break;
            }
            self.write(fh_out, offset_out + copied, &data, false)?;
            copied += data.len() as u64;
        }
        Ok(copied as u32)
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE`. Holes are stored as encrypted zero blocks, so the
    /// whole file is data: the next data is at `offset` and the next hole at the end of file;
    /// ENXIO at or past the end.
    pub(crate) fn seek_data(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, FsError> {
        let handle = self.file_handle(fh)?;
        let size = plain_size_conservative(handle.file.metadata().map_err(FsError::Io)?.len());
        let offset =
            u64::try_from(offset).map_err(|_| FsError::Backing { op: "lseek", errno: Errno::ENXIO })?;
        if offset >= size {
            return Err(FsError::Backing { op: "lseek", errno: Errno::ENXIO });
        }
        let found = match whence {
            libc::SEEK_DATA => offset,
            libc::SEEK_HOLE => size,
            _ => return Err(FsError::Backing { op: "lseek", errno: Errno::EINVAL }),
        };
        Ok(found as i64)
    }

    /// Flushes a file's data (and metadata unless `datasync`) to the backing store.
    pub(crate) fn fsync(&self, fh: u64, datasync: bool) -> Result<(), FsError> {
        let handle = self.file_handle(fh)?;
        let synced = if datasync { handle.file.sync_data() } else { handle.file.sync_all() };
        synced.map_err(FsError::Io)
    }

    /// Flushes the entries of directory `ino` (creations, renames, removals) to the backing store.
    pub(crate) fn fsyncdir(&self, ino: u64) -> Result<(), FsError> {
        let inode = self.inodes.get(ino)?;
        let dir = sys::reopen(inode.fd.as_fd(), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        dir.sync_all().map_err(FsError::Io)
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
}
