//! File contents: the 24-byte file header, AES-256-GCM blocks, and the size arithmetic between
//! plaintext and backing files.
//!
//! A non-empty backing file is `header || block_0 || block_1 || ...`. Every block but the last holds
//! 4096 plaintext bytes; each is stored as `nonce (12) || ciphertext || tag (16)`. The associated
//! data binds a block to its file (the random file id), its position (the block index) and whether
//! it is the file's last block, so blocks cannot be moved, swapped, or cut off unnoticed.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::{nonce, CipherError};
use crate::keys::{VolumeKeys, KEY_LEN};

/// First four bytes of every non-empty backing file.
pub const MAGIC: [u8; 4] = *b"CVF1";
/// Length of the random file id in the header.
pub const FILE_ID_LEN: usize = 16;
/// `MAGIC || 4 reserved zero bytes || file id`.
pub const HEADER_LEN: usize = 24;
/// Plaintext bytes per block.
pub const BLOCK_SIZE: usize = 4096;
/// Random nonce stored in front of every block.
pub const NONCE_LEN: usize = 12;
/// GCM tag stored after every block.
pub const TAG_LEN: usize = 16;
/// Bytes a block grows by when sealed.
pub const BLOCK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Backing bytes of a full block.
pub const BACKING_BLOCK_SIZE: usize = BLOCK_SIZE + BLOCK_OVERHEAD;

const BLOCK: u64 = BLOCK_SIZE as u64;
const BACKING_BLOCK: u64 = BACKING_BLOCK_SIZE as u64;
const HEADER: u64 = HEADER_LEN as u64;
const OVERHEAD: u64 = BLOCK_OVERHEAD as u64;

/// The random identity of a file's contents; part of every block's associated data and the input
/// of the per-file key derivation.
pub type FileId = [u8; FILE_ID_LEN];

/// Encodes the header of a file with identity `file_id`.
pub fn encode_header(file_id: &FileId) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(file_id);
    header
}

/// Parses a header, refusing a wrong magic or non-zero reserved bytes.
pub fn decode_header(bytes: &[u8]) -> Result<FileId, CipherError> {
    if bytes.len() != HEADER_LEN || bytes[..4] != MAGIC || bytes[4..8] != [0; 4] {
        return Err(CipherError::Malformed);
    }
    let mut file_id = [0u8; FILE_ID_LEN];
    file_id.copy_from_slice(&bytes[8..]);
    Ok(file_id)
}

/// Backing size of a file holding `plain` bytes.
pub fn backing_size(plain: u64) -> u64 {
    if plain == 0 {
        return 0;
    }
    let blocks = plain.div_ceil(BLOCK);
    HEADER + blocks * OVERHEAD + plain
}

/// Plaintext size of a backing file of `backing` bytes, or `None` when no plaintext size maps to
/// it (a partial header, a header without blocks, a last block shorter than one sealed byte).
pub fn plain_size(backing: u64) -> Option<u64> {
    if backing == 0 {
        return Some(0);
    }
    let body = backing.checked_sub(HEADER).filter(|&b| b > 0)?;
    let full = (body - 1) / BACKING_BLOCK;
    let last = body - full * BACKING_BLOCK;
    if last <= OVERHEAD {
        return None;
    }
    Some(full * BLOCK + last - OVERHEAD)
}

/// The size reported for a backing file that [`plain_size`] rejects: the whole blocks present,
/// with a trailing fragment too short to hold a sealed byte counted as nothing. Reads of the
/// damaged tail still fail authentication, so this only keeps `stat` well defined.
pub fn plain_size_conservative(backing: u64) -> u64 {
    if let Some(size) = plain_size(backing) {
        return size;
    }
    let body = backing.saturating_sub(HEADER);
    let full = body / BACKING_BLOCK;
    let rest = body % BACKING_BLOCK;
    full * BLOCK + rest.saturating_sub(OVERHEAD)
}

/// Offset in the backing file where block `index` starts.
pub fn block_offset(index: u64) -> u64 {
    HEADER + index * BACKING_BLOCK
}

/// Number of blocks of a file of `plain` bytes.
pub fn block_count(plain: u64) -> u64 {
    plain.div_ceil(BLOCK)
}

/// Associated data of block `index`: `file_id || index (u64 BE) || last-block flag`.
fn associated_data(file_id: &FileId, index: u64, last: bool) -> [u8; FILE_ID_LEN + 9] {
    let mut aad = [0u8; FILE_ID_LEN + 9];
    aad[..FILE_ID_LEN].copy_from_slice(file_id);
    aad[FILE_ID_LEN..FILE_ID_LEN + 8].copy_from_slice(&index.to_be_bytes());
    aad[FILE_ID_LEN + 8] = u8::from(last);
    aad
}

