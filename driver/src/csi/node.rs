//! The CSI Node service: unwraps a volume's data key, serves the volume through the FUSE layer at the
//! staging path, and bind-mounts that view into pods.

mod revocation;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptvol_proto::csi::v1 as csi;
use csi::node_server::Node;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::events::VolumeEvents;
use super::state::{NodeState, VolumeRecord};
use super::{kms_status, mount, required, store_status, InFlight, Phase};
use crate::fs::{Mount, MountOptions};
use crate::header::{VolumeHeader, VolumeState};
use crate::kms::config::KmsRegistry;
use crate::kms::Secrets;
use crate::volume::BackingStore;
pub use revocation::KeyCheck;
use revocation::{publish_gauges, KeyWatch};

/// A volume this process serves.
#[derive(Debug)]
struct Staged {
    staging_path: PathBuf,
    mount: Mount,
    read_only: bool,
    watch: KeyWatch,
}

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    node_id: String,
    store: BackingStore,
    kms: Arc<KmsRegistry>,
    staged: Arc<Mutex<HashMap<String, Staged>>>,
    in_flight: InFlight,
    fuse_threads: usize,
    state: NodeState,
    events: VolumeEvents,
    key_check: KeyCheck,
}

/// A NodeStageVolume request, checked.
#[derive(Debug)]
pub struct StageVolume {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub read_only: bool,
    pub key_arn: Option<String>,
    pub secrets: Secrets,
}

impl TryFrom<csi::NodeStageVolumeRequest> for StageVolume {
    type Error = Status;

    fn try_from(req: csi::NodeStageVolumeRequest) -> Result<Self, Status> {
        let volume_id = required(&req.volume_id, "volume_id")?.to_string();
        crate::volume::validate_volume_id(&volume_id).map_err(|e| store_status(&e))?;
        let staging_path = absolute(&req.staging_target_path, "staging_target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        super::check_capability(cap, "volume_capability").map_err(Status::invalid_argument)?;
        Ok(StageVolume {
            volume_id,
            staging_path,
            read_only: super::is_read_only_mode(cap),
            key_arn: req.volume_context.get(super::CTX_KEY_ARN).cloned(),
            secrets: Secrets::from_map(req.secrets),
        })
    }
}

fn absolute(path: &str, field: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(required(path, field)?);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!("{field} must be an absolute path")));
    }
    Ok(path)
}

fn io_status(what: &str, path: &Path, err: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {err}", path.display()))
}

impl NodeService {
    pub fn new(node_id: impl Into<String>, store: BackingStore, kms: Arc<KmsRegistry>) -> Self {
        NodeService {
            node_id: node_id.into(),
            store,
            kms,
            staged: Arc::default(),
            in_flight: InFlight::default(),
            fuse_threads: 4,
            state: NodeState::default(),
            events: VolumeEvents::default(),
            key_check: KeyCheck::default(),
        }
    }

    /// Sets how often staged volumes' keys are checked and the grace of an unreachable KMS; the
    /// checks run once [`NodeService::start_key_checks`] is called.
    pub fn with_key_check(mut self, key_check: KeyCheck) -> Self {
        self.key_check = key_check;
        self
    }

    /// Raises Kubernetes Events for volumes the node cannot serve again.
    pub fn with_events(mut self, events: VolumeEvents) -> Self {
        self.events = events;
        self
    }

    /// Keeps node state in `dir`, so that a restarted plugin can serve its volumes again.
    pub fn with_state_dir(mut self, dir: PathBuf) -> Self {
        self.state = NodeState::new(Some(dir));
        self
    }

    /// Stages a volume: unwrap its key through the KMS and serve it at the staging path.
    pub async fn stage(&self, req: StageVolume) -> Result<(), Status> {
        let _guard = self.in_flight.claim(&req.volume_id)?;
        self.stage_locked(req).await
    }

