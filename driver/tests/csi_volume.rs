//! End to end through the CSI API: provision, stage, publish, write a real tree, restage, compare, and
//! check that the backing store holds no plaintext. Needs root and /dev/fuse.
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cryptvol_proto::csi::v1 as csi;
use csi_harness::Harness;
use tonic::Code;

/// A tree nobody here wrote: the Python standard library (without caches, site-packages and big files).
fn source_tree() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .expect("python3 is needed for the source tree");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

fn skip(name: &str) -> bool {
    matches!(name, "__pycache__" | "site-packages")
}

/// Copies `src` into `dst` and returns what was copied, by relative path.
fn copy_tree(src: &Path, dst: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for entry in std::fs::read_dir(src.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip(&name.to_string_lossy()) {
            continue;
        }
        let rel = rel.join(&name);
        let meta = std::fs::symlink_metadata(src.join(&rel)).unwrap();
        if meta.is_dir() {
            std::fs::create_dir(dst.join(&rel)).unwrap();
            out.insert(rel.clone(), Entry::Dir);
            copy_tree(src, dst, &rel, out);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(src.join(&rel)).unwrap();
            std::os::unix::fs::symlink(&target, dst.join(&rel)).unwrap();
            out.insert(rel, Entry::Link(target));
        } else if meta.is_file() && meta.len() <= 4 << 20 {
            let data = std::fs::read(src.join(&rel)).unwrap();
            std::fs::write(dst.join(&rel), &data).unwrap();
            out.insert(rel, Entry::File(data));
        }
    }
}

fn read_tree(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let rel = rel.join(entry.unwrap().file_name());
        let meta = std::fs::symlink_metadata(root.join(&rel)).unwrap();
        if meta.is_dir() {
            out.insert(rel.clone(), Entry::Dir);
            read_tree(root, &rel, out);
        } else if meta.file_type().is_symlink() {
            out.insert(rel.clone(), Entry::Link(std::fs::read_link(root.join(&rel)).unwrap()));
        } else {
            let data = std::fs::read(root.join(&rel)).unwrap();
            assert_eq!(meta.len(), data.len() as u64, "size of {}", rel.display());
            out.insert(rel, Entry::File(data));
        }
    }
}

