//! Extended attribute records: all names and values of one file, sealed together with
//! AES-256-GCM under the xattrs subkey and bound to the file's backing inode number.
//!
//! The sealed record is `nonce || ciphertext || tag`; the plaintext is a list of entries, each
//! `name length (1 byte) || value length (u32 BE) || name || value`, names strictly ascending.
//! [`parse`] and [`open`] accept any bytes and never panic: they are the fuzzing entry points.

use std::collections::BTreeMap;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::content::{NONCE_LEN, TAG_LEN};
use super::{nonce, CipherError};
use crate::keys::KEY_LEN;

/// Prefix of the associated data; the backing inode number (u64 BE) follows.
pub const AAD_PREFIX: &[u8] = b"cryptvol/v1/xattrs";
/// Longest attribute name (`XATTR_NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest sealed record: the largest value Linux lets any file system store in one attribute
/// (`XATTR_SIZE_MAX`), so every backing file system that has user attributes can hold it.
pub const MAX_SEALED_LEN: usize = 65536;
/// Longest plaintext record.
pub const MAX_RECORD_LEN: usize = MAX_SEALED_LEN - NONCE_LEN - TAG_LEN;

const ENTRY_OVERHEAD: usize = 1 + 4;

/// The attributes of one file: name to value.
pub type Attributes = BTreeMap<Vec<u8>, Vec<u8>>;

/// The plaintext record of `attrs`, or `None` when it would be longer than [`MAX_RECORD_LEN`]
/// or holds a name that is empty or longer than [`MAX_NAME_LEN`].
pub fn serialize(attrs: &Attributes) -> Option<Vec<u8>> {
    let len: usize = attrs.iter().map(|(name, value)| ENTRY_OVERHEAD + name.len() + value.len()).sum();
    if len > MAX_RECORD_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    for (name, value) in attrs {
        let name_len = u8::try_from(name.len()).ok().filter(|&n| n > 0)?;
        out.push(name_len);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    Some(out)
}

/// Parses a plaintext record. Refuses empty names, truncated entries, and names out of order or
/// repeated (so one record has exactly one encoding).
pub fn parse(mut plain: &[u8]) -> Result<Attributes, CipherError> {
    if plain.len() > MAX_RECORD_LEN {
        return Err(CipherError::Malformed);
    }
    let mut attrs = Attributes::new();
    while let [name_len, rest @ ..] = plain {
        let name_len = usize::from(*name_len);
        let (value_len, rest) = rest.split_first_chunk::<4>().ok_or(CipherError::Malformed)?;
        let value_len = u32::from_be_bytes(*value_len) as usize;
        if name_len == 0 || rest.len() < name_len || rest.len() - name_len < value_len {
            return Err(CipherError::Malformed);
        }
        let (name, rest) = rest.split_at(name_len);
        let (value, rest) = rest.split_at(value_len);
        if attrs.last_key_value().is_some_and(|(last, _)| last.as_slice() >= name) {
            return Err(CipherError::Malformed);
        }
        attrs.insert(name.to_vec(), value.to_vec());
        plain = rest;
    }
    Ok(attrs)
}

fn aad(ino: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 8);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(&ino.to_be_bytes());
    aad
}

/// Seals `attrs` for the file with backing inode `ino` under a fresh random nonce. `None` in the
/// error position means the record is too large ([`serialize`]).
pub fn seal(key: &[u8; KEY_LEN], ino: u64, attrs: &Attributes) -> Result<Option<Vec<u8>>, CipherError> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce::random_bytes(&mut nonce)?;
    Ok(serialize(attrs).map(|plain| seal_with_nonce(key, &nonce, ino, plain)))
}

/// [`seal`] with a caller-chosen nonce, over an already serialized record: known-answer tests.
pub(crate) fn seal_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    ino: u64,
    plain: Vec<u8>,
) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    sealed.extend_from_slice(nonce);
    sealed.extend_from_slice(&plain);
    let tag = match Aes256Gcm::new(key.into()).encrypt_inout_detached(
        &Nonce::from(*nonce),
        &aad(ino),
        (&mut sealed[NONCE_LEN..]).into(),
    ) {
        Ok(tag) => tag,
        Err(_) => unreachable!("a record of at most 64 KiB is far below the AES-GCM message limit"),
    };
    sealed.extend_from_slice(&tag);
    sealed
}