/// Seals and opens the blocks of one file. Holds the per-file AES key schedule, which is wiped
/// when the value is dropped.
pub struct BlockCipher {
    file_id: FileId,
    aead: Aes256Gcm,
}

impl BlockCipher {
    /// The cipher of file `file_id` of a volume: its key is `VolumeKeys::file_key(file_id)`.
    pub fn new(keys: &VolumeKeys, file_id: FileId) -> Self {
        Self::from_file_key(&keys.file_key(&file_id), file_id)
    }

    /// The cipher for an already derived per-file key.
    pub fn from_file_key(key: &[u8; KEY_LEN], file_id: FileId) -> Self {
        BlockCipher { file_id, aead: Aes256Gcm::new(key.into()) }
    }

    /// The identity this cipher binds blocks to.
    pub fn file_id(&self) -> &FileId {
        &self.file_id
    }

    /// Seals block `index` under a fresh random nonce and appends `nonce || ct || tag` to `out`.
    pub fn encrypt_block(
        &self,
        index: u64,
        last: bool,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce::random_bytes(&mut nonce)?;
        self.encrypt_block_with_nonce(index, last, &nonce, plain, out)
    }

    /// [`encrypt_block`](Self::encrypt_block) with a caller-chosen nonce. Only the random-nonce
    /// path and the known-answer tests may call this: a repeated nonce breaks GCM.
    pub(crate) fn encrypt_block_with_nonce(
        &self,
        index: u64,
        last: bool,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        if plain.len() > BLOCK_SIZE {
            return Err(CipherError::BlockTooLong);
        }
        let aad = associated_data(&self.file_id, index, last);
        out.extend_from_slice(nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_inout_detached(&Nonce::from(*nonce), &aad, (&mut out[start..]).into())
            .map_err(|_| CipherError::BlockTooLong)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens sealed block `index` and appends its plaintext to `out`. On failure `out` is left as
    /// it was: no unauthenticated byte is ever handed back.
    pub fn decrypt_block(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        if sealed.len() <= BLOCK_OVERHEAD || sealed.len() > BACKING_BLOCK_SIZE {
            return Err(CipherError::Malformed);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CipherError::Malformed)?;
        let tag = Tag::try_from(tag).map_err(|_| CipherError::Malformed)?;
        let aad = associated_data(&self.file_id, index, last);
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let opened = self.aead.decrypt_inout_detached(&nonce, &aad, (&mut out[start..]).into(), &tag);
        if opened.is_err() {
            out.truncate(start);
            return Err(CipherError::Authentication);
        }
        Ok(())
    }
}

impl std::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCipher").field("file_id", &hex::encode(self.file_id)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cipher::{assert_documented, kat_volume_keys};

    /// File id, nonce and plaintext of the vector in docs/FORMAT.md ("File contents").
    const KAT_FILE_ID: FileId =
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
    const KAT_NONCE: [u8; 12] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c];
    const KAT_PLAIN: &[u8] = b"hello, cryptvol\n";
    const KAT_CONTENT_KEY: &str = "0a50a283bebc7f21e9a52c8da30e134dd4ed45bc1d9bf0338048c7c218785910";
    const KAT_FILE_KEY: &str = "e2a3477fa181b28a2881cdb6ecaff302f3e5fed2b7e7fef8a7f0683e1758de00";
    const KAT_BACKING_FILE: &str = "435646310000000000112233445566778899aabbccddeeff\
        0102030405060708090a0b0c\
        59f2a216cc0564bff4ee179c2cd694e2\
        519023bb5426016beec326fc6911cf03";

    fn kat_cipher() -> BlockCipher {
        BlockCipher::new(&kat_volume_keys(), KAT_FILE_ID)
    }

    const KAT_NAMES_KEY: &str = "26e4816cb4ce8abc796a20b69dbe15883c3971186a07905e3224469e42f43c17\
        aeec350688dda7b69bed4ff23a6a60501304134c9ceff33f40588941410efce3";
    const KAT_SYMLINKS_KEY: &str = "a9ab557aa3777decbf1096d62d13882d1544c87ccd792f6e08a8879e00284c40";
    const KAT_HEADER_MAC_KEY: &str = "8f1a8f7f446cb9ecc69e2f97c031beb82dedf9f66f605c14f8409fcc5038d977";

