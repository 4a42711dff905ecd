//! Revocation on a mounted volume: the node plugin checks the key every 200 ms; disabling the key
//! (local provider), denying access or an unreachable KMS past the grace period (a scripted
//! provider) lock the volume with the documented errno on every operation, open handles included,
//! and a usable key unlocks it again on the same mount. Needs root and /dev/fuse.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cryptvol::csi::controller::ControllerService;
use cryptvol::csi::events::VolumeEvents;
use cryptvol::csi::node::{KeyCheck, NodeService};
use cryptvol::keys::DataKey;
use cryptvol::kms::config::KmsRegistry;
use cryptvol::kms::local::{KeyFile, LocalKms};
use cryptvol::kms::{
    EncryptionContext, KeyInfo, KeyListing, KmsAction, KmsClient, KmsError, KmsProvider, Secrets, WrappedKey,
};
use cryptvol::volume::BackingStore;
use cryptvol_proto::csi::v1 as csi;
use csi::controller_server::Controller;
use csi::node_server::Node;
use http::{Request, Response};
use kube::client::Body;
use parking_lot::Mutex;

const INTERVAL: Duration = Duration::from_millis(200);
/// Generous: a loaded CI machine may delay checks by seconds.
const MARGIN: Duration = Duration::from_secs(15);
const DATA: &[u8] = b"written before the key was revoked\n";

/// What the scripted provider answers to Decrypt instead of the local provider's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    AccessDenied,
    Unavailable,
}

/// The local provider, with Decrypt failures switched on and off by the test.
#[derive(Debug)]
struct Scripted {
    inner: LocalKms,
    fault: Mutex<Option<Fault>>,
    decrypt_ok: AtomicUsize,
    decrypt_failed: AtomicUsize,
}

impl Scripted {
    fn set(&self, fault: Option<Fault>) {
        *self.fault.lock() = fault;
    }
}

#[async_trait]
impl KmsProvider for Scripted {
    async fn describe_key(&self, key_id: &str, secrets: &Secrets) -> Result<KeyInfo, KmsError> {
        self.inner.describe_key(key_id, secrets).await
    }

    async fn generate_wrapped_key(
        &self,
        key_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        self.inner.generate_wrapped_key(key_arn, context, secrets).await
    }

