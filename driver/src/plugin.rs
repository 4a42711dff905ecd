//! Running the plugins: shared flags, the services each plugin serves, and orderly shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cryptvol_proto::csi::v1::controller_server::ControllerServer;
use cryptvol_proto::csi::v1::identity_server::IdentityServer;
use cryptvol_proto::csi::v1::node_server::NodeServer;
use tonic::transport::Server;

use crate::csi::controller::ControllerService;
use crate::csi::events::VolumeEvents;
use crate::csi::identity::IdentityService;
use crate::csi::node::KeyCheck;
use crate::csi::node::NodeService;
use crate::kms::config::{ConfigError, KmsRegistry};
use crate::metrics::{self, MetricsAddress};
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
    /// How often the key of every staged volume is checked with the KMS (`30s`, `1m`, `1h`).
    #[arg(long, env = "CRYPTVOL_KEY_CHECK_INTERVAL", default_value = "60s", value_parser = parse_interval)]
    pub key_check_interval: Duration,
    /// How long a KMS that cannot be reached leaves volumes served after the last successful
    /// check; then they lock (`0s` locks at the first failed check).
    #[arg(long, env = "CRYPTVOL_KMS_GRACE_PERIOD", default_value = "10m", value_parser = parse_duration)]
    pub kms_grace_period: Duration,
    /// Address of the Prometheus endpoint (`GET /metrics`); empty serves no metrics.
    #[arg(long, env = "CRYPTVOL_METRICS_ADDRESS", default_value = "0.0.0.0:9809", value_parser = metrics::parse_address)]
    pub metrics_address: MetricsAddress,
}

/// Flags of `cryptvol-controller`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cryptvol-controller", version, about = "cryptvol CSI controller plugin")]
pub struct ControllerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of the Prometheus endpoint (`GET /metrics`); empty serves no metrics.
    #[arg(long, env = "CRYPTVOL_METRICS_ADDRESS", default_value = "0.0.0.0:9810", value_parser = metrics::parse_address)]
    pub metrics_address: MetricsAddress,
}

/// Why a plugin could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
}

/// Parses a duration: a whole number and a unit, `ms`, `s`, `m` or `h` (`200ms`, `30s`, `10m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!(
            "{text:?} is not a duration: use a whole number and a unit (ms, s, m or h), like 30s, 1m or 10m"
        )
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    number.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses a duration that must not be zero (an interval).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{:?} is not an interval: it must be longer than zero", text.trim())),
        d => Ok(d),
    }
}

/// Runs the node plugin until SIGINT or SIGTERM.
///
/// At start it serves again the volumes its state directory lists. At SIGTERM it stops taking CSI
/// calls, flushes every volume and exits leaving mounts and state for the next start: unmounting
/// would not help pods (their bind mounts keep the session's superblock) and could block.
pub async fn run_node(args: NodeArgs) -> Result<(), PluginError> {
    crate::telemetry::init(args.common.log_format, &args.common.log_level);
    let (store, kms) = load(&args.common)?;
    let _metrics = metrics::start(args.metrics_address).await.map_err(PluginError::Metrics)?;
    let key_check = KeyCheck { interval: args.key_check_interval, grace: args.kms_grace_period };
    let mut node =
        NodeService::new(args.node_id.clone(), store.clone(), kms.clone()).with_key_check(key_check);
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
    let checks = node.start_key_checks();
    tracing::info!(
        interval_s = key_check.interval.as_secs_f64(),
        grace_s = key_check.grace.as_secs_f64(),
        "checking the keys of staged volumes"
    );
    let listener = server::listen(&server::socket_path(&args.common.endpoint)?)?;
    tracing::info!(endpoint = %args.common.endpoint, node_id = %args.node_id, "node plugin serving");
    let router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(store, kms)))
        .add_service(NodeServer::new(node.clone()));
    server::serve(router, listener, server::shutdown_signal()).await?;
    checks.abort();
    node.sync_all().await;
    // The staged mounts must outlive this process's teardown (see above): never drop them.
    std::mem::forget(node);
    Ok(())
}

/// Runs the controller plugin until SIGINT or SIGTERM.
pub async fn run_controller(args: ControllerArgs) -> Result<(), PluginError> {
    crate::telemetry::init(args.common.log_format, &args.common.log_level);
    let (store, kms) = load(&args.common)?;
    let _metrics = metrics::start(args.metrics_address).await.map_err(PluginError::Metrics)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_or_name_the_problem() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "10", "m", "1.5m", "-1s", "10 minutes", "1d", "1m30s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
        assert!(parse_interval("0s").unwrap_err().contains("longer than zero"));
    }

    #[test]
    fn node_flags_default_and_refuse_garbage() {
        let base = [
            "cryptvol-node",
            "--endpoint",
            "unix:///x",
            "--backing-root",
            "/b",
            "--kms-config",
            "/k",
            "--node-id",
            "n",
        ];
        let args = NodeArgs::try_parse_from(base).unwrap();
        assert_eq!(args.key_check_interval, Duration::from_secs(60));
        assert_eq!(args.kms_grace_period, Duration::from_secs(600));
        assert_eq!(args.metrics_address.0.unwrap().port(), 9809);
        let off = NodeArgs::try_parse_from(base.iter().copied().chain(["--metrics-address", ""])).unwrap();
        assert_eq!(off.metrics_address, MetricsAddress(None));
        let err = NodeArgs::try_parse_from(base.iter().copied().chain(["--key-check-interval", "soon"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--key-check-interval") && err.contains("\"soon\" is not a duration"), "{err}");
        let err = NodeArgs::try_parse_from(base.iter().copied().chain(["--metrics-address", "nowhere"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--metrics-address") && err.contains("nowhere"), "{err}");
        let controller = ControllerArgs::try_parse_from([
            "c",
            "--endpoint",
            "e",
            "--backing-root",
            "/b",
            "--kms-config",
            "/k",
        ]);
        assert_eq!(controller.unwrap().metrics_address.0.unwrap().port(), 9810);
    }
}
