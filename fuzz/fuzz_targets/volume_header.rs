//! The volume header (`cryptvol.header`): any bytes parse to a header or an error, never a panic;
//! a parsed header re-encodes and parses to itself, and its seal and wrapped key can be computed.
#![no_main]

use cryptvol::header::VolumeHeader;
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = VolumeHeader::parse(data) else { return };
    let again = VolumeHeader::parse(&header.to_bytes()).expect("a parsed header re-encodes to a valid one");
    assert_eq!(again, header);
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let _ = header.verify_seal(&keys);
    let _ = header.wrapped_key();
});
