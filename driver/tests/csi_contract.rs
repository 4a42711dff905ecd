//! CSI contract tests over Unix sockets: request validation, idempotency, concurrency, KMS refusals.

mod csi_harness;

use cryptvol_proto::csi::v1 as csi;
use csi_harness::{capability, params, Harness};
use tonic::Code;

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, mentions: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn identity_reports_name_capabilities_and_readiness() {
    let mut h = Harness::start().await;
    let info = h.identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "cryptvol.csi.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps =
        h.identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.capabilities.len(), 2);
    let online = csi::plugin_capability::volume_expansion::Type::Online as i32;
    assert!(caps.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(csi::plugin_capability::Type::VolumeExpansion(e)) if e.r#type == online
    )));
    let ready = h.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(ready.ready, Some(true));

    std::fs::remove_dir(&h.backing).unwrap();
    assert_status(h.identity.probe(csi::ProbeRequest {}).await, Code::FailedPrecondition, "backing");
}

#[tokio::test]
async fn create_volume_names_missing_and_bad_fields() {
    let mut h = Harness::start().await;
    let base = csi::CreateVolumeRequest {
        name: "v".into(),
        volume_capabilities: vec![capability()],
        parameters: params("app"),
        ..Default::default()
    };
    let mut no_name = base.clone();
    no_name.name.clear();
    assert_status(h.controller.create_volume(no_name).await, Code::InvalidArgument, "name");
    let mut no_caps = base.clone();
    no_caps.volume_capabilities.clear();
    assert_status(h.controller.create_volume(no_caps).await, Code::InvalidArgument, "volume_capabilities");
    let mut no_key = base.clone();
    no_key.parameters.clear();
    assert_status(h.controller.create_volume(no_key).await, Code::InvalidArgument, "kmsKeyId");
    let mut unknown = base.clone();
    unknown.parameters.insert("encrypted".into(), "true".into());
    unknown.parameters.insert("fsType".into(), "ext4".into());
    assert_status(
        h.controller.create_volume(unknown).await,
        Code::InvalidArgument,
        "\"encrypted\", \"fsType\"",
    );
    let mut block = base.clone();
    block.volume_capabilities[0].access_type =
        Some(csi::volume_capability::AccessType::Block(csi::volume_capability::BlockVolume {}));
    assert_status(h.controller.create_volume(block).await, Code::InvalidArgument, "block");
    let mut negative = base.clone();
    negative.capacity_range = Some(csi::CapacityRange { required_bytes: -1, limit_bytes: 0 });
    assert_status(h.controller.create_volume(negative).await, Code::InvalidArgument, "required_bytes");
    let mut bad_connection = base.clone();
    bad_connection.parameters.insert("kmsConnection".into(), "prod".into());
    assert_status(h.controller.create_volume(bad_connection).await, Code::InvalidArgument, "kmsConnection");

    // Provisioner metadata (--extra-create-metadata) is accepted.
    let mut with_metadata = base.clone();
    with_metadata.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    h.controller.create_volume(with_metadata).await.unwrap();
    // Nothing half made by the refused calls.
    assert_eq!(std::fs::read_dir(&h.backing).unwrap().count(), 1);
}

#[tokio::test]
async fn unknown_and_disabled_keys_are_refused_without_leftovers() {
    let mut h = Harness::start().await;
    assert_status(h.create("v1", "no-such-key").await, Code::InvalidArgument, "no-such-key");
    assert_status(h.create("v1", "bad key!").await, Code::InvalidArgument, "kmsKeyId");
    cryptvol::kms::local::KeyFile::update(&h.key_file, false, |f| f.set_enabled("other", false)).unwrap();
    assert_status(h.create("v1", "other").await, Code::FailedPrecondition, "disabled");
    assert_eq!(std::fs::read_dir(&h.backing).unwrap().count(), 0);
}

#[tokio::test]
async fn create_volume_is_idempotent_and_detects_conflicts() {
    let mut h = Harness::start().await;
    let first = h.create("pvc-1", "app").await.unwrap();
    assert_eq!(first.volume_id, "pvc-1");
    assert_eq!(first.capacity_bytes, 1 << 20);
    assert_eq!(first.volume_context["cryptvol.csi.dev/keyArn"], "cryptvol:local:key/app");
    let again = h.create("pvc-1", "app").await.unwrap();
    assert_eq!(again, first);
    // The same key named another way is the same key.
    let by_arn = h.create("pvc-1", "cryptvol:local:key/app").await.unwrap();
    assert_eq!(by_arn, first);
    assert_status(h.create_with("pvc-1", params("app"), 2 << 20).await, Code::AlreadyExists, "capacity");
    assert_status(h.create("pvc-1", "other").await, Code::AlreadyExists, "key");

    // The header holds the wrapped key, never a plaintext one; the controller has none to write.
    let header = std::fs::read_to_string(h.backing.join("pvc-1/cryptvol.header")).unwrap();
    assert!(header.contains("\"wrappedKey\""));
    assert!(header.contains("cryptvol:local:key/app"));
}

