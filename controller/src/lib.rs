//! cryptvol's key lifecycle controllers, run by `cryptvol-controller` next to the CSI controller:
//!
//! - [`rotation`]: carries out `EncryptionKeyRotation` objects ([`crd`]);
//! - [`schedule`]: creates them for StorageClasses that ask for scheduled rotation;
//! - [`keystate`]: keeps each PersistentVolume's key ARN, KMS connection and key state in its
//!   annotations and raises Events on the bound claim when the key goes bad or recovers.
//!
//! Every reconciler takes a [`Context`], so tests can run it against a scripted API server.

pub mod crd;
pub mod keystate;
pub mod rotation;
pub mod run;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptvol::kms::config::KmsRegistry;
use cryptvol::kms::Secrets;
use cryptvol::volume::BackingStore;
use k8s_openapi::api::core::v1::{PersistentVolume, Secret};
use kube::runtime::events::{Recorder, Reporter};
use kube::Api;
use tokio::sync::Mutex;

pub use cryptvol::csi::DRIVER_NAME;

/// Name under which the controllers write (field manager, event reporter).
pub const MANAGER: &str = "cryptvol-controller";

/// Tunables of the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often each PersistentVolume's key state is checked.
    pub key_state_interval: Duration,
    /// How long one DescribeKey answer serves every volume of that key.
    pub key_cache_ttl: Duration,
    /// Wait before retrying volumes whose rotation failed transiently.
    pub rotation_retry: Duration,
    /// Transient failures after which a volume's rotation is given up.
    pub rotation_max_attempts: u32,
    /// How often StorageClasses are checked for due scheduled rotations.
    pub schedule_check: Duration,
    /// Finished scheduled rotations kept per StorageClass.
    pub schedule_history: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key_state_interval: Duration::from_secs(300),
            key_cache_ttl: Duration::from_secs(60),
            rotation_retry: Duration::from_secs(30),
            rotation_max_attempts: 5,
            schedule_check: Duration::from_secs(60),
            schedule_history: 3,
        }
    }
}

/// What every reconciler shares.
pub struct Context {
    pub client: kube::Client,
    pub store: BackingStore,
    pub kms: Arc<KmsRegistry>,
    pub settings: Settings,
    pub recorder: Recorder,
    /// DescribeKey answers by (connection, key ARN).
    key_cache: Mutex<HashMap<(String, String), (Instant, keystate::KeyHealth)>>,
    /// The last key state seen per PersistentVolume, for the volumes-by-key-state gauge.
    key_states: Mutex<BTreeMap<String, (Instant, String)>>,
    /// Invalid StorageClass schedule annotations already reported, so each is reported once.
    reported_schedules: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("store", &self.store).field("settings", &self.settings).finish()
    }
}

impl Context {
    pub fn new(client: kube::Client, store: BackingStore, kms: Arc<KmsRegistry>, settings: Settings) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            store,
            kms,
            settings,
            key_cache: Mutex::default(),
            key_states: Mutex::default(),
            reported_schedules: Mutex::default(),
        }
    }
}

/// Why a reconcile failed; the controller retries it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Store(#[from] cryptvol::volume::StoreError),
    #[error("backing store task failed: {0}")]
    Task(String),
}

/// The CSI volume handle of a cryptvol PersistentVolume; `None` for other drivers' volumes.
pub fn cryptvol_volume_id(pv: &PersistentVolume) -> Option<&str> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    (csi.driver == DRIVER_NAME).then_some(csi.volume_handle.as_str())
}

/// Why the KMS credentials of a volume could not be read.
#[derive(Debug, thiserror::Error)]
#[error("KMS credentials secret {namespace}/{name} named by the PersistentVolume: {reason}")]
pub struct SecretsError {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// The CSI secrets a controller-side KMS call needs for `pv`: those of its
/// `controllerExpandSecretRef`, else its `nodeStageSecretRef`, else none (default credentials).
pub async fn secrets_for(client: &kube::Client, pv: &PersistentVolume) -> Result<Secrets, SecretsError> {
    let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
        return Ok(Secrets::default());
    };
    let Some(reference) = csi.controller_expand_secret_ref.as_ref().or(csi.node_stage_secret_ref.as_ref())
    else {
        return Ok(Secrets::default());
    };
    let namespace = reference.namespace.clone().unwrap_or_else(|| "default".into());
    let name = reference.name.clone().unwrap_or_default();
    let err = |reason: String| SecretsError { namespace: namespace.clone(), name: name.clone(), reason };
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("does not exist".into()))?;
    let mut values = Vec::new();
    for (key, value) in secret.data.unwrap_or_default() {
        let text = String::from_utf8(value.0).map_err(|_| err(format!("key {key:?} is not UTF-8")))?;
        values.push((key, text));
    }
    Ok(Secrets::from_map(values))
}

/// RFC 3339 text of a Unix time, as status fields carry it.
pub fn rfc3339(unix_seconds: u64) -> String {
    let seconds = i64::try_from(unix_seconds).unwrap_or(i64::MAX);
    k8s_openapi::jiff::Timestamp::from_second(seconds).map(|t| t.to_string()).unwrap_or_default()
}

/// The current time as RFC 3339 text.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
