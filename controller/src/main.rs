//! The controller plugin binary: the CSI controller plus the key lifecycle controllers.

use std::sync::Arc;

use clap::Parser;
use cryptvol::kms::config::KmsRegistry;
use cryptvol::plugin::ControllerArgs;
use cryptvol::volume::BackingStore;
use cryptvol_controller::run::LifecycleArgs;
use cryptvol_controller::{Context, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "cryptvol-controller",
    version,
    about = "cryptvol CSI controller plugin and key lifecycle controllers",
    after_help = "`cryptvol-controller crd` prints the CustomResourceDefinitions as YAML (the chart ships that output)."
)]
struct Cli {
    #[command(flatten)]
    plugin: ControllerArgs,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "crd") && args.next().is_none() {
        print!("{}", cryptvol_controller::crd::crd_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    if cli.lifecycle.key_lifecycle {
        let (plugin, lifecycle) = (cli.plugin.clone(), cli.lifecycle.clone());
        tokio::spawn(async move {
            let Some(client) = cryptvol_controller::run::client().await else {
                tracing::info!("no Kubernetes API configured; key lifecycle controllers are off");
                return;
            };
            let kms = match KmsRegistry::load(&plugin.common.kms_config) {
                Ok(kms) => Arc::new(kms),
                // The CSI controller reports the same error and exits.
                Err(_) => return,
            };
            let settings = Settings {
                key_state_interval: lifecycle.key_state_interval,
                schedule_check: lifecycle.rotation_schedule_check,
                ..Settings::default()
            };
            let store = BackingStore::new(&plugin.common.backing_root);
            cryptvol_controller::run::run(Arc::new(Context::new(client, store, kms, settings))).await;
        });
    }
    match cryptvol::plugin::run_controller(cli.plugin).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cryptvol-controller: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
