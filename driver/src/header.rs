//! The volume header: one JSON file per volume naming its key, its wrapped data key and its format.
//!
//! The controller writes it at CreateVolume without ever holding the plaintext data key, so it
//! cannot authenticate the header itself. Two things protect it instead:
//! - the fields that decide which key opens the volume (key ARN, wrapped key, encryption context)
//!   are bound by the KMS: the wrap only opens under that key with `{volume: <id>}` as context,
//!   and the node also checks the key ARN against the one the controller recorded in the PV;
//! - the fields that never change after creation (format, volume id, name, cipher suite,
//!   encryption context, creation time) are sealed with an HMAC under a subkey of the data key by
//!   the first node that stages the volume, and every later stage checks that seal.
//!
//! Capacity and the wrap itself stay controller-managed (expansion, key rotation) and are not sealed.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::keys::VolumeKeys;
use crate::kms::{EncryptionContext, WrappedKey};

/// The header's file name inside a volume directory.
pub const HEADER_FILE: &str = "cryptvol.header";
/// The directory, next to the header, that holds the encrypted tree.
pub const DATA_DIR: &str = "data";
/// The one format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The cipher suite of format version 1 (see docs/FORMAT.md).
pub const CIPHER_SUITE: &str = "HKDF-SHA256/AES-256-GCM-4096/AES-SIV-512";
const SEAL_LABEL: &[u8] = b"cryptvol/v1/header-seal";

/// Whether the volume is usable or being deleted (its wrapped key already destroyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeState {
    Ready,
    Deleting,
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeHeader {
    pub format_version: u32,
    pub volume_id: String,
    /// The CreateVolume name (the PV name); CreateVolume is idempotent by it.
    pub name: String,
    pub state: VolumeState,
    /// Canonical key ARN.
    pub key_arn: String,
    pub kms_connection: String,
    /// Base64 of the wrapped data key; empty once the volume is being deleted.
    pub wrapped_key: String,
    pub encryption_context: EncryptionContext,
    pub cipher_suite: String,
    pub capacity_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last key rotation (re-wrap); absent when never rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<u64>,
    /// Hex HMAC-SHA256 over the immutable fields, written by the first stage; absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// Why a header could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("volume header {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot access volume header {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("volume header {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("volume header of {volume_id} failed authentication (tampered, or sealed with another key)")]
    SealMismatch { volume_id: String },
}

/// The immutable fields the seal covers, in a fixed order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SealedFields<'a> {
    format_version: u32,
    volume_id: &'a str,
    name: &'a str,
    cipher_suite: &'a str,
    encryption_context: &'a EncryptionContext,
    created_at: u64,
}

impl VolumeHeader {
    /// A new, unsealed header for a freshly wrapped data key.
    pub fn new(
        volume_id: &str,
        name: &str,
        key_arn: &str,
        kms_connection: &str,
        wrapped: &WrappedKey,
        capacity_bytes: u64,
    ) -> Self {
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        VolumeHeader {
            format_version: FORMAT_VERSION,
            volume_id: volume_id.to_string(),
            name: name.to_string(),
            state: VolumeState::Ready,
            key_arn: key_arn.to_string(),
            kms_connection: kms_connection.to_string(),
            wrapped_key: B64.encode(&wrapped.0),
            encryption_context: EncryptionContext::for_volume(volume_id),
            cipher_suite: CIPHER_SUITE.to_string(),
            capacity_bytes,
            created_at,
            rotated_at: None,
            seal: None,
        }
    }

    /// Path of the header inside a volume directory.
    pub fn path_in(volume_dir: &Path) -> PathBuf {
        volume_dir.join(HEADER_FILE)
    }

    /// Reads and structurally checks the header of a volume directory.
    pub fn read(volume_dir: &Path) -> Result<Self, HeaderError> {
        let path = Self::path_in(volume_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(HeaderError::Missing { path }),
            Err(source) => return Err(HeaderError::Io { path, source }),
        };
        Self::parse(&bytes).map_err(|message| HeaderError::Malformed { path, message })
    }

