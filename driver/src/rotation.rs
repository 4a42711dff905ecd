//! Key-encryption-key rotation: re-wrapping a volume's data key under another KMS key, or under the
//! newest material of its own key.
//!
//! The data key never changes, so files are not re-encrypted and staged volumes keep working while
//! their header changes under them. The KMS does the re-wrap (`ReEncrypt`; the local provider
//! unwraps and wraps inside the provider), bound to the volume's encryption context, and the new
//! wrap replaces the old one atomically under the header lock.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::header::{VolumeHeader, VolumeState};
use crate::kms::config::KmsRegistry;
use crate::kms::{KmsError, Secrets};
use crate::volume::{BackingStore, StoreError};

/// What a rotation did to one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub volume_id: String,
    /// The canonical ARN the data key was wrapped under before.
    pub from_key_arn: String,
    /// The canonical ARN it is wrapped under now.
    pub to_key_arn: String,
    /// Unix seconds of the new wrap.
    pub rotated_at: u64,
}

/// Why a volume could not be rotated. [`RotationError::is_permanent`] tells a retry from a refusal.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("volume {volume_id} does not exist")]
    NoSuchVolume { volume_id: String },
    #[error("volume {volume_id} is being deleted")]
    Deleting { volume_id: String },
    /// The node pins the key a volume was provisioned with until the header is sealed; only the
    /// seal can later prove that another key still unwraps the volume's own data key.
    #[error(
        "volume {volume_id} has never been staged, so its header is not sealed yet; it can only be \
         re-wrapped under its own key {current} until a node has staged it once"
    )]
    NotSealed { volume_id: String, current: String },
    #[error("volume {volume_id}: the target key is on KMS connection {target:?}, the volume on {volume:?}")]
    OtherConnection { volume_id: String, volume: String, target: String },
    #[error("volume {volume_id}: {source}")]
    Kms { volume_id: String, source: KmsError },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another writer re-wrapped the key between the KMS call and the header update.
    #[error("volume {volume_id}: the wrapped key changed during the rotation; try again")]
    Conflict { volume_id: String },
}

impl RotationError {
    /// True when trying again cannot help without someone changing something first.
    pub fn is_permanent(&self) -> bool {
        match self {
            RotationError::NoSuchVolume { .. }
            | RotationError::Deleting { .. }
            | RotationError::NotSealed { .. }
            | RotationError::OtherConnection { .. } => true,
            RotationError::Kms { source, .. } => !matches!(source, KmsError::Unavailable { .. }),
            RotationError::Store(_) | RotationError::Conflict { .. } => false,
        }
    }
}

/// Re-wraps the data key of `volume_id` under `target_key` (a key id, ARN or alias on the volume's
/// KMS connection), or under the newest material of the volume's current key when `None`.
pub async fn rotate_volume(
    store: &BackingStore,
    kms: &KmsRegistry,
    volume_id: &str,
    target_key: Option<&str>,
    secrets: &Secrets,
) -> Result<Rotated, RotationError> {
    let header = read_header(store, volume_id).await?;
    if header.state != VolumeState::Ready {
        return Err(RotationError::Deleting { volume_id: volume_id.to_string() });
    }
    let kms_err = |source| RotationError::Kms { volume_id: volume_id.to_string(), source };
    let client = kms.client(Some(&header.kms_connection)).map_err(kms_err)?;
    let target_arn = match target_key {
        None => header.key_arn.clone(),
        Some(key) => {
            let info = client.describe_key(key, volume_id, secrets).await.map_err(kms_err)?;
            info.check_usable().map_err(kms_err)?;
            info.arn
        }
    };
    if target_arn != header.key_arn && header.seal.is_none() {
        return Err(RotationError::NotSealed {
            volume_id: volume_id.to_string(),
            current: header.key_arn.clone(),
        });
    }
    let wrapped =
        header.wrapped_key().ok_or_else(|| RotationError::Deleting { volume_id: volume_id.to_string() })?;
    let rewrapped = client
        .re_encrypt(&header.key_arn, &wrapped, &target_arn, volume_id, secrets)
        .await
        .map_err(kms_err)?;
    let rotated_at = now();
    let (expected_arn, expected_wrap) = (header.key_arn.clone(), header.wrapped_key.clone());
    let new_wrap = B64.encode(&rewrapped.0);
    let new_arn = target_arn.clone();
    let store = store.clone();
    let id = volume_id.to_string();
    let written = tokio::task::spawn_blocking(move || {
        store.modify_header(&id, |fresh| -> Result<bool, RotationError> {
            if fresh.state != VolumeState::Ready {
                return Err(RotationError::Deleting { volume_id: id.clone() });
            }
            if fresh.key_arn != expected_arn || fresh.wrapped_key != expected_wrap {
                return Err(RotationError::Conflict { volume_id: id.clone() });
            }
            fresh.key_arn = new_arn;
            fresh.wrapped_key = new_wrap;
            fresh.rotated_at = Some(rotated_at);
            Ok(true)
        })
    })
    .await
    .map_err(|e| {
        RotationError::Store(StoreError::Io { path: volume_id.into(), source: std::io::Error::other(e) })
    })??;
    if written.is_none() {
        return Err(RotationError::NoSuchVolume { volume_id: volume_id.to_string() });
    }
    tracing::info!(
        volume_id,
        from_key = %header.key_arn,
        to_key = %target_arn,
        "volume data key re-wrapped"
    );
    Ok(Rotated {
        volume_id: volume_id.to_string(),
        from_key_arn: header.key_arn,
        to_key_arn: target_arn,
        rotated_at,
    })
}

async fn read_header(store: &BackingStore, volume_id: &str) -> Result<VolumeHeader, RotationError> {
    let store = store.clone();
    let id = volume_id.to_string();
    let header = tokio::task::spawn_blocking(move || store.header(&id)).await.map_err(|e| {
        RotationError::Store(StoreError::Io { path: volume_id.into(), source: std::io::Error::other(e) })
    })??;
    header.ok_or_else(|| RotationError::NoSuchVolume { volume_id: volume_id.to_string() })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
