//! Settings from the environment, set by `e2e/run.sh` (or by hand against another cluster).

use std::path::PathBuf;
use std::time::Duration;

use crate::{E2eError, Result};

/// What the suite needs to know about the cluster under test.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CRYPTVOL_E2E_BACKING_DIR` (required): the host directory that every node mounts as the
    /// backing root, so the suite can look at what the driver stored.
    pub backing_dir: PathBuf,
    /// `CRYPTVOL_E2E_DRIVER_NAMESPACE`: where the chart is installed (`cryptvol`).
    pub driver_namespace: String,
    /// `CRYPTVOL_E2E_NODE_PLUGIN_SELECTOR`: label selector of the node plugin pods.
    pub node_plugin_selector: String,
    /// `CRYPTVOL_E2E_STORAGE_CLASS`: an encrypted StorageClass with volume expansion allowed.
    pub storage_class: String,
    /// `CRYPTVOL_E2E_IMAGE`: image of the workload pods; it needs `sh`, `grep` and `wc`. The
    /// driver image qualifies and is already on every kind node.
    pub image: String,
    /// `CRYPTVOL_E2E_TIMEOUT_SECS`: how long any one wait may take (180).
    pub timeout: Duration,
}

impl Settings {
    /// Reads the settings; only the backing directory has no default.
    pub fn from_env() -> Result<Self> {
        let backing_dir =
            std::env::var_os("CRYPTVOL_E2E_BACKING_DIR").map(PathBuf::from).ok_or(E2eError::Setting {
                name: "CRYPTVOL_E2E_BACKING_DIR",
                reason: "not set; it must name the host directory mounted as the backing root".into(),
            })?;
        if !backing_dir.is_dir() {
            return Err(E2eError::Setting {
                name: "CRYPTVOL_E2E_BACKING_DIR",
                reason: format!("{} is not a directory on this host", backing_dir.display()),
            });
        }
        let timeout_secs = var("CRYPTVOL_E2E_TIMEOUT_SECS", "180");
        let timeout_secs: u64 = timeout_secs.parse().map_err(|_| E2eError::Setting {
            name: "CRYPTVOL_E2E_TIMEOUT_SECS",
            reason: format!("{timeout_secs:?} is not a number of seconds"),
        })?;
        Ok(Settings {
            backing_dir,
            driver_namespace: var("CRYPTVOL_E2E_DRIVER_NAMESPACE", "cryptvol"),
            node_plugin_selector: var(
                "CRYPTVOL_E2E_NODE_PLUGIN_SELECTOR",
                "app.kubernetes.io/name=cryptvol,app.kubernetes.io/component=node",
            ),
            storage_class: var("CRYPTVOL_E2E_STORAGE_CLASS", "cryptvol-e2e"),
            image: var("CRYPTVOL_E2E_IMAGE", "cryptvol:e2e"),
            timeout: Duration::from_secs(timeout_secs),
        })
    }
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}