    async fn stage_locked(&self, req: StageVolume) -> Result<(), Status> {
        if let Some(staged) = self.staged.lock().await.get(&req.volume_id) {
            if staged.staging_path != req.staging_path {
                return Err(Status::failed_precondition(format!(
                    "volume {} is already staged at {}",
                    req.volume_id,
                    staged.staging_path.display()
                )));
            }
            if mount::is_alive(&req.staging_path) {
                return Ok(());
            }
        }
        // Whatever is left at the staging path (a dead mount of an earlier process) goes first.
        if let Some(old) = self.staged.lock().await.remove(&req.volume_id) {
            // Dropping the handle ends the dead session and its keys.
            if let Err(e) = old.mount.unmount() {
                tracing::warn!(error = %e, "dead mount did not unmount cleanly");
            }
        }
        mount::unmount(&req.staging_path)
            .map_err(|e| io_status("cannot clear staging path", &req.staging_path, e))?;

        let store = self.store.clone();
        let id = req.volume_id.clone();
        let header = tokio::task::spawn_blocking(move || store.header(&id))
            .await
            .map_err(|e| Status::unavailable(format!("backing store task failed: {e}")))?
            .map_err(|e| store_status(&e))?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        check_header(&header, &req)?;

        let client =
            self.kms.client(Some(&header.kms_connection)).map_err(|e| kms_status(&e, Phase::Stage))?;
        let wrapped = header.wrapped_key().ok_or_else(|| Status::not_found("volume is being deleted"))?;
        let data_key = client
            .decrypt(&header.key_arn, &wrapped, &req.volume_id, &req.secrets)
            .await
            .map_err(|e| kms_status(&e, Phase::Stage))?;
        let keys = Arc::new(data_key.derive());
        drop(data_key);

        let watch = KeyWatch::new(req.secrets.clone(), header.clone());
        let capacity = capacity_limit(&header);
        let store = self.store.clone();
        let staging = req.staging_path.clone();
        let options = MountOptions {
            volume_id: req.volume_id.clone(),
            read_only: req.read_only,
            threads: self.fuse_threads,
        };
        let mounted = tokio::task::spawn_blocking(move || -> Result<Mount, Status> {
            seal_or_verify(&store, header, &keys)?;
            mount::ensure_dir(&staging).map_err(|e| io_status("cannot create staging path", &staging, e))?;
            let data = store.data_dir(&options.volume_id).map_err(|e| store_status(&e))?;
            let mount = crate::fs::mount(&data, &staging, keys, options).map_err(|e| {
                Status::internal(format!("cannot serve the volume at {}: {e}", staging.display()))
            })?;
            mount.set_capacity(capacity);
            Ok(mount)
        })
        .await
        .map_err(|e| Status::unavailable(format!("stage task failed: {e}")))??;
        tracing::info!(staging_path = %req.staging_path.display(), "volume staged");
        let previous = self.state.load(&req.volume_id).ok().flatten();
        let record = VolumeRecord {
            volume_id: req.volume_id.clone(),
            staging_path: req.staging_path.clone(),
            read_only: req.read_only,
            key_arn: req.key_arn.clone(),
            targets: previous
                .filter(|p| p.staging_path == req.staging_path)
                .map(|p| p.targets)
                .unwrap_or_default(),
        };
        if let Err(e) = self.state.save(&record) {
            tracing::warn!(error = %e, "cannot record the staged volume; a restart will not heal it");
        }
        let mut staged = self.staged.lock().await;
        staged.insert(
            req.volume_id,
            Staged { staging_path: req.staging_path, mount: mounted, read_only: req.read_only, watch },
        );
        publish_gauges(&staged);
        Ok(())
    }

