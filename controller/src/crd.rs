//! `EncryptionKeyRotation` (group `cryptvol.csi.dev`): a request to re-wrap the data keys of some
//! volumes under a KMS key, and the record of what happened to each volume.
//!
//! The CRD YAML in the chart is generated from these types (`cryptvol-controller crd`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every cryptvol resource.
pub const GROUP: &str = "cryptvol.csi.dev";

/// Re-wraps the data keys of the selected volumes under a KMS key (key-encryption-key rotation).
///
/// The data keys themselves do not change, so no file is re-encrypted and staged volumes keep
/// working. A finished rotation is not run again unless its spec changes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cryptvol.csi.dev",
    version = "v1alpha1",
    kind = "EncryptionKeyRotation",
    plural = "encryptionkeyrotations",
    shortname = "ekr",
    status = "EncryptionKeyRotationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Rotated","type":"integer","jsonPath":".status.rotated"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionKeyRotationSpec {
    /// Which volumes to rotate: exactly one of the fields.
    pub volumes: VolumeSelector,
    /// The key to wrap under: a key id, key ARN, alias name or alias ARN on each volume's KMS
    /// connection. Absent: each volume's current key, which picks up the newest key material
    /// after the KMS rotated that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_key_id: Option<String>,
}

/// Exactly one way of naming volumes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSelector {
    /// The volume bound to one PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimReference>,
    /// Every cryptvol PersistentVolume of this StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// One PersistentVolume by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_name: Option<String>,
}

/// A PersistentVolumeClaim by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ClaimReference {
    pub namespace: String,
    pub name: String,
}

/// Where a rotation stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, not started.
    #[default]
    Pending,
    /// Volumes are being rotated, or some wait for a retry.
    Running,
    /// Every selected volume is rotated (or skipped as not a cryptvol volume).
    Succeeded,
    /// Finished, and at least one volume could not be rotated (see `volumes`), or the spec is invalid.
    Failed,
}

impl Phase {
    /// True once nothing more will be tried for this generation.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// What happened to one volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeOutcome {
    /// Not done yet, or waiting for a retry after a transient failure.
    Pending,
    Rotated,
    /// Given up: a refusal, or too many transient failures.
    Failed,
    /// Not a cryptvol volume, or nothing to do.
    Skipped,
}

/// The record of one volume in a rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRotationStatus {
    /// The PersistentVolume.
    pub persistent_volume: String,
    /// The CSI volume handle (the directory under the backing root).
    pub volume_id: String,
    pub outcome: VolumeOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_key_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_key_arn: Option<String>,
    /// Why it failed, is waiting or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// RFC 3339 time of the re-wrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
}

/// A status condition, in the shape Kubernetes conventions use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Complete` (nothing left to try) or `Failed` (some volume could not be rotated).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What the controller reports about a rotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionKeyRotationStatus {
    #[serde(default)]
    pub phase: Phase,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub total: u32,
    #[serde(default)]
    pub rotated: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub skipped: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRotationStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// The CRD as YAML, as the chart ships it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = EncryptionKeyRotation::crd();
    let body = serde_yaml::to_string(&crd).unwrap_or_default();
    format!("# Generated by `cryptvol-controller crd` from controller/src/crd.rs; do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_names_the_group_and_the_status_subresource() {
        let yaml = crd_yaml();
        assert!(yaml.contains("name: encryptionkeyrotations.cryptvol.csi.dev"), "{yaml}");
        assert!(yaml.contains("status: {}"), "the status subresource must be enabled: {yaml}");
        assert!(yaml.contains("targetKeyId"), "{yaml}");
        assert!(yaml.contains("scope: Cluster"), "{yaml}");
    }

    #[test]
    fn the_chart_ships_the_current_crd() {
        let shipped = include_str!("../../charts/cryptvol/crds/encryptionkeyrotations.yaml");
        assert_eq!(shipped, crd_yaml(), "run scripts/render-manifests to regenerate the CRD");
    }
}
