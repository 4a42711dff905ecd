//! Offline check of an encrypted tree: walks a volume's backing directory with its keys, without
//! mounting, and reports every block, name, directory id and symlink target that a mount would
//! answer with EIO. With `repair_truncate` it cuts damaged files back to their last good block.
//!
//! The decoding is the format's own (`cipher::content`, `cipher::names`, `cipher::symlink`); this
//! module only decides what to visit and how to report it. Run it on a volume that is not mounted:
//! a repair racing a mount's writes would judge blocks that are still being written.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cipher::content::{
    block_offset, decode_header, plain_size, plain_size_conservative, BlockCipher, BACKING_BLOCK_SIZE,
    BLOCK_OVERHEAD, BLOCK_SIZE, HEADER_LEN,
};
use crate::cipher::names::{
    classify, side_file_matches, side_file_name, DirId, EntryKind, NameCipher, DIR_ID_FILE, DIR_ID_LEN,
    LONG_NAME_SUFFIX,
};
use crate::cipher::symlink::{decrypt_target, Link};
use crate::keys::VolumeKeys;

/// Blocks read per backing `pread` while checking a file (1 MiB of plaintext).
const BLOCKS_PER_READ: u64 = 256;
/// Longest long-name side file the format writes, with room to spare.
const MAX_SIDE_FILE_LEN: u64 = 512;

/// Why the check itself could not run (as opposed to damage it found, which is reported).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The backing tree could not be read or a repair could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The backing path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The root of the tree is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FsckError + '_ {
    move |source| FsckError::Io { path: path.to_path_buf(), source }
}

/// What to do besides reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Cut every damaged file back to its last good block.
    pub repair_truncate: bool,
}

/// One piece of damage: what a mount would answer with EIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Damage {
    /// A content block that fails authentication where it stands.
    #[serde(rename_all = "camelCase")]
    UnreadableBlock {
        /// The block index (block `i` holds plaintext bytes `[4096 i, 4096 (i + 1))`).
        block: u64,
        /// Why it fails.
        reason: String,
    },
    /// A file header that is not a cryptvol header: every block of the file is unreadable.
    BadFileHeader,
    /// A backing size that no plaintext size maps to: every read of the file fails.
    #[serde(rename_all = "camelCase")]
    BadLength {
        /// The backing size.
        backing_size: u64,
    },
    /// A backing entry name that does not decrypt in its directory (listing the directory fails).
    BadName {
        /// Why it fails.
        reason: String,
    },
    /// A directory whose `.cvdir` is missing or malformed (its lookup and listing fail).
    BadDirectoryId {
        /// Why it fails.
        reason: String,
    },
    /// A symlink whose target does not decrypt (`readlink` fails).
    BadSymlinkTarget,
    /// An object cryptvol never creates (a device node).
    Foreign {
        /// What it is.
        what: String,
    },
}

/// Damage at one place in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Plaintext path from the volume root, `?` components where a name did not decrypt.
    pub path: String,
    /// The backing path.
    pub backing: PathBuf,
    /// What is wrong.
    #[serde(flatten)]
    pub damage: Damage,
}

/// A file cut back by `--repair-truncate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// Plaintext path.
    pub path: String,
    /// The backing path.
    pub backing: PathBuf,
    /// Plaintext size before (as `stat` reported it).
    pub old_size: u64,
    /// Plaintext size after: every byte of it reads.
    pub new_size: u64,
}

/// Bookkeeping a crash can leave behind: harmless, reported for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leftover {
    /// The backing path.
    pub backing: PathBuf,
    /// What it is.
    pub what: String,
}

/// Everything one check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Directories visited.
    pub directories: u64,
    /// Regular files checked (hard links count once).
    pub files: u64,
    /// Content blocks checked.
    pub blocks: u64,
    /// Symlinks checked.
    pub symlinks: u64,
    /// Damage found (before any repair).
    pub problems: Vec<Problem>,
    /// Files cut back by the repair.
    pub repairs: Vec<Repair>,
    /// Leftover bookkeeping entries (not damage).
    pub leftovers: Vec<Leftover>,
    /// Damaged files the repair could not make whole (or all of them without a repair).
    pub unrepaired_files: u64,
}

impl Report {
    /// True when no damage was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// True when damage remains: found and not (entirely) repaired.
    pub fn damage_remains(&self) -> bool {
        self.unrepaired_files > 0 || self.problems.iter().any(|p| !is_file_damage(&p.damage))
    }

