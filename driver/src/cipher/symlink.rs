//! Symlink targets: AES-256-GCM under the symlinks subkey, random nonce, base64url encoded, bound
//! to the link's directory id and name.
//!
//! The stored target is `base64url(nonce || ciphertext || tag)`, so its length alone gives the
//! plaintext length and `lstat` needs no decryption. The associated data is [`AAD`] followed by
//! the id of the directory holding the link and the link's plaintext name, so a target moved to
//! another link fails to decrypt.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::content::{NONCE_LEN, TAG_LEN};
use super::names::DirId;
use super::{nonce, CipherError};
use crate::keys::KEY_LEN;

/// Prefix of the associated data of every symlink target; the directory id and name follow.
pub const AAD: &[u8] = b"cryptvol/v1/symlink";
/// Longest plaintext target: its encoding (4095 bytes) stays below the 4096-byte `PATH_MAX`.
pub const MAX_TARGET_LEN: usize = 3043;

const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The link a target is bound to: the id of the directory holding it and its plaintext name.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub dir_id: &'a DirId,
    pub name: &'a [u8],
}

impl Link<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD.len() + self.dir_id.len() + self.name.len());
        aad.extend_from_slice(AAD);
        aad.extend_from_slice(self.dir_id);
        aad.extend_from_slice(self.name);
        aad
    }
}

/// Encrypts symlink target `target` of `link` under a fresh random nonce.
pub fn encrypt_target(key: &[u8; KEY_LEN], link: Link<'_>, target: &[u8]) -> Result<String, CipherError> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce::random_bytes(&mut nonce)?;
    encrypt_target_with_nonce(key, &nonce, link, target)
}

/// [`encrypt_target`] with a caller-chosen nonce: for the random path and known-answer tests only.
pub(crate) fn encrypt_target_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    link: Link<'_>,
    target: &[u8],
) -> Result<String, CipherError> {
    if target.is_empty() {
        return Err(CipherError::EmptyTarget);
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(CipherError::TargetTooLong);
    }
    let mut sealed = Vec::with_capacity(target.len() + OVERHEAD);
    sealed.extend_from_slice(nonce);
    sealed.extend_from_slice(target);
    let tag = Aes256Gcm::new(key.into())
        .encrypt_inout_detached(&Nonce::from(*nonce), &link.aad(), (&mut sealed[NONCE_LEN..]).into())
        .map_err(|_| CipherError::TargetTooLong)?;
    sealed.extend_from_slice(&tag);
    Ok(URL_SAFE_NO_PAD.encode(sealed))
}

/// Decrypts the stored target of `link`.
pub fn decrypt_target(key: &[u8; KEY_LEN], link: Link<'_>, encoded: &[u8]) -> Result<Vec<u8>, CipherError> {
    let sealed = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| CipherError::Malformed)?;
    if sealed.len() <= OVERHEAD {
        return Err(CipherError::Malformed);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = Nonce::try_from(nonce).map_err(|_| CipherError::Malformed)?;
    let tag = Tag::try_from(tag).map_err(|_| CipherError::Malformed)?;
    let mut plain = ciphertext.to_vec();
    Aes256Gcm::new(key.into())
        .decrypt_inout_detached(&nonce, &link.aad(), plain.as_mut_slice().into(), &tag)
        .map_err(|_| CipherError::Authentication)?;
    Ok(plain)
}

/// Plaintext length of a target whose stored form is `encoded_len` bytes long, or `None` for a
/// length that no encoding has.
pub fn target_len(encoded_len: u64) -> Option<u64> {
    let decoded = match encoded_len % 4 {
        0 => encoded_len / 4 * 3,
        2 => encoded_len / 4 * 3 + 1,
        3 => encoded_len / 4 * 3 + 2,
        _ => return None,
    };
    decoded.checked_sub(OVERHEAD as u64).filter(|&len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cipher::{assert_documented, kat_volume_keys};

    /// Nonce of the vector in docs/FORMAT.md ("Symlink targets"); the key is the KAT volume's.
    const KAT_KEY: [u8; 32] = [0x5a; 32];
    const KAT_NONCE: [u8; 12] = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab];
    const KAT_LINK: Link<'static> = Link { dir_id: &[0xd1; 16], name: b"current" };
    const OTHER: Link<'static> = Link { dir_id: &[0xd1; 16], name: b"previous" };

    #[test]
    fn known_answer_target() {
        let keys = kat_volume_keys();
        let encoded =
            encrypt_target_with_nonce(keys.symlinks(), &KAT_NONCE, KAT_LINK, b"../data/current").unwrap();
        assert_eq!(encoded, "oKGio6SlpqeoqaqrJLK8SsSZUwVxYZUslNQdFzKymzUvGl4WoOuEaqlFog");
        assert_documented(&encoded);
        assert_documented(&hex::encode(KAT_NONCE));
        assert_eq!(
            decrypt_target(keys.symlinks(), KAT_LINK, encoded.as_bytes()).unwrap(),
            b"../data/current"
        );
        assert_eq!(target_len(encoded.len() as u64), Some(15));
    }

    #[test]
    fn length_limit_keeps_backing_target_under_path_max() {
        let longest = encrypt_target(&KAT_KEY, KAT_LINK, &[b'a'; MAX_TARGET_LEN]).unwrap();
        assert_eq!(longest.len(), 4095);
        assert_eq!(
            encrypt_target(&KAT_KEY, KAT_LINK, &[b'a'; MAX_TARGET_LEN + 1]),
            Err(CipherError::TargetTooLong)
        );
        assert_eq!(encrypt_target(&KAT_KEY, KAT_LINK, b""), Err(CipherError::EmptyTarget));
    }

    #[test]
    fn lengths_follow_from_encoding() {
        for len in [1usize, 2, 3, 100, 1000, MAX_TARGET_LEN] {
            let encoded = encrypt_target(&KAT_KEY, KAT_LINK, &vec![b'z'; len]).unwrap();
            assert_eq!(target_len(encoded.len() as u64), Some(len as u64));
        }
        assert_eq!(target_len(5), None);
        assert_eq!(target_len(0), None);
    }

    #[test]
    fn tampering_fails() {
        let encoded = encrypt_target(&KAT_KEY, KAT_LINK, b"/etc/passwd").unwrap();
        let mut bytes = encoded.into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(decrypt_target(&KAT_KEY, KAT_LINK, &bytes), Err(CipherError::Authentication));
        assert_eq!(decrypt_target(&[0x5b; 32], KAT_LINK, &bytes), Err(CipherError::Authentication));
        assert_eq!(decrypt_target(&KAT_KEY, KAT_LINK, b"!!"), Err(CipherError::Malformed));
    }

    #[test]
    fn a_target_moved_to_another_link_fails() {
        let encoded = encrypt_target(&KAT_KEY, KAT_LINK, b"/etc/passwd").unwrap();
        assert_eq!(decrypt_target(&KAT_KEY, KAT_LINK, encoded.as_bytes()).unwrap(), b"/etc/passwd");
        assert_eq!(decrypt_target(&KAT_KEY, OTHER, encoded.as_bytes()), Err(CipherError::Authentication));
        let elsewhere = Link { dir_id: &[0xd2; 16], name: b"current" };
        assert_eq!(decrypt_target(&KAT_KEY, elsewhere, encoded.as_bytes()), Err(CipherError::Authentication));
    }
}
