//! The fuser `Filesystem` adapter: decode a request, call [`CryptFs`], encode the reply.
//!
//! Each callback opens a span named for its operation class with the volume id and node id, and
//! every failure is logged once here, at error level when it means tampering or a wrong key.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::error::FsError;
use super::ops::{Caller, CryptFs, SetAttr};
use crate::metrics::FuseOp;

/// How long the kernel may cache attributes and entries. All changes go through this mount, so
/// the kernel's own bookkeeping keeps the cache right; the timeout bounds staleness when the
/// backing store is changed behind the mount.
const TTL: Duration = Duration::from_secs(1);

/// Largest read or write request the kernel is asked to send.
const MAX_REQUEST: u32 = 1 << 20;

/// Opens a callback: counts the operation, enters its span, or answers the lock's errno and
/// returns while the volume is locked.
macro_rules! begin {
    ($self:ident, $op:ident, $ino:expr, $reply:ident) => {
        match $self.begin(FuseOp::$op, $ino) {
            Ok(span) => span,
            Err(errno) => return $reply.error(errno),
        }
    };
}

/// Serves one [`CryptFs`] to the kernel.
#[derive(Debug)]
pub(crate) struct FuseAdapter {
    fs: Arc<CryptFs>,
}

impl FuseAdapter {
    pub(crate) fn new(fs: Arc<CryptFs>) -> Self {
        FuseAdapter { fs }
    }

    /// Counts operation `op`, opens its span, and refuses it with the lock's errno while the
    /// volume is locked (a revoked key): nothing of the volume is served until it is unlocked.
    fn begin(&self, op: FuseOp, ino: INodeNo) -> Result<tracing::span::EnteredSpan, Errno> {
        let metrics = crate::metrics::get();
        metrics.fuse_op(op);
        if let Some(cause) = self.fs.lock_cause() {
            metrics.fuse_error(op, cause.errno());
            return Err(Errno::from_i32(cause.errno()));
        }
        let op = op.as_str();
        Ok(tracing::debug_span!("fuse", op, volume_id = %self.fs.volume_id(), ino = ino.0).entered())
    }

    /// Logs a failure, counts it, and returns the errno to reply with.
    fn fail(&self, op: FuseOp, ino: INodeNo, err: FsError) -> Errno {
        let volume_id = self.fs.volume_id();
        let metrics = crate::metrics::get();
        let errno = err.errno() as i32;
        metrics.fuse_error(op, errno);
        if let Some(kind) = err.integrity_kind() {
            metrics.auth_failure(kind);
        }
        let op = op.as_str();
        if let FsError::BlockAuthentication { ino: file, block } = err {
            tracing::error!(volume_id, file, block, op, "content block failed authentication");
        } else if err.is_integrity_failure() {
            tracing::error!(volume_id, file = ino.0, op, error = %err, "integrity check failed");
        } else {
            tracing::debug!(volume_id, ino = ino.0, op, error = %err, "operation failed");
        }
        Errno::from_i32(errno)
    }

    /// An error reply decided here rather than by [`CryptFs`]; counted like the others.
    fn refuse(&self, op: FuseOp, errno: Errno) -> Errno {
        crate::metrics::get().fuse_error(op, errno.code());
        errno
    }

    fn reply_entry(
        &self,
        op: FuseOp,
        ino: INodeNo,
        result: Result<fuser::FileAttr, FsError>,
        reply: ReplyEntry,
    ) {
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(err) => reply.error(self.fail(op, ino, err)),
        }
    }

    fn reply_empty(&self, op: FuseOp, ino: INodeNo, result: Result<(), FsError>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(self.fail(op, ino, err)),
        }
    }
}