    /// The report as lines of text, one per finding, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let what = match &p.damage {
                Damage::UnreadableBlock { block, reason } => format!("block {block} unreadable: {reason}"),
                Damage::BadFileHeader => "file header malformed: every block unreadable".to_owned(),
                Damage::BadLength { backing_size } => {
                    format!("backing size {backing_size} is impossible: every read fails")
                }
                Damage::BadName { reason } => format!("name does not decrypt: {reason}"),
                Damage::BadDirectoryId { reason } => format!("directory id: {reason}"),
                Damage::BadSymlinkTarget => "symlink target does not decrypt".to_owned(),
                Damage::Foreign { what } => format!("{what}: not created by cryptvol"),
            };
            out.push_str(&format!("DAMAGED {} ({}): {what}\n", p.path, p.backing.display()));
        }
        for r in &self.repairs {
            out.push_str(&format!(
                "REPAIRED {} ({}): cut from {} to {} bytes\n",
                r.path,
                r.backing.display(),
                r.old_size,
                r.new_size
            ));
        }
        for l in &self.leftovers {
            out.push_str(&format!("LEFTOVER {}: {}\n", l.backing.display(), l.what));
        }
        out.push_str(&format!(
            "{} directories, {} files, {} blocks, {} symlinks checked; {} problems, {} files repaired, {} \
             damaged files left\n",
            self.directories,
            self.files,
            self.blocks,
            self.symlinks,
            self.problems.len(),
            self.repairs.len(),
            self.unrepaired_files
        ));
        out
    }
}

fn is_file_damage(damage: &Damage) -> bool {
    match damage {
        Damage::UnreadableBlock { .. } | Damage::BadFileHeader | Damage::BadLength { .. } => true,
        Damage::BadName { .. }
        | Damage::BadDirectoryId { .. }
        | Damage::BadSymlinkTarget
        | Damage::Foreign { .. } => false,
    }
}

/// Checks the encrypted tree rooted at `data_dir` (a volume's `data/` directory) under `keys`.
pub fn check_tree(data_dir: &Path, keys: &VolumeKeys, opts: FsckOptions) -> Result<Report, FsckError> {
    let meta = std::fs::metadata(data_dir).map_err(io_error(data_dir))?;
    if !meta.is_dir() {
        return Err(FsckError::NotADirectory(data_dir.to_path_buf()));
    }
    let mut walk = Walk { keys, opts, report: Report::default(), seen: HashSet::new() };
    walk.directory(data_dir, "")?;
    Ok(walk.report)
}

struct Walk<'k> {
    keys: &'k VolumeKeys,
    opts: FsckOptions,
    report: Report,
    /// (device, inode) of the files checked, so hard links are checked once.
    seen: HashSet<(u64, u64)>,
}

