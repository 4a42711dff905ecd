//! Long-name side files: the first input byte picks how the entry name is formed, the rest is the
//! side file's contents, checked against the entry and decrypted as a listing does.
#![no_main]

use cryptvol::cipher::names::{classify, long_entry_name, side_file_matches, EntryKind, NameCipher};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else { return };
    let Ok(encoded) = std::str::from_utf8(record) else { return };
    // Either the entry this record names (so the match succeeds) or a fixed, wrong one.
    let entry = if mode % 2 == 0 { long_entry_name(encoded) } else { "~AAAA".to_owned() };
    assert!(matches!(classify(entry.as_bytes()), EntryKind::Long(_)));
    if !side_file_matches(&entry, encoded) {
        return;
    }
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    // The directory id of docs/FORMAT.md's long-name vector, so the checked-in seed decrypts.
    let _ = NameCipher::new(keys.names()).decrypt(&[0xd1; 16], encoded);
});
