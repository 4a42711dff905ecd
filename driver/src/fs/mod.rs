//! Placeholder until the FUSE layer lands.
use std::path::Path;
use std::sync::Arc;
pub fn init_root(backing_dir: &Path) -> std::io::Result<()> {
    std::fs::write(backing_dir.join(".cvdir"), [0u8; 16])
}
#[derive(Debug)]
pub struct MountOptions {
    pub volume_id: String,
    pub read_only: bool,
    pub threads: usize,
}
#[derive(Debug)]
pub struct Mount;
impl Mount {
    pub fn unmount(self) -> std::io::Result<()> {
        Ok(())
    }
}
pub fn mount(
    _b: &Path,
    _m: &Path,
    _k: Arc<crate::keys::VolumeKeys>,
    _o: MountOptions,
) -> std::io::Result<Mount> {
    Err(std::io::Error::other("placeholder"))
}