    /// Stops serving a volume; its keys are zeroized when the FUSE session ends.
    pub async fn unstage(&self, volume_id: &str, staging_path: &Path) -> Result<(), Status> {
        let _guard = self.in_flight.claim(volume_id)?;
        let staged = {
            let mut all = self.staged.lock().await;
            let removed = all.remove(volume_id);
            publish_gauges(&all);
            removed
        };
        let path = staging_path.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<(), Status> {
            if let Some(staged) = staged {
                if let Err(e) = staged.mount.unmount() {
                    tracing::warn!(error = %e, "clean unmount failed; detaching");
                }
            }
            mount::unmount(&path).map_err(|e| io_status("cannot unmount", &path, e))
        })
        .await
        .map_err(|e| Status::unavailable(format!("unstage task failed: {e}")))??;
        self.state
            .remove(volume_id)
            .map_err(|e| Status::internal(format!("cannot forget volume {volume_id}: {e}")))?;
        tracing::info!("volume unstaged; keys dropped");
        Ok(())
    }

    /// Flushes every staged volume to the backing store (shutdown). Mounts and state stay, so the
    /// next start heals them; a process exit cannot unmount a volume that pods still use.
    pub async fn sync_all(&self) {
        let paths: Vec<PathBuf> = self.staged.lock().await.values().map(|s| s.staging_path.clone()).collect();
        let synced = tokio::task::spawn_blocking(move || {
            for path in paths {
                let result =
                    std::fs::File::open(&path).and_then(|f| nix::unistd::syncfs(&f).map_err(Into::into));
                if let Err(e) = result {
                    tracing::warn!(staging_path = %path.display(), error = %e, "cannot flush volume at shutdown");
                }
            }
        });
        let _ = synced.await;
    }

    /// Publishes a staged volume at `target` (a bind mount), replacing a dead mount there.
    pub async fn publish(
        &self,
        volume_id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        let _guard = self.in_flight.claim(volume_id)?;
        self.publish_locked(volume_id, staging, target, readonly).await
    }

    async fn publish_locked(
        &self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        let read_only = {
            let staged = self.staged.lock().await;
            let entry = staged.get(id).ok_or_else(|| {
                Status::failed_precondition(format!("volume {id} is not staged on this node"))
            })?;
            if entry.staging_path != staging {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is staged at {}, not {}",
                    entry.staging_path.display(),
                    staging.display()
                )));
            }
            readonly || entry.read_only
        };
        let (staging_path, target_path) = (staging.to_path_buf(), target.to_path_buf());
        tokio::task::spawn_blocking(move || -> Result<(), Status> {
            let (staging, target) = (staging_path, target_path);
            if mount::is_mount_point(&target).map_err(|e| io_status("cannot inspect", &target, e))? {
                if mount::is_alive(&target) {
                    let ours = mount::same_filesystem(&staging, &target)
                        .map_err(|e| io_status("cannot inspect", &target, e))?;
                    if ours {
                        return Ok(());
                    }
                    return Err(Status::already_exists(format!(
                        "target_path {} holds another mount",
                        target.display()
                    )));
                }
                mount::unmount(&target).map_err(|e| io_status("cannot clear dead mount", &target, e))?;
            }
            mount::ensure_dir(&target).map_err(|e| io_status("cannot create target path", &target, e))?;
            mount::bind(&staging, &target, read_only)
                .map_err(|e| io_status("cannot bind-mount to", &target, e))
        })
        .await
        .map_err(|e| Status::unavailable(format!("publish task failed: {e}")))??;
        self.record_target(id, target, Some(read_only));
        tracing::info!(target_path = %target.display(), read_only, "volume published");
        Ok(())
    }

    /// Adds (`Some(read_only)`) or removes (`None`) a published target in the volume's record.
    fn record_target(&self, id: &str, target: &Path, read_only: Option<bool>) {
        let updated = self.state.load(id).and_then(|record| {
            let Some(mut record) = record else { return Ok(()) };
            match read_only {
                Some(ro) => record.targets.insert(target.to_path_buf(), ro),
                None => record.targets.remove(target),
            };
            self.state.save(&record)
        });
        if let Err(e) = updated {
            tracing::warn!(volume_id = %id, error = %e, "cannot record the published target");
        }
    }

    /// Serves again every volume the state directory lists (after a restart): tears down the dead
    /// FUSE mount, unwraps the key again and re-binds every published target. A volume that cannot
    /// be healed stays down with an error log; it never stops the plugin.
    pub async fn heal(&self) -> usize {
        let records = match self.state.load_all() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read node state; nothing healed");
                return 0;
            }
        };
        let mut healed = 0;
        for record in records {
            match self.heal_volume(record.clone()).await {
                Ok(true) => healed += 1,
                Ok(false) => {}
                Err(status) => {
                    tracing::error!(
                        volume_id = %record.volume_id,
                        error = %status.message(),
                        "cannot serve the volume again; pods using it see errors until it is staged again"
                    );
                    self.events.volume_not_served(&record.volume_id, status.message()).await;
                }
            }
        }
        healed
    }

    /// Re-establishes a volume that this node should serve but does not (a dead session, or a
    /// restart whose healing failed); a volume the node never staged is left alone.
    async fn heal_if_broken(&self, id: &str) {
        let staging = self.staged.lock().await.get(id).map(|s| s.staging_path.clone());
        if staging.as_deref().is_some_and(mount::is_alive) {
            return;
        }
        let Ok(Some(record)) = self.state.load(id) else { return };
        tracing::warn!(volume_id = %id, "volume is not being served; re-establishing it");
        if let Err(status) = self.heal_volume(record).await {
            tracing::error!(volume_id = %id, error = %status.message(), "cannot re-establish the volume");
            self.events.volume_not_served(id, status.message()).await;
        }
    }

    /// Heals one volume; `Ok(false)` means kubelet no longer knows it and its state was dropped.
    pub async fn heal_volume(&self, record: VolumeRecord) -> Result<bool, Status> {
        let id = record.volume_id.clone();
        let _guard = self.in_flight.claim(&id)?;
        let staging_known =
            record.staging_path.exists() || mount::is_mount_point(&record.staging_path).unwrap_or(false);
        if !staging_known {
            tracing::info!(volume_id = %id, "staging path is gone; forgetting the volume");
            self.state.remove(&id).map_err(|e| Status::internal(e.to_string()))?;
            return Ok(false);
        }
        let alive = self.staged.lock().await.contains_key(&id) && mount::is_alive(&record.staging_path);
        if !alive {
            let stage = StageVolume {
                volume_id: id.clone(),
                staging_path: record.staging_path.clone(),
                read_only: record.read_only,
                key_arn: record.key_arn.clone(),
                secrets: Secrets::default(),
            };
            self.stage_locked(stage).await?;
        }
        for (target, read_only) in &record.targets {
            let known = target.exists() || mount::is_mount_point(target).unwrap_or(false);
            if !known {
                self.record_target(&id, target, None);
                continue;
            }
            self.publish_locked(&id, &record.staging_path, target, *read_only).await?;
        }
        tracing::info!(volume_id = %id, targets = record.targets.len(), "volume served again");
        Ok(true)
    }
}