fn backing_files(dir: &Path, names: &mut Vec<String>, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        names.push(entry.file_name().to_string_lossy().into_owned());
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            backing_files(&entry.path(), names, files);
        } else if ft.is_file() {
            files.push(entry.path());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_tree_round_trips_and_the_backing_store_holds_only_ciphertext() {
    let mut h = Harness::start().await;
    let volume = h.create_with("pvc-tree", csi_harness::params("app"), 1 << 30).await.unwrap();
    let (staging, target) = (h.path("staging"), h.path("mnt"));
    h.stage(&volume, &staging).await.unwrap();
    h.stage(&volume, &staging).await.unwrap(); // idempotent
    h.publish(&volume, &staging, &target, false).await.unwrap();
    h.publish(&volume, &staging, &target, false).await.unwrap(); // idempotent

    let src = source_tree();
    let dst = target.clone();
    let copied = tokio::task::spawn_blocking(move || {
        let mut copied = BTreeMap::new();
        copy_tree(&src, &dst, Path::new(""), &mut copied);
        copied
    })
    .await
    .unwrap();
    let files = copied.values().filter(|e| matches!(e, Entry::File(_))).count();
    assert!(files > 1000, "the source tree should have thousands of files, has {files}");

    // Take the volume down completely, then bring it up again through the CSI API.
    h.unpublish(&volume.volume_id, &target).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap();
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());
    h.stage(&volume, &staging).await.unwrap();
    h.publish(&volume, &staging, &target, true).await.unwrap();
    let dst = target.clone();
    let read_back = tokio::task::spawn_blocking(move || {
        let mut tree = BTreeMap::new();
        read_tree(&dst, Path::new(""), &mut tree);
        tree
    })
    .await
    .unwrap();
    assert_eq!(read_back.len(), copied.len());
    for (path, entry) in &copied {
        assert_eq!(read_back.get(path), Some(entry), "{} differs after restage", path.display());
    }
    // Published read-only: writes are refused.
    let err = std::fs::write(target.join("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // No plaintext name and no plaintext content on the backing store.
    let mut names = Vec::new();
    let mut backing = Vec::new();
    backing_files(&h.backing.join("pvc-tree"), &mut names, &mut backing);
    let plain_names: HashSet<String> = copied
        .keys()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.len() >= 6)
        .collect();
    for name in &names {
        assert!(!plain_names.contains(name), "plaintext name {name} on the backing store");
        for plain in &plain_names {
            assert!(!name.contains(plain.as_str()), "backing name {name} contains plaintext name {plain}");
        }
    }
    let mut probes = HashSet::new();
    for entry in copied.values() {
        if let Entry::File(data) = entry {
            if data.len() >= 256 {
                let mid = data.len() / 2;
                probes.insert(data[mid..mid + 16].to_vec());
            }
        }
    }
    for file in &backing {
        let data = std::fs::read(file).unwrap();
        assert!(
            !data.windows(16).any(|w| probes.contains(w)),
            "plaintext content found in backing file {}",
            file.display()
        );
    }

    h.unpublish(&volume.volume_id, &target).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap(); // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_key_or_a_wrong_wrap_refuses_to_stage_and_mounts_nothing() {
    let mut h = Harness::start().await;
    let a = h.create("vol-a", "app").await.unwrap();
    let b = h.create("vol-b", "app").await.unwrap();
    let staging = h.path("staging");

    // Another volume's wrapped key does not open for this volume (encryption context).
    let header_a = h.backing.join("vol-a/cryptvol.header");
    let header_b = h.backing.join("vol-b/cryptvol.header");
    let original = std::fs::read_to_string(&header_a).unwrap();
    let wrapped_b = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&header_b).unwrap())
        .unwrap()["wrappedKey"]
        .clone();
    let mut swapped: serde_json::Value = serde_json::from_str(&original).unwrap();
    swapped["wrappedKey"] = wrapped_b;
    std::fs::write(&header_a, serde_json::to_vec(&swapped).unwrap()).unwrap();
    let err = h.stage(&a, &staging).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("kms:Decrypt"), "{err:?}");
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());
    std::fs::write(&header_a, &original).unwrap();

    // A corrupted header is refused before any key is used.
    std::fs::write(&header_a, original.replace("\"formatVersion\": 1", "\"formatVersion\": 7")).unwrap();
    let err = h.stage(&a, &staging).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("format version"), "{err:?}");
    std::fs::write(&header_a, &original).unwrap();

    // A disabled key refuses with a clear status.
    cryptvol::kms::local::KeyFile::update(&h.key_file, false, |f| f.set_enabled("app", false)).unwrap();
    let err = h.stage(&b, &staging).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("disabled"), "{err:?}");
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());

    // Enabled again, it stages; the first stage seals the header, and a tampered seal is refused.
    cryptvol::kms::local::KeyFile::update(&h.key_file, false, |f| f.set_enabled("app", true)).unwrap();
    h.stage(&a, &staging).await.unwrap();
    std::fs::write(staging.join("f"), b"data").unwrap();
    h.unstage(&a.volume_id, &staging).await.unwrap();
    let sealed = std::fs::read_to_string(&header_a).unwrap();
    assert!(sealed.contains("\"seal\""));
    let renamed = sealed.replace("\"name\": \"vol-a\"", "\"name\": \"vol-x\"");
    std::fs::write(&header_a, renamed).unwrap();
    let err = h.stage(&a, &staging).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let mut stripped: serde_json::Value = serde_json::from_str(&sealed).unwrap();
    stripped.as_object_mut().unwrap().remove("seal");
    std::fs::write(&header_a, serde_json::to_vec(&stripped).unwrap()).unwrap();
    let err = h.stage(&a, &staging).await.unwrap_err();
    assert!(err.message().contains("no seal"), "{err:?}");
    std::fs::write(&header_a, &sealed).unwrap();
    h.stage(&a, &staging).await.unwrap();
    assert_eq!(std::fs::read(staging.join("f")).unwrap(), b"data");
    let st = std::fs::metadata(staging.join("f")).unwrap();
    assert_eq!(st.size(), 4);
    h.unstage(&a.volume_id, &staging).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstage_drops_the_keys_even_while_a_bind_mount_still_uses_the_volume() {
    let mut h = Harness::start().await;
    let volume = h.create("pvc-busy", "app").await.unwrap();
    let (staging, target) = (h.path("staging"), h.path("mnt"));
    h.stage(&volume, &staging).await.unwrap();
    h.publish(&volume, &staging, &target, false).await.unwrap();
    std::fs::write(target.join("secret.txt"), b"plaintext").unwrap();

    // A CO that unstages before unpublishing: the call returns, and the bind mount that is left
    // serves no more plaintext.
    let unstaged =
        tokio::time::timeout(std::time::Duration::from_secs(20), h.unstage(&volume.volume_id, &staging));
    unstaged.await.expect("NodeUnstage must not wait for the bind mount's users").unwrap();
    let read = std::fs::read(target.join("secret.txt"));
    assert!(read.is_err(), "the leftover bind mount still served plaintext: {read:?}");
    // Publishing the same volume again onto a target that holds another mount is refused.
    let foreign = h.path("mnt2");
    std::fs::create_dir_all(&foreign).unwrap();
    h.stage(&volume, &staging).await.unwrap();
    let other = h.path("other");
    std::fs::create_dir_all(&other).unwrap();
    nix::mount::mount(Some(&other), &foreign, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .unwrap();
    let err = h.publish(&volume, &staging, &foreign, false).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    h.unpublish(&volume.volume_id, &foreign).await.unwrap();
    h.unpublish(&volume.volume_id, &target).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap();
}

fn statvfs_bytes(path: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    (st.blocks() * st.fragment_size(), st.blocks_available() * st.fragment_size())
}

async fn stats_bytes(h: &mut Harness, volume_id: &str, path: &Path) -> (i64, i64, i64) {
    let stats = h
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats.usage.iter().find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32).unwrap();
    (bytes.total, bytes.used, bytes.available)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_gives_enospc_and_online_expansion_lifts_the_limit() {
    use std::io::Write;
    let mut h = Harness::start().await;
    let caps = h.node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let expand = csi::node_service_capability::rpc::Type::ExpandVolume as i32;
    assert!(caps.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(csi::node_service_capability::Type::Rpc(rpc)) if rpc.r#type == expand
    )));

    let volume = h.create_with("pvc-full", csi_harness::params("app"), 1 << 20).await.unwrap();
    let (staging, target) = (h.path("staging"), h.path("mnt"));
    h.stage(&volume, &staging).await.unwrap();
    h.publish(&volume, &staging, &target, false).await.unwrap();
    assert_eq!(statvfs_bytes(&target), (1 << 20, 1 << 20));

    let chunk = vec![0x5au8; 64 * 1024];
    let mut file = std::fs::File::create(target.join("fill")).unwrap();
    let mut written = 0usize;
    let err = loop {
        match file.write(&chunk[written % chunk.len()..]) {
            Ok(n) => written += n,
            Err(err) => break err,
        }
        assert!(written < 2 << 20, "the capacity was never enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(std::fs::read(target.join("fill")).unwrap(), vec![0x5au8; written]);
    let (total, used, available) = stats_bytes(&mut h, &volume.volume_id, &target).await;
    assert_eq!(total, 1 << 20);
    assert!(used > (1 << 20) - 64 * 1024 && available < 64 * 1024, "used {used}, available {available}");

    // Expansion: the controller raises the header, the node raises the live mount.
    let grown = h
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required);
    let expanded = h
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 2 << 20, limit_bytes: 0 }),
            staging_target_path: staging.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 2 << 20);
    file.write_all(&chunk).unwrap();
    drop(file);
    assert_eq!(statvfs_bytes(&target).0, 2 << 20);
    assert_eq!(stats_bytes(&mut h, &volume.volume_id, &target).await.0, 2 << 20);

    // NodeExpandVolume names what is wrong.
    let missing = h
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: "not-staged".into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let ahead = h
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 8 << 20, limit_bytes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::FailedPrecondition, "{ahead:?}");

    h.unpublish(&volume.volume_id, &target).await.unwrap();
    h.unstage(&volume.volume_id, &staging).await.unwrap();
}
