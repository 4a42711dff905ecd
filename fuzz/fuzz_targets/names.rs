//! Backing entry names: classification, then decryption of short names under a directory id
//! taken from the input; a name that decrypts is a valid plaintext name and re-encrypts to itself.
#![no_main]

use cryptvol::cipher::names::{classify, validate_name, EntryKind, NameCipher};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (dir, backing) = data.split_at(16);
    let dir: [u8; 16] = dir.try_into().expect("16 bytes");
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let names = NameCipher::new(keys.names());
    let encoded = match classify(backing) {
        EntryKind::Short(encoded) => encoded,
        EntryKind::Long(_) | EntryKind::Internal | EntryKind::Foreign => return,
    };
    if let Ok(plain) = names.decrypt(&dir, encoded) {
        validate_name(&plain).expect("a decrypted name is valid");
        let again = names.encrypt(&dir, &plain).expect("a decrypted name encrypts");
        assert_eq!(again.entry(), encoded);
    }
});
