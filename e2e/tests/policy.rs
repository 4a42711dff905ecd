//! The admission policies of `manifests/policy/`, which `e2e/run.sh` applies after the chart.

use cryptvol_e2e::objects::{claim, storage_class};
use cryptvol_e2e::{Cluster, E2eError, Result};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::Api;
use serde_json::json;

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_storage_class_without_a_kms_key_is_refused() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let classes: Api<StorageClass> = Api::all(cluster.client());
    let id = short_id();

    let keyless = storage_class(&format!("cryptvol-e2e-nokey-{id}"), json!({ "kmsConnection": "local" }));
    let refusal = cluster.until_refused(&classes, &keyless).await?;
    assert!(refusal.message.contains("kmsKeyId"), "the refusal does not name kmsKeyId: {refusal:?}");

    // The policy refuses only what it should: a class with a key passes admission.
    let keyed = storage_class(&format!("cryptvol-e2e-key-{id}"), json!({ "kmsKeyId": "e2e" }));
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    classes
        .create(&dry_run, &keyed)
        .await
        .map_err(|source| E2eError::Kube { what: "creating a class with a key (dry run)".into(), source })?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_namespace_that_requires_encryption_refuses_other_storage_classes() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let labels = json!({ "cryptvol.csi.dev/require-encryption": "true" });
    let ns = cluster.namespace("policy", labels).await?;

    let plain = claim("plain", "not-encrypted", "1Gi", "ReadWriteOnce");
    let refusal = cluster.until_refused(&ns.claims(), &plain).await?;
    assert!(refusal.message.contains("not-encrypted"), "the refusal does not name the class: {refusal:?}");

    let encrypted = claim("encrypted", &cluster.settings().storage_class, "1Gi", "ReadWriteOnce");
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    ns.claims()
        .create(&dry_run, &encrypted)
        .await
        .map_err(|source| E2eError::Kube { what: "creating an encrypted claim (dry run)".into(), source })?;
    ns.delete().await
}
