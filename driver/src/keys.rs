//! The volume data key and the purpose-specific subkeys derived from it with HKDF-SHA256.
//!
//! A volume has one 256-bit data key, generated and wrapped by the KMS. Nothing encrypts with it
//! directly: every use (file contents, names, symlink targets, the volume header MAC) gets its
//! own subkey, so a weakness in one construction cannot leak material that another relies on.
//! All key material lives in `Zeroizing` buffers and is wiped when dropped.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of a data key and of every 256-bit subkey, in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF salt: fixed per format version, so keys of different format versions never coincide.
const HKDF_SALT: &[u8] = b"cryptvol.csi.dev/v1";

/// The plaintext data key of one volume. Never printed, never written anywhere.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// Takes ownership of raw key bytes; the caller's buffer should be zeroized by the caller.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// Copies a key out of a slice, refusing any length other than 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(DataKey(key))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut())?;
        Ok(DataKey(key))
    }

    /// The raw bytes, for the KMS provider that wraps them. Keep the borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives every subkey a mounted volume needs.
    pub fn derive(&self) -> VolumeKeys {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), self.0.as_ref());
        VolumeKeys {
            content: expand::<KEY_LEN>(&hk, Purpose::Content),
            names: expand::<{ 2 * KEY_LEN }>(&hk, Purpose::Names),
            symlinks: expand::<KEY_LEN>(&hk, Purpose::Symlinks),
            header_mac: expand::<KEY_LEN>(&hk, Purpose::HeaderMac),
            xattrs: expand::<KEY_LEN>(&hk, Purpose::Xattrs),
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// What a subkey is for; the HKDF `info` string of each is fixed by the format (docs/FORMAT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Master key for file contents; per-file AES-256-GCM keys are derived from it.
    Content,
    /// AES-SIV (512-bit) key for file, directory and symlink names.
    Names,
    /// AES-256-GCM key for symlink targets.
    Symlinks,
    /// HMAC-SHA256 key that authenticates the volume header.
    HeaderMac,
    /// AES-256-GCM key for extended attribute records.
    Xattrs,
}

impl Purpose {
    /// The HKDF info string.
    pub fn info(self) -> &'static [u8] {
        match self {
            Purpose::Content => b"cryptvol/v1/content",
            Purpose::Names => b"cryptvol/v1/names",
            Purpose::Symlinks => b"cryptvol/v1/symlinks",
            Purpose::HeaderMac => b"cryptvol/v1/header-mac",
            Purpose::Xattrs => b"cryptvol/v1/xattrs",
        }
    }
}

fn expand<const N: usize>(hk: &Hkdf<Sha256>, purpose: Purpose) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // N is at most 64 bytes, far below HKDF-SHA256's limit of 255 * 32 bytes.
    if hk.expand(purpose.info(), out.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 output of {N} bytes is within the limit");
    }
    out
}

/// The subkeys of one volume. Dropping it zeroizes every key.
pub struct VolumeKeys {
    content: Zeroizing<[u8; KEY_LEN]>,
    names: Zeroizing<[u8; 2 * KEY_LEN]>,
    symlinks: Zeroizing<[u8; KEY_LEN]>,
    header_mac: Zeroizing<[u8; KEY_LEN]>,
    xattrs: Zeroizing<[u8; KEY_LEN]>,
}

impl VolumeKeys {
    /// Master key for file contents (input to the per-file key derivation).
    pub fn content(&self) -> &[u8; KEY_LEN] {
        &self.content
    }

    /// The 512-bit AES-SIV key for names.
    pub fn names(&self) -> &[u8; 2 * KEY_LEN] {
        &self.names
    }

    /// The AES-256-GCM key for symlink targets.
    pub fn symlinks(&self) -> &[u8; KEY_LEN] {
        &self.symlinks
    }

    /// The HMAC-SHA256 key for the volume header.
    pub fn header_mac(&self) -> &[u8; KEY_LEN] {
        &self.header_mac
    }

    /// The AES-256-GCM key for extended attribute records.
    pub fn xattrs(&self) -> &[u8; KEY_LEN] {
        &self.xattrs
    }

    /// Derives the AES-256-GCM key for the contents of the file with identity `file_id`.
    ///
    /// Each file gets its own key so that the random-nonce collision bound of AES-GCM (about 2^32
    /// encryptions per key for a 2^-32 risk) applies per file, not per volume.
    pub fn file_key(&self, file_id: &[u8; 16]) -> Zeroizing<[u8; KEY_LEN]> {
        let hk = match Hkdf::<Sha256>::from_prk(self.content.as_ref()) {
            Ok(hk) => hk,
            Err(_) => unreachable!("a 32-byte PRK is valid for HKDF-SHA256"),
        };
        let mut info = [0u8; 24 + 16];
        info[..24].copy_from_slice(b"cryptvol/v1/content/file");
        info[24..].copy_from_slice(file_id);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        if hk.expand(&info, out.as_mut()).is_err() {
            unreachable!("32 bytes is within the HKDF-SHA256 limit");
        }
        info.zeroize();
        out
    }
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKeys(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_key() -> DataKey {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        DataKey::from_bytes(bytes)
    }

    #[test]
    fn subkeys_are_distinct_and_deterministic() {
        let a = fixed_key().derive();
        let b = fixed_key().derive();
        assert_eq!(a.content(), b.content());
        assert_ne!(a.content(), a.symlinks());
        assert_ne!(a.content(), a.header_mac());
        assert_ne!(&a.names()[..KEY_LEN], a.content());
    }

    #[test]
    fn file_keys_differ_per_file() {
        let keys = fixed_key().derive();
        assert_ne!(*keys.file_key(&[1; 16]), *keys.file_key(&[2; 16]));
        assert_eq!(*keys.file_key(&[1; 16]), *keys.file_key(&[1; 16]));
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = fixed_key();
        assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
        assert_eq!(format!("{:?}", key.derive()), "VolumeKeys(<redacted>)");
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(DataKey::from_slice(&[0u8; 31]).is_none());
        assert!(DataKey::from_slice(&[0u8; 32]).is_some());
    }
}
