//! The FUSE encryption layer: mounts the encrypted view of a backing directory, served by
//! threads of this process.
//!
//! File contents, names and symlink targets are encrypted as `docs/FORMAT.md` specifies; what a
//! user can and cannot do on a mounted volume is in `docs/SEMANTICS.md`.

mod capacity;
mod content;
mod dir;
mod error;
mod fuse;
mod inode;
mod ops;
mod sys;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub use content::MAX_FILE_SIZE;
pub use error::FsError;

use crate::cipher::names::{classify, EntryKind, DIR_ID_FILE};
use crate::keys::VolumeKeys;
use error::BackingResult;
use ops::CryptFs;

/// How a volume is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// The volume id, carried by every log line of the mount.
    pub volume_id: String,
    /// Mount read-only (`ro`): the kernel refuses every change.
    pub read_only: bool,
    /// Threads serving kernel requests (at least 1; default 4).
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { volume_id: String::new(), read_only: false, threads: 4 }
    }
}

/// Why a volume is locked. Until it is unlocked, every request on the mount is answered with the
/// cause's errno (see `docs/SEMANTICS.md`), and the volume's keys are gone from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockCause {
    /// The KMS refuses the key: disabled, pending deletion, deleted, or the wrap refused.
    KeyRevoked,
    /// The KMS denies this node the key, or does not accept its credentials.
    AccessDenied,
    /// The KMS could not be reached for longer than the grace period.
    KmsUnreachable,
}

impl LockCause {
    /// The errno every request gets: `EKEYREVOKED`, except `EACCES` for access denied.
    pub fn errno(self) -> i32 {
        match self {
            LockCause::KeyRevoked | LockCause::KmsUnreachable => libc::EKEYREVOKED,
            LockCause::AccessDenied => libc::EACCES,
        }
    }

    /// The name used in logs, Events and the `cause` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LockCause::KeyRevoked => "key_revoked",
            LockCause::AccessDenied => "access_denied",
            LockCause::KmsUnreachable => "kms_unreachable",
        }
    }

    fn code(self) -> u8 {
        match self {
            LockCause::KeyRevoked => 1,
            LockCause::AccessDenied => 2,
            LockCause::KmsUnreachable => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(LockCause::KeyRevoked),
            2 => Some(LockCause::AccessDenied),
            3 => Some(LockCause::KmsUnreachable),
            _ => None,
        }
    }
}

impl std::fmt::Display for LockCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prepares an empty backing directory as an encrypted volume root by writing the root directory
/// id. Idempotent: a directory that already holds a valid root id is left as it is, and a damaged
/// one is reported ([`FsError::DirId`]), never replaced. Files whose names start with `.` (such as
/// a volume header) may already be present, as they are never listed; anything else is refused
/// with [`FsError::NotAVolumeRoot`].
pub fn init_root(backing_dir: &Path) -> Result<(), FsError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open(backing_dir, flags, Mode::empty()).op("open")?;
    let st = sys::stat(root.as_fd())?;
    match dir::read_dir_id(root.as_fd(), st.st_ino) {
        Ok(_) => return Ok(()),
        Err(FsError::DirId { .. }) => {}
        Err(err) => return Err(err),
    }
    for entry in std::fs::read_dir(backing_dir).map_err(FsError::Io)? {
        let name = entry.map_err(FsError::Io)?.file_name();
        let present = name.as_encoded_bytes();
        if present == DIR_ID_FILE.as_bytes() {
            // A damaged root id must never be replaced: every name in the volume depends on it.
            return Err(FsError::DirId { ino: st.st_ino });
        }
        if classify(present) != EntryKind::Internal {
            return Err(FsError::NotAVolumeRoot(backing_dir.to_path_buf()));
        }
    }
    dir::write_dir_id(root.as_fd(), &dir::new_dir_id()?)?;
    let synced = std::fs::File::open(backing_dir).and_then(|d| d.sync_all());
    synced.map_err(FsError::Io)
}

