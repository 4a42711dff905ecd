//! Support for the end-to-end suite: settings from the environment, object builders, waits on
//! cluster conditions, and the scan of the host directory that backs every volume.
//!
//! The tests live in `tests/`, are marked `#[ignore = "needs a cluster"]`, and are run by
//! `e2e/run.sh` against a kind cluster with the chart installed.

pub mod backing;
pub mod cluster;
pub mod objects;
pub mod quantity;
pub mod settings;

use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{Cluster, TestNamespace};
pub use settings::Settings;

/// Why a step of an end-to-end test could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A required environment variable is missing or malformed.
    #[error("environment variable {name}: {reason}")]
    Setting { name: &'static str, reason: String },
    /// The cluster refused or failed a request.
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    /// A watch used to wait for a condition broke off.
    #[error("waiting for {what}: {source}")]
    Wait { what: String, source: kube::runtime::wait::Error },
    /// A condition did not come true in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// A pod ended in phase Failed (its log is attached).
    #[error("pod {name} failed; its log:\n{log}")]
    PodFailed { name: String, log: String },
    /// The cluster holds something other than what the suite expects.
    #[error("unexpected cluster state: {0}")]
    ClusterState(String),
    /// The host backing directory could not be read.
    #[error("cannot read {path}: {source} (the suite reads files that pods wrote as root: run it as root)")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Shorthand for results of this crate.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;

/// Wraps a kube error with the step that failed.
pub fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> E2eError {
    let what = what.into();
    move |source| E2eError::Kube { what, source }
}
