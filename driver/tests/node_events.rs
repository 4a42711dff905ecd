//! The node plugin raises a Warning Event on a volume's PersistentVolume when it cannot serve the
//! volume again after a restart; checked against a scripted API server.
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::collections::BTreeMap;

use cryptvol::csi::events::VolumeEvents;
use cryptvol::csi::node::NodeService;
use cryptvol::csi::state::{NodeState, VolumeRecord};
use cryptvol::kms::config::{KmsConfig, KmsRegistry};
use cryptvol::kms::local::KeyFile;
use cryptvol::volume::BackingStore;
use csi_harness::Harness;
use http::{Request, Response};
use kube::client::Body;

/// Answers one request of the scripted API server and returns the event it carried.
async fn answer_one(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
) -> serde_json::Value {
    let (request, send) = handle.next_request().await.expect("the node plugin should publish an event");
    assert_eq!(request.method(), http::Method::POST);
    assert_eq!(request.uri().path(), "/apis/events.k8s.io/v1/namespaces/default/events");
    let body = request.into_body().collect_bytes().await.unwrap();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    send.send_response(Response::builder().status(201).body(Body::from(body.to_vec())).unwrap());
    event
}

#[tokio::test]
async fn a_volume_whose_key_is_refused_at_heal_raises_a_warning_on_its_pv() {
    let mut h = Harness::start().await;
    let volume = h.create("pvc-events", "app").await.unwrap();
    KeyFile::update(&h.key_file, false, |f| f.set_enabled("app", false)).unwrap();

    // The state a killed plugin left: the volume staged at a path that still exists.
    let staging = h.path("staging-events");
    std::fs::create_dir_all(&staging).unwrap();
    let state_dir = h.path("state");
    NodeState::new(Some(state_dir.clone()))
        .save(&VolumeRecord {
            volume_id: volume.volume_id.clone(),
            staging_path: staging.clone(),
            read_only: false,
            key_arn: volume.volume_context.get("cryptvol.csi.dev/keyArn").cloned(),
            targets: BTreeMap::new(),
        })
        .unwrap();

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api = tokio::spawn(answer_one(handle));
    let kms = KmsRegistry::from_config(KmsConfig::local(h.key_file.clone()), h.dir.path(), "test").unwrap();
    let node = NodeService::new("node-1", BackingStore::new(&h.backing), std::sync::Arc::new(kms))
        .with_state_dir(state_dir)
        .with_events(VolumeEvents::new(kube::Client::new(service, "default"), "node-1"));

    assert_eq!(node.heal().await, 0, "a volume with a disabled key must stay down");
    let event = api.await.unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "VolumeNotServed");
    assert_eq!(event["regarding"]["kind"], "PersistentVolume");
    assert_eq!(event["regarding"]["name"], "pvc-events");
    assert_eq!(event["reportingController"], "cryptvol-node");
    assert_eq!(event["reportingInstance"], "node-1");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("pvc-events") && note.contains("disabled"), "{note}");
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap(), "nothing is mounted without a key");
}
