//! Reads, writes and truncates the plaintext of one encrypted backing file.
//!
//! These functions hold no locks themselves: the caller holds the inode's lock, shared for
//! [`read`] and exclusive for everything that changes the file, so each call sees and leaves a
//! backing file whose every block authenticates.

use std::fs::File;
use std::sync::Arc;

use crate::cipher::content::{
    backing_size, block_count, block_offset, decode_header, encode_header, plain_size, BlockCipher, FileId,
    BACKING_BLOCK_SIZE, BLOCK_SIZE, FILE_ID_LEN, HEADER_LEN,
};
use crate::cipher::random_bytes;

use super::error::FsError;
use super::sys;

const BLOCK: u64 = BLOCK_SIZE as u64;

/// Blocks sealed per backing write when a write or truncate spans many blocks (1 MiB).
const BLOCKS_PER_CHUNK: u64 = 256;

/// Largest plaintext size: keeps every backing offset far inside `i64`.
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// Supplies the cipher of a file identity (the per-inode cache in the mounted file system).
pub(crate) trait CipherSource {
    /// The cipher for the file with identity `file_id`.
    fn cipher(&self, file_id: &FileId) -> Result<Arc<BlockCipher>, FsError>;
}

/// One backing file, as seen by one operation.
pub(crate) struct Content<'a> {
    file: &'a File,
    ino: u64,
    ciphers: &'a dyn CipherSource,
}

/// The decoded state of a backing file.
enum State {
    /// Backing size 0: an empty file, no header.
    Empty,
    /// A header and `size` plaintext bytes of blocks.
    Sealed { size: u64, cipher: Arc<BlockCipher> },
}

impl State {
    fn size(&self) -> u64 {
        match self {
            State::Empty => 0,
            State::Sealed { size, .. } => *size,
        }
    }
}

impl<'a> Content<'a> {
    /// `file` must be open for reading (and writing, for the mutating calls); `ino` names the file
    /// in errors and logs.
    pub(crate) fn new(file: &'a File, ino: u64, ciphers: &'a dyn CipherSource) -> Self {
        Content { file, ino, ciphers }
    }

    fn state(&self) -> Result<State, FsError> {
        let backing = self.file.metadata().map_err(FsError::Io)?.len();
        if backing == 0 {
            return Ok(State::Empty);
        }
        let size = plain_size(backing).ok_or(FsError::FileLayout { ino: self.ino, size: backing })?;
        let mut header = [0u8; HEADER_LEN];
        sys::read_exact_at(self.file, &mut header, 0)?;
        let file_id = decode_header(&header).map_err(|_| FsError::FileHeader { ino: self.ino })?;
        Ok(State::Sealed { size, cipher: self.ciphers.cipher(&file_id)? })
    }

    /// The plaintext size.
    #[cfg(test)]
    pub(crate) fn size(&self) -> Result<u64, FsError> {
        Ok(self.state()?.size())
    }

