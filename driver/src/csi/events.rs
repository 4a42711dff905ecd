//! Kubernetes Events about volumes on this node (not served, locked, unlocked), on their
//! PersistentVolume.
//!
//! Outside a cluster (tests, the demo) there is no API server and events are only logged.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The longest note Kubernetes accepts on an event is 1 kB.
const MAX_NOTE: usize = 1000;

/// Publishes volume events when a Kubernetes client is available.
#[derive(Clone, Default)]
pub struct VolumeEvents {
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for VolumeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeEvents").field("enabled", &self.recorder.is_some()).finish()
    }
}

impl VolumeEvents {
    /// Events published through `client`, reported by `cryptvol-node` on node `node_id`.
    pub fn new(client: kube::Client, node_id: &str) -> Self {
        let reporter = Reporter { controller: "cryptvol-node".into(), instance: Some(node_id.to_string()) };
        VolumeEvents { recorder: Some(Recorder::new(client, reporter)) }
    }

    /// Uses the pod's service account when running in a cluster; otherwise events are only logged.
    pub async fn in_cluster(node_id: &str) -> Self {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            return VolumeEvents::default();
        }
        match kube::Client::try_default().await {
            Ok(client) => VolumeEvents::new(client, node_id),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes client; volume events will only be logged");
                VolumeEvents::default()
            }
        }
    }

    /// Raises a Warning on the volume's PersistentVolume: the node could not serve it.
    pub async fn volume_not_served(&self, volume_id: &str, reason: &str) {
        let note = format!("cryptvol-node cannot serve volume {volume_id}: {reason}");
        self.publish(volume_id, EventType::Warning, "VolumeNotServed", "ServeAgain", note).await;
    }

    /// Raises a Warning: the volume is locked on this node because of `cause` (`reason` is the
    /// KMS answer).
    pub async fn volume_locked(&self, volume_id: &str, cause: &str, errno: &str, reason: &str) {
        let note = format!(
            "cryptvol-node locked volume {volume_id} ({cause}): every file operation fails with \
             {errno} until the key can be used again: {reason}"
        );
        self.publish(volume_id, EventType::Warning, "VolumeLocked", "CheckKey", note).await;
    }

    /// Raises a Normal event: the key is usable again and the volume is served again.
    pub async fn volume_unlocked(&self, volume_id: &str) {
        let note = format!("cryptvol-node unlocked volume {volume_id}: the KMS unwraps its key again");
        self.publish(volume_id, EventType::Normal, "VolumeUnlocked", "CheckKey", note).await;
    }

    async fn publish(&self, volume_id: &str, type_: EventType, reason: &str, action: &str, mut note: String) {
        let Some(recorder) = &self.recorder else { return };
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolume".into()),
            name: Some(volume_id.to_string()),
            ..Default::default()
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(volume_id, error = %e, "cannot publish the volume event");
        }
    }
}
