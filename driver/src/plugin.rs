//! Running the plugins: shared flags, the services each plugin serves, and orderly shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use cryptvol_proto::csi::v1::controller_server::ControllerServer;
use cryptvol_proto::csi::v1::identity_server::IdentityServer;
use cryptvol_proto::csi::v1::node_server::NodeServer;
use tonic::transport::Server;

use crate::csi::controller::ControllerService;
use crate::csi::events::VolumeEvents;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::kms::config::{ConfigError, KmsRegistry};
use crate::server::{self, ServeError};
use crate::telemetry::LogFormat;
use crate::volume::BackingStore;

/// Flags both plugins take; each also reads an environment variable, as DaemonSets expect.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// CSI endpoint, `unix:///path/to/csi.sock`.
    #[arg(long, env = "CRYPTVOL_ENDPOINT")]
    pub endpoint: String,
    /// Directory under which every volume lives (shared by the controller and all nodes).
    #[arg(long, env = "CRYPTVOL_BACKING_ROOT")]
    pub backing_root: PathBuf,
    /// KMS configuration file (YAML).
    #[arg(long, env = "CRYPTVOL_KMS_CONFIG")]
    pub kms_config: PathBuf,
    /// Log format.
    #[arg(long, env = "CRYPTVOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `cryptvol=debug,info`).
    #[arg(long, env = "CRYPTVOL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Flags of `cryptvol-node`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cryptvol-node", version, about = "cryptvol CSI node plugin")]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// This node's name, as Kubernetes knows it.
    #[arg(long, env = "CRYPTVOL_NODE_ID")]
    pub node_id: String,
    /// Node-local directory (a hostPath) recording what is staged and published, so that a
    /// restarted plugin serves its volumes again. Without it a restart leaves dead mounts.
    #[arg(long, env = "CRYPTVOL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Flags of `cryptvol-controller`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cryptvol-controller", version, about = "cryptvol CSI controller plugin")]
pub struct ControllerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Why a plugin could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the node plugin until SIGINT or SIGTERM.
///
/// At start it serves again the volumes its state directory lists. At SIGTERM it stops taking CSI
/// calls, flushes every volume and exits leaving mounts and state for the next start: unmounting
/// would not help pods (their bind mounts keep the session's superblock) and could block.
pub async fn run_node(args: NodeArgs) -> Result<(), PluginError> {
    crate::telemetry::init(args.common.log_format, &args.common.log_level);
    let (store, kms) = load(&args.common)?;
    let mut node = NodeService::new(args.node_id.clone(), store.clone(), kms.clone());
    if let Some(dir) = &args.state_dir {
        node = node.with_state_dir(dir.clone());
    }
    node = node.with_events(VolumeEvents::in_cluster(&args.node_id).await);
    let healer = node.clone();
    tokio::spawn(async move {
        let healed = healer.heal().await;
        if healed > 0 {
            tracing::info!(volumes = healed, "served the volumes of the previous process again");
        }
    });
    let listener = server::listen(&server::socket_path(&args.common.endpoint)?)?;
    tracing::info!(endpoint = %args.common.endpoint, node_id = %args.node_id, "node plugin serving");
    let router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(store, kms)))
        .add_service(NodeServer::new(node.clone()));
    server::serve(router, listener, server::shutdown_signal()).await?;
    node.sync_all().await;
    // The staged mounts must outlive this process's teardown (see above): never drop them.
    std::mem::forget(node);
    Ok(())
}

/// Runs the controller plugin until SIGINT or SIGTERM.
pub async fn run_controller(args: ControllerArgs) -> Result<(), PluginError> {
    crate::telemetry::init(args.common.log_format, &args.common.log_level);
    let (store, kms) = load(&args.common)?;
    match store.sweep_temp(std::time::Duration::from_secs(3600)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed leftovers of interrupted CreateVolume calls"),
        Err(e) => tracing::warn!(error = %e, "cannot sweep the backing root"),
    }
    let listener = server::listen(&server::socket_path(&args.common.endpoint)?)?;
    tracing::info!(endpoint = %args.common.endpoint, "controller plugin serving");
    let router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(store.clone(), kms.clone())))
        .add_service(ControllerServer::new(ControllerService::new(store, kms)));
    server::serve(router, listener, server::shutdown_signal()).await?;
    Ok(())
}

fn load(args: &CommonArgs) -> Result<(BackingStore, Arc<KmsRegistry>), PluginError> {
    let kms = Arc::new(KmsRegistry::load(&args.kms_config)?);
    let store = BackingStore::new(&args.backing_root);
    if let Err(e) = store.check_ready() {
        // Not fatal: Probe reports it until the backing root appears.
        tracing::warn!(error = %e, "backing root is not ready");
    }
    Ok((store, kms))
}
