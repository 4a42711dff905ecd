//! Shared fixture of the mount tests: a backing directory, a mountpoint and a random volume key,
//! each test with its own temporary directories; everything is unmounted on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cryptvol::fs::{init_root, mount, Mount, MountOptions};
use cryptvol::keys::DataKey;

/// One encrypted volume mounted on a temporary directory.
pub struct Volume {
    mount: Option<Mount>,
    key: DataKey,
    volume_id: String,
    backing: tempfile::TempDir,
    mountpoint: tempfile::TempDir,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Volume {
    /// A fresh volume with a random key, mounted.
    pub fn new() -> Self {
        Self::with_key(DataKey::generate().unwrap())
    }

    /// A fresh volume with `key`, mounted.
    pub fn with_key(key: DataKey) -> Self {
        let backing = tempfile::Builder::new().prefix("cv-backing-").tempdir().unwrap();
        let mountpoint = tempfile::Builder::new().prefix("cv-mnt-").tempdir().unwrap();
        init_root(backing.path()).unwrap();
        let volume_id = format!("vol-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut volume = Volume { mount: None, key, volume_id, backing, mountpoint };
        volume.mount_with(&volume.key.clone()).unwrap();
        volume
    }

    /// The plaintext view.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// `path()/name`.
    pub fn at(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// The backing directory (ciphertext).
    pub fn backing(&self) -> &Path {
        self.backing.path()
    }

    /// The live mount.
    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// The volume's data key.
    pub fn key(&self) -> &DataKey {
        &self.key
    }

    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Mounts with `key` (which need not be the volume's).
    pub fn mount_with(&mut self, key: &DataKey) -> Result<(), cryptvol::fs::FsError> {
        assert!(self.mount.is_none(), "already mounted");
        let opts = MountOptions { volume_id: self.volume_id.clone(), read_only: false, threads: 4 };
        let keys = Arc::new(key.derive());
        self.mount = Some(mount(self.backing.path(), self.mountpoint.path(), keys, opts)?);
        Ok(())
    }

    pub fn unmount(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount().unwrap();
        }
    }

    /// Unmounts and mounts again with the volume's key.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount_with(&self.key.clone()).unwrap();
    }

    /// Unmounts, lets `change` alter the backing directory, and mounts again.
    pub fn tamper(&mut self, change: impl FnOnce(&Path)) {
        self.unmount();
        change(self.backing.path());
        self.mount_with(&self.key.clone()).unwrap();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The errno of an I/O result's error.
pub fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result.expect_err("expected an error").raw_os_error().expect("an OS error")
}

/// Every regular file below `dir` (recursively), in the backing store.
pub fn backing_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(backing_files(&entry.path()));
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

/// Backing entries of a directory that hold user data (not `.cvdir`, side files or temporaries).
pub fn backing_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with('.') && !name.ends_with(".name")
        })
        .collect();
    out.sort();
    out
}

/// A small deterministic generator (xorshift64*), so failures replay from a printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
