//! The key-state reconciler: records on every cryptvol PersistentVolume which key protects it, on
//! which KMS connection, and in what state the KMS reports that key; raises Events on the bound
//! claim when the key becomes unusable and when it recovers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cryptvol::kms::{KeyState, KmsError};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{cryptvol_volume_id, now_rfc3339, secrets_for, Context, Error, MANAGER};

/// The canonical ARN of the key that wraps the volume's data key (from the volume header, so it
/// follows rotations).
pub const KEY_ARN_ANNOTATION: &str = "cryptvol.csi.dev/key-arn";
/// The KMS connection of the volume.
pub const CONNECTION_ANNOTATION: &str = "cryptvol.csi.dev/kms-connection";
/// One of [`KeyHealth::name`].
pub const KEY_STATE_ANNOTATION: &str = "cryptvol.csi.dev/key-state";
/// When the key state last changed (RFC 3339).
pub const KEY_STATE_SINCE_ANNOTATION: &str = "cryptvol.csi.dev/key-state-since";
/// The scheduled deletion date of a key pending deletion, as the KMS reports it.
pub const DELETION_DATE_ANNOTATION: &str = "cryptvol.csi.dev/key-deletion-date";

/// A key's state as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHealth {
    Enabled,
    Disabled,
    PendingDeletion {
        deletion_date: Option<String>,
    },
    NotFound,
    AccessDenied {
        message: String,
    },
    Unreachable {
        message: String,
    },
    /// Any other state or failure, with the KMS's words.
    Unknown {
        message: String,
    },
}

impl KeyHealth {
    /// The annotation value and gauge label.
    pub fn name(&self) -> &'static str {
        match self {
            KeyHealth::Enabled => "enabled",
            KeyHealth::Disabled => "disabled",
            KeyHealth::PendingDeletion { .. } => "pending-deletion",
            KeyHealth::NotFound => "not-found",
            KeyHealth::AccessDenied { .. } => "access-denied",
            KeyHealth::Unreachable { .. } => "unreachable",
            KeyHealth::Unknown { .. } => "unknown",
        }
    }

    fn from_describe(result: Result<cryptvol::kms::KeyInfo, KmsError>) -> KeyHealth {
        match result {
            Ok(info) => match info.state {
                KeyState::Enabled => KeyHealth::Enabled,
                KeyState::Disabled => KeyHealth::Disabled,
                KeyState::PendingDeletion { deletion_date } => KeyHealth::PendingDeletion { deletion_date },
                KeyState::Other(state) => {
                    KeyHealth::Unknown { message: format!("the KMS reports state {state}") }
                }
            },
            Err(KmsError::KeyNotFound { .. }) => KeyHealth::NotFound,
            Err(e @ (KmsError::AccessDenied { .. } | KmsError::Unauthenticated { .. })) => {
                KeyHealth::AccessDenied { message: e.to_string() }
            }
            Err(e @ KmsError::Unavailable { .. }) => KeyHealth::Unreachable { message: e.to_string() },
            Err(e) => KeyHealth::Unknown { message: e.to_string() },
        }
    }

    /// The event reason and note for entering this state; `None` for a healthy key.
    fn warning(&self, key: &str) -> Option<(&'static str, String)> {
        Some(match self {
            KeyHealth::Enabled => return None,
            KeyHealth::Disabled => {
                ("KeyDisabled", format!("KMS key {key} is disabled; the volume cannot be staged"))
            }
            KeyHealth::PendingDeletion { deletion_date } => (
                "KeyPendingDeletion",
                format!(
                    "KMS key {key} is scheduled for deletion on {}; after that the volume's data is lost \
                     unless the deletion is cancelled or the volume is rotated to another key",
                    deletion_date.as_deref().unwrap_or("an unknown date")
                ),
            ),
            KeyHealth::NotFound => ("KeyNotFound", format!("KMS key {key} does not exist")),
            KeyHealth::AccessDenied { message } => ("KeyAccessDenied", message.clone()),
            KeyHealth::Unreachable { message } => ("KmsUnreachable", message.clone()),
            KeyHealth::Unknown { message } => ("KeyStateUnknown", message.clone()),
        })
    }
}