impl Walk<'_> {
    fn problem(&mut self, path: &str, backing: &Path, damage: Damage) {
        let path = if path.is_empty() { "/".to_owned() } else { path.to_owned() };
        self.report.problems.push(Problem { path, backing: backing.to_path_buf(), damage });
    }

    fn leftover(&mut self, backing: PathBuf, what: &str) {
        self.report.leftovers.push(Leftover { backing, what: what.to_owned() });
    }

    fn directory(&mut self, dir: &Path, path: &str) -> Result<(), FsckError> {
        self.report.directories += 1;
        let dir_id = match read_dir_id(dir) {
            Ok(id) => Some(id),
            Err(reason) => {
                self.problem(path, dir, Damage::BadDirectoryId { reason });
                None
            }
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_error(dir))?;
        entries.sort();
        let present: HashSet<&[u8]> = entries.iter().map(|n| n.as_bytes()).collect();
        for name in &entries {
            let backing = dir.join(name);
            let raw = name.as_bytes();
            let encoded = match classify(raw) {
                EntryKind::Internal => {
                    self.internal(raw, &present, backing);
                    continue;
                }
                EntryKind::Short(encoded) => Ok(encoded.to_owned()),
                EntryKind::Long(entry) => read_side_file(dir, entry),
                EntryKind::Foreign => Err("not a name cryptvol writes".to_owned()),
            };
            let plain = match (encoded, &dir_id) {
                (Ok(encoded), Some(id)) => NameCipher::new(self.keys.names())
                    .decrypt(id, &encoded)
                    .map_err(|e| format!("{e} under the directory's id")),
                (Ok(_), None) => Err("the directory has no valid id".to_owned()),
                (Err(reason), _) => Err(reason),
            };
            let child = match &plain {
                Ok(plain) => format!("{path}/{}", String::from_utf8_lossy(plain)),
                Err(_) => format!("{path}/?{}", name.to_string_lossy()),
            };
            // A directory without an id already explains why its names fail; report it once.
            let link = match (&plain, &dir_id) {
                (Ok(plain), Some(id)) => Some((*id, plain.clone())),
                _ => None,
            };
            if let (Err(reason), Some(_)) = (plain, &dir_id) {
                self.problem(&child, &backing, Damage::BadName { reason });
            }
            self.entry(&backing, &child, link)?;
        }
        Ok(())
    }

    /// Bookkeeping names: the id file, long-name side files and temporaries.
    fn internal(&mut self, raw: &[u8], present: &HashSet<&[u8]>, backing: PathBuf) {
        if raw == DIR_ID_FILE.as_bytes() {
            return;
        }
        if let Some(entry) = raw.strip_suffix(LONG_NAME_SUFFIX.as_bytes()) {
            if entry.starts_with(b"~") && present.contains(entry) {
                return;
            }
            if entry.starts_with(b"~") {
                self.leftover(backing, "long-name side file without its entry");
                return;
            }
        }
        if raw.starts_with(b".cvtmp-") {
            self.leftover(backing, "temporary entry left by an interrupted create, mkdir or rename");
        } else {
            self.leftover(backing, "hidden entry cryptvol does not list");
        }
    }

    /// Checks one entry; `link` is its directory id and plaintext name when both are known
    /// (a symlink target is bound to them and cannot be checked without).
    fn entry(&mut self, backing: &Path, path: &str, link: Option<(DirId, Vec<u8>)>) -> Result<(), FsckError> {
        let meta = std::fs::symlink_metadata(backing).map_err(io_error(backing))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            self.directory(backing, path)
        } else if kind.is_symlink() {
            self.report.symlinks += 1;
            let target = std::fs::read_link(backing).map_err(io_error(backing))?;
            if let Some((dir_id, name)) = &link {
                let bound = Link { dir_id, name };
                if decrypt_target(self.keys.symlinks(), bound, target.as_os_str().as_bytes()).is_err() {
                    self.problem(path, backing, Damage::BadSymlinkTarget);
                }
            }
            Ok(())
        } else if kind.is_file() {
            if self.seen.insert((meta.dev(), meta.ino())) {
                self.file(backing, path)?;
            }
            Ok(())
        } else if kind.is_block_device() || kind.is_char_device() {
            self.problem(path, backing, Damage::Foreign { what: "device node".to_owned() });
            Ok(())
        } else {
            Ok(()) // FIFOs and sockets hold no data.
        }
    }

    fn file(&mut self, backing: &Path, path: &str) -> Result<(), FsckError> {
        self.report.files += 1;
        let writable = self.opts.repair_truncate;
        let file = OpenOptions::new().read(true).write(writable).open(backing).map_err(io_error(backing))?;
        let scan = scan_file(&file, self.keys).map_err(io_error(backing))?;
        self.report.blocks += scan.blocks_checked;
        if scan.damage.is_empty() {
            return Ok(());
        }
        for damage in scan.damage.iter().cloned() {
            self.problem(path, backing, damage);
        }
        if !self.opts.repair_truncate {
            self.report.unrepaired_files += 1;
            return Ok(());
        }
        let new_size = cut_back(&file, &scan).map_err(io_error(backing))?;
        let old_size = plain_size_conservative(scan.backing_size);
        self.report.repairs.push(Repair {
            path: path.to_owned(),
            backing: backing.to_path_buf(),
            old_size,
            new_size,
        });
        Ok(())
    }
}

fn read_dir_id(dir: &Path) -> Result<DirId, String> {
    let path = dir.join(DIR_ID_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{DIR_ID_FILE} holds {} bytes, not {DIR_ID_LEN}", b.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{DIR_ID_FILE} is missing")),
        Err(e) => Err(format!("cannot read {DIR_ID_FILE}: {e}")),
    }
}

fn read_side_file(dir: &Path, entry: &str) -> Result<String, String> {
    let path = dir.join(side_file_name(entry));
    let file = File::open(&path).map_err(|e| format!("long-name side file: {e}"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_SIDE_FILE_LEN + 1), &mut bytes)
        .map_err(|e| format!("long-name side file: {e}"))?;
    let encoded = String::from_utf8(bytes).map_err(|_| "long-name side file is not text".to_owned())?;
    if !side_file_matches(entry, &encoded) {
        return Err("long-name side file does not belong to its entry".to_owned());
    }
    Ok(encoded)
}

