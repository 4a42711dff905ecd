//! The controller and node services in this process, with a local key file: the cryptvol
//! target of the file system benchmark, and the CSI operation figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cryptvol_proto::csi::v1 as csi;
use csi::controller_server::Controller;
use csi::node_server::Node;
use tonic::Request;

use super::workload::Figure;
use super::BenchError;
use crate::csi::controller::ControllerService;
use crate::csi::node::NodeService;
use crate::kms::config::{KmsConfig, KmsRegistry};
use crate::kms::local::KeyFile;
use crate::volume::BackingStore;

const KEY: &str = "bench";

fn csi_err(call: &'static str) -> impl FnOnce(tonic::Status) -> BenchError {
    move |status| BenchError::Csi { call, status }
}

/// Both plugins' services over one backing store under `dir`.
#[derive(Debug)]
pub struct Plugins {
    pub dir: PathBuf,
    pub backing: PathBuf,
    pub controller: ControllerService,
    pub node: NodeService,
}

impl Plugins {
    pub fn start(dir: &Path) -> Result<Plugins, BenchError> {
        let io = |what: &'static str| move |source| BenchError::Io { what: what.into(), source };
        let backing = dir.join("backing");
        std::fs::create_dir_all(&backing).map_err(io("cannot create the backing store"))?;
        let key_file = dir.join("keys.json");
        KeyFile::update(
            &key_file,
            true,
            |f| if f.keys.contains_key(KEY) { Ok(()) } else { f.create_key(KEY) },
        )?;
        let kms = Arc::new(KmsRegistry::from_config(KmsConfig::local(key_file), dir, "(bench)")?);
        let store = BackingStore::new(&backing);
        Ok(Plugins {
            dir: dir.to_path_buf(),
            controller: ControllerService::new(store.clone(), kms.clone()),
            node: NodeService::new("bench-node", store, kms),
            backing,
        })
    }

    pub async fn create(&self, name: &str) -> Result<csi::Volume, BenchError> {
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
            volume_capabilities: vec![crate::cli::demo::mount_capability()],
            parameters: HashMap::from([(crate::csi::PARAM_KMS_KEY_ID.to_string(), KEY.to_string())]),
            ..Default::default()
        };
        let resp = self.controller.create_volume(Request::new(req)).await.map_err(csi_err("CreateVolume"))?;
        resp.into_inner().volume.ok_or_else(|| BenchError::Csi {
            call: "CreateVolume",
            status: tonic::Status::internal("no volume returned"),
        })
    }

    pub async fn stage(&self, volume: &csi::Volume, staging: &Path) -> Result<(), BenchError> {
        let req = csi::NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(crate::cli::demo::mount_capability()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        };
        self.node.node_stage_volume(Request::new(req)).await.map_err(csi_err("NodeStageVolume"))?;
        Ok(())
    }

    pub async fn publish(
        &self,
        volume: &csi::Volume,
        staging: &Path,
        target: &Path,
    ) -> Result<(), BenchError> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(crate::cli::demo::mount_capability()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        };
        self.node.node_publish_volume(Request::new(req)).await.map_err(csi_err("NodePublishVolume"))?;
        Ok(())
    }

    /// Unpublishes (when `target` is given), unstages and deletes a volume; best effort, so that
    /// a failed run still leaves no mount behind.
    pub async fn remove(&self, volume_id: &str, staging: &Path, target: Option<&Path>) {
        if let Some(target) = target {
            let req = csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: target.display().to_string(),
            };
            let _ = self.node.node_unpublish_volume(Request::new(req)).await;
        }
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.display().to_string(),
        };
        let _ = self.node.node_unstage_volume(Request::new(req)).await;
        let _ = self
            .controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: volume_id.into(),
                ..Default::default()
            }))
            .await;
    }
}

/// This process's resident memory in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn median_and_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// CreateVolume, NodeStage and NodePublish latency over `volumes` volumes, `concurrent`
/// simultaneous CreateVolume calls, and resident memory idle and with every volume staged.
pub async fn operation_figures(
    dir: &Path,
    volumes: usize,
    concurrent: usize,
) -> Result<Vec<Figure>, BenchError> {
    let plugins = Arc::new(Plugins::start(dir)?);
    let rss_idle = rss_mib();
    let mut made: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    let result = measure(&plugins, volumes, concurrent, rss_idle, &mut made).await;
    for (id, staging, target) in &made {
        plugins.remove(id, staging, Some(target)).await;
    }
    result
}

async fn measure(
    plugins: &Arc<Plugins>,
    volumes: usize,
    concurrent: usize,
    rss_idle: f64,
    made: &mut Vec<(String, PathBuf, PathBuf)>,
) -> Result<Vec<Figure>, BenchError> {
    let (mut create, mut stage, mut publish) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..volumes {
        let staging = plugins.dir.join(format!("staging-{i}"));
        let target = plugins.dir.join(format!("target-{i}"));
        let start = Instant::now();
        let volume = plugins.create(&format!("bench-{i}")).await?;
        create.push(start.elapsed().as_secs_f64() * 1e3);
        made.push((volume.volume_id.clone(), staging.clone(), target.clone()));
        let start = Instant::now();
        plugins.stage(&volume, &staging).await?;
        stage.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        plugins.publish(&volume, &staging, &target).await?;
        publish.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let rss_staged = rss_mib();

    let start = Instant::now();
    let calls = (0..concurrent).map(|i| {
        let plugins = Arc::clone(plugins);
        tokio::spawn(async move { plugins.create(&format!("bench-concurrent-{i}")).await })
    });
    let mut concurrent_ids = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let joined =
            call.await.map_err(|e| BenchError::Tool { tool: "tokio".into(), detail: e.to_string() })?;
        concurrent_ids.push(joined?.volume_id);
    }
    let concurrent_s = start.elapsed().as_secs_f64();
    for id in concurrent_ids {
        let _ = plugins
            .controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest { volume_id: id, ..Default::default() }))
            .await;
    }

    let (create_med, create_p99) = median_and_p99(create);
    let (stage_med, stage_p99) = median_and_p99(stage);
    let (publish_med, publish_p99) = median_and_p99(publish);
    let per_volume = (rss_staged - rss_idle) / volumes as f64;
    Ok(vec![
        Figure { name: "create_volume_median", unit: "ms", value: create_med },
        Figure { name: "create_volume_p99", unit: "ms", value: create_p99 },
        Figure { name: "node_stage_median", unit: "ms", value: stage_med },
        Figure { name: "node_stage_p99", unit: "ms", value: stage_p99 },
        Figure { name: "node_publish_median", unit: "ms", value: publish_med },
        Figure { name: "node_publish_p99", unit: "ms", value: publish_p99 },
        Figure { name: "create_volume_concurrent_total", unit: "s", value: concurrent_s },
        Figure { name: "rss_idle", unit: "MiB", value: rss_idle },
        Figure { name: "rss_staged", unit: "MiB", value: rss_staged },
        Figure { name: "rss_per_staged_volume", unit: "MiB", value: per_volume },
    ])
}