    /// Reads up to `len` plaintext bytes at `offset`; fewer at end of file.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let State::Sealed { size, cipher } = self.state()? else {
            return Ok(Vec::new());
        };
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len as u64));
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let blocks = block_count(size);
        let start = block_offset(first);
        let stop = block_offset(last + 1).min(backing_size(size));
        let mut sealed = vec![0u8; (stop - start) as usize];
        sys::read_exact_at(self.file, &mut sealed, start)?;

        let mut plain = Vec::with_capacity(((last - first + 1) * BLOCK) as usize);
        for (i, chunk) in (first..=last).zip(sealed.chunks(BACKING_BLOCK_SIZE)) {
            cipher
                .decrypt_block(i, i + 1 == blocks, chunk, &mut plain)
                .map_err(|_| FsError::BlockAuthentication { ino: self.ino, block: i })?;
        }
        crate::metrics::get().decrypted(plain.len());
        let skip = (offset - first * BLOCK) as usize;
        let take = (end - offset) as usize;
        plain.drain(..skip);
        plain.truncate(take);
        Ok(plain)
    }

    /// Writes `data` at `offset`, extending the file (and zero-filling any gap) when needed.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let state = self.state()?;
        self.write_with(state, offset, data)
    }

    /// Writes `data` at the current end of file; returns the offset it landed at.
    pub(crate) fn append(&self, data: &[u8]) -> Result<u64, FsError> {
        let state = self.state()?;
        let offset = state.size();
        self.write_with(state, offset, data)?;
        Ok(offset)
    }

    /// Truncates or extends the file to `new_size` plaintext bytes.
    pub(crate) fn set_len(&self, new_size: u64) -> Result<(), FsError> {
        if new_size > MAX_FILE_SIZE {
            return Err(FsError::FileTooLarge);
        }
        let state = match self.state() {
            Ok(state) => state,
            // Truncating to zero is how a user discards a damaged file.
            Err(err) if new_size == 0 && err.is_integrity_failure() => return sys::set_len(self.file, 0),
            Err(err) => return Err(err),
        };
        let old = state.size();
        match state {
            _ if new_size == old => Ok(()),
            State::Sealed { .. } if new_size == 0 => sys::set_len(self.file, 0),
            State::Sealed { ref cipher, .. } if new_size < old => self.shrink(cipher, old, new_size),
            State::Empty | State::Sealed { .. } => self.seal_range(state, new_size, new_size, &[]),
        }
    }

    /// `fallocate` of `len` bytes at `offset`: the file grows to `offset + len` with encrypted
    /// zeros when it is shorter (every block of a file is always allocated); with `keep_size`, the
    /// backing space for that range is reserved instead and the size stays.
    pub(crate) fn allocate(&self, offset: u64, len: u64, keep_size: bool) -> Result<(), FsError> {
        let end = offset.checked_add(len).filter(|&end| end <= MAX_FILE_SIZE).ok_or(FsError::FileTooLarge)?;
        let state = self.state()?;
        let old = state.size();
        if end <= old {
            return Ok(());
        }
        if !keep_size {
            return self.seal_range(state, end, end, &[]);
        }
        let from = backing_size(old);
        sys::keep_size_fallocate(self.file, from, backing_size(end) - from)
            .map_err(|errno| FsError::Backing { op: "fallocate", errno })
    }

    fn write_with(&self, state: State, offset: u64, data: &[u8]) -> Result<(), FsError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).filter(|&end| end <= MAX_FILE_SIZE);
        let end = end.ok_or(FsError::FileTooLarge)?;
        self.seal_range(state, offset, end, data)
    }

    /// Cuts the file to `new_size` (> 0): the new last block is resealed with the last-block flag.
    fn shrink(&self, cipher: &BlockCipher, old: u64, new_size: u64) -> Result<(), FsError> {
        let index = (new_size - 1) / BLOCK;
        let keep = (new_size - index * BLOCK) as usize;
        let mut plain = self.open_block(cipher, index, old)?;
        plain.truncate(keep);
        let mut sealed = Vec::with_capacity(BACKING_BLOCK_SIZE);
        seal(cipher, index, true, &plain, &mut sealed)?;
        sys::write_all_at(self.file, &sealed, block_offset(index))?;
        sys::set_len(self.file, backing_size(new_size))
    }

    /// Seals every block touched by writing `data` at `offset` (`data` may be empty when only
    /// extending to `end`). When the file grows, the old last block is resealed without the
    /// last-block flag and the gap between it and `offset` is filled with sealed zeros.
    fn seal_range(&self, state: State, offset: u64, end: u64, data: &[u8]) -> Result<(), FsError> {
        let old = state.size();
        let new_size = old.max(end);
        let (cipher, header) = match state {
            State::Sealed { cipher, .. } => (cipher, None),
            State::Empty => {
                // An empty file has no identity; it gets a fresh one when it first gains content.
                let mut file_id = [0u8; FILE_ID_LEN];
                random_bytes(&mut file_id).map_err(|_| FsError::Random)?;
                (self.ciphers.cipher(&file_id)?, Some(encode_header(&file_id)))
            }
        };
        // Reserve the space the file grows by before sealing anything, so a full backing store
        // fails the whole change with ENOSPC instead of leaving a torn tail.
        let (old_backing, new_backing) = (backing_size(old), backing_size(new_size));
        sys::preallocate(self.file, old_backing, new_backing.saturating_sub(old_backing))?;
        let new_last = (new_size - 1) / BLOCK;
        let first_written = offset.min(new_size - 1) / BLOCK;
        let first =
            if new_size > old { first_written.min(old.saturating_sub(1) / BLOCK) } else { first_written };
        let last = (end - 1) / BLOCK;
        let patch = Patch { offset, data, old, new_size };

        let mut out = Vec::new();
        let mut chunk_start = first;
        while chunk_start <= last {
            let chunk_end = last.min(chunk_start + BLOCKS_PER_CHUNK - 1);
            out.clear();
            let mut at = block_offset(chunk_start);
            if let (Some(header), 0) = (&header, chunk_start) {
                out.extend_from_slice(header);
                at = 0;
            }
            for index in chunk_start..=chunk_end {
                let plain = self.patched_block(&cipher, &patch, index)?;
                seal(&cipher, index, index == new_last, &plain, &mut out)?;
            }
            sys::write_all_at(self.file, &out, at)?;
            chunk_start = chunk_end + 1;
        }
        Ok(())
    }

    /// The new plaintext of block `index`: old bytes not covered by the patch, then the patch,
    /// zero-padded to the block's new length.
    fn patched_block(&self, cipher: &BlockCipher, patch: &Patch<'_>, index: u64) -> Result<Vec<u8>, FsError> {
        let lo = index * BLOCK;
        let new_len = (patch.new_size - lo).min(BLOCK) as usize;
        let old_hi = (lo + BLOCK).min(patch.old);
        let end = patch.offset + patch.data.len() as u64;
        let covered = patch.offset <= lo && end >= old_hi;

        let mut plain =
            if old_hi > lo && !covered { self.open_block(cipher, index, patch.old)? } else { Vec::new() };
        plain.resize(new_len, 0);
        let (from, to) = (patch.offset.max(lo), end.min(lo + new_len as u64));
        if from < to {
            let src = &patch.data[(from - patch.offset) as usize..(to - patch.offset) as usize];
            plain[(from - lo) as usize..(to - lo) as usize].copy_from_slice(src);
        }
        Ok(plain)
    }

    /// Reads and opens block `index` of a file whose plaintext size is `size`.
    fn open_block(&self, cipher: &BlockCipher, index: u64, size: u64) -> Result<Vec<u8>, FsError> {
        let start = block_offset(index);
        let stop = block_offset(index + 1).min(backing_size(size));
        let mut sealed = vec![0u8; (stop - start) as usize];
        sys::read_exact_at(self.file, &mut sealed, start)?;
        let mut plain = Vec::with_capacity(BLOCK_SIZE);
        cipher
            .decrypt_block(index, index + 1 == block_count(size), &sealed, &mut plain)
            .map_err(|_| FsError::BlockAuthentication { ino: self.ino, block: index })?;
        crate::metrics::get().decrypted(plain.len());
        Ok(plain)
    }
}