/// How one block of a file opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    /// Opens as what it should be where it stands.
    Good,
    /// Opens only with the other last-block flag: intact plaintext in the wrong role (a cut file,
    /// or an extension that stopped between its writes).
    WrongFlag { sealed_last: bool },
    /// Does not open at all.
    Bad,
}

/// What scanning one backing file found.
struct Scan {
    backing_size: u64,
    /// The file's cipher, when the header decodes.
    cipher: Option<BlockCipher>,
    /// State of every block present (whole or partial), in order.
    blocks: Vec<BlockState>,
    blocks_checked: u64,
    damage: Vec<Damage>,
}

fn scan_file(file: &File, keys: &VolumeKeys) -> std::io::Result<Scan> {
    let backing_size = file.metadata()?.len();
    let mut scan =
        Scan { backing_size, cipher: None, blocks: Vec::new(), blocks_checked: 0, damage: Vec::new() };
    if backing_size == 0 {
        return Ok(scan);
    }
    let layout_ok = plain_size(backing_size).is_some();
    if !layout_ok {
        scan.damage.push(Damage::BadLength { backing_size });
    }
    let mut header = [0u8; HEADER_LEN];
    if backing_size < HEADER_LEN as u64 {
        return Ok(scan);
    }
    file.read_exact_at(&mut header, 0)?;
    let Ok(file_id) = decode_header(&header) else {
        scan.damage.push(Damage::BadFileHeader);
        return Ok(scan);
    };
    let cipher = BlockCipher::new(keys, file_id);
    let body = backing_size - HEADER_LEN as u64;
    let count = body.div_ceil(BACKING_BLOCK_SIZE as u64);

    let mut plain = Vec::with_capacity(BLOCK_SIZE);
    let mut first = 0;
    while first < count {
        let last = (first + BLOCKS_PER_READ).min(count);
        let start = block_offset(first);
        let stop = block_offset(last).min(backing_size);
        let mut sealed = vec![0u8; (stop - start) as usize];
        file.read_exact_at(&mut sealed, start)?;
        for (index, chunk) in (first..last).zip(sealed.chunks(BACKING_BLOCK_SIZE)) {
            // In a file of impossible length no block reads, so none is expected to be the last.
            let expect_last = layout_ok && index + 1 == count;
            let state = if chunk.len() <= BLOCK_OVERHEAD {
                BlockState::Bad
            } else if cipher.decrypt_block(index, expect_last, chunk, &mut plain).is_ok() {
                BlockState::Good
            } else if cipher.decrypt_block(index, !expect_last, chunk, &mut plain).is_ok() {
                BlockState::WrongFlag { sealed_last: !expect_last }
            } else {
                BlockState::Bad
            };
            plain.clear();
            let reason = match state {
                BlockState::Good => None,
                BlockState::WrongFlag { sealed_last: true } => {
                    Some("sealed as the last block but more follow (an extension stopped half way)")
                }
                BlockState::WrongFlag { sealed_last: false } => Some(
                    "sealed as a middle block but the file ends here (cut, or an extension stopped half way)",
                ),
                BlockState::Bad if chunk.len() <= BLOCK_OVERHEAD => {
                    Some("a fragment too short to hold a block")
                }
                BlockState::Bad => Some("authentication failed (torn write, tampering or another key)"),
            };
            if let Some(reason) = reason {
                scan.damage.push(Damage::UnreadableBlock { block: index, reason: reason.to_owned() });
            }
            scan.blocks.push(state);
        }
        scan.blocks_checked += last - first;
        first = last;
    }
    scan.cipher = Some(cipher);
    Ok(scan)
}

