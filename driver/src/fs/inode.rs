//! The inodes the kernel knows: one `O_PATH` descriptor each, counted by lookups and keyed by
//! the backing inode number, so hard links are one inode and node ids survive remounts.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use fuser::FileType;
use nix::sys::stat::FileStat;
use parking_lot::{Mutex, RwLock};

use crate::cipher::content::{BlockCipher, FileId};
use crate::cipher::names::DirId;
use crate::cipher::xattr::Attributes;
use crate::keys::VolumeKeys;

use super::dir;
use super::error::FsError;

/// The FUSE node id of the root directory.
pub(crate) const ROOT: u64 = 1;

/// One backing object the kernel holds a reference to.
pub(crate) struct Inode {
    /// The FUSE node id (the backing inode number, with the root mapped to 1).
    pub ino: u64,
    /// The backing inode number, for logs.
    pub backing_ino: u64,
    /// `O_PATH | O_NOFOLLOW` handle on the backing object.
    pub fd: OwnedFd,
    /// The object's type; a backing inode never changes type.
    pub kind: FileType,
    /// For directories: the id its names are encrypted under.
    pub dir_id: Option<DirId>,
    /// Serializes content changes: reads take it shared; writes, truncates and appends take it
    /// exclusive, so a partial-block update is never interleaved with another.
    pub content: RwLock<()>,
    /// The cipher of the file's current identity, derived on first use.
    cipher: Mutex<Option<Arc<BlockCipher>>>,
    /// The decrypted extended attributes, read on first use; the lock also serializes changes.
    pub xattrs: Mutex<Option<Arc<Attributes>>>,
    /// For symlinks: the directory id and plaintext name its target is bound to (the name the
    /// kernel last looked it up by).
    pub link: Mutex<Option<(DirId, Vec<u8>)>>,
    /// For symlinks renamed through this mount: the re-encrypted copy that took the place of
    /// the backing object `fd` names (its backing inode number and handle).
    moved: Mutex<Option<(u64, Arc<OwnedFd>)>>,
}

impl Inode {
    /// The cipher for file identity `file_id`, reusing the cached one when the identity matches.
    pub(crate) fn cipher(&self, keys: &VolumeKeys, file_id: &FileId) -> Arc<BlockCipher> {
        let mut slot = self.cipher.lock();
        match &*slot {
            Some(cipher) if cipher.file_id() == file_id => Arc::clone(cipher),
            Some(_) | None => {
                let cipher = Arc::new(BlockCipher::new(keys, *file_id));
                *slot = Some(Arc::clone(&cipher));
                cipher
            }
        }
    }

    /// The directory id, or an error naming this inode when it is not a directory.
    pub(crate) fn dir_id(&self) -> Result<&DirId, FsError> {
        self.dir_id.as_ref().ok_or(FsError::Backing { op: "lookup", errno: nix::errno::Errno::ENOTDIR })
    }

    /// Records that this object was just created here, so it has no extended attributes: the
    /// kernel's `security.capability` checks never reach the backing store for it.
    pub(crate) fn starts_without_attributes(&self) {
        self.xattrs.lock().get_or_insert_with(Default::default);
    }

    /// Records the link (directory id and plaintext name) a symlink's target is bound to.
    pub(crate) fn bind_link(&self, dir_id: &DirId, name: &[u8]) {
        *self.link.lock() = Some((*dir_id, name.to_vec()));
    }

    /// Points this symlink at the re-encrypted copy `fd` (backing inode `backing_ino`) that a
    /// rename made, bound to `dir_id` and `name`: the kernel may keep using this node id for the
    /// renamed link until it looks the name up again.
    pub(crate) fn move_link(&self, fd: OwnedFd, backing_ino: u64, dir_id: &DirId, name: &[u8]) {
        *self.moved.lock() = Some((backing_ino, Arc::new(fd)));
        self.bind_link(dir_id, name);
    }

    /// The handle of the backing object this inode now stands for, when a rename replaced it.
    pub(crate) fn moved(&self) -> Option<Arc<OwnedFd>> {
        self.moved.lock().as_ref().map(|(_, fd)| Arc::clone(fd))
    }

    /// True when this inode stands for backing inode `backing_ino`, itself or after a rename.
    fn stands_for(&self, backing_ino: u64) -> bool {
        self.backing_ino == backing_ino
            || self.moved.lock().as_ref().is_some_and(|(ino, _)| *ino == backing_ino)
    }

