//! Backing directories: their ids, encrypted entry names, long-name side files and listings.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;
use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::cipher::names::{
    classify, side_file_matches, side_file_name, BackingName, DirId, EntryKind, NameCipher, DIR_ID_FILE,
    DIR_ID_LEN,
};
use crate::cipher::{random_bytes, CipherError};

use super::error::{BackingResult, FsError};
use super::inode::kind_of;
use super::sys;

/// Longest side file: the base64url encoding of a 255-byte name's SIV output.
const MAX_SIDE_FILE_LEN: usize = 512;

fn c_name(name: &str) -> CString {
    match CString::new(name) {
        Ok(name) => name,
        Err(_) => unreachable!("names this format writes are base64url or fixed ASCII"),
    }
}

/// A fresh random directory id.
pub(crate) fn new_dir_id() -> Result<DirId, FsError> {
    let mut id = [0u8; DIR_ID_LEN];
    random_bytes(&mut id).map_err(|_| FsError::Random)?;
    Ok(id)
}

/// Reads the id of backing directory `dir` (inode `ino`, for errors).
pub(crate) fn read_dir_id(dir: BorrowedFd<'_>, ino: u64) -> Result<DirId, FsError> {
    let bytes = match sys::read_small_file(dir, &c_name(DIR_ID_FILE), DIR_ID_LEN) {
        Ok(bytes) => bytes,
        Err(FsError::Backing { errno: nix::errno::Errno::ENOENT, .. }) => return Err(FsError::DirId { ino }),
        Err(err) => return Err(err),
    };
    bytes.try_into().map_err(|_| FsError::DirId { ino })
}

/// Writes `id` as the id of backing directory `dir`, atomically.
pub(crate) fn write_dir_id(dir: BorrowedFd<'_>, id: &DirId) -> Result<(), FsError> {
    sys::write_file_atomic(dir, &c_name(DIR_ID_FILE), id)
}

/// Removes the id file of `dir` (before the directory itself is removed).
pub(crate) fn remove_dir_id(dir: BorrowedFd<'_>) -> Result<(), FsError> {
    unlinkat(dir, c_name(DIR_ID_FILE).as_c_str(), UnlinkatFlags::NoRemoveDir).op("unlinkat")
}

/// Encrypts plaintext `name` for directory `dir_id`, mapping cipher errors to file system ones.
pub(crate) fn encrypt_name(
    names: &NameCipher<'_>,
    dir_id: &DirId,
    name: &OsStr,
) -> Result<BackingName, FsError> {
    names.encrypt(dir_id, name.as_bytes()).map_err(|err| match err {
        CipherError::NameTooLong => FsError::NameTooLong,
        CipherError::Authentication
        | CipherError::Malformed
        | CipherError::InvalidName
        | CipherError::EmptyTarget
        | CipherError::TargetTooLong
        | CipherError::BlockTooLong
        | CipherError::Random(_) => FsError::InvalidName,
    })
}

/// Writes the side file of a long name before its entry is created; a no-op for short names.
pub(crate) fn create_side_file(dir: BorrowedFd<'_>, name: &BackingName) -> Result<(), FsError> {
    match name.side_file() {
        Some((file, encoded)) => sys::write_file_atomic(dir, &c_name(&file), encoded.as_bytes()),
        None => Ok(()),
    }
}

/// Removes the side file of a long name after its entry is gone; a no-op for short names.
pub(crate) fn remove_side_file(dir: BorrowedFd<'_>, name: &BackingName) -> Result<(), FsError> {
    let Some((file, _)) = name.side_file() else {
        return Ok(());
    };
    match unlinkat(dir, c_name(&file).as_c_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(FsError::Backing { op: "unlinkat", errno }),
    }
}

/// One decrypted entry of a directory listing.
#[derive(Debug, Clone)]
pub(crate) struct DirEntry {
    /// The plaintext name.
    pub name: Vec<u8>,
    /// The backing inode number.
    pub backing_ino: u64,
    /// The entry type.
    pub kind: FileType,
}

/// Opens backing directory `dir` for listing.
fn open_listing(dir: BorrowedFd<'_>) -> Result<Dir, FsError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    Dir::openat(dir, ".", flags, Mode::empty()).op("opendir")
}

/// Lists and decrypts directory `dir` (inode `ino`, id `dir_id`). Any entry that does not decrypt
/// fails the whole listing: tampering is reported, never hidden.
pub(crate) fn list(
    dir: BorrowedFd<'_>,
    ino: u64,
    dir_id: &DirId,
    names: &NameCipher<'_>,
) -> Result<Vec<DirEntry>, FsError> {
    let mut listing = open_listing(dir)?;
    let mut entries = Vec::new();
    for entry in listing.iter() {
        let entry = entry.op("readdir")?;
        let backing = entry.file_name().to_bytes();
        let encoded = match classify(backing) {
            EntryKind::Internal => continue,
            EntryKind::Short(encoded) => encoded.to_owned(),
            EntryKind::Long(entry_name) => read_side_file(dir, ino, entry_name)?,
            EntryKind::Foreign => return Err(name_error(ino, backing)),
        };
        let name = names.decrypt(dir_id, &encoded).map_err(|_| name_error(ino, backing))?;
        let kind = match entry.file_type() {
            Some(kind) => file_type(kind),
            None => {
                let st = fstatat(dir, entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW).op("fstatat")?;
                kind_of(st.st_mode)
            }
        };
        entries.push(DirEntry { name, backing_ino: entry.ino(), kind });
    }
    Ok(entries)
}

fn file_type(kind: Type) -> FileType {
    match kind {
        Type::Fifo => FileType::NamedPipe,
        Type::CharacterDevice => FileType::CharDevice,
        Type::Directory => FileType::Directory,
        Type::BlockDevice => FileType::BlockDevice,
        Type::File => FileType::RegularFile,
        Type::Symlink => FileType::Symlink,
        Type::Socket => FileType::Socket,
    }
}

fn name_error(dir: u64, backing: &[u8]) -> FsError {
    FsError::Name { dir, entry: String::from_utf8_lossy(backing).into_owned() }
}

fn read_side_file(dir: BorrowedFd<'_>, ino: u64, entry: &str) -> Result<String, FsError> {
    let missing = || FsError::LongName { dir: ino, entry: entry.to_owned() };
    let bytes = match sys::read_small_file(dir, &c_name(&side_file_name(entry)), MAX_SIDE_FILE_LEN) {
        Ok(bytes) => bytes,
        Err(FsError::Backing { errno: nix::errno::Errno::ENOENT, .. }) => return Err(missing()),
        Err(err) => return Err(err),
    };
    let encoded = String::from_utf8(bytes).map_err(|_| missing())?;
    if !side_file_matches(entry, &encoded) {
        return Err(missing());
    }
    Ok(encoded)
}

/// True when backing directory `dir` holds nothing but its id file.
pub(crate) fn is_empty(dir: BorrowedFd<'_>) -> Result<bool, FsError> {
    let mut listing = open_listing(dir)?;
    for entry in listing.iter() {
        let entry = entry.op("readdir")?;
        let name: &CStr = entry.file_name();
        if !matches!(name.to_bytes(), b"." | b".." | b".cvdir") {
            return Ok(false);
        }
    }
    Ok(true)
}
