//! The upstream csi-sanity suite against the two plugin binaries (split controller and node endpoints).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptvol::kms::local::KeyFile;

/// Stops a plugin with SIGTERM (so it unstages what it served) when the test ends.
struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_sanity() -> Option<PathBuf> {
    let gobin = std::env::var_os("GOBIN").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join("go/bin"));
    let path_dirs =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    gobin.into_iter().chain(home).chain(path_dirs).map(|d| d.join("csi-sanity")).find(|p| p.is_file())
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "plugin exited before listening on {}", path.display());
        assert!(Instant::now() < deadline, "no socket at {} after 30 s", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn csi_sanity_passes_against_both_plugins() {
    let Some(sanity) = find_sanity() else {
        assert!(std::env::var_os("CI").is_none(), "csi-sanity is not installed; .ci/run installs it");
        eprintln!(
            "SKIPPED: csi-sanity not found on PATH, GOBIN or ~/go/bin (go install it to run this test)"
        );
        return;
    };
    let controller_bin = PathBuf::from(env!("CARGO_BIN_EXE_cryptvol-controller"));
    let node_bin = controller_bin.with_file_name("cryptvol-node");
    assert!(node_bin.is_file(), "{} is missing: run `cargo test --workspace`", node_bin.display());

    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::create_dir(&backing).unwrap();
    let key_file = dir.path().join("keys.json");
    KeyFile::update(&key_file, true, |f| f.create_key("sanity")).unwrap();
    let kms_config = dir.path().join("kms.yaml");
    std::fs::write(
        &kms_config,
        "default: local\nconnections:\n  local:\n    provider: local\n    keyFile: keys.json\n",
    )
    .unwrap();
    let params = dir.path().join("params.yaml");
    std::fs::write(&params, "kmsKeyId: sanity\n").unwrap();

    let controller_sock = dir.path().join("controller.sock");
    let node_sock = dir.path().join("node.sock");
    let spawn = |bin: &Path, sock: &Path, extra: &[&str]| {
        Command::new(bin)
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--backing-root")
            .arg(&backing)
            .arg("--kms-config")
            .arg(&kms_config)
            .args(extra)
            .env("CRYPTVOL_LOG_LEVEL", "warn")
            .env("CRYPTVOL_METRICS_ADDRESS", "127.0.0.1:0")
            .spawn()
            .unwrap()
    };
    let mut controller = Plugin(spawn(&controller_bin, &controller_sock, &[]));
    let mut node = Plugin(spawn(&node_bin, &node_sock, &["--node-id", "sanity-node"]));
    wait_for_socket(&controller_sock, &mut controller.0);
    wait_for_socket(&node_sock, &mut node.0);

    let output = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", node_sock.display()))
        .arg(format!("--csi.controllerendpoint=unix://{}", controller_sock.display()))
        .arg(format!("--csi.testvolumeparameters={}", params.display()))
        .arg(format!("--csi.mountdir={}", dir.path().join("target").display()))
        .arg(format!("--csi.stagingdir={}", dir.path().join("staging").display()))
        .arg("--csi.testvolumesize=1048576")
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.v")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "csi-sanity failed; its report is above");
    assert!(text.contains("Passed"), "csi-sanity ran no specs");
    drop(node);
    drop(controller);
    let leftovers: Vec<_> = std::fs::read_dir(&backing).unwrap().collect();
    assert!(leftovers.is_empty(), "csi-sanity deletes every volume it makes: {leftovers:?}");
}
