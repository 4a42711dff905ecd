//! `cryptvol fsck` over a small tree built from the input: a directory id, a backing entry name
//! and a file's bytes. The check and the repair run to the end whatever the bytes are, and after
//! a repair the tree checks clean.
#![no_main]

use cryptvol::fsck::{check_tree, FsckOptions};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let (id, rest) = data.split_at(16);
    let name_len = usize::from(rest[0] % 64).min(rest.len() - 1);
    let (name, contents) = rest[1..].split_at(name_len);
    let name: String = name.iter().map(|&b| char::from(b'A' + b % 26)).collect();
    let name = if name.is_empty() { "AAAA".to_owned() } else { name };

    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join(".cvdir"), id).expect("write .cvdir");
    std::fs::write(dir.path().join(&name), contents).expect("write the file");
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let report = check_tree(dir.path(), &keys, FsckOptions { repair_truncate: true }).expect("fsck runs");
    if !report.repairs.is_empty() {
        let after = check_tree(dir.path(), &keys, FsckOptions::default()).expect("fsck runs");
        assert!(
            after.problems.iter().all(|p| p.backing.file_name() != Some(name.as_ref())
                || matches!(p.damage, cryptvol::fsck::Damage::BadName { .. })),
            "{after:?}"
        );
    }
});
