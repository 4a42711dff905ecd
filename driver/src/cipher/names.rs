//! Names: AES-SIV under the names subkey, tweaked by the parent directory's id, base64url encoded.
//!
//! Deterministic encryption lets a lookup find an entry by encrypting the name it is given; the
//! directory id as associated data makes the same name encrypt differently in every directory, and
//! an entry moved to another directory fails to authenticate. Encrypted names longer than a
//! backing name may be are stored as "long names": a hashed entry name plus a side file holding the
//! full encoding.

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::CipherError;

/// Longest plaintext name, in bytes (POSIX `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest backing entry name this format creates.
pub const MAX_BACKING_NAME_LEN: usize = 255;
/// Longest plaintext name stored as a short name: base64url(16 + 175 bytes) is 255 characters.
pub const MAX_SHORT_NAME_LEN: usize = 175;
/// Length of a directory id.
pub const DIR_ID_LEN: usize = 16;
/// The file in every backing directory that holds its id.
pub const DIR_ID_FILE: &str = ".cvdir";
/// First character of a long-name entry. base64url never produces it.
pub const LONG_NAME_PREFIX: &str = "~";
/// Suffix of the side file that holds a long name's full encoding.
pub const LONG_NAME_SUFFIX: &str = ".name";

/// The random identity of a directory; the associated data of the names inside it.
pub type DirId = [u8; DIR_ID_LEN];

/// Where an encrypted name lives in its backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingName {
    /// The encoding itself is the entry name.
    Short(String),
    /// The entry is `~` + base64url(SHA-256(encoded)); the side file holds `encoded`.
    Long {
        /// The backing entry name.
        entry: String,
        /// The full base64url encoding of the SIV output.
        encoded: String,
    },
}

impl BackingName {
    /// The name of the backing directory entry.
    pub fn entry(&self) -> &str {
        match self {
            BackingName::Short(name) => name,
            BackingName::Long { entry, .. } => entry,
        }
    }

    /// The side file name and its contents, for long names.
    pub fn side_file(&self) -> Option<(String, &str)> {
        match self {
            BackingName::Short(_) => None,
            BackingName::Long { entry, encoded } => Some((side_file_name(entry), encoded)),
        }
    }
}

/// What a backing directory entry is, judged by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind<'a> {
    /// Format bookkeeping (`.cvdir`, temporary names, long-name side files): never listed.
    Internal,
    /// A short name: the entry name is the encoding.
    Short(&'a str),
    /// A long-name entry; its encoding is in the side file [`side_file_name`] of it.
    Long(&'a str),
    /// Not a name this format writes (not UTF-8, or characters outside base64url).
    Foreign,
}

/// Classifies a backing entry name. `.`-prefixed and `.name`-suffixed names are bookkeeping.
pub fn classify(backing: &[u8]) -> EntryKind<'_> {
    if backing.starts_with(b".") || backing.ends_with(LONG_NAME_SUFFIX.as_bytes()) {
        return EntryKind::Internal;
    }
    let Ok(name) = std::str::from_utf8(backing) else {
        return EntryKind::Foreign;
    };
    match name.strip_prefix(LONG_NAME_PREFIX) {
        Some(hash) if is_base64url(hash) => EntryKind::Long(name),
        Some(_) => EntryKind::Foreign,
        None if is_base64url(name) => EntryKind::Short(name),
        None => EntryKind::Foreign,
    }
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The entry name of a long name with full encoding `encoded`.
pub fn long_entry_name(encoded: &str) -> String {
    let digest = Sha256::digest(encoded.as_bytes());
    format!("{LONG_NAME_PREFIX}{}", URL_SAFE_NO_PAD.encode(digest))
}

/// The side file of long-name entry `entry`.
pub fn side_file_name(entry: &str) -> String {
    format!("{entry}{LONG_NAME_SUFFIX}")
}

/// Checks that a side file's contents belong to long-name entry `entry`.
pub fn side_file_matches(entry: &str, encoded: &str) -> bool {
    long_entry_name(encoded) == entry
}

/// Refuses names that are not a single path component of 1 to 255 bytes.
pub fn validate_name(plain: &[u8]) -> Result<(), CipherError> {
    if plain.len() > MAX_NAME_LEN {
        return Err(CipherError::NameTooLong);
    }
    if plain.is_empty() || plain == b"." || plain == b".." || plain.iter().any(|&b| b == b'/' || b == 0) {
        return Err(CipherError::InvalidName);
    }
    Ok(())
}

/// Encrypts and decrypts the names of one volume.
pub struct NameCipher<'k> {
    key: &'k [u8; 64],
}

impl<'k> NameCipher<'k> {
    /// A name cipher over the 512-bit names subkey (`VolumeKeys::names()`).
    pub fn new(key: &'k [u8; 64]) -> Self {
        NameCipher { key }
    }

    fn siv(&self) -> Aes256Siv {
        Aes256Siv::new(self.key.into())
    }

    /// Encrypts plaintext name `plain` for the directory with id `dir`.
    pub fn encrypt(&self, dir: &DirId, plain: &[u8]) -> Result<BackingName, CipherError> {
        validate_name(plain)?;
        let sealed = self.siv().encrypt([dir.as_slice()], plain).map_err(|_| CipherError::InvalidName)?;
        let encoded = URL_SAFE_NO_PAD.encode(sealed);
        if encoded.len() <= MAX_BACKING_NAME_LEN {
            return Ok(BackingName::Short(encoded));
        }
        Ok(BackingName::Long { entry: long_entry_name(&encoded), encoded })
    }