/// Opens the sealed record of the file with backing inode `ino`: fails with
/// [`CipherError::Authentication`] for a record altered, sealed for another file or under another
/// key, and [`CipherError::Malformed`] for one that cannot be a record.
pub fn open(key: &[u8; KEY_LEN], ino: u64, sealed: &[u8]) -> Result<Attributes, CipherError> {
    if sealed.len() < NONCE_LEN + TAG_LEN || sealed.len() > MAX_SEALED_LEN {
        return Err(CipherError::Malformed);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = Nonce::try_from(nonce).map_err(|_| CipherError::Malformed)?;
    let tag = Tag::try_from(tag).map_err(|_| CipherError::Malformed)?;
    let mut plain = ciphertext.to_vec();
    Aes256Gcm::new(key.into())
        .decrypt_inout_detached(&nonce, &aad(ino), plain.as_mut_slice().into(), &tag)
        .map_err(|_| CipherError::Authentication)?;
    parse(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cipher::{assert_documented, kat_volume_keys};

    const KAT_NONCE: [u8; 12] = [0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb];
    const KAT_INO: u64 = 0x0102_0304_0506_0708;

    fn attrs(pairs: &[(&[u8], &[u8])]) -> Attributes {
        pairs.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn known_answer_record() {
        let keys = kat_volume_keys();
        let subkey = "dae0470a7c82a886f1cdc3a93a3eb446ca94dd687ae28d3c4f6cb33a7a8964de";
        assert_eq!(hex::encode(keys.xattrs()), subkey);
        assert_documented(subkey);
        let set = attrs(&[(b"user.mime", b"text/plain"), (b"user.a", b"")]);
        let plain = serialize(&set).unwrap();
        let expected = "0600000000757365722e61090000000a757365722e6d696d65746578742f706c61696e";
        assert_eq!(hex::encode(&plain), expected);
        assert_documented(expected);
        let sealed = seal_with_nonce(keys.xattrs(), &KAT_NONCE, KAT_INO, plain);
        assert_documented(&hex::encode(&sealed));
        assert_eq!(open(keys.xattrs(), KAT_INO, &sealed).unwrap(), set);
    }

    #[test]
    fn records_are_bound_to_their_inode_and_key() {
        let set = attrs(&[(b"user.x", b"1")]);
        let sealed = seal(&[7; 32], 42, &set).unwrap().unwrap();
        assert_eq!(open(&[7; 32], 42, &sealed).unwrap(), set);
        assert_eq!(open(&[7; 32], 43, &sealed), Err(CipherError::Authentication));
        assert_eq!(open(&[8; 32], 42, &sealed), Err(CipherError::Authentication));
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(open(&[7; 32], 42, &flipped), Err(CipherError::Authentication));
        assert_eq!(open(&[7; 32], 42, &sealed[..20]), Err(CipherError::Malformed));
    }

    #[test]
    fn parse_refuses_malformed_records() {
        assert_eq!(parse(b"").unwrap(), Attributes::new());
        assert_eq!(parse(&[0, 0, 0, 0, 0]), Err(CipherError::Malformed), "empty name");
        assert_eq!(parse(&[1, 0, 0, 0]), Err(CipherError::Malformed), "short length");
        assert_eq!(parse(&[1, 0, 0, 0, 5, b'a', b'x']), Err(CipherError::Malformed), "short value");
        assert_eq!(parse(&[1, 0xff, 0xff, 0xff, 0xff, b'a']), Err(CipherError::Malformed), "huge value");
        let twice = [1, 0, 0, 0, 0, b'a', 1, 0, 0, 0, 0, b'a'];
        assert_eq!(parse(&twice), Err(CipherError::Malformed), "repeated name");
        let unsorted = [1, 0, 0, 0, 0, b'b', 1, 0, 0, 0, 0, b'a'];
        assert_eq!(parse(&unsorted), Err(CipherError::Malformed), "out of order");
    }

    #[test]
    fn size_limits() {
        let big = attrs(&[(b"user.big", &vec![0u8; MAX_RECORD_LEN - ENTRY_OVERHEAD - 8])]);
        let sealed = seal(&[1; 32], 1, &big).unwrap().unwrap();
        assert_eq!(sealed.len(), MAX_SEALED_LEN);
        let too_big = attrs(&[(b"user.big", &vec![0u8; MAX_RECORD_LEN - ENTRY_OVERHEAD - 7])]);
        assert_eq!(seal(&[1; 32], 1, &too_big).unwrap(), None);
        assert_eq!(serialize(&attrs(&[(&[b'n'; 256], b"")])), None);
    }
}