/// A write: `data` at `offset`, into a file of `old` bytes that will be `new_size` bytes.
struct Patch<'d> {
    offset: u64,
    data: &'d [u8],
    old: u64,
    new_size: u64,
}

fn seal(
    cipher: &BlockCipher,
    index: u64,
    last: bool,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FsError> {
    cipher.encrypt_block(index, last, plain, out).map_err(|_| FsError::Random)?;
    crate::metrics::get().encrypted(plain.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::keys::{DataKey, VolumeKeys};

    struct Keys(VolumeKeys);

    impl CipherSource for Keys {
        fn cipher(&self, file_id: &FileId) -> Result<Arc<BlockCipher>, FsError> {
            Ok(Arc::new(BlockCipher::new(&self.0, *file_id)))
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        file: File,
        keys: Keys,
        model: Vec<u8>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let file = File::options().read(true).write(true).create_new(true).open(path).unwrap();
            Fixture { _dir: dir, file, keys: Keys(DataKey::generate().unwrap().derive()), model: Vec::new() }
        }

        fn content(&self) -> Content<'_> {
            Content::new(&self.file, 7, &self.keys)
        }

        fn write(&mut self, offset: usize, data: &[u8]) {
            self.content().write(offset as u64, data).unwrap();
            if self.model.len() < offset + data.len() {
                self.model.resize(offset + data.len(), 0);
            }
            self.model[offset..offset + data.len()].copy_from_slice(data);
            self.check();
        }

        fn set_len(&mut self, len: usize) {
            self.content().set_len(len as u64).unwrap();
            self.model.resize(len, 0);
            self.check();
        }

        fn check(&self) {
            let content = self.content();
            assert_eq!(content.size().unwrap(), self.model.len() as u64);
            let backing = self.file.metadata().unwrap().len();
            assert_eq!(backing, backing_size(self.model.len() as u64));
            assert_eq!(content.read(0, self.model.len() + 10).unwrap(), self.model);
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn writes_reads_and_truncates_match_a_model() {
        let mut f = Fixture::new();
        f.write(0, b"hello");
        f.write(3, &pattern(5000, 1)); // crosses into block 1
        f.write(10_000, &pattern(10, 2)); // gap of zero blocks
        f.write(4090, &pattern(12, 3)); // unaligned across a boundary, inside the file
        f.set_len(4097);
        f.set_len(4096);
        f.set_len(3);
        f.set_len(20_000);
        f.write(8192, &pattern(4096, 4)); // exactly one aligned block
        f.set_len(0);
        f.write(5, b"again");
        assert_eq!(f.content().read(3, 4).unwrap(), [0, 0, b'a', b'g']);
        assert_eq!(f.content().read(100, 4).unwrap(), b"");
    }

    #[test]
    fn append_lands_at_end_of_file() {
        let f = Fixture::new();
        let content = f.content();
        assert_eq!(content.append(b"abc").unwrap(), 0);
        assert_eq!(content.append(&[b'x'; 5000]).unwrap(), 3);
        assert_eq!(content.size().unwrap(), 5003);
    }

    #[test]
    fn empty_to_non_empty_gets_a_fresh_identity() {
        let f = Fixture::new();
        f.content().write(0, b"one").unwrap();
        let mut first = [0u8; HEADER_LEN];
        f.file.read_exact_at(&mut first, 0).unwrap();
        f.content().set_len(0).unwrap();
        assert_eq!(f.file.metadata().unwrap().len(), 0);
        f.content().write(0, b"two").unwrap();
        let mut second = [0u8; HEADER_LEN];
        f.file.read_exact_at(&mut second, 0).unwrap();
        assert_ne!(first[8..], second[8..]);
    }

    #[test]
    fn tampered_block_fails_only_where_it_is_read() {
        let f = Fixture::new();
        f.content().write(0, &pattern(3 * BLOCK_SIZE, 9)).unwrap();
        let at = block_offset(1) + 100;
        let mut byte = [0u8];
        f.file.read_exact_at(&mut byte, at).unwrap();
        f.file.write_all_at(&[byte[0] ^ 0x80], at).unwrap();
        let content = f.content();
        assert_eq!(content.read(0, BLOCK_SIZE).unwrap(), pattern(BLOCK_SIZE, 9));
        assert!(matches!(content.read(BLOCK, 10), Err(FsError::BlockAuthentication { ino: 7, block: 1 })));
        assert!(matches!(content.write(BLOCK + 1, b"x"), Err(FsError::BlockAuthentication { .. })));
        assert_eq!(content.read(2 * BLOCK, BLOCK_SIZE).unwrap().len(), BLOCK_SIZE);
    }

    #[test]
    fn cut_at_a_block_boundary_is_detected() {
        let f = Fixture::new();
        f.content().write(0, &pattern(2 * BLOCK_SIZE + 10, 5)).unwrap();
        f.file.set_len(block_offset(2)).unwrap();
        let content = f.content();
        assert_eq!(content.size().unwrap(), 2 * BLOCK);
        assert!(matches!(
            content.read(0, 3 * BLOCK_SIZE),
            Err(FsError::BlockAuthentication { block: 1, .. })
        ));
    }

    #[test]
    fn impossible_sizes_and_headers_are_errors() {
        let f = Fixture::new();
        f.content().write(0, b"data").unwrap();
        f.file.set_len(HEADER_LEN as u64 + 10).unwrap();
        assert!(matches!(f.content().read(0, 4), Err(FsError::FileLayout { .. })));
        f.content().set_len(0).unwrap();
        f.content().write(0, b"data").unwrap();
        f.file.write_all_at(b"XVF1", 0).unwrap();
        assert!(matches!(f.content().read(0, 4), Err(FsError::FileHeader { .. })));
    }

    #[test]
    fn allocate_grows_with_zeros_or_keeps_the_size() {
        let mut f = Fixture::new();
        f.write(0, b"abc");
        f.content().allocate(0, 2, false).unwrap();
        f.check();
        f.content().allocate(10_000, 100, false).unwrap();
        f.model.resize(10_100, 0);
        f.check();
        let backing = f.file.metadata().unwrap();
        f.content().allocate(0, 1 << 20, true).unwrap();
        assert_eq!(f.file.metadata().unwrap().len(), backing.len(), "keep-size leaves the size");
        use std::os::unix::fs::MetadataExt;
        assert!(f.file.metadata().unwrap().blocks() > backing.blocks(), "space was reserved");
        f.check();
        f.write(20_000, b"after");
    }

    #[test]
    fn file_size_limit() {
        let f = Fixture::new();
        assert!(matches!(f.content().write(MAX_FILE_SIZE, b"x"), Err(FsError::FileTooLarge)));
        assert!(matches!(f.content().set_len(MAX_FILE_SIZE + 1), Err(FsError::FileTooLarge)));
    }
}