#[tokio::test]
async fn concurrent_creates_with_one_name_make_one_volume() {
    let h = Harness::start().await;
    let calls = (0..10).map(|_| {
        let mut client = h.controller.clone();
        tokio::spawn(async move {
            client
                .create_volume(csi::CreateVolumeRequest {
                    name: "shared".into(),
                    volume_capabilities: vec![capability()],
                    parameters: params("app"),
                    ..Default::default()
                })
                .await
        })
    });
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(resp) => {
                assert_eq!(resp.into_inner().volume.unwrap().volume_id, "shared");
                ok += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(ok >= 1);
    let entries: Vec<_> = std::fs::read_dir(&h.backing).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec!["shared"]);
}

#[tokio::test]
async fn delete_is_idempotent_and_shreds_the_key() {
    let mut h = Harness::start().await;
    h.controller
        .delete_volume(csi::DeleteVolumeRequest { volume_id: "never-made".into(), ..Default::default() })
        .await
        .unwrap();
    assert_status(
        h.controller
            .delete_volume(csi::DeleteVolumeRequest { volume_id: String::new(), ..Default::default() })
            .await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_status(
        h.controller
            .delete_volume(csi::DeleteVolumeRequest { volume_id: "../etc".into(), ..Default::default() })
            .await,
        Code::InvalidArgument,
        "volume_id",
    );
    let v = h.create("gone", "app").await.unwrap();
    h.controller
        .delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() })
        .await
        .unwrap();
    assert!(!h.backing.join("gone").exists());
    h.controller
        .delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id, ..Default::default() })
        .await
        .unwrap();
}

#[tokio::test]
async fn list_volumes_pages_and_rejects_foreign_tokens() {
    let mut h = Harness::start().await;
    for i in 0..5 {
        h.create(&format!("vol-{i}"), "app").await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .controller
            .list_volumes(csi::ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, (0..5).map(|i| format!("vol-{i}")).collect::<Vec<_>>());
    assert_status(
        h.controller
            .list_volumes(csi::ListVolumesRequest { max_entries: 0, starting_token: "bogus".into() })
            .await,
        Code::Aborted,
        "starting_token",
    );
}

#[tokio::test]
async fn expand_validate_and_capacity() {
    let mut h = Harness::start().await;
    let v = h.create("grow", "app").await.unwrap();
    let resp = h
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 8 << 20, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.capacity_bytes, 8 << 20);
    assert!(resp.node_expansion_required, "the node raises the live mount's limit");
    let listed = h.controller.list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.entries[0].volume.as_ref().unwrap().capacity_bytes, 8 << 20);
    assert_status(
        h.controller
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: "missing".into(),
                capacity_range: Some(csi::CapacityRange { required_bytes: 1, limit_bytes: 0 }),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "missing",
    );

    let confirmed = h
        .controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![capability()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(confirmed.confirmed.is_some());
    assert_status(
        h.controller
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: "missing".into(),
                volume_capabilities: vec![capability()],
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "missing",
    );
    let capacity = h.controller.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0);
}

#[tokio::test]
async fn node_requests_name_missing_fields() {
    let mut h = Harness::start().await;
    let staging = h.path("staging").display().to_string();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: staging.clone(),
        volume_capability: Some(capability()),
        ..Default::default()
    };
    let mut no_id = stage.clone();
    no_id.volume_id.clear();
    assert_status(h.node.node_stage_volume(no_id).await, Code::InvalidArgument, "volume_id");
    let mut no_path = stage.clone();
    no_path.staging_target_path.clear();
    assert_status(h.node.node_stage_volume(no_path).await, Code::InvalidArgument, "staging_target_path");
    let mut no_cap = stage.clone();
    no_cap.volume_capability = None;
    assert_status(h.node.node_stage_volume(no_cap).await, Code::InvalidArgument, "volume_capability");
    assert_status(h.node.node_stage_volume(stage).await, Code::NotFound, "does not exist");

    let publish = csi::NodePublishVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: staging,
        target_path: String::new(),
        volume_capability: Some(capability()),
        ..Default::default()
    };
    assert_status(h.node.node_publish_volume(publish).await, Code::InvalidArgument, "target_path");
    // Unpublishing and unstaging what is not there succeeds.
    let target = h.path("mnt");
    h.unpublish("v", &target).await.unwrap();
    let staging = h.path("staging");
    h.unstage("v", &staging).await.unwrap();
    let info = h.node.node_get_info(csi::NodeGetInfoRequest::default()).await.unwrap().into_inner();
    assert_eq!(info.node_id, "test-node");
}
