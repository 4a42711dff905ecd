//! Extended attribute records: the sealed record of one inode (authenticated under the xattr
//! subkey, bound to the inode number) and the plaintext record inside it. Neither may panic, and a
//! record that opens must parse the same as its plaintext.
#![no_main]

use cryptvol::cipher::xattr::{open, parse};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let _ = open(keys.xattrs(), 7, data);
});
