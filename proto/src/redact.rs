//! `Debug` for the CSI messages that carry secrets: the secret values are never printed.
//!
//! build.rs turns off the derived `Debug` of every message with a `(csi_secret)` field; the
//! impls below take its place. The compiler keeps the two in step: a message left without an
//! impl trips the `missing_debug_implementations` lint, an impl for a message that still derives
//! `Debug` is a conflicting impl, and a field added to a message breaks the exhaustive
//! destructuring below until it is listed here too.

use std::collections::HashMap;
use std::fmt;

use crate::csi::v1::controller_unpublish_volume_request::Reason;
use crate::csi::v1::*;

/// Shows the keys of a secrets map and hides every value.
struct Redacted<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_map().entries(keys.into_iter().map(|key| (key, format_args!("<redacted>")))).finish()
    }
}

/// Implements `Debug` for a message: its plain fields are printed as they are, its secret
/// fields through [`Redacted`].
macro_rules! debug_hiding_secrets {
    ($($message:ident { $($field:ident),* ; secrets: $($secret:ident),+ $(,)? })*) => {$(
        impl fmt::Debug for $message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self { $($field,)* $($secret,)+ } = self;
                f.debug_struct(stringify!($message))
                    $(.field(stringify!($field), $field))*
                    $(.field(stringify!($secret), &Redacted($secret)))+
                    .finish()
            }
        }
    )*};
}

debug_hiding_secrets! {
    CreateVolumeRequest {
        name, capacity_range, volume_capabilities, parameters, volume_content_source,
        accessibility_requirements, mutable_parameters;
        secrets: secrets
    }
    DeleteVolumeRequest { volume_id; secrets: secrets }
    ControllerPublishVolumeRequest {
        volume_id, node_id, volume_capability, readonly, volume_context;
        secrets: secrets
    }
    ControllerUnpublishVolumeRequest { volume_id, node_id, reason; secrets: secrets }
    ValidateVolumeCapabilitiesRequest {
        volume_id, volume_context, volume_capabilities, parameters, mutable_parameters;
        secrets: secrets
    }
    ControllerListVolumeHealthRequest { max_entries, starting_token; secrets: secrets }
    ControllerGetVolumeHealthRequest { volume_id; secrets: secrets }
    ControllerModifyVolumeRequest { volume_id, mutable_parameters; secrets: secrets }
    CreateSnapshotRequest {
        source_volume_id, name, parameters, accessibility_requirements;
        secrets: secrets
    }
    DeleteSnapshotRequest { snapshot_id; secrets: secrets }
    ListSnapshotsRequest {
        max_entries, starting_token, source_volume_id, snapshot_id;
        secrets: secrets
    }
    GetSnapshotRequest { snapshot_id; secrets: secrets }
    ControllerExpandVolumeRequest { volume_id, capacity_range, volume_capability; secrets: secrets }
    NodeStageVolumeRequest {
        volume_id, publish_context, staging_target_path, volume_capability, volume_context;
        secrets: secrets
    }
    NodePublishVolumeRequest {
        volume_id, publish_context, staging_target_path, target_path, volume_capability,
        readonly, volume_context;
        secrets: secrets
    }
    NodeGetStorageHealthRequest { ; secrets: secrets }
    NodeExpandVolumeRequest {
        volume_id, volume_path, capacity_range, staging_target_path, volume_capability;
        secrets: secrets
    }
    CreateVolumeGroupSnapshotRequest { name, source_volume_ids, parameters; secrets: secrets }
    DeleteVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids; secrets: secrets }
    GetVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids; secrets: secrets }
    GetMetadataAllocatedRequest { snapshot_id, starting_offset, max_results; secrets: secrets }
    GetMetadataDeltaRequest {
        base_snapshot_id, target_snapshot_id, starting_offset, max_results;
        secrets: secrets
    }
}

// Nested in a message whose derived Debug is turned off, so it lost its own derived Debug too.
impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-secret-value";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("password".to_owned(), SECRET.to_owned())])
    }

    /// Debug output of `message` names the secret key but not its value.
    fn assert_hidden(message: &dyn fmt::Debug) {
        for shown in [format!("{message:?}"), format!("{message:#?}")] {
            assert!(!shown.contains(SECRET), "secret value printed: {shown}");
            assert!(shown.contains("\"password\": <redacted>"), "secret key missing: {shown}");
        }
    }

    #[test]
    fn every_secret_bearing_message_hides_its_secrets() {
        assert_hidden(&CreateVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&DeleteVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerPublishVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerUnpublishVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ValidateVolumeCapabilitiesRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerListVolumeHealthRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerGetVolumeHealthRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerModifyVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&CreateSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&DeleteSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ListSnapshotsRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&GetSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&ControllerExpandVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&NodeStageVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&NodePublishVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&NodeGetStorageHealthRequest { secrets: secrets() });
        assert_hidden(&NodeExpandVolumeRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&CreateVolumeGroupSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&DeleteVolumeGroupSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&GetVolumeGroupSnapshotRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&GetMetadataAllocatedRequest { secrets: secrets(), ..Default::default() });
        assert_hidden(&GetMetadataDeltaRequest { secrets: secrets(), ..Default::default() });
    }

    #[test]
    fn plain_fields_are_still_printed() {
        let request = NodeStageVolumeRequest {
            volume_id: "pvc-1234".to_owned(),
            staging_target_path: "/var/lib/kubelet/staging".to_owned(),
            secrets: secrets(),
            ..Default::default()
        };
        let shown = format!("{request:?}");
        assert!(shown.starts_with("NodeStageVolumeRequest {"), "{shown}");
        assert!(shown.contains("volume_id: \"pvc-1234\""), "{shown}");
        assert!(shown.contains("staging_target_path: \"/var/lib/kubelet/staging\""), "{shown}");
    }

    #[test]
    fn unpublish_reason_prints_its_proto_name() {
        assert_eq!(format!("{:?}", Reason::NodeOutOfService), "NODE_OUT_OF_SERVICE");
    }
}
