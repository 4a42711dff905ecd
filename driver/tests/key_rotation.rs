//! Key-encryption-key rotation on the backing store with the local provider: a staged volume keeps
//! working while its wrap changes, and stages again with only the new key enabled.
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::path::Path;

use cryptvol::header::VolumeHeader;
use cryptvol::kms::config::{KmsConfig, KmsRegistry};
use cryptvol::kms::local::{arn_of, KeyFile};
use cryptvol::kms::Secrets;
use cryptvol::rotation::{rotate_volume, RotationError};
use cryptvol::volume::BackingStore;
use csi_harness::Harness;
use tonic::Code;

fn registry(h: &Harness) -> KmsRegistry {
    KmsRegistry::from_config(KmsConfig::local(h.key_file.clone()), h.dir.path(), "test").unwrap()
}

fn header(h: &Harness, id: &str) -> VolumeHeader {
    VolumeHeader::read(&h.backing.join(id)).unwrap()
}

fn write_files(root: &Path, tag: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, len) in [0usize, 1, 4095, 4096, 4097, 70_000].into_iter().enumerate() {
        let name = format!("{tag}-{i}.bin");
        let data: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(root.join(&name), &data).unwrap();
        files.push((name, data));
    }
    files
}

fn check_files(root: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        assert_eq!(&std::fs::read(root.join(name)).unwrap(), data, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_to_another_key_keeps_the_volume_served_and_restages_with_only_the_new_key() {
    let mut h = Harness::start().await;
    let kms = registry(&h);
    let store = BackingStore::new(&h.backing);
    let volume = h.create("vol-rot", "app").await.unwrap();
    let id = volume.volume_id.clone();
    let staging = h.path("staging");
    h.stage(&volume, &staging).await.unwrap();
    let mut files = write_files(&staging, "before");
    let before = header(&h, &id);
    assert_eq!(before.key_arn, arn_of("app"));
    assert!(before.seal.is_some(), "the first stage seals the header");

    let done = rotate_volume(&store, &kms, &id, Some("alias/other"), &Secrets::default()).await.unwrap();
    assert_eq!(
        (done.from_key_arn.as_str(), done.to_key_arn.as_str()),
        (arn_of("app").as_str(), arn_of("other").as_str())
    );
    let after = header(&h, &id);
    assert_eq!(after.key_arn, arn_of("other"));
    assert_ne!(after.wrapped_key, before.wrapped_key);
    assert_eq!(after.seal, before.seal, "the seal covers only immutable fields and stays");
    assert_eq!(after.rotated_at, Some(done.rotated_at));
    assert_eq!(after.capacity_bytes, before.capacity_bytes);

    // The staged volume never noticed: the data key did not change.
    check_files(&staging, &files);
    files.extend(write_files(&staging, "during"));
    h.unstage(&id, &staging).await.unwrap();

    // Only the new key is enabled: the volume stages again although its PV still names the old key
    // (the sealed header vouches for the rotation), and everything reads back.
    KeyFile::update(&h.key_file, false, |f| f.set_enabled("app", false)).unwrap();
    h.stage(&volume, &staging).await.unwrap();
    check_files(&staging, &files);
    h.unstage(&id, &staging).await.unwrap();

    // Rotating back needs the source key (now `other`) and refuses a disabled target.
    let err = rotate_volume(&store, &kms, &id, Some("app"), &Secrets::default()).await.unwrap_err();
    assert!(err.is_permanent() && err.to_string().contains("disabled"), "{err}");
    assert_eq!(header(&h, &id).key_arn, arn_of("other"), "a refused rotation leaves the header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_material_of_the_same_key_and_the_refusals() {
    let mut h = Harness::start().await;
    let kms = registry(&h);
    let store = BackingStore::new(&h.backing);
    let volume = h.create("vol-fresh", "app").await.unwrap();
    let id = volume.volume_id.clone();
    let unsealed = std::fs::read(h.backing.join(&id).join("cryptvol.header")).unwrap();

    // Never staged: no seal could vouch for another key, so only the same key is allowed.
    let err = rotate_volume(&store, &kms, &id, Some("other"), &Secrets::default()).await.unwrap_err();
    assert!(matches!(err, RotationError::NotSealed { .. }), "{err}");
    assert_eq!(std::fs::read(h.backing.join(&id).join("cryptvol.header")).unwrap(), unsealed);

    // New material of the same key: the wrap changes (version 2), the key ARN does not.
    KeyFile::update(&h.key_file, false, |f| f.rotate_key("app").map(|_| ())).unwrap();
    let done = rotate_volume(&store, &kms, &id, None, &Secrets::default()).await.unwrap();
    assert_eq!(done.to_key_arn, arn_of("app"));
    let rewrapped = header(&h, &id);
    assert_ne!(rewrapped.to_bytes(), unsealed);
    assert!(rewrapped.seal.is_none());
    let staging = h.path("staging");
    h.stage(&volume, &staging).await.unwrap();
    std::fs::write(staging.join("f"), b"after rotation").unwrap();
    h.unstage(&id, &staging).await.unwrap();

    // Unknown volume, unknown target key, disabled source key: each a clear error.
    let err = rotate_volume(&store, &kms, "no-such-volume", None, &Secrets::default()).await.unwrap_err();
    assert!(matches!(err, RotationError::NoSuchVolume { .. }), "{err}");
    let err = rotate_volume(&store, &kms, &id, Some("missing"), &Secrets::default()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    KeyFile::update(&h.key_file, false, |f| f.set_enabled("app", false)).unwrap();
    let before = std::fs::read(h.backing.join(&id).join("cryptvol.header")).unwrap();
    let err = rotate_volume(&store, &kms, &id, None, &Secrets::default()).await.unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
    assert_eq!(std::fs::read(h.backing.join(&id).join("cryptvol.header")).unwrap(), before);
}

/// The node accepts a key other than the provisioned one only when the seal proves the data key:
/// a header re-pointed at another key with a fresh data key (an attacker's substitution) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_key_on_a_sealed_volume_is_refused() {
    let mut h = Harness::start().await;
    let kms = registry(&h);
    let volume = h.create("vol-sub", "app").await.unwrap();
    let id = volume.volume_id.clone();
    let staging = h.path("staging");
    h.stage(&volume, &staging).await.unwrap();
    std::fs::write(staging.join("secret"), b"tenant data").unwrap();
    h.unstage(&id, &staging).await.unwrap();

    let client = kms.client(None).unwrap();
    let foreign = client.generate_wrapped_key(&arn_of("other"), &id, &Secrets::default()).await.unwrap();
    let mut forged = header(&h, &id);
    forged.key_arn = arn_of("other");
    forged.wrapped_key = base64_of(&foreign.0);
    forged.write(&h.backing.join(&id)).unwrap();
    let err = h.stage(&volume, &staging).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("authentication"), "{err:?}");
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
