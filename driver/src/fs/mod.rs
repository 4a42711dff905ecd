//! Placeholder until the FUSE layer lands.
use std::path::Path;
pub fn init_root(backing_dir: &Path) -> std::io::Result<()> {
    std::fs::write(backing_dir.join(".cvdir"), [0u8; 16])
}
