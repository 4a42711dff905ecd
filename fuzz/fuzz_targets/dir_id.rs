//! The directory id file `.cvdir`: any contents are either a valid id (and the root is accepted
//! as it is) or a clear error, never a panic and never replaced.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join(".cvdir"), data).expect("write .cvdir");
    let result = cryptvol::fs::init_root(dir.path());
    assert_eq!(result.is_ok(), data.len() == 16, "{result:?}");
    assert_eq!(
        std::fs::read(dir.path().join(".cvdir")).expect("read .cvdir"),
        data,
        "the id is never replaced"
    );
});
