//! Stored symlink targets: decoding and authenticating any bytes, and the length `lstat`
//! computes from the stored form without decrypting, which must agree with a successful decode.
#![no_main]

use cryptvol::cipher::symlink::{decrypt_target, target_len};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The data key of docs/FORMAT.md's vectors, so the checked-in seeds decrypt.
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let len = target_len(data.len() as u64);
    if let Ok(target) = decrypt_target(keys.symlinks(), data) {
        assert_eq!(len, Some(target.len() as u64));
    }
});