/// The limit a mount enforces: the header's capacity; 0 (never set) means none.
fn capacity_limit(header: &VolumeHeader) -> Option<u64> {
    Some(header.capacity_bytes).filter(|&bytes| bytes > 0)
}

impl NodeService {
    /// Raises the live mount's capacity to what the volume header now records (after
    /// ControllerExpandVolume), without a remount; returns the new capacity.
    pub async fn expand(&self, volume_id: &str) -> Result<u64, Status> {
        let _guard = self.in_flight.claim(volume_id)?;
        if !self.staged.lock().await.contains_key(volume_id) {
            return Err(Status::not_found(format!("volume {volume_id} is not staged on this node")));
        }
        let store = self.store.clone();
        let id = volume_id.to_string();
        let header = tokio::task::spawn_blocking(move || store.header(&id))
            .await
            .map_err(|e| Status::unavailable(format!("backing store task failed: {e}")))?
            .map_err(|e| store_status(&e))?
            .ok_or_else(|| Status::not_found(format!("volume {volume_id} does not exist")))?;
        let staged = self.staged.lock().await;
        let staged = staged
            .get(volume_id)
            .ok_or_else(|| Status::not_found(format!("volume {volume_id} is not staged on this node")))?;
        staged.mount.set_capacity(capacity_limit(&header));
        tracing::info!(capacity_bytes = header.capacity_bytes, "volume capacity raised on the live mount");
        Ok(header.capacity_bytes)
    }
}

fn check_header(header: &VolumeHeader, req: &StageVolume) -> Result<(), Status> {
    if header.state != VolumeState::Ready {
        return Err(Status::not_found(format!("volume {} is being deleted", req.volume_id)));
    }
    if header.volume_id != req.volume_id {
        return Err(Status::failed_precondition(format!(
            "the header in volume directory {} names volume {}",
            req.volume_id, header.volume_id
        )));
    }
    if let Some(expected) = &req.key_arn {
        if *expected != header.key_arn {
            // A key rotation re-wraps a sealed volume under another key; the seal, checked once
            // the key is unwrapped, proves the data key is still the volume's own. An unsealed
            // volume has nothing to prove it, so its key must be the one it was provisioned with.
            if header.seal.is_none() {
                return Err(Status::failed_precondition(format!(
                    "volume {} header names key {}, but the volume was provisioned with {expected} \
                     and its header carries no seal that could vouch for a rotation",
                    req.volume_id, header.key_arn
                )));
            }
            tracing::info!(
                provisioned_key = %expected,
                current_key = %header.key_arn,
                "volume key was rotated since provisioning; the header seal will vouch for it"
            );
        }
    }
    Ok(())
}

