//! Encrypted volumes on a real cluster: data written by one pod reads back in others, the backing
//! store holds only ciphertext, ReadWriteMany works across nodes, expansion shows in the API, a
//! node plugin restart does not keep new pods from the volume, and deleting a claim removes its
//! volume from the backing store.
//!
//! `e2e/run.sh` runs these one at a time (`--test-threads=1`): the restart test takes a node
//! plugin down, which would disturb a test running beside it on that node.

use cryptvol_e2e::objects::{claim, shell_pod, with_host_to_container, Plaintext};
use cryptvol_e2e::{backing, quantity, Cluster, E2eError, Result, TestNamespace};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const SIZE: &str = "1Gi";

/// The CSI volume handle of a provisioned volume: its directory name under the backing root.
fn volume_handle(pv: &PersistentVolume) -> Result<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|csi| csi.volume_handle.clone())
        .ok_or_else(|| E2eError::ClusterState(format!("volume {:?} is not a CSI volume", pv.metadata.name)))
}

/// Writes `text` from a pod on `node` into `claim_name` and checks the pod's report.
async fn write(
    cluster: &Cluster,
    ns: &TestNamespace,
    node: &str,
    claim_name: &str,
    text: &Plaintext,
) -> Result<()> {
    let image = &cluster.settings().image;
    let pod = shell_pod(&format!("write-{node}"), image, node, claim_name, &text.write_script());
    let report = ns.completed_pod(&pod).await?;
    assert_eq!(report, text.expected_report(), "the writer on {node} reported a different file");
    Ok(())
}

