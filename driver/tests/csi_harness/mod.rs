//! An in-process cryptvol (controller and node services on Unix sockets in a temp dir) for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptvol::csi::controller::ControllerService;
use cryptvol::csi::identity::IdentityService;
use cryptvol::csi::node::NodeService;
use cryptvol::kms::config::{KmsConfig, KmsRegistry};
use cryptvol::kms::local::KeyFile;
use cryptvol::server;
use cryptvol::volume::BackingStore;
use cryptvol_proto::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use tonic::transport::{Channel, Server};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub key_file: PathBuf,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    pub identity: IdentityClient<Channel>,
    pub node_service: NodeService,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    /// Starts both plugins with a local key file holding the keys `app` and `other`.
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).unwrap();
        let key_file = dir.path().join("keys.json");
        KeyFile::update(&key_file, true, |f| {
            f.create_key("app")?;
            f.create_key("other")
        })
        .unwrap();
        let kms = Arc::new(
            KmsRegistry::from_config(KmsConfig::local(key_file.clone()), dir.path(), "test").unwrap(),
        );
        let store = BackingStore::new(&backing);
        let node_service = NodeService::new("test-node", store.clone(), kms.clone());
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let csock = dir.path().join("controller.sock");
        let nsock = dir.path().join("node.sock");
        let router = Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(IdentityService::new(
                store.clone(),
                kms.clone(),
            )))
            .add_service(csi::controller_server::ControllerServer::new(ControllerService::new(
                store.clone(),
                kms.clone(),
            )));
        tokio::spawn(server::serve(router, server::listen(&csock).unwrap(), stopped(rx.clone())));
        let router = Server::builder().add_service(csi::node_server::NodeServer::new(node_service.clone()));
        tokio::spawn(server::serve(router, server::listen(&nsock).unwrap(), stopped(rx)));
        let channel = server::connect(&csock).await.unwrap();
        Harness {
            controller: ControllerClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            node: NodeClient::new(server::connect(&nsock).await.unwrap()),
            dir,
            backing,
            key_file,
            node_service,
            stop,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn create(&mut self, name: &str, key: &str) -> Result<csi::Volume, tonic::Status> {
        self.create_with(name, params(key), 1 << 20).await
    }

    pub async fn create_with(
        &mut self,
        name: &str,
        parameters: HashMap<String, String>,
        bytes: i64,
    ) -> Result<csi::Volume, tonic::Status> {
        let resp = self
            .controller
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(csi::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                volume_capabilities: vec![capability()],
                parameters,
                ..Default::default()
            })
            .await?;
        Ok(resp.into_inner().volume.unwrap())
    }

    pub async fn stage(&mut self, volume: &csi::Volume, staging: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn publish(
        &mut self,
        volume: &csi::Volume,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(capability()),
                readonly,
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn unpublish(&mut self, volume_id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: target.display().to_string(),
            })
            .await
            .map(|_| ())
    }

    pub async fn unstage(&mut self, volume_id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: volume_id.into(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .map(|_| ())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Never leave a mount behind in the temp dir.
        for name in ["mnt", "mnt2", "staging", "staging2"] {
            let _ = cryptvol::csi::mount::unmount(&self.dir.path().join(name));
        }
    }
}

pub fn params(key: &str) -> HashMap<String, String> {
    HashMap::from([("kmsKeyId".to_string(), key.to_string())])
}

pub fn capability() -> csi::VolumeCapability {
    cryptvol::cli::demo::mount_capability()
}
