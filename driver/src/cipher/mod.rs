//! The pure codecs of the volume format: content blocks, names and symlink targets.
//!
//! Nothing here touches the file system; `docs/FORMAT.md` is the specification and the
//! known-answer tests in each submodule check the vectors printed there, so the two cannot drift.

pub mod content;
pub mod names;
mod nonce;
pub mod symlink;
pub mod xattr;

/// Why an encoding or decoding step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// An AEAD tag did not verify: the data was altered, moved, or sealed under another key.
    #[error("authentication failed")]
    Authentication,
    /// The stored form is not well formed (bad base64, impossible length, bad magic).
    #[error("malformed encoding")]
    Malformed,
    /// A plaintext name is empty, `.`/`..`, or holds `/` or NUL.
    #[error("invalid name")]
    InvalidName,
    /// A plaintext name is longer than 255 bytes.
    #[error("name longer than {} bytes", names::MAX_NAME_LEN)]
    NameTooLong,
    /// A symlink target is empty.
    #[error("empty symlink target")]
    EmptyTarget,
    /// A symlink target is longer than the format can store.
    #[error("symlink target longer than {} bytes", symlink::MAX_TARGET_LEN)]
    TargetTooLong,
    /// A content block is larger than the block size (a caller bug, never input).
    #[error("content block longer than {} bytes", content::BLOCK_SIZE)]
    BlockTooLong,
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(getrandom::Error),
}

pub use nonce::random_bytes;

/// docs/FORMAT.md: the known-answer tests check that it prints their vectors unchanged.
#[cfg(test)]
pub(crate) const FORMAT_DOC: &str = include_str!("../../../docs/FORMAT.md");

/// Fails unless docs/FORMAT.md prints `vector`.
#[cfg(test)]
pub(crate) fn assert_documented(vector: &str) {
    assert!(FORMAT_DOC.contains(vector), "docs/FORMAT.md does not print the vector {vector}");
}

/// The volume of the known-answer vectors in docs/FORMAT.md: data key `00 01 .. 1f`.
#[cfg(test)]
pub(crate) fn kat_volume_keys() -> crate::keys::VolumeKeys {
    let mut data_key = [0u8; crate::keys::KEY_LEN];
    for (i, b) in data_key.iter_mut().enumerate() {
        *b = i as u8;
    }
    crate::keys::DataKey::from_bytes(data_key).derive()
}
