//! A backing file's bytes: the size arithmetic, the 24-byte header and every block decode, as a
//! mount reads them (every block with its expected last-block flag) and as fsck retries them.
#![no_main]

use cryptvol::cipher::content::{
    block_offset, decode_header, plain_size, plain_size_conservative, BlockCipher, BACKING_BLOCK_SIZE,
    HEADER_LEN,
};
use cryptvol::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let size = plain_size(len);
    let conservative = plain_size_conservative(len);
    if let Some(size) = size {
        assert_eq!(size, conservative);
    }
    let Some(header) = data.get(..HEADER_LEN) else { return };
    let Ok(file_id) = decode_header(header) else { return };
    let keys = DataKey::from_bytes(std::array::from_fn(|i| i as u8)).derive();
    let cipher = BlockCipher::new(&keys, file_id);
    let body = &data[HEADER_LEN..];
    let blocks = body.chunks(BACKING_BLOCK_SIZE).count() as u64;
    let mut plain = Vec::new();
    for (index, sealed) in (0..).zip(body.chunks(BACKING_BLOCK_SIZE)) {
        assert_eq!(block_offset(index) as usize, HEADER_LEN + index as usize * BACKING_BLOCK_SIZE);
        for last in [index + 1 == blocks, index + 1 != blocks] {
            let before = plain.len();
            if cipher.decrypt_block(index, last, sealed, &mut plain).is_err() {
                assert_eq!(plain.len(), before, "a failed block hands back no bytes");
            }
        }
    }
});