    async fn decrypt(
        &self,
        key_arn: &str,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<DataKey, KmsError> {
        let (action, key) = (KmsAction::Decrypt, key_arn.to_string());
        let fault = *self.fault.lock();
        let result = match fault {
            None => self.inner.decrypt(key_arn, wrapped, context, secrets).await,
            Some(Fault::AccessDenied) => {
                Err(KmsError::AccessDenied { action, key, message: "scripted: not authorized".into() })
            }
            Some(Fault::Unavailable) => {
                Err(KmsError::Unavailable { action, key, message: "scripted: connection refused".into() })
            }
        };
        let counter = if result.is_ok() { &self.decrypt_ok } else { &self.decrypt_failed };
        counter.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn re_encrypt(
        &self,
        source_arn: &str,
        wrapped: &WrappedKey,
        target_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        self.inner.re_encrypt(source_arn, wrapped, target_arn, context, secrets).await
    }

    async fn list_keys(&self, secrets: &Secrets) -> Result<Vec<KeyListing>, KmsError> {
        self.inner.list_keys(secrets).await
    }
}

/// One volume created, staged and published by in-process services, its key checked every
/// [`INTERVAL`]; a file written and held open.
struct Rig {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    node: NodeService,
    checks: tokio::task::JoinHandle<()>,
    staging: PathBuf,
    target: PathBuf,
    open: Option<File>,
}

impl Rig {
    async fn start(
        provider: impl FnOnce(&Path) -> Arc<dyn KmsProvider>,
        grace: Duration,
        events: VolumeEvents,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        let key_file = dir.path().join("keys.json");
        KeyFile::update(&key_file, true, |f| f.create_key("app")).unwrap();
        let kms = KmsRegistry::from_clients([KmsClient::new("local", provider(&key_file))]).unwrap();
        let kms = Arc::new(kms);
        let store = BackingStore::new(&backing);

        let controller = ControllerService::new(store.clone(), kms.clone());
        let created = controller
            .create_volume(tonic::Request::new(csi::CreateVolumeRequest {
                name: "pvc-revocation".into(),
                capacity_range: Some(csi::CapacityRange { required_bytes: 1 << 20, limit_bytes: 0 }),
                volume_capabilities: vec![cryptvol::cli::demo::mount_capability()],
                parameters: HashMap::from([("kmsKeyId".to_string(), "app".to_string())]),
                ..Default::default()
            }))
            .await
            .unwrap();
        let volume = created.into_inner().volume.unwrap();

        let node = NodeService::new("node-1", store, kms)
            .with_key_check(KeyCheck { interval: INTERVAL, grace })
            .with_events(events);
        let (staging, target) = (dir.path().join("staging"), dir.path().join("target"));
        node.node_stage_volume(tonic::Request::new(csi::NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cryptvol::cli::demo::mount_capability()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
        node.node_publish_volume(tonic::Request::new(csi::NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cryptvol::cli::demo::mount_capability()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let checks = node.start_key_checks();

        let file = target.join("data.txt");
        let open = tokio::task::spawn_blocking(move || {
            let mut f =
                OpenOptions::new().create(true).truncate(true).read(true).write(true).open(file).unwrap();
            f.write_all(DATA).unwrap();
            f.sync_all().unwrap();
            f
        })
        .await
        .unwrap();
        Rig { dir, key_file, node, checks, staging, target, open: Some(open) }
    }

    fn set_key_enabled(&self, enabled: bool) {
        KeyFile::update(&self.key_file, false, |f| f.set_enabled("app", enabled)).unwrap();
    }

    /// The id of the FUSE mount at the staging path, from /proc/self/mountinfo.
    fn mount_id(&self) -> u64 {
        let staging = self.staging.canonicalize().unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ids: Vec<u64> = info
            .lines()
            .filter(|line| line.split(' ').nth(4) == Some(staging.to_str().unwrap()))
            .map(|line| line.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one mount at {}: {ids:?}", staging.display());
        ids[0]
    }

    /// Runs `probe` on a blocking thread with the rig's paths and open file.
    async fn probe<T: Send + 'static>(
        &mut self,
        probe: impl FnOnce(&Path, &File) -> T + Send + 'static,
    ) -> T {
        let target = self.target.clone();
        let file = self.open.take().unwrap();
        let (out, file) = tokio::task::spawn_blocking(move || {
            let out = probe(&target, &file);
            (out, file)
        })
        .await
        .unwrap();
        self.open = Some(file);
        out
    }

    /// Polls `stat` of the file until it gives `expected` (`None`: success), within `timeout`.
    async fn wait_for_stat(&mut self, expected: Option<i32>, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.probe(|target, _| errno(std::fs::metadata(target.join("data.txt")))).await;
            if got == expected {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "stat still gives {got:?}, expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every kind of operation fails with `code`: path lookups, listings, statfs, new opens, and
    /// reads and writes on the handle opened before the lock.
    async fn assert_locked_with(&mut self, code: i32) {
        let results = self
            .probe(|target, open| {
                let mut buf = [0u8; 16];
                [
                    ("stat", errno(std::fs::metadata(target.join("data.txt")))),
                    ("stat root", errno(std::fs::metadata(target))),
                    ("readdir", errno(std::fs::read_dir(target))),
                    ("open", errno(File::open(target.join("data.txt")))),
                    ("create", errno(File::create(target.join("new.txt")))),
                    ("statfs", errno(nix::sys::statvfs::statvfs(target).map_err(std::io::Error::from))),
                    ("read open fd", errno(open.read_at(&mut buf, 0))),
                    ("write open fd", errno(open.write_at(b"x", 0))),
                    ("fstat open fd", errno(open.metadata())),
                ]
            })
            .await;
        for (op, got) in results {
            assert_eq!(got, Some(code), "{op} on a locked volume");
        }
    }

    /// The volume works again: the data reads back through the old handle and a new one, and the
    /// old handle writes.
    async fn assert_served(&mut self) {
        self.probe(|target, open| {
            let mut buf = vec![0u8; DATA.len()];
            open.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, DATA, "read through the handle opened before the lock");
            assert_eq!(std::fs::read(target.join("data.txt")).unwrap(), DATA);
            open.write_all_at(b"W", 0).unwrap();
            open.sync_all().unwrap();
            assert_eq!(std::fs::read(target.join("data.txt")).unwrap()[0], b'W');
            open.write_all_at(&DATA[..1], 0).unwrap();
            assert!(std::fs::read_dir(target).unwrap().count() >= 1);
        })
        .await;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.checks.abort();
        drop(self.open.take());
        let _ = cryptvol::csi::mount::unmount(&self.target);
        let _ = cryptvol::csi::mount::unmount(&self.staging);
        let _ = &self.dir;
    }
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// A scripted API server that answers every event POST and hands the events to the test.
fn event_sink() -> (VolumeEvents, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.uri().path(), "/apis/events.k8s.io/v1/namespaces/default/events");
            let body = request.into_body().collect_bytes().await.unwrap();
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
            send.send_response(Response::builder().status(201).body(Body::from(body.to_vec())).unwrap());
            let _ = tx.send(event);
        }
    });
    (VolumeEvents::new(kube::Client::new(service, "default"), "node-1"), rx)
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) -> serde_json::Value {
    tokio::time::timeout(MARGIN, rx.recv()).await.expect("an event within the margin").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_key_locks_the_mounted_volume_and_enabling_it_unlocks_it() {
    let (events, mut raised) = event_sink();
    let mut rig = Rig::start(|keys| Arc::new(LocalKms::new(keys)), Duration::from_secs(600), events).await;
    let mount_id = rig.mount_id();

    rig.set_key_enabled(false);
    rig.wait_for_stat(Some(libc::EKEYREVOKED), INTERVAL + MARGIN).await;
    rig.assert_locked_with(libc::EKEYREVOKED).await;
    let exposed = cryptvol::metrics::get().encode();
    for series in [
        "cryptvol_fuse_errors_total{op=\"read\",errno=\"EKEYREVOKED\"}",
        "cryptvol_kms_calls_total{operation=\"kms:Decrypt\",outcome=\"key_not_enabled\"}",
    ] {
        assert!(exposed.contains(series), "{series} is not counted:\n{exposed}");
    }
    let locked = next_event(&mut raised).await;
    assert_eq!((locked["type"].as_str(), locked["reason"].as_str()), (Some("Warning"), Some("VolumeLocked")));
    assert_eq!(locked["regarding"]["name"], "pvc-revocation");
    let note = locked["note"].as_str().unwrap();
    assert!(
        note.contains("key_revoked") && note.contains("EKEYREVOKED") && note.contains("disabled"),
        "{note}"
    );

    rig.set_key_enabled(true);
    rig.wait_for_stat(None, INTERVAL + MARGIN).await;
    rig.assert_served().await;
    let unlocked = next_event(&mut raised).await;
    assert_eq!(
        (unlocked["type"].as_str(), unlocked["reason"].as_str()),
        (Some("Normal"), Some("VolumeUnlocked"))
    );
    assert_eq!(rig.mount_id(), mount_id, "unlocking must not remount");

    // Unstage still works on a volume that was locked, and drops it.
    let staging = rig.staging.clone();
    rig.set_key_enabled(false);
    rig.wait_for_stat(Some(libc::EKEYREVOKED), INTERVAL + MARGIN).await;
    drop(rig.open.take());
    cryptvol::csi::mount::unmount(&rig.target).unwrap();
    // A key check in progress holds the volume for a moment: Aborted, which the sidecars retry.
    let deadline = Instant::now() + MARGIN;
    loop {
        let unstaged = rig
            .node
            .node_unstage_volume(tonic::Request::new(csi::NodeUnstageVolumeRequest {
                volume_id: "pvc-revocation".into(),
                staging_target_path: staging.display().to_string(),
            }))
            .await;
        match unstaged {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::Aborted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("unstage of a locked volume: {status}"),
        }
    }
    assert!(!cryptvol::csi::mount::is_mount_point(&staging).unwrap());
}

/// A rig whose KMS is [`Scripted`], and the provider to script.
async fn scripted_rig(grace: Duration) -> (Rig, Arc<Scripted>) {
    let slot: Arc<std::sync::OnceLock<Arc<Scripted>>> = Arc::default();
    let filled = slot.clone();
    let rig = Rig::start(
        move |keys| {
            let provider = Arc::new(Scripted {
                inner: LocalKms::new(keys),
                fault: Mutex::new(None),
                decrypt_ok: AtomicUsize::new(0),
                decrypt_failed: AtomicUsize::new(0),
            });
            filled.set(provider.clone()).unwrap();
            provider
        },
        grace,
        VolumeEvents::default(),
    )
    .await;
    let scripted = slot.get().unwrap().clone();
    (rig, scripted)
}

/// Waits until `counter` reaches `at_least`: that many checks were answered.
async fn wait_for_calls(counter: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + MARGIN;
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "the key was not checked within the margin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_locks_with_eacces_until_access_returns() {
    let (mut rig, kms) = scripted_rig(Duration::from_secs(600)).await;
    let mount_id = rig.mount_id();

    kms.set(Some(Fault::AccessDenied));
    rig.wait_for_stat(Some(libc::EACCES), INTERVAL + MARGIN).await;
    rig.assert_locked_with(libc::EACCES).await;

    kms.set(None);
    rig.wait_for_stat(None, INTERVAL + MARGIN).await;
    rig.assert_served().await;
    assert_eq!(rig.mount_id(), mount_id, "unlocking must not remount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kms_locks_only_after_the_grace_period() {
    let grace = Duration::from_secs(3);
    let (mut rig, kms) = scripted_rig(grace).await;
    let mount_id = rig.mount_id();

    // A check that succeeds after `since` makes the grace period end no earlier than since + grace.
    let since = Instant::now();
    let ok = kms.decrypt_ok.load(Ordering::SeqCst);
    wait_for_calls(&kms.decrypt_ok, ok + 1).await;
    kms.set(Some(Fault::Unavailable));
    let failed = kms.decrypt_failed.load(Ordering::SeqCst);
    wait_for_calls(&kms.decrypt_failed, failed + 2).await;
    let during = rig.probe(|target, _| errno(std::fs::read(target.join("data.txt")))).await;
    if since.elapsed() < grace {
        assert_eq!(during, None, "two failed checks within the grace period must not lock");
    } else {
        eprintln!("the machine is too slow to observe the grace period; skipped that assertion");
    }

    let locked_at = rig.wait_for_stat(Some(libc::EKEYREVOKED), grace + MARGIN).await;
    assert!(locked_at - since >= grace, "locked {:?} after the last success", locked_at - since);
    rig.assert_locked_with(libc::EKEYREVOKED).await;

    kms.set(None);
    rig.wait_for_stat(None, INTERVAL + MARGIN).await;
    rig.assert_served().await;
    assert_eq!(rig.mount_id(), mount_id, "unlocking must not remount");
}
