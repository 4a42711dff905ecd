//! Key lifecycle on a real cluster: an EncryptionKeyRotation re-wraps a volume under a second key
//! while a pod uses it, the volume then mounts with only the second key enabled, the PV carries its
//! key annotations, and disabling the key locks a mounted volume until the key is enabled again.
//!
//! `e2e/run.sh` creates the local keys `e2e` (the StorageClass key) and `e2e-next`, and installs the
//! chart with a short node key-check interval (e2e/values.yaml). These tests change the key file
//! Secret, so they run one at a time like the rest of the suite.

use std::time::Duration;

use cryptvol_e2e::objects::{claim, shell_pod, Plaintext};
use cryptvol_e2e::{kube_err, Cluster, E2eError, Result, TestNamespace};
use k8s_openapi::api::core::v1::{PersistentVolume, Secret};
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

const KEY_SECRET: &str = "cryptvol-keys";

fn rotations(cluster: &Cluster) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cryptvol.csi.dev", "v1alpha1", "EncryptionKeyRotation");
    Api::all_with(cluster.client(), &ApiResource::from_gvk(&gvk))
}

/// Enables or disables a key in the local key file Secret; the kubelet brings the change to the
/// plugins' mounted copy within about a minute.
async fn set_key_enabled(cluster: &Cluster, key: &str, enabled: bool) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &cluster.settings().driver_namespace);
    let secret = secrets.get(KEY_SECRET).await.map_err(kube_err("reading the key file Secret"))?;
    let bytes = secret
        .data
        .and_then(|d| d.get("keys.json").cloned())
        .ok_or_else(|| E2eError::ClusterState(format!("Secret {KEY_SECRET} has no keys.json")))?;
    let mut file: Value = serde_json::from_slice(&bytes.0)
        .map_err(|e| E2eError::ClusterState(format!("keys.json is not JSON: {e}")))?;
    let entry = file["keys"].get_mut(key).ok_or_else(|| {
        E2eError::ClusterState(format!("keys.json holds no key {key:?} (e2e/run.sh creates it)"))
    })?;
    entry["enabled"] = json!(enabled);
    let updated = ByteString(serde_json::to_vec(&file).unwrap_or_default());
    let patch = json!({ "data": { "keys.json": updated } });
    secrets
        .patch(KEY_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err(format!("setting key {key} enabled={enabled}")))?;
    Ok(())
}

/// Polls a pod's log until it contains `needle`.
async fn log_contains(ns: &TestNamespace, pod: &str, needle: &str, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let log = ns.pods().logs(pod, &Default::default()).await.unwrap_or_default();
        if log.contains(needle) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(E2eError::Timeout {
                what: format!("{needle:?} in the log of pod {pod}"),
                after: within,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_rotation_rewraps_a_volume_in_use_and_it_mounts_with_only_the_new_key() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let ns = cluster.namespace("rotate", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    let (_, pv) = ns.bound_claim(&claim("data", storage_class, "1Gi", "ReadWriteOnce")).await?;
    let image = &cluster.settings().image;
    let text = Plaintext::new();
    ns.completed_pod(&shell_pod("write", image, node, "data", &text.write_script())).await?;
    ns.running_pod(&shell_pod("hold", image, node, "data", &text.read_and_hold_script())).await?;

    let name = format!("rotate-{}", ns.name());
    let rotation: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cryptvol.csi.dev/v1alpha1", "kind": "EncryptionKeyRotation",
        "metadata": { "name": name },
        "spec": { "volumes": { "persistentVolumeClaim": { "namespace": ns.name(), "name": "data" } }, "targetKeyId": "alias/e2e-next" }
    }))
    .map_err(|e| E2eError::ClusterState(e.to_string()))?;
    let api = rotations(&cluster);
    api.create(&PostParams::default(), &rotation).await.map_err(kube_err("creating the rotation"))?;
    let done = |r: Option<&DynamicObject>| {
        r.and_then(|r| r.data.get("status")).and_then(|s| s.get("phase")).and_then(Value::as_str)
            == Some("Succeeded")
    };
    cluster.wait(api.clone(), &name, "the rotation to succeed", done).await?;

    // The header names the new key and the PV's annotation follows it.
    let handle =
        pv.spec.as_ref().and_then(|s| s.csi.as_ref()).map(|c| c.volume_handle.clone()).unwrap_or_default();
    let header_path = cluster.settings().backing_dir.join(&handle).join("cryptvol.header");
    let header = std::fs::read_to_string(&header_path)
        .map_err(|source| E2eError::Io { path: header_path.clone(), source })?;
    assert!(header.contains("cryptvol:local:key/e2e-next"), "{header}");
    let volumes: Api<PersistentVolume> = Api::all(cluster.client());
    let annotated = |pv: Option<&PersistentVolume>| {
        pv.map(|pv| {
            pv.annotations().get("cryptvol.csi.dev/key-arn").map(String::as_str)
                == Some("cryptvol:local:key/e2e-next")
        }) == Some(true)
    };
    cluster
        .wait(volumes, &pv.name_any(), "the PV's key-arn annotation to follow the rotation", annotated)
        .await?;

    // Only the new key enabled: a fresh stage (after the holding pod leaves) still reads everything.
    ns.delete_pod("hold").await?;
    set_key_enabled(&cluster, "e2e", false).await?;
    tokio::time::sleep(Duration::from_secs(90)).await; // Secret propagation to the plugins
    let result = ns.completed_pod(&shell_pod("read-after", image, node, "data", &text.read_script())).await;
    set_key_enabled(&cluster, "e2e", true).await?;
    assert_eq!(result?, text.expected_report());
    let _ = api.delete(&name, &Default::default()).await;
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn disabling_the_key_locks_a_mounted_volume_and_enabling_it_unlocks_without_a_remount() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let ns = cluster.namespace("revoke", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    ns.bound_claim(&claim("data", storage_class, "1Gi", "ReadWriteOnce")).await?;
    let image = &cluster.settings().image;
    // One pod, one mount, for the whole test: it reports whether a read works every two seconds.
    let probe = "echo hello > /data/probe; while true; do \
                 if cat /data/probe >/dev/null 2>/tmp/err; then echo READ-OK; else echo \"READ-FAILED $(cat /tmp/err)\"; fi; \
                 sleep 2; done";
    ns.running_pod(&shell_pod("probe", image, node, "data", probe)).await?;
    log_contains(&ns, "probe", "READ-OK", Duration::from_secs(60)).await?;

    set_key_enabled(&cluster, "e2e", false).await?;
    // Secret propagation (up to about a minute) plus the key-check interval plus margin.
    let locked = log_contains(&ns, "probe", "READ-FAILED", Duration::from_secs(180)).await;
    set_key_enabled(&cluster, "e2e", true).await?;
    locked?;
    let log =
        ns.pods().logs("probe", &Default::default()).await.map_err(kube_err("reading the probe log"))?;
    assert!(log.contains("revoked"), "reads must fail with EKEYREVOKED (\"Key has been revoked\"): {log}");

    // Enabled again: the same pod, on the same mount, reads again.
    let ok_count = log.matches("READ-OK").count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let log = ns.pods().logs("probe", &Default::default()).await.unwrap_or_default();
        if log.matches("READ-OK").count() > ok_count {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(E2eError::Timeout {
                what: "reads to work again".into(),
                after: Duration::from_secs(180),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    ns.delete().await
}
