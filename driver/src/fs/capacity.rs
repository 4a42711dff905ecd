//! The volume's capacity and usage: what `statfs` reports and what writes are checked against.
//!
//! Usage is the sum of the backing sizes (`st_size`) of the volume's encrypted regular files, each
//! inode counted once however many links it has. It is counted once at mount and then tracked by
//! every operation that changes it; bookkeeping files (directory ids, long-name side files),
//! directories, symlinks and extended attributes are not counted (docs/SEMANTICS.md).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use parking_lot::Mutex;

use crate::cipher::names::{classify, EntryKind};

use super::error::FsError;

/// Capacity and usage of one mounted volume, in backing bytes.
#[derive(Debug)]
pub(crate) struct Capacity {
    state: Mutex<Usage>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// `None`: no limit (a volume mounted outside CSI, or a header without a capacity).
    limit: Option<u64>,
    used: u64,
}

impl Capacity {
    /// No limit yet, `used` bytes in use.
    pub(crate) fn new(used: u64) -> Self {
        Capacity { state: Mutex::new(Usage { limit: None, used }) }
    }

    /// Sets (or, with `None`, lifts) the limit. Lowering it below the usage only refuses growth.
    pub(crate) fn set_limit(&self, limit: Option<u64>) {
        self.state.lock().limit = limit;
    }

    /// `(limit, used)`.
    pub(crate) fn get(&self) -> (Option<u64>, u64) {
        let usage = *self.state.lock();
        (usage.limit, usage.used)
    }

    /// Reserves `bytes` more, or fails with [`FsError::NoSpace`] when the limit would be passed.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<(), FsError> {
        let mut usage = self.state.lock();
        let wanted = usage.used.saturating_add(bytes);
        if bytes > 0 && usage.limit.is_some_and(|limit| wanted > limit) {
            return Err(FsError::NoSpace);
        }
        usage.used = wanted;
        Ok(())
    }

    /// Replaces a reservation of `reserved` bytes by the change that really happened, a backing
    /// file going from `before` to `after` bytes.
    pub(crate) fn settle(&self, reserved: u64, before: u64, after: u64) {
        let mut usage = self.state.lock();
        usage.used = usage.used.saturating_sub(reserved).saturating_add(after).saturating_sub(before);
    }

    /// Gives back `bytes` (a file removed or cut).
    pub(crate) fn release(&self, bytes: u64) {
        let mut usage = self.state.lock();
        usage.used = usage.used.saturating_sub(bytes);
    }
}

/// Counts the usage of the encrypted tree under `root`: the backing sizes of its regular files,
/// each inode once. Bookkeeping entries are skipped; symlinks are never followed.
pub(crate) fn scan(root: &Path) -> Result<u64, FsError> {
    let mut seen = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    let mut used = 0u64;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(FsError::Io)? {
            let entry = entry.map_err(FsError::Io)?;
            if classify(entry.file_name().as_encoded_bytes()) == EntryKind::Internal {
                continue;
            }
            let meta = entry.metadata().map_err(FsError::Io)?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))) {
                used = used.saturating_add(meta.len());
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_settle_to_the_real_change() {
        let cap = Capacity::new(100);
        cap.reserve(1_000_000).unwrap();
        cap.settle(1_000_000, 0, 10);
        assert_eq!(cap.get(), (None, 110));
        cap.set_limit(Some(200));
        assert!(matches!(cap.reserve(91), Err(FsError::NoSpace)));
        cap.reserve(90).unwrap();
        assert_eq!(cap.get().1, 200);
        cap.reserve(0).unwrap();
        cap.settle(90, 50, 0);
        assert_eq!(cap.get().1, 60);
        cap.release(100);
        assert_eq!(cap.get(), (Some(200), 0));
    }

    #[test]
    fn scan_counts_files_once_and_skips_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".cvdir"), [0u8; 16]).unwrap();
        std::fs::write(dir.path().join("abc"), [0u8; 100]).unwrap();
        std::fs::hard_link(dir.path().join("abc"), dir.path().join("def")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/xyz"), [0u8; 30]).unwrap();
        std::fs::write(dir.path().join("sub/~abc.name"), [0u8; 50]).unwrap();
        std::os::unix::fs::symlink("abc", dir.path().join("lnk")).unwrap();
        assert_eq!(scan(dir.path()).unwrap(), 130);
    }
}
