//! Stored symlink targets: decoding and authenticating any bytes, and the length `lstat`
//! computes from the stored form without decrypting, which must agree with a successful decode.
#![no_main]

use cryptvol::cipher::symlink::{decrypt_target, target_len, Link};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The data key of docs/FORMAT.md's vectors; the first byte picks how much of the input is
    // the link's name (targets are bound to their directory id and name), the rest is the target.
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let Some((&split, rest)) = data.split_first() else { return };
    let (name, stored) = rest.split_at((split as usize).min(rest.len()));
    let dir_id = [0u8; 16];
    let len = target_len(stored.len() as u64);
    if let Ok(target) = decrypt_target(keys.symlinks(), Link { dir_id: &dir_id, name }, stored) {
        assert_eq!(len, Some(target.len() as u64));
    }
});
