//! The CSI services: thin gRPC adapters over the backing store, the KMS and the FUSE layer.
//!
//! Each RPC parses its request into a domain type (naming the bad field on InvalidArgument), holds
//! a per-volume guard so that concurrent operations on one volume get Aborted, and maps every
//! error through one exhaustive function per error type.

pub mod controller;
pub mod events;
pub mod identity;
pub mod mount;
pub mod node;
pub mod state;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cryptvol_proto::csi::v1 as csi;
use tonic::Status;

use crate::header::HeaderError;
use crate::kms::KmsError;
use crate::volume::StoreError;

/// The CSI driver name.
pub const DRIVER_NAME: &str = "cryptvol.csi.dev";
/// StorageClass parameter: the KMS key (id, ARN, alias name or alias ARN).
pub const PARAM_KMS_KEY_ID: &str = "kmsKeyId";
/// StorageClass parameter: the KMS connection name (optional).
pub const PARAM_KMS_CONNECTION: &str = "kmsConnection";
/// Volume context key carrying the canonical key ARN from CreateVolume to the node.
pub const CTX_KEY_ARN: &str = "cryptvol.csi.dev/keyArn";
/// Volume context key carrying the KMS connection from CreateVolume to the node.
pub const CTX_KMS_CONNECTION: &str = "cryptvol.csi.dev/kmsConnection";
/// Parameters that the external-provisioner adds (`--extra-create-metadata`) start with this.
pub const PROVISIONER_PARAM_PREFIX: &str = "csi.storage.k8s.io/";

/// The plugin version reported by GetPluginInfo.
pub fn plugin_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Which call a KMS error happened in; the same KMS answer means different things to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// CreateVolume: the key id came from the StorageClass, so an unknown key is the caller's error.
    Provision,
    /// NodeStageVolume and later: the key was valid once, so an unknown key is a broken precondition.
    Stage,
}

/// Maps a KMS failure to a gRPC status naming the action and key.
pub fn kms_status(err: &KmsError, phase: Phase) -> Status {
    let message = err.to_string();
    match err {
        KmsError::KeyNotFound { .. } => match phase {
            Phase::Provision => Status::invalid_argument(format!("parameter {PARAM_KMS_KEY_ID}: {message}")),
            Phase::Stage => Status::failed_precondition(message),
        },
        KmsError::InvalidKeyId { .. } => match phase {
            Phase::Provision => Status::invalid_argument(format!("parameter {PARAM_KMS_KEY_ID}: {message}")),
            Phase::Stage => Status::failed_precondition(message),
        },
        KmsError::AccessDenied { .. } => Status::permission_denied(message),
        KmsError::KeyNotEnabled { .. } => Status::failed_precondition(message),
        KmsError::UnsuitableKey { .. } => Status::failed_precondition(message),
        KmsError::InvalidCiphertext { .. } => Status::failed_precondition(message),
        KmsError::Unavailable { .. } => Status::unavailable(message),
        KmsError::UnknownConnection { .. } => {
            Status::invalid_argument(format!("parameter {PARAM_KMS_CONNECTION}: {message}"))
        }
        KmsError::KeyFile { .. } => Status::unavailable(message),
        KmsError::KeyExists { .. } => Status::already_exists(message),
        KmsError::Unauthenticated { .. } => Status::unauthenticated(message),
        KmsError::InvalidSecrets { .. } => Status::invalid_argument(message),
        // A reply cryptvol cannot interpret is a fault on one side or the other; retrying will not help.
        KmsError::UnexpectedAnswer { .. } => Status::internal(message),
    }
}

/// Maps a backing-store failure to a gRPC status.
impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        store_status(&err)
    }
}

pub fn store_status(err: &StoreError) -> Status {
    let message = err.to_string();
    match err {
        StoreError::InvalidId { .. } => Status::invalid_argument(format!("volume_id: {message}")),
        StoreError::Io { source, .. } => io_status(source, message),
        StoreError::Header(header) => header_status(header),
        StoreError::InitRoot { .. } => Status::unavailable(message),
    }
}

/// Maps a header failure to a gRPC status.
pub fn header_status(err: &HeaderError) -> Status {
    let message = err.to_string();
    match err {
        HeaderError::Missing { .. } => Status::not_found(message),
        HeaderError::Io { source, .. } => io_status(source, message),
        HeaderError::Malformed { .. } => Status::failed_precondition(message),
        HeaderError::SealMismatch { .. } => Status::failed_precondition(message),
    }
}

fn io_status(err: &std::io::Error, message: String) -> Status {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Status::resource_exhausted(message),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Status::failed_precondition(message),
        _ => Status::unavailable(message),
    }
}

/// Returns InvalidArgument naming `field` when a required string is empty.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// Checks one volume capability: filesystem access with a known access mode.
pub fn check_capability(cap: &csi::VolumeCapability, field: &str) -> Result<(), String> {
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::AccessType;
    match &cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(format!("{field}: block access is not supported; cryptvol serves filesystems"))
        }
        None => return Err(format!("{field}.access_type is required")),
    }
    let mode =
        cap.access_mode.as_ref().map(|m| m.mode).ok_or_else(|| format!("{field}.access_mode is required"))?;
    match Mode::try_from(mode) {
        Ok(Mode::Unknown) | Err(_) => Err(format!("{field}.access_mode {mode} is not a known access mode")),
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::MultiNodeReaderOnly
            | Mode::MultiNodeSingleWriter
            | Mode::MultiNodeMultiWriter
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => Ok(()),
    }
}

/// True when the capability only ever reads.
pub fn is_read_only_mode(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
    matches!(Mode::try_from(mode), Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
}

/// Volume ids with an operation in flight; a second operation on the same id gets Aborted.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Releases its volume id when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    id: String,
}

impl InFlight {
    /// Claims `id`, or returns Aborted if another operation holds it.
    pub fn claim(&self, id: &str) -> Result<InFlightGuard, Status> {
        let mut set = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !set.insert(id.to_string()) {
            return Err(Status::aborted(format!("an operation on volume {id} is already in progress")));
        }
        Ok(InFlightGuard { set: self.clone(), id: id.to_string() })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        set.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_aborts_the_second_claim_until_release() {
        let flights = InFlight::default();
        let first = flights.claim("v").unwrap();
        assert_eq!(flights.claim("v").unwrap_err().code(), tonic::Code::Aborted);
        flights.claim("w").unwrap();
        drop(first);
        flights.claim("v").unwrap();
    }

    #[test]
    fn kms_errors_map_by_phase() {
        let missing = KmsError::KeyNotFound { key: "k".into() };
        assert_eq!(kms_status(&missing, Phase::Provision).code(), tonic::Code::InvalidArgument);
        assert_eq!(kms_status(&missing, Phase::Stage).code(), tonic::Code::FailedPrecondition);
        let action = crate::kms::KmsAction::Decrypt;
        let down = KmsError::Unavailable { action, key: "k".into(), message: "x".into() };
        assert_eq!(kms_status(&down, Phase::Stage).code(), tonic::Code::Unavailable);
    }
}