/// Reconciles one PersistentVolume; other drivers' volumes are ignored.
pub async fn reconcile(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(volume_id) = cryptvol_volume_id(&pv).map(str::to_string) else {
        return Ok(Action::await_change());
    };
    let name = pv.name_any();
    let store = ctx.store.clone();
    let id = volume_id.clone();
    let header = tokio::task::spawn_blocking(move || store.header(&id))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    let Some(header) = header else {
        // Deleted on the backing store (a released volume being reclaimed): nothing to watch.
        let counts = forget_state(&ctx, &name).await;
        cryptvol::metrics::set_volumes_by_key_state(&counts);
        return Ok(Action::await_change());
    };

    let health = match secrets_for(&ctx.client, &pv).await {
        Ok(secrets) => key_health(&ctx, &header.kms_connection, &header.key_arn, &volume_id, &secrets).await,
        Err(e) => KeyHealth::AccessDenied { message: e.to_string() },
    };
    let annotations = pv.annotations();
    let previous = annotations.get(KEY_STATE_ANNOTATION).cloned();
    let changed = previous.as_deref() != Some(health.name());
    let deletion_date = match &health {
        KeyHealth::PendingDeletion { deletion_date } => deletion_date.clone(),
        _ => None,
    };
    let wanted: BTreeMap<&str, Option<String>> = BTreeMap::from([
        (KEY_ARN_ANNOTATION, Some(header.key_arn.clone())),
        (CONNECTION_ANNOTATION, Some(header.kms_connection.clone())),
        (KEY_STATE_ANNOTATION, Some(health.name().to_string())),
        (DELETION_DATE_ANNOTATION, deletion_date),
    ]);
    let mut patch = serde_json::Map::new();
    for (key, value) in &wanted {
        if annotations.get(*key) != value.as_ref() {
            patch.insert(key.to_string(), json!(value));
        }
    }
    if changed {
        patch.insert(KEY_STATE_SINCE_ANNOTATION.into(), json!(now_rfc3339()));
    }
    if !patch.is_empty() {
        let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let body = json!({ "metadata": { "annotations": patch } });
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        api.patch(&name, &params, &Patch::Merge(&body)).await?;
    }
    if changed {
        announce(&ctx, &pv, &header.key_arn, previous.as_deref(), &health).await;
    }
    let counts = record_state(&ctx, &name, health.name()).await;
    cryptvol::metrics::set_volumes_by_key_state(&counts);
    Ok(Action::requeue(ctx.settings.key_state_interval))
}

/// Retries after an error of the reconcile itself.
pub fn error_policy(pv: Arc<PersistentVolume>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(persistent_volume = %pv.name_any(), %error, "key state reconcile failed; retrying");
    Action::requeue(ctx.settings.key_state_interval.min(std::time::Duration::from_secs(60)))
}

/// The key's health, from the cache when a recent answer exists (one DescribeKey per key serves
/// every volume of that key).
async fn key_health(
    ctx: &Context,
    connection: &str,
    key_arn: &str,
    volume_id: &str,
    secrets: &cryptvol::kms::Secrets,
) -> KeyHealth {
    let cache_key = (connection.to_string(), key_arn.to_string());
    if let Some((at, health)) = ctx.key_cache.lock().await.get(&cache_key) {
        if at.elapsed() < ctx.settings.key_cache_ttl {
            return health.clone();
        }
    }
    let health = match ctx.kms.client(Some(connection)) {
        Ok(client) => KeyHealth::from_describe(client.describe_key(key_arn, volume_id, secrets).await),
        Err(e) => KeyHealth::Unknown { message: e.to_string() },
    };
    ctx.key_cache.lock().await.insert(cache_key, (Instant::now(), health.clone()));
    health
}

/// Raises the Event for a state change on the bound claim (or the volume when unbound).
async fn announce(
    ctx: &Context,
    pv: &PersistentVolume,
    key: &str,
    previous: Option<&str>,
    health: &KeyHealth,
) {
    let (type_, reason, note) = match health.warning(key) {
        Some((reason, note)) => (EventType::Warning, reason.to_string(), note),
        // A healthy key seen for the first time, or again after being healthy, is not news.
        None if previous.is_none_or(|p| p == "enabled") => return,
        None => (
            EventType::Normal,
            "KeyRecovered".to_string(),
            format!("KMS key {key} is enabled again (was {})", previous.unwrap_or("unknown")),
        ),
    };
    let event = Event {
        type_,
        reason,
        note: Some(note.chars().take(1000).collect()),
        action: "CheckKey".into(),
        secondary: None,
    };
    let regarding = claim_of(pv).unwrap_or_else(|| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: Some(pv.name_any()),
        uid: pv.metadata.uid.clone(),
        ..Default::default()
    });
    if let Err(e) = ctx.recorder.publish(&event, &regarding).await {
        tracing::warn!(persistent_volume = %pv.name_any(), error = %e, "cannot publish the key state event");
    }
}

fn claim_of(pv: &PersistentVolume) -> Option<ObjectReference> {
    let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
    claim.name.as_ref()?;
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        uid: claim.uid.clone(),
        ..Default::default()
    })
}

/// Remembers a volume's state and returns the counts by state (volumes not seen for two
/// intervals, deleted ones, drop out).
async fn record_state(ctx: &Context, pv: &str, state: &str) -> BTreeMap<String, i64> {
    let mut states = ctx.key_states.lock().await;
    states.insert(pv.to_string(), (Instant::now(), state.to_string()));
    counts(ctx, &mut states)
}

/// Forgets a volume whose data is gone; returns the counts by state.
async fn forget_state(ctx: &Context, pv: &str) -> BTreeMap<String, i64> {
    let mut states = ctx.key_states.lock().await;
    states.remove(pv);
    counts(ctx, &mut states)
}

fn counts(ctx: &Context, states: &mut BTreeMap<String, (Instant, String)>) -> BTreeMap<String, i64> {
    let horizon = ctx.settings.key_state_interval * 2;
    states.retain(|_, (seen, _)| seen.elapsed() < horizon);
    let mut counts = BTreeMap::new();
    for (_, state) in states.values() {
        *counts.entry(state.clone()).or_insert(0) += 1;
    }
    counts
}