/// Cuts a damaged file back to its last good block and reseals that block as the last one.
/// Returns the new plaintext size. Blocks up to the first unreadable one are kept; that one is
/// kept too when its plaintext is intact and only its last-block flag is wrong.
fn cut_back(file: &File, scan: &Scan) -> std::io::Result<u64> {
    let Some(cipher) = &scan.cipher else {
        file.set_len(0)?;
        file.sync_all()?;
        return Ok(0);
    };
    let first_bad = scan.blocks.iter().position(|s| *s != BlockState::Good).unwrap_or(scan.blocks.len());
    let keep = match scan.blocks.get(first_bad) {
        Some(BlockState::WrongFlag { .. }) => first_bad + 1,
        _ => first_bad,
    };
    if keep == 0 {
        file.set_len(0)?;
        file.sync_all()?;
        return Ok(0);
    }
    let index = keep as u64 - 1;
    let start = block_offset(index);
    let stop = block_offset(index + 1).min(scan.backing_size);
    let mut sealed = vec![0u8; (stop - start) as usize];
    file.read_exact_at(&mut sealed, start)?;
    let mut plain = Vec::with_capacity(BLOCK_SIZE);
    let opened = cipher.decrypt_block(index, false, &sealed, &mut plain).is_ok()
        || cipher.decrypt_block(index, true, &sealed, &mut plain).is_ok();
    if !opened {
        return Err(std::io::Error::other(format!("block {index} no longer opens; is the volume mounted?")));
    }
    let mut resealed = Vec::with_capacity(BACKING_BLOCK_SIZE);
    cipher
        .encrypt_block(index, true, &plain, &mut resealed)
        .map_err(|e| std::io::Error::other(format!("cannot reseal block {index}: {e}")))?;
    file.write_all_at(&resealed, start)?;
    file.set_len(start + resealed.len() as u64)?;
    file.sync_all()?;
    Ok(index * BLOCK_SIZE as u64 + plain.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::content::{encode_header, FileId};
    use crate::cipher::names::BackingName;
    use crate::cipher::symlink::encrypt_target;
    use crate::keys::DataKey;

    struct Tree {
        dir: tempfile::TempDir,
        keys: VolumeKeys,
        root_id: DirId,
    }

    impl Tree {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root_id = [3u8; DIR_ID_LEN];
            std::fs::write(dir.path().join(DIR_ID_FILE), root_id).unwrap();
            Tree { dir, keys: DataKey::generate().unwrap().derive(), root_id }
        }

        fn name(&self, plain: &str) -> BackingName {
            NameCipher::new(self.keys.names()).encrypt(&self.root_id, plain.as_bytes()).unwrap()
        }

        /// Writes an encrypted file of `len` bytes (byte i = i mod 251); returns its backing path.
        fn file(&self, plain: &str, len: usize) -> PathBuf {
            let name = self.name(plain);
            if let Some((side, encoded)) = name.side_file() {
                std::fs::write(self.dir.path().join(side), encoded).unwrap();
            }
            let file_id: FileId = [len as u8; 16];
            let cipher = BlockCipher::new(&self.keys, file_id);
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = if len == 0 { Vec::new() } else { encode_header(&file_id).to_vec() };
            let blocks = data.chunks(BLOCK_SIZE).count();
            for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
                cipher.encrypt_block(i as u64, i + 1 == blocks, chunk, &mut out).unwrap();
            }
            let path = self.dir.path().join(name.entry());
            std::fs::write(&path, out).unwrap();
            path
        }

        fn check(&self, repair: bool) -> Report {
            check_tree(self.dir.path(), &self.keys, FsckOptions { repair_truncate: repair }).unwrap()
        }

        /// The plaintext of a backing file, read block by block as a mount would.
        fn read(&self, path: &Path) -> Vec<u8> {
            let file = File::open(path).unwrap();
            let scan = scan_file(&file, &self.keys).unwrap();
            assert!(scan.damage.is_empty(), "{:?}", scan.damage);
            let bytes = std::fs::read(path).unwrap();
            let cipher = scan.cipher.unwrap();
            let mut plain = Vec::new();
            let chunks: Vec<_> = bytes[HEADER_LEN..].chunks(BACKING_BLOCK_SIZE).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                cipher.decrypt_block(i as u64, i + 1 == chunks.len(), chunk, &mut plain).unwrap();
            }
            plain
        }
    }

    fn blocks(report: &Report) -> Vec<(String, u64)> {
        let mut out: Vec<_> = report
            .problems
            .iter()
            .filter_map(|p| match &p.damage {
                Damage::UnreadableBlock { block, .. } => Some((p.path.clone(), *block)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_healthy_tree_is_clean() {
        let t = Tree::new();
        t.file("three-blocks", 3 * BLOCK_SIZE - 5);
        t.file(&"long".repeat(50), 10);
        t.file("empty", 0);
        let link = t.name("link");
        let bound = Link { dir_id: &t.root_id, name: b"link" };
        let target = encrypt_target(t.keys.symlinks(), bound, b"three-blocks").unwrap();
        std::os::unix::fs::symlink(target, t.dir.path().join(link.entry())).unwrap();
        let report = t.check(false);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.files, report.blocks, report.symlinks), (3, 4, 1));
        assert!(report.leftovers.is_empty());
    }

    #[test]
    fn a_cut_at_a_block_boundary_is_found_and_repaired() {
        let t = Tree::new();
        let path = t.file("cut", 3 * BLOCK_SIZE + 7);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(block_offset(2)).unwrap();
        let report = t.check(false);
        assert_eq!(blocks(&report), [("/cut".to_owned(), 1)]);
        assert!(report.damage_remains());

        let report = t.check(true);
        assert_eq!(report.repairs[0].new_size, 2 * BLOCK_SIZE as u64);
        assert!(!report.damage_remains());
        let want: Vec<u8> = (0..2 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        assert_eq!(t.read(&path), want);
        assert!(t.check(false).is_clean());
    }

    #[test]
    fn a_torn_block_is_found_and_the_file_cut_before_it() {
        let t = Tree::new();
        let path = t.file("torn", 4 * BLOCK_SIZE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 100], block_offset(1) + 500).unwrap();
        assert_eq!(blocks(&t.check(false)), [("/torn".to_owned(), 1)]);
        let report = t.check(true);
        assert_eq!(report.repairs[0].new_size, BLOCK_SIZE as u64);
        assert_eq!(t.read(&path).len(), BLOCK_SIZE);
    }

    #[test]
    fn impossible_lengths_and_headers_are_reported() {
        let t = Tree::new();
        let short = t.file("fragment", BLOCK_SIZE + 100);
        OpenOptions::new().write(true).open(&short).unwrap().set_len(block_offset(1) + 20).unwrap();
        let header = t.file("header", 10);
        OpenOptions::new().write(true).open(&header).unwrap().write_all_at(b"XXXX", 0).unwrap();
        let report = t.check(false);
        let kinds: Vec<_> = report.problems.iter().map(|p| (p.path.as_str(), p.damage.clone())).collect();
        assert!(kinds.contains(&("/fragment", Damage::BadLength { backing_size: block_offset(1) + 20 })));
        assert!(kinds.contains(&("/header", Damage::BadFileHeader)));
        let report = t.check(true);
        assert_eq!(report.repairs.len(), 2);
        assert_eq!(t.read(&short).len(), BLOCK_SIZE);
        assert_eq!(std::fs::metadata(&header).unwrap().len(), 0);
        assert!(t.check(false).is_clean());
    }

    #[test]
    fn names_directory_ids_and_symlinks_are_checked() {
        let t = Tree::new();
        // A name sealed for another directory, a foreign name, a long name without its side file.
        let moved = NameCipher::new(t.keys.names()).encrypt(&[9; 16], b"moved").unwrap();
        std::fs::write(t.dir.path().join(moved.entry()), b"").unwrap();
        std::fs::write(t.dir.path().join("not base64!"), b"").unwrap();
        let long = t.name(&"x".repeat(200));
        std::fs::write(t.dir.path().join(long.entry()), b"").unwrap();
        // A directory without an id, a symlink with a bad target, a leftover temporary.
        let sub = t.name("sub");
        std::fs::create_dir(t.dir.path().join(sub.entry())).unwrap();
        std::os::unix::fs::symlink("AAAA", t.dir.path().join(t.name("bad-link").entry())).unwrap();
        std::fs::create_dir(t.dir.path().join(".cvtmp-0123456789abcdef")).unwrap();

        let report = t.check(false);
        let mut found: Vec<_> = report
            .problems
            .iter()
            .map(|p| match &p.damage {
                Damage::BadName { .. } => {
                    format!("name {}", p.backing.file_name().unwrap().to_string_lossy())
                }
                Damage::BadDirectoryId { .. } => format!("dir-id {}", p.path),
                Damage::BadSymlinkTarget => format!("target {}", p.path),
                other => format!("{other:?}"),
            })
            .collect();
        found.sort();
        let mut want = vec![
            format!("name {}", moved.entry()),
            "name not base64!".to_owned(),
            format!("name {}", long.entry()),
            "dir-id /sub".to_owned(),
            "target /bad-link".to_owned(),
        ];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(report.leftovers.len(), 1);
        assert!(report.damage_remains());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["problems"].as_array().unwrap().len(), 5);
        assert!(json["problems"].as_array().unwrap().iter().any(|p| p["kind"] == "badSymlinkTarget"));
    }
}