    #[test]
    fn known_answer_keys() {
        let keys = kat_volume_keys();
        assert_eq!(hex::encode(keys.content()), KAT_CONTENT_KEY);
        assert_eq!(hex::encode(keys.names()), KAT_NAMES_KEY);
        assert_eq!(hex::encode(keys.symlinks()), KAT_SYMLINKS_KEY);
        assert_eq!(hex::encode(keys.header_mac()), KAT_HEADER_MAC_KEY);
        assert_eq!(hex::encode(*keys.file_key(&KAT_FILE_ID)), KAT_FILE_KEY);
        for vector in [KAT_CONTENT_KEY, KAT_NAMES_KEY, KAT_SYMLINKS_KEY, KAT_HEADER_MAC_KEY, KAT_FILE_KEY] {
            assert_documented(vector);
        }
    }

    #[test]
    fn known_answer_backing_file() {
        let mut backing = encode_header(&KAT_FILE_ID).to_vec();
        kat_cipher().encrypt_block_with_nonce(0, true, &KAT_NONCE, KAT_PLAIN, &mut backing).unwrap();
        assert_eq!(hex::encode(&backing), KAT_BACKING_FILE);
        assert_documented(KAT_BACKING_FILE);
        assert_documented(&hex::encode(KAT_FILE_ID));
        assert_documented(&hex::encode(KAT_NONCE));
        assert_eq!(plain_size(backing.len() as u64), Some(KAT_PLAIN.len() as u64));
        assert_eq!(decode_header(&backing[..HEADER_LEN]).unwrap(), KAT_FILE_ID);
        let mut plain = Vec::new();
        kat_cipher().decrypt_block(0, true, &backing[HEADER_LEN..], &mut plain).unwrap();
        assert_eq!(plain, KAT_PLAIN);
    }

    #[test]
    fn header_rejects_bad_magic_and_reserved_bytes() {
        let mut header = encode_header(&KAT_FILE_ID);
        header[0] = b'X';
        assert_eq!(decode_header(&header), Err(CipherError::Malformed));
        let mut header = encode_header(&KAT_FILE_ID);
        header[5] = 1;
        assert_eq!(decode_header(&header), Err(CipherError::Malformed));
        assert_eq!(decode_header(&[0; 23]), Err(CipherError::Malformed));
    }

    #[test]
    fn binding_to_index_flag_and_file() {
        let cipher = kat_cipher();
        let mut sealed = Vec::new();
        cipher.encrypt_block(3, false, &[7u8; BLOCK_SIZE], &mut sealed).unwrap();
        assert_eq!(sealed.len(), BACKING_BLOCK_SIZE);
        let mut out = Vec::new();
        assert_eq!(cipher.decrypt_block(4, false, &sealed, &mut out), Err(CipherError::Authentication));
        assert_eq!(cipher.decrypt_block(3, true, &sealed, &mut out), Err(CipherError::Authentication));
        let other = BlockCipher::new(&kat_volume_keys(), [9; 16]);
        assert_eq!(other.decrypt_block(3, false, &sealed, &mut out), Err(CipherError::Authentication));
        assert!(out.is_empty());
        sealed[40] ^= 1;
        assert_eq!(cipher.decrypt_block(3, false, &sealed, &mut out), Err(CipherError::Authentication));
    }

    #[test]
    fn random_nonces_differ() {
        let cipher = kat_cipher();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        cipher.encrypt_block(0, true, b"same", &mut a).unwrap();
        cipher.encrypt_block(0, true, b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn size_mapping_round_trips() {
        for plain in (0..3 * BLOCK + 3).chain([1 << 20, (1 << 30) + 1]) {
            let backing = backing_size(plain);
            assert_eq!(plain_size(backing), Some(plain), "plain {plain}");
            assert_eq!(plain_size_conservative(backing), plain);
        }
        assert_eq!(backing_size(1), 24 + 29);
        assert_eq!(backing_size(4096), 24 + 4124);
        assert_eq!(backing_size(4097), 24 + 4124 + 29);
    }

    #[test]
    fn impossible_backing_sizes_are_rejected() {
        // A partial header, a bare header, and last blocks of 1..=28 bytes map to no plaintext.
        for backing in (1..=24 + 28).chain([24 + 4124 + 1, 24 + 4124 + 28]) {
            assert_eq!(plain_size(backing), None, "backing {backing}");
        }
        assert_eq!(plain_size_conservative(10), 0);
        assert_eq!(plain_size_conservative(24 + 4124 + 5), 4096);
        assert_eq!(plain_size_conservative(24 + 2 * 4124 + 28), 8192);
    }
}