    fn forget_cipher(&self) {
        self.cipher.lock().take();
        self.xattrs.lock().take();
    }
}

impl std::fmt::Debug for Inode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inode").field("ino", &self.ino).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// The file type of a backing `st_mode`.
pub(crate) fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

struct Entry {
    inode: Arc<Inode>,
    lookups: u64,
}

/// Every inode the kernel currently knows.
pub(crate) struct InodeTable {
    root_backing_ino: u64,
    map: Mutex<HashMap<u64, Entry>>,
}

impl InodeTable {
    /// A table holding the root directory, which is never forgotten.
    pub(crate) fn new(root_fd: OwnedFd, root: &FileStat, root_dir_id: DirId) -> Self {
        let inode = Arc::new(Inode {
            ino: ROOT,
            backing_ino: root.st_ino,
            fd: root_fd,
            kind: FileType::Directory,
            dir_id: Some(root_dir_id),
            content: RwLock::new(()),
            cipher: Mutex::new(None),
            xattrs: Mutex::new(None),
            link: Mutex::new(None),
            moved: Mutex::new(None),
        });
        let map = HashMap::from([(ROOT, Entry { inode, lookups: 1 })]);
        InodeTable { root_backing_ino: root.st_ino, map: Mutex::new(map) }
    }

    /// The FUSE node id of backing inode `backing_ino`: itself, except that the root is 1 and a
    /// backing inode numbered 1 takes the root's backing number.
    pub(crate) fn node_id(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT
        } else if backing_ino == ROOT {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    /// The inode with node id `ino`.
    pub(crate) fn get(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        self.map.lock().get(&ino).map(|entry| Arc::clone(&entry.inode)).ok_or(FsError::UnknownInode(ino))
    }

    /// Counts one more kernel reference to the backing object `fd` (stat `st`), adding it to
    /// the table if new. A directory's id is read when it enters the table, so a directory with
    /// a missing or damaged `.cvdir` fails its lookup.
    pub(crate) fn remember(&self, fd: OwnedFd, st: &FileStat) -> Result<Arc<Inode>, FsError> {
        let ino = self.node_id(st.st_ino);
        if let Some(entry) = self.map.lock().get_mut(&ino) {
            entry.lookups += 1;
            return Ok(Arc::clone(&entry.inode));
        }
        let kind = kind_of(st.st_mode);
        let dir_id = match kind {
            FileType::Directory => Some(dir::read_dir_id(fd.as_fd(), st.st_ino)?),
            FileType::RegularFile
            | FileType::Symlink
            | FileType::NamedPipe
            | FileType::Socket
            | FileType::CharDevice
            | FileType::BlockDevice => None,
        };
        let inode = Arc::new(Inode {
            ino,
            backing_ino: st.st_ino,
            fd,
            kind,
            dir_id,
            content: RwLock::new(()),
            cipher: Mutex::new(None),
            xattrs: Mutex::new(None),
            link: Mutex::new(None),
            moved: Mutex::new(None),
        });
        let mut map = self.map.lock();
        let entry = map.entry(ino).or_insert(Entry { inode, lookups: 0 });
        entry.lookups += 1;
        Ok(Arc::clone(&entry.inode))
    }

    /// Counts one more kernel reference to an inode already in the table.
    pub(crate) fn bump(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        let mut map = self.map.lock();
        let entry = map.get_mut(&ino).ok_or(FsError::UnknownInode(ino))?;
        entry.lookups += 1;
        Ok(Arc::clone(&entry.inode))
    }

    /// Drops `count` kernel references; the backing descriptor closes with the last one.
    pub(crate) fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let mut map = self.map.lock();
        if let Some(entry) = map.get_mut(&ino) {
            entry.lookups = entry.lookups.saturating_sub(count);
            if entry.lookups == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Every node id in the table.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.map.lock().keys().copied().collect()
    }

    /// Every inode in the table that stands for backing inode `backing_ino`.
    pub(crate) fn standing_for(&self, backing_ino: u64) -> Vec<Arc<Inode>> {
        let map = self.map.lock();
        map.values().filter(|e| e.inode.stands_for(backing_ino)).map(|e| Arc::clone(&e.inode)).collect()
    }

    /// Drops every cached per-file cipher (their keys are zeroized on drop) and decrypted
    /// extended attributes.
    pub(crate) fn forget_ciphers(&self) {
        for entry in self.map.lock().values() {
            entry.inode.forget_cipher();
        }
    }
}