/// Mounts the encrypted view of `backing_dir` at `mountpoint` (`allow_other`,
/// `default_permissions`, `nodev`, `nosuid`), served by `opts.threads` threads of this process.
/// Returns once the kernel has completed the FUSE handshake, so the mount is live.
pub fn mount(
    backing_dir: &Path,
    mountpoint: &Path,
    keys: Arc<VolumeKeys>,
    opts: MountOptions,
) -> Result<Mount, FsError> {
    sys::raise_nofile_limit();
    sys::fix_malloc_thresholds();
    let fs = Arc::new(CryptFs::new(backing_dir, keys, opts.volume_id.clone(), opts.read_only)?);
    let mountpoint = mountpoint.canonicalize().map_err(|source| mount_error(mountpoint, source))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("cryptvol".into()),
        MountOption::Subtype("cryptvol".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if opts.read_only { MountOption::RO } else { MountOption::RW },
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    let adapter = fuse::FuseAdapter::new(Arc::clone(&fs));
    let session = fuser::Session::new(adapter, &mountpoint, &config)
        .and_then(fuser::Session::spawn)
        .map_err(|source| mount_error(&mountpoint, source))?;
    tracing::info!(volume_id = %opts.volume_id, mountpoint = %mountpoint.display(), "volume mounted");
    Ok(Mount { mountpoint, volume_id: opts.volume_id, session: Some(session), fs })
}

fn mount_error(path: &Path, source: std::io::Error) -> FsError {
    FsError::Mount { path: path.to_path_buf(), source }
}

/// A live mount. Dropping it unmounts.
pub struct Mount {
    mountpoint: PathBuf,
    volume_id: String,
    session: Option<BackgroundSession>,
    fs: Arc<CryptFs>,
}

impl Mount {
    /// The (canonical) mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Limits the volume to `bytes` of backing usage (`None`: no limit), at once and without a
    /// remount: changes that would take the usage past it fail with ENOSPC, and `statfs` reports
    /// it as the size. Usage is defined in `docs/SEMANTICS.md`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.fs.set_capacity(bytes);
    }

    /// `(capacity, usage)` in backing bytes.
    pub fn usage(&self) -> (Option<u64>, u64) {
        self.fs.usage()
    }

    /// Unmounts and waits for the serving threads to finish, which drops every key. When the
    /// mount is busy (open files, a working directory inside), it is detached instead (`umount
    /// -l`): it disappears from the namespace at once, the keys are dropped at once, and the
    /// kernel ends the session when its last user leaves; requests until then fail with ENOKEY.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.shutdown()
    }

    /// Locks the volume without unmounting it; see [`MountLock::lock`].
    pub fn lock(&self, cause: LockCause) {
        self.locker().lock(cause);
    }

    /// Serves a locked volume again; see [`MountLock::unlock`].
    pub fn unlock(&self, keys: Arc<VolumeKeys>) {
        self.locker().unlock(keys);
    }

    /// The lock in force, if any.
    pub fn lock_cause(&self) -> Option<LockCause> {
        self.fs.lock_cause()
    }

    /// A handle that locks and unlocks this mount from another thread (it does not keep the
    /// mount alive: once unmounted, locking it does nothing useful).
    pub fn locker(&self) -> MountLock {
        MountLock { fs: Arc::clone(&self.fs), notifier: self.session.as_ref().map(|s| s.notifier()) }
    }

    fn shutdown(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Keys go first: whatever still reaches this session after the unmount (a bind mount of
        // the volume elsewhere, a detached mount in use) gets ENOKEY, never plaintext.
        self.fs.drop_keys();
        // The session ends only when the kernel's last user of the mount leaves, which bind mounts
        // elsewhere can delay indefinitely: never block the caller on that.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(session.umount_and_join());
        });
        let unmounted = match done_rx.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    volume_id = %self.volume_id,
                    "volume still in use through another mount; keys dropped, the session ends with its last user"
                );
                return Ok(());
            }
        };
        let Err(err) = unmounted else {
            tracing::info!(volume_id = %self.volume_id, mountpoint = %self.mountpoint.display(), "volume unmounted");
            return Ok(());
        };
        tracing::warn!(volume_id = %self.volume_id, error = %err, "unmount failed; detaching lazily");
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            // EINVAL: no longer a mountpoint, so the first attempt did unmount.
            Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(errno) => Err(mount_error(&self.mountpoint, std::io::Error::from(errno))),
        }
    }
}

/// Locks and unlocks one mount (see [`Mount::locker`]).
#[derive(Clone)]
pub struct MountLock {
    fs: Arc<CryptFs>,
    notifier: Option<fuser::Notifier>,
}

impl MountLock {
    /// Locks the volume without unmounting it: its keys are dropped at once, the kernel's cached
    /// pages and attributes of the volume are invalidated, and every request (on open handles
    /// too) is answered with `cause`'s errno until [`MountLock::unlock`]. Releasing handles and
    /// forgetting inodes still work. It writes to the FUSE device and may wait on the kernel:
    /// call it from a blocking thread, never from a FUSE callback.
    pub fn lock(&self, cause: LockCause) {
        self.fs.lock(cause);
        let Some(notifier) = &self.notifier else { return };
        for ino in self.fs.known_inodes() {
            // Pages cached before the lock would otherwise stay readable. An inode the kernel has
            // just forgotten answers ENOENT, which is fine.
            let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
        }
    }

    /// Serves the volume again with `keys`, which must derive from the volume's data key (the
    /// caller checks them against the header seal).
    pub fn unlock(&self, keys: Arc<VolumeKeys>) {
        self.fs.unlock(keys);
    }

    /// The lock in force, if any.
    pub fn lock_cause(&self) -> Option<LockCause> {
        self.fs.lock_cause()
    }
}

impl std::fmt::Debug for MountLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountLock").field("volume_id", &self.fs.volume_id()).finish_non_exhaustive()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(volume_id = %self.volume_id, error = %err, "could not unmount");
        }
    }
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .field("volume_id", &self.volume_id)
            .field("mounted", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_root_is_idempotent_and_refuses_foreign_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".header"), b"hidden files may be present").unwrap();
        init_root(dir.path()).unwrap();
        let id = std::fs::read(dir.path().join(DIR_ID_FILE)).unwrap();
        assert_eq!(id.len(), 16);
        init_root(dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join(DIR_ID_FILE)).unwrap(), id);

        std::fs::write(dir.path().join(DIR_ID_FILE), b"short").unwrap();
        assert!(matches!(init_root(dir.path()), Err(FsError::DirId { .. })));

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("data.txt"), b"plain").unwrap();
        assert!(matches!(init_root(other.path()), Err(FsError::NotAVolumeRoot(_))));
        assert!(!other.path().join(DIR_ID_FILE).exists());
    }

    #[test]
    fn mount_options_default_to_four_threads() {
        let opts = MountOptions::default();
        assert_eq!((opts.threads, opts.read_only), (4, false));
    }
}