    /// Decrypts the full encoding `encoded` of a name in the directory with id `dir`.
    pub fn decrypt(&self, dir: &DirId, encoded: &str) -> Result<Vec<u8>, CipherError> {
        let sealed = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| CipherError::Malformed)?;
        if sealed.len() <= 16 {
            return Err(CipherError::Malformed);
        }
        let plain = self.siv().decrypt([dir.as_slice()], &sealed).map_err(|_| CipherError::Authentication)?;
        validate_name(&plain).map_err(|_| CipherError::Malformed)?;
        Ok(plain)
    }
}

impl std::fmt::Debug for NameCipher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameCipher(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cipher::{assert_documented, kat_volume_keys};

    /// Directory id of the vectors in docs/FORMAT.md ("Names").
    const KAT_DIR_ID: DirId = [0xd1; 16];

    #[test]
    fn known_answer_short_name() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        let name = cipher.encrypt(&KAT_DIR_ID, b"hello.txt").unwrap();
        assert_eq!(name, BackingName::Short("m9T9bSd3vG11j5MZRTPaBPMjt0fAGZrG_A".into()));
        assert_documented(name.entry());
        assert_documented(&hex::encode(KAT_DIR_ID));
        assert_eq!(cipher.decrypt(&KAT_DIR_ID, name.entry()).unwrap(), b"hello.txt");
    }

    #[test]
    fn known_answer_long_name() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        let name = cipher.encrypt(&KAT_DIR_ID, &[b'x'; 200]).unwrap();
        let BackingName::Long { entry, encoded } = &name else { panic!("expected a long name") };
        assert_eq!(entry, "~m2rE-JKtRGHsi5JSwlps_Rlp8Lk3acZinUJJyJQZFXc");
        assert!(encoded.starts_with("PStmGDbyDLIwvBQYsqi47rEGfASUENT4yDUis7aXBjDnlkIc"));
        assert_documented(entry);
        assert_documented(encoded);
        assert_eq!(encoded.len(), 288);
        assert!(side_file_matches(entry, encoded));
        assert_eq!(cipher.decrypt(&KAT_DIR_ID, encoded).unwrap(), vec![b'x'; 200]);
    }

    #[test]
    fn short_long_boundary_is_175_bytes() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        let at = cipher.encrypt(&KAT_DIR_ID, &[b'a'; MAX_SHORT_NAME_LEN]).unwrap();
        assert!(matches!(at, BackingName::Short(ref s) if s.len() == 255));
        let over = cipher.encrypt(&KAT_DIR_ID, &[b'a'; MAX_SHORT_NAME_LEN + 1]).unwrap();
        assert!(matches!(over, BackingName::Long { ref entry, .. } if entry.len() == 44));
        let max = cipher.encrypt(&KAT_DIR_ID, &[0xff; MAX_NAME_LEN]).unwrap();
        let (side, _) = max.side_file().unwrap();
        assert!(side.len() <= MAX_BACKING_NAME_LEN);
    }

    #[test]
    fn names_are_bound_to_their_directory() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        let name = cipher.encrypt(&KAT_DIR_ID, b"secret").unwrap();
        assert_ne!(cipher.encrypt(&[0xd2; 16], b"secret").unwrap(), name);
        assert_eq!(cipher.decrypt(&[0xd2; 16], name.entry()), Err(CipherError::Authentication));
    }

    #[test]
    fn tampered_or_foreign_names_fail() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        let name = cipher.encrypt(&KAT_DIR_ID, b"secret").unwrap();
        let mut bytes = name.entry().as_bytes().to_vec();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(cipher.decrypt(&KAT_DIR_ID, &tampered), Err(CipherError::Authentication));
        assert_eq!(cipher.decrypt(&KAT_DIR_ID, "not*base64"), Err(CipherError::Malformed));
        assert_eq!(cipher.decrypt(&KAT_DIR_ID, "AAAA"), Err(CipherError::Malformed));
    }

    #[test]
    fn raw_bytes_round_trip() {
        let keys = kat_volume_keys();
        let cipher = NameCipher::new(keys.names());
        for plain in [&b"\xff\xfe not utf-8"[..], "名前.txt".as_bytes(), b"-", b" "] {
            let name = cipher.encrypt(&KAT_DIR_ID, plain).unwrap();
            assert_eq!(cipher.decrypt(&KAT_DIR_ID, name.entry()).unwrap(), plain);
        }
    }

    #[test]
    fn validation() {
        assert_eq!(validate_name(&[b'a'; 256]), Err(CipherError::NameTooLong));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(validate_name(bad), Err(CipherError::InvalidName));
        }
        assert_eq!(validate_name(&[b'a'; 255]), Ok(()));
    }

    #[test]
    fn classification() {
        assert_eq!(classify(b".cvdir"), EntryKind::Internal);
        assert_eq!(classify(b"~abc.name"), EntryKind::Internal);
        assert_eq!(classify(b"~abc"), EntryKind::Long("~abc"));
        assert_eq!(classify(b"abc-_9"), EntryKind::Short("abc-_9"));
        assert_eq!(classify(b"plain name"), EntryKind::Foreign);
        assert_eq!(classify(b"\xff"), EntryKind::Foreign);
        assert_eq!(classify(b"~"), EntryKind::Foreign);
    }
}
