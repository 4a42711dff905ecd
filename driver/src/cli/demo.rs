//! `cryptvol demo DIR`: both plugins in one process, one volume provisioned, staged and published
//! through the CSI API at `DIR/mnt`, served until SIGINT or SIGTERM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptvol_proto::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::controller_server::ControllerServer;
use csi::identity_server::IdentityServer;
use csi::node_client::NodeClient;
use csi::node_server::NodeServer;
use tonic::transport::Server;

use crate::csi::controller::ControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::{KeyCheck, NodeService};
use crate::kms::config::{KmsConfig, KmsRegistry};
use crate::kms::local::KeyFile;
use crate::server;
use crate::volume::BackingStore;

const VOLUME_NAME: &str = "demo-volume";

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    Config(#[from] crate::kms::config::ConfigError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: tonic::transport::Error },
    #[error("{call} failed: {status}")]
    Csi { call: &'static str, status: tonic::Status },
}

fn csi_err(call: &'static str) -> impl FnOnce(tonic::Status) -> DemoError {
    move |status| DemoError::Csi { call, status }
}

pub async fn run(dir: &Path, kms_config: Option<PathBuf>, key: Option<String>) -> Result<(), DemoError> {
    crate::telemetry::init(crate::telemetry::LogFormat::Text, "warn,cryptvol=info");
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DemoError::Io { what, source }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create the demo directory"))?;
    let dir = dir.canonicalize().map_err(io("cannot resolve the demo directory"))?;
    let backing = dir.join("backing");
    std::fs::create_dir_all(&backing).map_err(io("cannot create the backing directory"))?;

    let (kms, key) = match kms_config {
        Some(path) => (KmsRegistry::load(&path)?, key.unwrap_or_else(|| "demo".into())),
        None => {
            let key_file = dir.join("keys.json");
            let name = key.unwrap_or_else(|| "demo".into());
            KeyFile::update(&key_file, true, |f| {
                if !f.keys.contains_key(&name) {
                    f.create_key(&name)?;
                }
                Ok(())
            })?;
            // The same configuration as a file, for `cryptvol rewrap` and the plugins' flags.
            let config = KmsConfig::local(PathBuf::from("keys.json"));
            let config_path = dir.join("kms.yaml");
            let yaml = serde_yaml::to_string(&config).unwrap_or_default();
            std::fs::write(&config_path, yaml).map_err(io("cannot write kms.yaml"))?;
            (KmsRegistry::from_config(KmsConfig::local(key_file), &dir, "(demo)")?, name)
        }
    };
    let kms = Arc::new(kms);
    let store = BackingStore::new(&backing);

    // Both plugins, each on its own socket, as a cluster would run them.
    let controller_sock = dir.join("controller.sock");
    let node_sock = dir.join("node.sock");
    let controller_listener = server::listen(&controller_sock)?;
    let node_listener = server::listen(&node_sock)?;
    // Keys are checked every 5 s, so `cryptvol keys disable` locks the demo volume quickly.
    let key_check = KeyCheck { interval: std::time::Duration::from_secs(5), ..KeyCheck::default() };
    let node = NodeService::new("demo-node", store.clone(), kms.clone()).with_key_check(key_check);
    let key_checks = node.start_key_checks();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let controller_router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(store.clone(), kms.clone())))
        .add_service(ControllerServer::new(ControllerService::new(store.clone(), kms.clone())));
    let node_router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(store.clone(), kms.clone())))
        .add_service(NodeServer::new(node.clone()));
    let controller_task =
        tokio::spawn(server::serve(controller_router, controller_listener, stopped(stop_rx.clone())));
    let node_task = tokio::spawn(server::serve(node_router, node_listener, stopped(stop_rx)));

    let mut controller = ControllerClient::new(
        server::connect(&controller_sock)
            .await
            .map_err(|source| DemoError::Connect { path: controller_sock.clone(), source })?,
    );
    let mut node_client = NodeClient::new(
        server::connect(&node_sock)
            .await
            .map_err(|source| DemoError::Connect { path: node_sock.clone(), source })?,
    );

    let capability = mount_capability();
    let volume = controller
        .create_volume(csi::CreateVolumeRequest {
            name: VOLUME_NAME.into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
            volume_capabilities: vec![capability.clone()],
            parameters: HashMap::from([(crate::csi::PARAM_KMS_KEY_ID.to_string(), key)]),
            ..Default::default()
        })
        .await
        .map_err(csi_err("CreateVolume"))?
        .into_inner()
        .volume
        .ok_or_else(|| DemoError::Csi {
            call: "CreateVolume",
            status: tonic::Status::internal("no volume returned"),
        })?;
    let staging = dir.join("staging");
    let target = dir.join("mnt");
    node_client
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(capability.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(csi_err("NodeStageVolume"))?;
    node_client
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(csi_err("NodePublishVolume"))?;

    let volume_dir = backing.join(&volume.volume_id);
    println!("cryptvol demo is serving volume {}", volume.volume_id);
    println!("  plaintext view (write here): {}", target.display());
    println!("  ciphertext on the backing store: {}", volume_dir.join(crate::header::DATA_DIR).display());
    println!("  volume header: {}", volume_dir.join(crate::header::HEADER_FILE).display());
    println!("  key: {}", volume.volume_context.get(crate::csi::CTX_KEY_ARN).map_or("?", String::as_str));
    println!("Press Ctrl-C (or send SIGTERM) to unpublish, unstage and exit.");

    server::shutdown_signal().await;
    key_checks.abort();
    let unpublished = node_client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await;
    let unstaged = node_client
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await;
    let _ = stop_tx.send(true);
    let _ = controller_task.await;
    let _ = node_task.await;
    unpublished.map_err(csi_err("NodeUnpublishVolume"))?;
    unstaged.map_err(csi_err("NodeUnstageVolume"))?;
    println!(
        "unpublished and unstaged {}; the encrypted volume stays in {}",
        volume.volume_id,
        volume_dir.display()
    );
    Ok(())
}

/// A filesystem capability that every cryptvol volume supports.
pub fn mount_capability() -> csi::VolumeCapability {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::MultiNodeMultiWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}
