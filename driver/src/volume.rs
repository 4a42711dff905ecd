//! Volumes on the backing store: one directory per volume under the backing root.
//!
//! ```text
//! <backing root>/<volume id>/cryptvol.header   the header (docs/FORMAT.md)
//! <backing root>/<volume id>/cryptvol.header.lock  serializes header changes
//! <backing root>/<volume id>/data/             the encrypted tree
//! <backing root>/.cvtmp-<volume id>-<random>/  a volume being created (renamed into place when whole)
//! ```
//! A volume appears under its final name only once its header and data root exist, via one rename,
//! so a crash or a failed KMS call never leaves a volume directory without a usable header.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::header::{HeaderError, VolumeHeader, VolumeState, DATA_DIR};

const TEMP_PREFIX: &str = ".cvtmp-";
/// The lock file that serializes header changes (see [`BackingStore::modify_header`]).
pub const HEADER_LOCK_FILE: &str = "cryptvol.header.lock";
/// Longest volume id: short enough to leave room for the temp-directory prefix and suffix.
pub const MAX_VOLUME_ID_LEN: usize = 128;

/// Why a backing-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("volume id {id:?} is not valid: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("backing store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("preparing the encrypted root of {path}: {message}")]
    InitRoot { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The outcome of [`BackingStore::create`].
#[derive(Debug)]
pub enum Created {
    /// This call made the volume.
    New(VolumeHeader),
    /// A volume with this id existed already (an earlier or concurrent call); its header.
    Existing(VolumeHeader),
}

/// The backing root shared by the controller and every node.
#[derive(Debug, Clone)]
pub struct BackingStore {
    root: PathBuf,
}

/// Takes the exclusive header lock of a volume directory; released when the guard drops.
fn lock_header(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, StoreError> {
    let path = dir.join(HEADER_LOCK_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err(&path)(errno.into()))
}

/// Maps a CreateVolume name to a volume id: the name itself when it is a safe path component,
/// otherwise `cv-` and 32 hex digits of its SHA-256. Deterministic, so retries find their volume.
pub fn volume_id_for_name(name: &str) -> String {
    if validate_volume_id(name).is_ok() && !name.starts_with("cv-") {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("cv-{}", hex::encode(&digest[..16]))
}

/// A volume id is 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn validate_volume_id(id: &str) -> Result<(), StoreError> {
    let invalid = |reason| Err(StoreError::InvalidId { id: id.to_string(), reason });
    if id.is_empty() || id.len() > MAX_VOLUME_ID_LEN {
        return invalid("it must be 1 to 128 characters long");
    }
    if id.starts_with('.') {
        return invalid("it must not start with '.'");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return invalid("it may hold only A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

impl BackingStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BackingStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the backing root is a reachable, writable directory.
    pub fn check_ready(&self) -> Result<(), StoreError> {
        let meta = fs::metadata(&self.root).map_err(io_err(&self.root))?;
        if !meta.is_dir() {
            let source = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
            return Err(StoreError::Io { path: self.root.clone(), source });
        }
        nix::unistd::access(&self.root, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
            .map_err(|e| StoreError::Io { path: self.root.clone(), source: e.into() })
    }

    /// The directory of a volume (which may not exist).
    pub fn volume_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_volume_id(id)?;
        Ok(self.root.join(id))
    }

    /// The encrypted tree of a volume.
    pub fn data_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.volume_dir(id)?.join(DATA_DIR))
    }

    /// The header of a volume, or `None` when the volume does not exist.
    pub fn header(&self, id: &str) -> Result<Option<VolumeHeader>, StoreError> {
        match VolumeHeader::read(&self.volume_dir(id)?) {
            Ok(h) => Ok(Some(h)),
            Err(HeaderError::Missing { .. }) if !self.volume_dir(id)?.exists() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a volume from its header, atomically; if the id exists already, returns its header.
    pub fn create(&self, header: &VolumeHeader) -> Result<Created, StoreError> {
        let final_dir = self.volume_dir(&header.volume_id)?;
        if let Some(existing) = self.header(&header.volume_id)? {
            return Ok(Created::Existing(existing));
        }
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| io_err(&self.root)(e.into()))?;
        let temp = self.root.join(format!("{TEMP_PREFIX}{}-{}", header.volume_id, hex::encode(suffix)));
        let built = self.build(&temp, header).and_then(|()| self.place(&temp, &final_dir));
        match built {
            Ok(()) => Ok(Created::New(header.clone())),
            Err(err) => {
                let _ = fs::remove_dir_all(&temp);
                // Another call won the race to the final name: report its volume.
                match self.header(&header.volume_id) {
                    Ok(Some(existing)) => Ok(Created::Existing(existing)),
                    _ => Err(err),
                }
            }
        }
    }

    fn build(&self, temp: &Path, header: &VolumeHeader) -> Result<(), StoreError> {
        fs::create_dir(temp).map_err(io_err(temp))?;
        let data = temp.join(DATA_DIR);
        fs::create_dir(&data).map_err(io_err(&data))?;
        crate::fs::init_root(&data)
            .map_err(|e| StoreError::InitRoot { path: data.clone(), message: e.to_string() })?;
        header.write(temp)?;
        crate::atomic::sync_dir(temp).map_err(io_err(temp))
    }

    fn place(&self, temp: &Path, final_dir: &Path) -> Result<(), StoreError> {
        // rename(2) onto an existing non-empty directory fails, so exactly one creator wins.
        fs::rename(temp, final_dir).map_err(io_err(final_dir))?;
        crate::atomic::sync_dir(&self.root).map_err(io_err(&self.root))
    }

    /// Changes the header of an existing volume under the volume's header lock: re-reads the header,
    /// lets `change` edit it, and writes it back atomically when `change` returns `true`.
    ///
    /// Three writers share a header (the controller's expansion, the controller's key rotation and
    /// a node's first-stage seal), on different hosts; each edits only its own fields of a fresh
    /// read, so none undoes another's change. The lock is `flock(2)` on `cryptvol.header.lock`,
    /// which Linux NFS clients map to NFS byte-range locks. Returns the header as it now stands, or
    /// `None` when the volume does not exist.
    pub fn modify_header<E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut VolumeHeader) -> Result<bool, E>,
    ) -> Result<Option<VolumeHeader>, E>
    where
        E: From<StoreError>,
    {
        let dir = self.volume_dir(id)?;
        if !dir.exists() {
            return Ok(None);
        }
        let _held = lock_header(&dir)?;
        let Some(mut header) = self.header(id)? else {
            return Ok(None);
        };
        if change(&mut header)? {
            header.write(&dir).map_err(StoreError::from)?;
        }
        Ok(Some(header))
    }

    /// Deletes a volume: destroys the wrapped key first, then the tree. An absent volume is fine.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.volume_dir(id)?;
        if !dir.exists() {
            return Ok(());
        }
        let held = lock_header(&dir)?;
        match VolumeHeader::read(&dir) {
            Ok(mut header) if header.state == VolumeState::Ready => {
                header.state = VolumeState::Deleting;
                header.wrapped_key.clear();
                header.write(&dir)?;
            }
            // Already shredded, missing, or unreadable: nothing left that could unwrap the data.
            Ok(_) | Err(HeaderError::Missing { .. }) | Err(HeaderError::Malformed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        drop(held);
        let data = dir.join(DATA_DIR);
        match fs::remove_dir_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&data)(e)),
        }
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        crate::atomic::sync_dir(&self.root).map_err(io_err(&self.root))
    }

    /// Every volume id, sorted, including volumes being deleted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if validate_volume_id(name).is_ok() && entry.path().join(crate::header::HEADER_FILE).exists() {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes leftovers of creations that crashed more than `min_age` ago.
    pub fn sweep_temp(&self, min_age: std::time::Duration) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                continue;
            }
            let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age >= min_age) && fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes available for new data on the backing filesystem.
    pub fn available_bytes(&self) -> Result<u64, StoreError> {
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StoreError::Io { path: self.root.clone(), source: e.into() })?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::WrappedKey;

    fn header(id: &str) -> VolumeHeader {
        VolumeHeader::new(id, id, "cryptvol:local:key/k", "local", &WrappedKey(vec![1; 68]), 1 << 20)
    }

    #[test]
    fn ids_from_names() {
        assert_eq!(volume_id_for_name("pvc-0a1b"), "pvc-0a1b");
        let hashed = volume_id_for_name("a name/with slashes");
        assert!(hashed.starts_with("cv-") && hashed.len() == 35);
        assert_eq!(hashed, volume_id_for_name("a name/with slashes"));
        assert_ne!(volume_id_for_name("cv-x"), "cv-x", "the cv- prefix is reserved for hashed ids");
        assert!(validate_volume_id("..").is_err());
        assert!(validate_volume_id("a/b").is_err());
    }

    #[test]
    fn create_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::new(dir.path());
        assert!(matches!(store.create(&header("v1")).unwrap(), Created::New(_)));
        let mut other = header("v1");
        other.capacity_bytes = 5;
        match store.create(&other).unwrap() {
            Created::Existing(h) => assert_eq!(h.capacity_bytes, 1 << 20),
            Created::New(_) => panic!("second create must find the first volume"),
        }
        assert_eq!(store.list().unwrap(), vec!["v1"]);
        assert!(store.data_dir("v1").unwrap().is_dir());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp directory left behind");
    }

    #[test]
    fn concurrent_creates_make_one_volume() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::new(dir.path());
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| store.create(&header("same")).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| matches!(r, Created::New(_))).count(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn delete_shreds_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::new(dir.path());
        store.create(&header("v1")).unwrap();
        store.delete("v1").unwrap();
        assert!(!dir.path().join("v1").exists());
        store.delete("v1").unwrap();
        store.delete("never-existed").unwrap();
    }
}
