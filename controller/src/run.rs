//! Running the key lifecycle controllers next to the CSI controller.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::runtime::{watcher, Controller};
use kube::Api;

use crate::crd::EncryptionKeyRotation;
use crate::{keystate, rotation, schedule, Context};

/// Flags of the key lifecycle controllers (each also read from the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleArgs {
    /// Run the key lifecycle controllers (rotation, scheduled rotation, key state) when a Kubernetes
    /// API is reachable (in a cluster, or with KUBECONFIG set).
    #[arg(long, env = "CRYPTVOL_KEY_LIFECYCLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub key_lifecycle: bool,
    /// How often each PersistentVolume's key state is checked (`5m`, `1h`).
    #[arg(long, env = "CRYPTVOL_KEY_STATE_INTERVAL", default_value = "5m", value_parser = duration)]
    pub key_state_interval: Duration,
    /// How often StorageClasses are checked for due scheduled rotations.
    #[arg(long, env = "CRYPTVOL_ROTATION_SCHEDULE_CHECK", default_value = "1m", value_parser = duration)]
    pub rotation_schedule_check: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    if parsed.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(parsed)
}

/// A Kubernetes client when one is configured; `None` outside a cluster without KUBECONFIG.
pub async fn client() -> Option<kube::Client> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() && std::env::var_os("KUBECONFIG").is_none() {
        return None;
    }
    match kube::Client::try_default().await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes client; key lifecycle controllers are off");
            None
        }
    }
}

/// Runs the three controllers until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let rotations =
        Controller::new(Api::<EncryptionKeyRotation>::all(ctx.client.clone()), watcher::Config::default())
            .run(rotation::reconcile, rotation::error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "rotation controller event");
                }
            });
    let key_states =
        Controller::new(Api::<PersistentVolume>::all(ctx.client.clone()), watcher::Config::default())
            .run(keystate::reconcile, keystate::error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "key state controller event");
                }
            });
    let schedule_ctx = ctx.clone();
    let schedule = async move {
        let mut tick = tokio::time::interval(schedule_ctx.settings.schedule_check);
        loop {
            tick.tick().await;
            if let Err(e) = schedule::run_once(&schedule_ctx).await {
                tracing::warn!(error = %e, "scheduled rotation check failed");
            }
        }
    };
    tracing::info!("key lifecycle controllers running");
    tokio::join!(rotations, key_states, schedule);
}
