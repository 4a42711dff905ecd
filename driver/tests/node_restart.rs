//! The node plugin killed with SIGKILL while volumes are staged, published and written, then started
//! again: the healer serves both volumes again, data is intact, and a slave-propagation view (what a
//! pod with `mountPropagation: HostToContainer` sees) gets the volume back. Needs root and /dev/fuse.
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptvol_proto::csi::v1 as csi;
use csi::node_client::NodeClient;
use csi_harness::{capability, Harness};
use nix::mount::{MntFlags, MsFlags};
use tonic::transport::Channel;

const RECORD: usize = 1000;

struct NodeProcess(Child);

impl NodeProcess {
    fn start(h: &Harness, state: Option<&Path>) -> (NodeProcess, PathBuf) {
        let kms = h.path("kms.yaml");
        std::fs::write(
            &kms,
            format!(
                "default: local\nconnections:\n  local:\n    provider: local\n    keyFile: {}\n",
                h.key_file.display()
            ),
        )
        .unwrap();
        let sock = h.path("restart-node.sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptvol-node"));
        cmd.arg("--endpoint").arg(format!("unix://{}", sock.display()));
        cmd.arg("--backing-root").arg(&h.backing).arg("--kms-config").arg(&kms).arg("--node-id").arg("n1");
        if let Some(state) = state {
            cmd.arg("--state-dir").arg(state);
        }
        // An ephemeral metrics port: other plugin processes on the machine may hold the default.
        cmd.env("CRYPTVOL_METRICS_ADDRESS", "127.0.0.1:0");
        let child = cmd.env("CRYPTVOL_LOG_LEVEL", "info").spawn().unwrap();
        (NodeProcess(child), sock)
    }

    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

async fn connect(sock: &Path) -> NodeClient<Channel> {
    let sock = sock.to_path_buf();
    let probe = sock.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the node socket", Duration::from_secs(30), || probe.exists())
    })
    .await
    .unwrap();
    NodeClient::new(cryptvol::server::connect(&sock).await.unwrap())
}

async fn stage_and_publish(node: &mut NodeClient<Channel>, v: &csi::Volume, staging: &Path, target: &Path) {
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn record(i: usize) -> Vec<u8> {
    let mut r = format!("record {i:08} ").into_bytes();
    r.resize(RECORD, b'a' + (i % 26) as u8);
    r
}

/// Undoes the propagation setup even when the test fails.
struct Propagation(Vec<PathBuf>);

impl Drop for Propagation {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_plugin_heals_its_volumes() {
    let mut h = Harness::start().await;
    // Room for the 1 MiB file and the appends below: writes past the capacity fail with ENOSPC.
    let v1 = h.create_with("heal-1", csi_harness::params("app"), 64 << 20).await.unwrap();
    let v2 = h.create_with("heal-2", csi_harness::params("app"), 64 << 20).await.unwrap();
    let state = h.path("node-state");

    // The kubelet pods directory is a shared mount; a "container" sees it through a slave bind.
    let pods = h.path("pods");
    let container = h.path("container");
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::create_dir_all(&container).unwrap();
    let mut guard = Propagation(Vec::new());
    nix::mount::mount(Some(&pods), &pods, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    guard.0.push(pods.clone());
    nix::mount::mount(None::<&str>, &pods, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    nix::mount::mount(
        Some(&pods),
        &container,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    guard.0.push(container.clone());
    nix::mount::mount(
        None::<&str>,
        &container,
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();

    let (s1, s2) = (h.path("stage-1"), h.path("stage-2"));
    let (t1, t2) = (pods.join("v1"), pods.join("v2"));
    let (mut plugin, sock) = NodeProcess::start(&h, Some(&state));
    let mut node = connect(&sock).await;
    stage_and_publish(&mut node, &v1, &s1, &t1).await;
    stage_and_publish(&mut node, &v2, &s2, &t2).await;
    guard.0.extend([t1.clone(), t2.clone(), s1.clone(), s2.clone()]);
    std::fs::write(t1.join("before.txt"), b"written before the crash").unwrap();
    let big: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(t2.join("data.bin"), &big).unwrap();
    assert_eq!(std::fs::read(container.join("v1/before.txt")).unwrap(), b"written before the crash");

    // A writer appends fsynced records until the plugin dies under it.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, stop, path) = (done.clone(), stop.clone(), t1.join("log"));
        std::thread::spawn(move || {
            let mut file =
                std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(path).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if file.write_all(&record(i)).and_then(|()| file.sync_data()).is_err() {
                    return;
                }
                i += 1;
                done.store(i, Ordering::SeqCst);
            }
        })
    };
    let progress = done.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the writer", Duration::from_secs(30), || progress.load(Ordering::SeqCst) >= 50)
    })
    .await
    .unwrap();
    plugin.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let completed = done.load(Ordering::SeqCst);
    let dead = std::fs::metadata(t1.join("before.txt")).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN), "{dead:?}");

    // Start again: the healer re-serves the staging paths and re-binds the targets.
    let (_plugin, _sock) = NodeProcess::start(&h, Some(&state));
    let probes = [container.join("v1/before.txt"), container.join("v2/data.bin")];
    tokio::task::spawn_blocking(move || {
        wait_until("both healed volumes in the container view", Duration::from_secs(60), || {
            probes.iter().all(|p| std::fs::metadata(p).is_ok())
        })
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(t1.join("before.txt")).unwrap(), b"written before the crash");
    assert_eq!(std::fs::read(container.join("v1/before.txt")).unwrap(), b"written before the crash");
    assert_eq!(std::fs::read(t2.join("data.bin")).unwrap(), big);
    assert_eq!(std::fs::read(container.join("v2/data.bin")).unwrap(), big);
    let log = std::fs::read(t1.join("log")).unwrap();
    assert!(log.len() >= completed * RECORD, "{} bytes for {completed} completed records", log.len());
    for i in 0..completed {
        assert_eq!(&log[i * RECORD..(i + 1) * RECORD], record(i).as_slice(), "record {i}");
    }
    // The healed volume takes writes again.
    std::fs::write(t1.join("after.txt"), b"and after").unwrap();
    assert_eq!(std::fs::read(s1.join("after.txt")).unwrap(), b"and after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_and_unstage_of_dead_mounts_succeed() {
    let mut h = Harness::start().await;
    let v = h.create("dead", "app").await.unwrap();
    let (staging, target) = (h.path("staging"), h.path("mnt"));
    let (mut plugin, sock) = NodeProcess::start(&h, None);
    let mut node = connect(&sock).await;
    stage_and_publish(&mut node, &v, &staging, &target).await;
    plugin.kill();
    assert!(cryptvol::csi::mount::is_mount_point(&target).unwrap());
    assert!(!cryptvol::csi::mount::is_alive(&target));

    // A plugin without state does not heal; it must still clean up the dead mounts.
    let (_plugin, sock) = NodeProcess::start(&h, None);
    let mut node = connect(&sock).await;
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .unwrap();
    assert!(!cryptvol::csi::mount::is_mount_point(&target).unwrap());
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());
}
