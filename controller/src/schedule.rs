//! Scheduled rotation: a StorageClass annotated `cryptvol.csi.dev/rotation-interval: 168h` gets an
//! `EncryptionKeyRotation` of all its volumes whenever the newest one it got is that old.

use std::time::Duration;

use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use crate::crd::{EncryptionKeyRotation, EncryptionKeyRotationSpec, VolumeSelector};
use crate::{Context, Error, DRIVER_NAME};

/// StorageClass annotation: how often its volumes are rotated (`24h`, `7d`, `weekly`, ...).
pub const ROTATION_INTERVAL_ANNOTATION: &str = "cryptvol.csi.dev/rotation-interval";
/// Label on the rotations the schedule creates: the StorageClass they are for.
pub const SCHEDULED_FOR_LABEL: &str = "cryptvol.csi.dev/scheduled-for";
/// The shortest interval accepted: scheduled rotation is a KMS call per volume.
pub const MIN_INTERVAL: Duration = Duration::from_secs(3600);

/// Parses a rotation interval: `daily`, `weekly`, or a duration such as `36h` or `7d`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = match text.trim() {
        "daily" => Duration::from_secs(86_400),
        "weekly" => Duration::from_secs(7 * 86_400),
        other => humantime::parse_duration(other).map_err(|e| format!("{other:?} is not a duration: {e}"))?,
    };
    if interval < MIN_INTERVAL {
        return Err(format!("{text:?} is shorter than the minimum of 1h"));
    }
    Ok(interval)
}

/// Checks every cryptvol StorageClass once; returns the names of the rotations it created.
pub async fn run_once(ctx: &Context) -> Result<Vec<String>, Error> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let rotations: Api<EncryptionKeyRotation> = Api::all(ctx.client.clone());
    let mut created = Vec::new();
    for class in classes.list(&ListParams::default()).await?.items {
        if class.provisioner != DRIVER_NAME {
            continue;
        }
        let Some(text) = class.annotations().get(ROTATION_INTERVAL_ANNOTATION).cloned() else {
            continue;
        };
        let interval = match parse_interval(&text) {
            Ok(interval) => interval,
            Err(message) => {
                report_invalid(ctx, &class, &text, &message).await;
                continue;
            }
        };
        let class_name = class.name_any();
        let selector = format!("{SCHEDULED_FOR_LABEL}={class_name}");
        let mut existing = rotations.list(&ListParams::default().labels(&selector)).await?.items;
        existing.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let now = k8s_openapi::jiff::Timestamp::now();
        let newest = existing.last().and_then(|r| r.metadata.creation_timestamp.as_ref()).map(|t| t.0);
        let due = match newest {
            None => true,
            Some(at) => now.duration_since(at).unsigned_abs() >= interval,
        };
        if due {
            let name = rotation_name(&class_name, now.as_second());
            let rotation = EncryptionKeyRotation {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(SCHEDULED_FOR_LABEL.to_string(), class_name.clone())].into()),
                    ..Default::default()
                },
                spec: EncryptionKeyRotationSpec {
                    volumes: VolumeSelector {
                        storage_class_name: Some(class_name.clone()),
                        ..Default::default()
                    },
                    target_key_id: None,
                },
                status: None,
            };
            rotations.create(&PostParams::default(), &rotation).await?;
            tracing::info!(storage_class = %class_name, rotation = %name, "scheduled rotation created");
            created.push(name);
        }
        // Keep the newest finished ones for the record; never delete one still running.
        let finished: Vec<_> = existing
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_final()))
            .map(|r| r.name_any())
            .collect();
        let surplus = finished.len().saturating_sub(ctx.settings.schedule_history);
        for name in finished.into_iter().take(surplus) {
            rotations.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(created)
}

/// `<class>-<unix seconds>`, cut so that the name stays a valid object name.
fn rotation_name(class: &str, unix_seconds: i64) -> String {
    let suffix = format!("-{unix_seconds}");
    let room = 253 - suffix.len();
    let mut prefix = class.chars().take(room).collect::<String>();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

async fn report_invalid(ctx: &Context, class: &StorageClass, text: &str, message: &str) {
    let name = class.name_any();
    {
        let mut reported = ctx.reported_schedules.lock().await;
        if reported.get(&name).map(String::as_str) == Some(text) {
            return;
        }
        reported.insert(name.clone(), text.to_string());
    }
    tracing::warn!(storage_class = %name, annotation = ROTATION_INTERVAL_ANNOTATION, %message, "invalid rotation interval");
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidRotationInterval".into(),
        note: Some(format!("annotation {ROTATION_INTERVAL_ANNOTATION}: {message}; no scheduled rotation")),
        action: "ScheduleRotation".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &class.object_ref(&())).await {
        tracing::warn!(storage_class = %name, error = %e, "cannot publish the schedule event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("weekly"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_interval("36h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_interval("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_interval("5m").unwrap_err().contains("minimum"));
        assert!(parse_interval("often").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn names_stay_valid() {
        assert_eq!(rotation_name("gold", 1_800_000_000), "gold-1800000000");
        let long = "a".repeat(250);
        let name = rotation_name(&long, 1_800_000_000);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-1800000000"));
    }
}