/// Reads `text` back in a new pod on `node` and checks it is whole.
async fn read(
    cluster: &Cluster,
    ns: &TestNamespace,
    pod: &str,
    node: &str,
    claim_name: &str,
    text: &Plaintext,
) -> Result<()> {
    let image = &cluster.settings().image;
    let report = ns.completed_pod(&shell_pod(pod, image, node, claim_name, &text.read_script())).await?;
    assert_eq!(report, text.expected_report(), "pod {pod} on {node} read a different file");
    Ok(())
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn data_reads_back_and_only_ciphertext_reaches_the_backing_store() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let ns = cluster.namespace("write", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    let (_, pv) = ns.bound_claim(&claim("data", storage_class, SIZE, "ReadWriteOnce")).await?;

    let text = Plaintext::new();
    write(&cluster, &ns, node, "data", &text).await?;
    read(&cluster, &ns, "read-again", node, "data", &text).await?;

    // The volume's directory holds at least as many bytes as were written, and nothing anywhere
    // under the backing root (headers, names, contents) carries the plaintext marker.
    let backing_root = &cluster.settings().backing_dir;
    let volume_dir = backing_root.join(volume_handle(&pv)?);
    assert!(volume_dir.join("cryptvol.header").is_file(), "{} has no header", volume_dir.display());
    let stored = backing::scan(&volume_dir, &[])?;
    assert!(
        stored.bytes >= text.len() as u64,
        "{} holds {} bytes in {} files, less than the {} bytes written: the scan would prove nothing",
        volume_dir.display(),
        stored.bytes,
        stored.files,
        text.len()
    );
    let scan = backing::scan(backing_root, &[text.marker.as_bytes()])?;
    assert!(scan.findings.is_empty(), "plaintext on the backing store:\n{}", scan.findings.join("\n"));
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn pods_on_two_workers_share_one_read_write_many_volume() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(2).await?;
    let (first, second) = (&workers[0], &workers[1]);
    let ns = cluster.namespace("rwx", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    ns.bound_claim(&claim("shared", storage_class, SIZE, "ReadWriteMany")).await?;

    let from_first = Plaintext::new();
    write(&cluster, &ns, first, "shared", &from_first).await?;
    // Keep the volume mounted on the first worker while the second one uses it.
    let image = &cluster.settings().image;
    ns.running_pod(&shell_pod("hold", image, first, "shared", &from_first.read_and_hold_script())).await?;
    read(&cluster, &ns, "read-on-second", second, "shared", &from_first).await?;

    let from_second = Plaintext::new();
    write(&cluster, &ns, second, "shared", &from_second).await?;
    read(&cluster, &ns, "read-on-first", first, "shared", &from_second).await?;
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn expansion_shows_in_the_volume_the_claim_and_df_in_the_pod() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = cluster.namespace("expand", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    let (_, pv) = ns.bound_claim(&claim("grow", storage_class, "1Gi", "ReadWriteOnce")).await?;
    let wanted = 2u64 << 30;
    // A pod keeps the volume in use: the node raises its live mount's limit (NodeExpandVolume),
    // which is what completes the resize of the claim.
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let image = &cluster.settings().image;
    ns.running_pod(&shell_pod("hold", image, node, "grow", "sleep 3600")).await?;

    let patch = json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } });
    ns.claims()
        .patch("grow", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| E2eError::Kube { what: "asking for 2Gi".into(), source })?;

    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let pv_grown = |pv: Option<&PersistentVolume>| {
        pv.and_then(|pv| pv.spec.as_ref())
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(quantity::bytes)
            == Some(wanted)
    };
    let volumes: Api<PersistentVolume> = Api::all(cluster.client());
    cluster.wait(volumes, &pv_name, "the volume's capacity to be 2Gi", pv_grown).await?;

    let claim_grown = |c: Option<&PersistentVolumeClaim>| {
        c.and_then(|c| c.status.as_ref())
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(quantity::bytes)
            == Some(wanted)
    };
    cluster.wait(ns.claims(), "grow", "the claim's capacity to be 2Gi", claim_grown).await?;

    // `df` in a pod shows the new size (1 KiB blocks, second column).
    let df = ns.completed_pod(&shell_pod("df", image, node, "grow", "df -k /data | tail -1")).await?;
    let size_kib = df.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok());
    if size_kib != Some(wanted / 1024) {
        return Err(E2eError::ClusterState(format!("df in the pod shows {df:?}, not 2Gi")));
    }
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_new_pod_mounts_the_volume_after_the_node_plugin_restarts() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let ns = cluster.namespace("restart", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    ns.bound_claim(&claim("survivor", storage_class, SIZE, "ReadWriteOnce")).await?;
    let text = Plaintext::new();
    write(&cluster, &ns, node, "survivor", &text).await?;

    // A pod keeps the volume staged and published on the node while its plugin is replaced.
    let image = &cluster.settings().image;
    ns.running_pod(&shell_pod("hold", image, node, "survivor", &text.read_and_hold_script())).await?;
    cluster.restart_node_plugin(node).await?;

    // A new pod on the same node gets a working mount, and the old pod can still be removed
    // (unpublishing its dead mount succeeds).
    read(&cluster, &ns, "after-restart", node, "survivor", &text).await?;
    ns.delete_pod("hold").await?;
    read(&cluster, &ns, "after-unpublish", node, "survivor", &text).await?;
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_host_to_container_pod_sees_its_volume_return_after_the_node_plugin_restarts() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let node = &workers[0];
    let ns = cluster.namespace("propagation", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    ns.bound_claim(&claim("comeback", storage_class, SIZE, "ReadWriteOnce")).await?;
    let text = Plaintext::new();
    write(&cluster, &ns, node, "comeback", &text).await?;

    // The watcher keeps running through the restart: it sees the volume go, then come back.
    let script = format!(
        "until ! cat {p} >/dev/null 2>&1; do sleep 0.1; done; echo lost\n\
         until cat {p} >/dev/null 2>&1; do sleep 0.2; done; echo back; wc -c < {p}",
        p = text.path()
    );
    let image = &cluster.settings().image;
    ns.running_pod(&with_host_to_container(shell_pod("watcher", image, node, "comeback", &script))).await?;
    cluster.restart_node_plugin(node).await?;
    let log = ns.finished_pod("watcher").await?;
    if !(log.contains("lost") && log.contains("back") && log.contains(&text.len().to_string())) {
        return Err(E2eError::ClusterState(format!("the watcher did not see its volume return: {log}")));
    }
    ns.delete().await
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn deleting_the_claim_removes_the_volume_from_the_backing_store() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let workers = cluster.require_workers(1).await?;
    let ns = cluster.namespace("delete", json!({})).await?;
    let storage_class = &cluster.settings().storage_class;
    let (_, pv) = ns.bound_claim(&claim("doomed", storage_class, SIZE, "ReadWriteOnce")).await?;
    write(&cluster, &ns, &workers[0], "doomed", &Plaintext::new()).await?;
    let volume_dir = cluster.settings().backing_dir.join(volume_handle(&pv)?);
    assert!(volume_dir.is_dir(), "{} does not exist after a write", volume_dir.display());

    ns.delete_pod(&format!("write-{}", workers[0])).await?;
    // The external-provisioner deletes the PersistentVolume only after DeleteVolume succeeded.
    ns.delete_claim("doomed", &pv).await?;
    assert!(!volume_dir.exists(), "{} is still on the backing store", volume_dir.display());
    ns.delete().await
}