/// Open flags for the kernel: `O_DIRECT` opens bypass the page cache, and their writes inside
/// the file may run in parallel (the inode lock of [`CryptFs`] still orders them per block).
fn fopen_flags(open_flags: i32) -> FopenFlags {
    if open_flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

/// Answers a size query (`size` 0) with the length, else the data, or ERANGE when it does not fit.
fn reply_xattr(data: Vec<u8>, size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(&data);
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(nearest);
        }
        // Lookups and listings of one directory may run in parallel; changes stay serialized by
        // the kernel's directory lock.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = begin!(self, Lookup, parent, reply);
        let result = self.fs.lookup(parent.0, name);
        if let Err(FsError::Backing { errno: nix::errno::Errno::ENOENT, .. }) = result {
            return reply.error(self.refuse(FuseOp::Lookup, Errno::ENOENT));
        }
        self.reply_entry(FuseOp::Lookup, parent, result, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Housekeeping: served even while the volume is locked, so the kernel can let go.
        crate::metrics::get().fuse_op(FuseOp::Forget);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = begin!(self, Getattr, ino, reply);
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(self.fail(FuseOp::Getattr, ino, err)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = begin!(self, Setattr, ino, reply);
        let set = SetAttr { mode, uid, gid, size, atime, mtime, fh: fh.map(|fh| fh.0) };
        match self.fs.setattr(ino.0, set) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(self.fail(FuseOp::Setattr, ino, err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = begin!(self, Readlink, ino, reply);
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(err) => reply.error(self.fail(FuseOp::Readlink, ino, err)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = begin!(self, Mknod, parent, reply);
        self.reply_entry(FuseOp::Mknod, parent, self.fs.mknod(parent.0, name, mode, caller(req)), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let _span = begin!(self, Mkdir, parent, reply);
        self.reply_entry(FuseOp::Mkdir, parent, self.fs.mkdir(parent.0, name, mode, caller(req)), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = begin!(self, Unlink, parent, reply);
        self.reply_empty(FuseOp::Unlink, parent, self.fs.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = begin!(self, Rmdir, parent, reply);
        self.reply_empty(FuseOp::Rmdir, parent, self.fs.rmdir(parent.0, name), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _span = begin!(self, Symlink, parent, reply);
        self.reply_entry(
            FuseOp::Symlink,
            parent,
            self.fs.symlink(parent.0, link_name, target, caller(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = begin!(self, Rename, parent, reply);
        let result = self.fs.rename(parent.0, name, newparent.0, newname, flags.bits());
        self.reply_empty(FuseOp::Rename, parent, result, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = begin!(self, Link, ino, reply);
        self.reply_entry(FuseOp::Link, ino, self.fs.link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = begin!(self, Open, ino, reply);
        match self.fs.open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), fopen_flags(flags.0)),
            Err(err) => reply.error(self.fail(FuseOp::Open, ino, err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = begin!(self, Read, ino, reply);
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(self.fail(FuseOp::Read, ino, err)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = begin!(self, Write, ino, reply);
        let append = flags.0 & libc::O_APPEND != 0;
        match self.fs.write(fh.0, offset, data, append) {
            Ok(written) => reply.written(written),
            Err(err) => reply.error(self.fail(FuseOp::Write, ino, err)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _span = begin!(self, Flush, ino, reply);
        self.reply_empty(FuseOp::Flush, ino, self.fs.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Housekeeping: served even while the volume is locked.
        crate::metrics::get().fuse_op(FuseOp::Release);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = begin!(self, Fallocate, ino, reply);
        self.reply_empty(FuseOp::Fallocate, ino, self.fs.fallocate(fh.0, offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _span = begin!(self, Lseek, ino, reply);
        match self.fs.seek_data(fh.0, offset, whence) {
            Ok(found) => reply.offset(found),
            Err(err) => reply.error(self.fail(FuseOp::Lseek, ino, err)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _span = begin!(self, CopyFileRange, ino_in, reply);
        match self.fs.copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len) {
            Ok(copied) => reply.written(copied),
            Err(err) => reply.error(self.fail(FuseOp::CopyFileRange, ino_in, err)),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _span = begin!(self, Fsync, ino, reply);
        self.reply_empty(FuseOp::Fsync, ino, self.fs.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = begin!(self, Opendir, ino, reply);
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(err) => reply.error(self.fail(FuseOp::Opendir, ino, err)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = begin!(self, Readdir, ino, reply);
        let (entries, start) = match self.fs.readdir(fh.0, offset) {
            Ok(listing) => listing,
            Err(err) => return reply.error(self.fail(FuseOp::Readdir, ino, err)),
        };
        for (index, entry) in entries.iter().enumerate().skip(start) {
            // The offset of an entry is the position of the next one.
            if reply.add(INodeNo(entry.ino), index as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // Housekeeping: served even while the volume is locked.
        crate::metrics::get().fuse_op(FuseOp::Release);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = begin!(self, Fsyncdir, ino, reply);
        self.reply_empty(FuseOp::Fsyncdir, ino, self.fs.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = begin!(self, Statfs, ino, reply);
        match self.fs.statfs() {
            Ok(st) => reply.statfs(
                st.blocks,
                st.blocks_free,
                st.blocks_available,
                st.files,
                st.files_free,
                st.block_size,
                crate::cipher::names::MAX_NAME_LEN as u32,
                st.block_size,
            ),
            Err(err) => reply.error(self.fail(FuseOp::Statfs, ino, err)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = begin!(self, Getxattr, ino, reply);
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => reply_xattr(value, size, reply),
            // The common answer (the kernel asks for `security.capability` before writes): no log.
            Err(FsError::NoAttribute) => reply.error(self.refuse(FuseOp::Getxattr, Errno::NO_XATTR)),
            Err(err) => reply.error(self.fail(FuseOp::Getxattr, ino, err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = begin!(self, Listxattr, ino, reply);
        match self.fs.listxattr(ino.0) {
            Ok(names) => reply_xattr(names, size, reply),
            Err(err) => reply.error(self.fail(FuseOp::Listxattr, ino, err)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = begin!(self, Setxattr, ino, reply);
        self.reply_empty(FuseOp::Setxattr, ino, self.fs.setxattr(ino.0, name, value, flags), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = begin!(self, Removexattr, ino, reply);
        self.reply_empty(FuseOp::Removexattr, ino, self.fs.removexattr(ino.0, name), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = begin!(self, Create, parent, reply);
        match self.fs.create(parent.0, name, mode, caller(req)) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), fopen_flags(flags)),
            Err(err) => reply.error(self.fail(FuseOp::Create, parent, err)),
        }
    }
}