    /// Parses header bytes and checks every field that can be checked without the data key.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let header: VolumeHeader = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if header.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                header.format_version
            ));
        }
        if header.cipher_suite != CIPHER_SUITE {
            return Err(format!("cipher suite {:?} is not supported", header.cipher_suite));
        }
        if header.encryption_context != EncryptionContext::for_volume(&header.volume_id) {
            return Err("the encryption context does not name this volume".into());
        }
        if header.state == VolumeState::Ready && header.wrapped_key().is_none() {
            return Err("the wrapped data key is missing or not base64".into());
        }
        if let Some(seal) = &header.seal {
            if hex::decode(seal).map(|s| s.len()) != Ok(32) {
                return Err("the seal is not 32 bytes of hex".into());
            }
        }
        Ok(header)
    }

    /// Serializes the header as written to disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Writes the header into a volume directory atomically.
    pub fn write(&self, volume_dir: &Path) -> Result<(), HeaderError> {
        let path = Self::path_in(volume_dir);
        crate::atomic::write_file(&path, &self.to_bytes(), 0o600)
            .map_err(|source| HeaderError::Io { path, source })
    }

    /// The wrapped data key, if the volume still has one.
    pub fn wrapped_key(&self) -> Option<WrappedKey> {
        if self.wrapped_key.is_empty() {
            return None;
        }
        B64.decode(&self.wrapped_key).ok().map(WrappedKey)
    }

    /// The seal this header should carry under `keys`.
    pub fn compute_seal(&self, keys: &VolumeKeys) -> String {
        let fields = SealedFields {
            format_version: self.format_version,
            volume_id: &self.volume_id,
            name: &self.name,
            cipher_suite: &self.cipher_suite,
            encryption_context: &self.encryption_context,
            created_at: self.created_at,
        };
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(keys.header_mac()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(SEAL_LABEL);
        mac.update(&serde_json::to_vec(&fields).unwrap_or_default());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks the seal in constant time. `Ok(false)` means the header is not sealed yet.
    pub fn verify_seal(&self, keys: &VolumeKeys) -> Result<bool, HeaderError> {
        let Some(seal) = &self.seal else { return Ok(false) };
        let expected = self.compute_seal(keys);
        let equal = seal.len() == expected.len()
            && seal.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if equal {
            Ok(true)
        } else {
            Err(HeaderError::SealMismatch { volume_id: self.volume_id.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKey;

    pub(crate) fn sample() -> VolumeHeader {
        let mut h = VolumeHeader::new(
            "pvc-1",
            "pvc-1",
            "cryptvol:local:key/app",
            "local",
            &WrappedKey(vec![7; 68]),
            1 << 30,
        );
        h.created_at = 1_800_000_000;
        h
    }

    #[test]
    fn round_trips_and_checks_fields() {
        let h = sample();
        assert_eq!(VolumeHeader::parse(&h.to_bytes()).unwrap(), h);
        let mut wrong_ctx = h.clone();
        wrong_ctx.encryption_context = EncryptionContext::for_volume("other");
        assert!(VolumeHeader::parse(&wrong_ctx.to_bytes()).unwrap_err().contains("encryption context"));
        let mut wrong_version = h.clone();
        wrong_version.format_version = 2;
        assert!(VolumeHeader::parse(&wrong_version.to_bytes()).is_err());
        assert!(VolumeHeader::parse(b"{not json").is_err());
    }

    #[test]
    fn seal_detects_changes_to_immutable_fields() {
        let keys = DataKey::from_bytes([9; 32]).derive();
        let mut h = sample();
        assert!(!h.verify_seal(&keys).unwrap());
        h.seal = Some(h.compute_seal(&keys));
        assert!(h.verify_seal(&keys).unwrap());

        let mut renamed = h.clone();
        renamed.name = "pvc-2".into();
        assert!(renamed.verify_seal(&keys).is_err());
        let other_keys = DataKey::from_bytes([8; 32]).derive();
        assert!(h.verify_seal(&other_keys).is_err());

        let mut grown = h.clone();
        grown.capacity_bytes *= 2;
        assert!(grown.verify_seal(&keys).unwrap(), "capacity is controller-managed and not sealed");
    }

    /// Known-answer vector for the seal, also printed in docs/FORMAT.md.
    #[test]
    fn seal_known_answer() {
        let keys = DataKey::from_bytes([9; 32]).derive();
        let expected = include_str!("../../docs/vectors/header-seal.txt").trim();
        assert_eq!(sample().compute_seal(&keys), expected);
        assert!(include_str!("../../docs/FORMAT.md").contains(expected), "docs/FORMAT.md shows another seal");
    }
}