/// Checks the header seal, or writes it on the first stage of a fresh volume.
fn seal_or_verify(
    store: &BackingStore,
    header: VolumeHeader,
    keys: &crate::keys::VolumeKeys,
) -> Result<(), Status> {
    let verified = header.verify_seal(keys).map_err(|e| {
        crate::metrics::get().auth_failure(crate::metrics::AuthFailure::HeaderSeal);
        super::header_status(&e)
    })?;
    if verified {
        return Ok(());
    }
    // An unsealed header on a volume that already holds files means the seal was stripped.
    let data = store.data_dir(&header.volume_id).map_err(|e| store_status(&e))?;
    let used = std::fs::read_dir(&data)
        .map_err(|e| io_status("cannot read", &data, e))?
        .filter_map(Result::ok)
        .any(|entry| !entry.file_name().as_encoded_bytes().starts_with(b"."));
    if used {
        return Err(Status::failed_precondition(format!(
            "volume {} holds data but its header carries no seal: the header was tampered with",
            header.volume_id
        )));
    }
    // Seal a fresh read under the header lock, so a rotation or expansion made since the read
    // above is kept; a seal another node wrote meanwhile must verify under these keys too.
    let id = header.volume_id.clone();
    let sealed = store.modify_header(&id, |fresh| -> Result<bool, Status> {
        if fresh.verify_seal(keys).map_err(|e| super::header_status(&e))? {
            return Ok(false);
        }
        fresh.seal = Some(fresh.compute_seal(keys));
        Ok(true)
    })?;
    match sealed {
        Some(_) => Ok(()),
        None => Err(Status::not_found(format!("volume {id} was deleted while being staged"))),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        self.stage(StageVolume::try_from(request.into_inner())?).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let path = absolute(&req.staging_target_path, "staging_target_path")?;
        self.unstage(id, &path).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let staging = absolute(&req.staging_target_path, "staging_target_path")?;
        let target = absolute(&req.target_path, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        super::check_capability(cap, "volume_capability").map_err(Status::invalid_argument)?;
        let readonly = req.readonly || super::is_read_only_mode(cap);
        self.heal_if_broken(&id).await;
        self.publish(&id, &staging, &target, readonly).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let target = absolute(&req.target_path, "target_path")?;
        let _guard = self.in_flight.claim(&id)?;
        tokio::task::spawn_blocking(move || -> Result<(), Status> {
            mount::unmount(&target).map_err(|e| io_status("cannot unmount", &target, e))?;
            mount::remove_dir(&target).map_err(|e| io_status("cannot remove", &target, e))
        })
        .await
        .map_err(|e| Status::unavailable(format!("unpublish task failed: {e}")))??;
        self.record_target(&req.volume_id, Path::new(&req.target_path), None);
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use csi::volume_usage::Unit;
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        self.heal_if_broken(&id).await;
        if !self.staged.lock().await.contains_key(&id) {
            return Err(Status::not_found(format!("volume {id} is not staged on this node")));
        }
        let stats = tokio::task::spawn_blocking(move || match nix::sys::statvfs::statvfs(&path) {
            Ok(s) => Ok(Ok(s)),
            Err(nix::errno::Errno::ENOENT) => {
                Err(Status::not_found(format!("volume_path {} does not exist", path.display())))
            }
            Err(e) => Ok(Err(e)),
        })
        .await
        .map_err(|e| Status::unavailable(format!("stats task failed: {e}")))??;
        let response = match stats {
            Ok(s) => {
                let frag = s.fragment_size() as i64;
                let total = s.blocks() as i64 * frag;
                let available = s.blocks_available() as i64 * frag;
                let used = (s.blocks() as i64 - s.blocks_free() as i64) * frag;
                let inodes = s.files() as i64;
                let inodes_free = s.files_free() as i64;
                csi::NodeGetVolumeStatsResponse {
                    usage: vec![
                        csi::VolumeUsage { available, total, used, unit: Unit::Bytes as i32 },
                        csi::VolumeUsage {
                            available: inodes_free,
                            total: inodes,
                            used: inodes - inodes_free,
                            unit: Unit::Inodes as i32,
                        },
                    ],
                }
            }
            Err(e) => {
                return Err(Status::unavailable(format!("volume {} does not answer: {e}", req.volume_id)));
            }
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        required(&req.volume_path, "volume_path")?;
        self.heal_if_broken(&id).await;
        let capacity = self.expand(&id).await?;
        let required_bytes = req.capacity_range.as_ref().map_or(0, |range| range.required_bytes);
        if u64::try_from(required_bytes).unwrap_or(0) > capacity {
            return Err(Status::failed_precondition(format!(
                "volume {id} header records {capacity} bytes, less than required_bytes {required_bytes}: \
                 ControllerExpandVolume has not run"
            )));
        }
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{rpc::Type as RpcType, Rpc, Type};
        let rpc =
            |t: RpcType| csi::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(RpcType::StageUnstageVolume),
                rpc(RpcType::GetVolumeStats),
                rpc(RpcType::ExpandVolume),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_get_volume_health(
        &self,
        _request: Request<csi::NodeGetVolumeHealthRequest>,
    ) -> Result<Response<csi::NodeGetVolumeHealthResponse>, Status> {
        Err(Status::unimplemented("volume health is not offered"))
    }

    async fn node_get_storage_health(
        &self,
        _request: Request<csi::NodeGetStorageHealthRequest>,
    ) -> Result<Response<csi::NodeGetStorageHealthResponse>, Status> {
        Err(Status::unimplemented("storage health is not offered"))
    }
}
