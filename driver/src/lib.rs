//! cryptvol: encrypted Kubernetes volumes on any POSIX directory tree.
//!
//! The library behind the node plugin, the controller plugin and the admin CLI: the data key and
//! its subkeys, the volume header, the content and name ciphers, the FUSE encryption layer, the
//! KMS providers and the CSI services. Binaries only parse flags and call in here.

pub mod atomic;
pub mod bench;
pub mod cipher;
pub mod cli;
pub mod csi;
pub mod fs;
pub mod fsck;
pub mod header;
pub mod keys;
pub mod kms;
pub mod metrics;
pub mod plugin;
pub mod rotation;
pub mod server;
pub mod telemetry;
pub mod volume;
