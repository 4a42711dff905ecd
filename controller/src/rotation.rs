//! The `EncryptionKeyRotation` reconciler: selects the volumes, re-wraps each one's data key
//! ([`cryptvol::rotation::rotate_volume`]) and reports progress and per-volume results in status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    Condition, EncryptionKeyRotation, EncryptionKeyRotationStatus, Phase, VolumeOutcome,
    VolumeRotationStatus, VolumeSelector,
};
use crate::{cryptvol_volume_id, now_rfc3339, rfc3339, secrets_for, Context, Error, MANAGER};

/// Status is written after this many volumes, so large rotations show progress.
const PROGRESS_EVERY: usize = 10;

/// Why the selected volumes could not be listed.
enum Selection {
    /// The spec itself is wrong; it will not get better by waiting.
    Invalid(String),
    /// What the spec names does not exist.
    NotFound(String),
    /// What the spec names is not ready yet (a claim not bound).
    NotReady(String),
}

/// Reconciles one rotation: runs it once per spec generation.
pub async fn reconcile(rotation: Arc<EncryptionKeyRotation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = rotation.name_any();
    let generation = rotation.metadata.generation;
    let mut status = rotation.status.clone().unwrap_or_default();
    if status.observed_generation == generation && status.phase.is_final() {
        return Ok(Action::await_change());
    }
    if status.observed_generation != generation {
        status = EncryptionKeyRotationStatus {
            observed_generation: generation,
            started_at: Some(now_rfc3339()),
            ..Default::default()
        };
    }

    let volumes = match select(&ctx.client, &rotation.spec.volumes).await? {
        Ok(volumes) => volumes,
        Err(Selection::Invalid(message)) => {
            return finish_without_volumes(&ctx, &rotation, status, "InvalidSpec", message).await;
        }
        Err(Selection::NotFound(message)) => {
            return finish_without_volumes(&ctx, &rotation, status, "NotFound", message).await;
        }
        Err(Selection::NotReady(message)) => {
            status.phase = Phase::Running;
            set_condition(&mut status, "Complete", "False", "Waiting", &message);
            patch_status(&ctx, &name, &status).await?;
            return Ok(Action::requeue(ctx.settings.rotation_retry));
        }
    };
    for pv in &volumes {
        let pv_name = pv.name_any();
        if status.volumes.iter().all(|v| v.persistent_volume != pv_name) {
            status.volumes.push(VolumeRotationStatus {
                persistent_volume: pv_name,
                volume_id: cryptvol_volume_id(pv).unwrap_or_default().to_string(),
                outcome: VolumeOutcome::Pending,
                from_key_arn: None,
                to_key_arn: None,
                message: None,
                attempts: 0,
                rotated_at: None,
            });
        }
    }
    status.phase = Phase::Running;
    count(&mut status);
    set_condition(&mut status, "Complete", "False", "Rotating", "re-wrapping the selected volumes");
    patch_status(&ctx, &name, &status).await?;

    let mut done_since_patch = 0;
    for pv in &volumes {
        let pv_name = pv.name_any();
        let Some(index) = status.volumes.iter().position(|v| v.persistent_volume == pv_name) else {
            continue;
        };
        if status.volumes[index].outcome != VolumeOutcome::Pending {
            continue;
        }
        let target = rotation.spec.target_key_id.as_deref();
        rotate_one(&ctx, pv, target, &mut status.volumes[index]).await;
        done_since_patch += 1;
        if done_since_patch == PROGRESS_EVERY {
            done_since_patch = 0;
            count(&mut status);
            patch_status(&ctx, &name, &status).await?;
        }
    }

    count(&mut status);
    let pending = status.volumes.iter().filter(|v| v.outcome == VolumeOutcome::Pending).count();
    if pending > 0 {
        let message = format!("{pending} volume(s) failed transiently and will be tried again");
        set_condition(&mut status, "Complete", "False", "Retrying", &message);
        patch_status(&ctx, &name, &status).await?;
        return Ok(Action::requeue(ctx.settings.rotation_retry));
    }
    let (phase, reason, message) = if status.failed > 0 {
        (
            Phase::Failed,
            "VolumesFailed",
            format!("{} of {} volume(s) could not be rotated", status.failed, status.total),
        )
    } else {
        (
            Phase::Succeeded,
            "Rotated",
            format!("{} volume(s) rotated, {} skipped", status.rotated, status.skipped),
        )
    };
    status.phase = phase;
    status.completed_at = Some(now_rfc3339());
    set_condition(&mut status, "Complete", "True", reason, &message);
    let failed = if status.failed > 0 { "True" } else { "False" };
    set_condition(&mut status, "Failed", failed, reason, &message);
    patch_status(&ctx, &name, &status).await?;
    publish(&ctx, &rotation, phase == Phase::Succeeded, reason, &message).await;
    Ok(Action::await_change())
}

/// Retries after an error of the reconcile itself (API errors), not of a volume.
pub fn error_policy(rotation: Arc<EncryptionKeyRotation>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(rotation = %rotation.name_any(), %error, "rotation reconcile failed; retrying");
    Action::requeue(ctx.settings.rotation_retry)
}

async fn rotate_one(
    ctx: &Context,
    pv: &PersistentVolume,
    target: Option<&str>,
    entry: &mut VolumeRotationStatus,
) {
    let Some(volume_id) = cryptvol_volume_id(pv) else {
        let driver = pv.spec.as_ref().and_then(|s| s.csi.as_ref()).map(|c| c.driver.clone());
        entry.outcome = VolumeOutcome::Skipped;
        entry.message = Some(match driver {
            Some(driver) => format!("not a cryptvol volume (CSI driver {driver})"),
            None => "not a CSI volume".into(),
        });
        return;
    };
    entry.attempts += 1;
    let secrets = match secrets_for(&ctx.client, pv).await {
        Ok(secrets) => secrets,
        Err(e) => {
            entry.outcome = VolumeOutcome::Failed;
            entry.message = Some(e.to_string());
            return;
        }
    };
    match cryptvol::rotation::rotate_volume(&ctx.store, &ctx.kms, volume_id, target, &secrets).await {
        Ok(done) => {
            cryptvol::metrics::record_rotation("success");
            entry.outcome = VolumeOutcome::Rotated;
            entry.from_key_arn = Some(done.from_key_arn);
            entry.to_key_arn = Some(done.to_key_arn);
            entry.rotated_at = Some(rfc3339(done.rotated_at));
            entry.message = None;
        }
        Err(e) => {
            let gave_up = e.is_permanent() || entry.attempts >= ctx.settings.rotation_max_attempts;
            cryptvol::metrics::record_rotation(if gave_up { "failure" } else { "retry" });
            tracing::warn!(volume_id, attempts = entry.attempts, gave_up, error = %e, "volume rotation failed");
            entry.outcome = if gave_up { VolumeOutcome::Failed } else { VolumeOutcome::Pending };
            entry.message = Some(if gave_up && !e.is_permanent() {
                format!("gave up after {} attempts: {e}", entry.attempts)
            } else {
                e.to_string()
            });
        }
    }
}

/// The PersistentVolumes a selector names.
async fn select(
    client: &kube::Client,
    selector: &VolumeSelector,
) -> Result<Result<Vec<PersistentVolume>, Selection>, Error> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let chosen = [
        selector.persistent_volume_claim.is_some(),
        selector.storage_class_name.is_some(),
        selector.persistent_volume_name.is_some(),
    ];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Ok(Err(Selection::Invalid(
            "spec.volumes must set exactly one of persistentVolumeClaim, storageClassName and persistentVolumeName"
                .into(),
        )));
    }
    if let Some(claim) = &selector.persistent_volume_claim {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
        let Some(pvc) = claims.get_opt(&claim.name).await? else {
            return Ok(Err(Selection::NotFound(format!(
                "PersistentVolumeClaim {}/{} does not exist",
                claim.namespace, claim.name
            ))));
        };
        let bound = pvc.spec.and_then(|s| s.volume_name).filter(|n| !n.is_empty());
        let Some(volume_name) = bound else {
            return Ok(Err(Selection::NotReady(format!(
                "PersistentVolumeClaim {}/{} is not bound to a volume yet",
                claim.namespace, claim.name
            ))));
        };
        return Ok(match pvs.get_opt(&volume_name).await? {
            Some(pv) => Ok(vec![pv]),
            None => Err(Selection::NotFound(format!("PersistentVolume {volume_name} does not exist"))),
        });
    }
    if let Some(name) = &selector.persistent_volume_name {
        return Ok(match pvs.get_opt(name).await? {
            Some(pv) => Ok(vec![pv]),
            None => Err(Selection::NotFound(format!("PersistentVolume {name} does not exist"))),
        });
    }
    let class = selector.storage_class_name.clone().unwrap_or_default();
    let mut matching: Vec<PersistentVolume> = pvs
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|pv| pv.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()) == Some(class.as_str()))
        .filter(|pv| cryptvol_volume_id(pv).is_some())
        .collect();
    matching.sort_by_key(|pv| pv.name_any());
    Ok(Ok(matching))
}

async fn finish_without_volumes(
    ctx: &Context,
    rotation: &EncryptionKeyRotation,
    mut status: EncryptionKeyRotationStatus,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    status.phase = Phase::Failed;
    status.completed_at = Some(now_rfc3339());
    set_condition(&mut status, "Complete", "True", reason, &message);
    set_condition(&mut status, "Failed", "True", reason, &message);
    patch_status(ctx, &rotation.name_any(), &status).await?;
    publish(ctx, rotation, false, reason, &message).await;
    Ok(Action::await_change())
}

fn count(status: &mut EncryptionKeyRotationStatus) {
    let of = |outcome| status.volumes.iter().filter(|v| v.outcome == outcome).count() as u32;
    let (rotated, failed, skipped) =
        (of(VolumeOutcome::Rotated), of(VolumeOutcome::Failed), of(VolumeOutcome::Skipped));
    status.total = status.volumes.len() as u32;
    status.rotated = rotated;
    status.failed = failed;
    status.skipped = skipped;
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(
    status: &mut EncryptionKeyRotationStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
) {
    let observed_generation = status.observed_generation;
    let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
    let transition = match &existing {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: transition,
        observed_generation,
    };
    match existing {
        Some(c) => *c = condition,
        None => status.conditions.push(condition),
    }
}

async fn patch_status(ctx: &Context, name: &str, status: &EncryptionKeyRotationStatus) -> Result<(), Error> {
    let api: Api<EncryptionKeyRotation> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": EncryptionKeyRotation::api_version(&()),
        "kind": EncryptionKeyRotation::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    rotation: &EncryptionKeyRotation,
    succeeded: bool,
    reason: &str,
    message: &str,
) {
    let event = Event {
        type_: if succeeded { EventType::Normal } else { EventType::Warning },
        reason: if succeeded { "RotationSucceeded".into() } else { format!("Rotation{reason}") },
        note: Some(message.chars().take(1000).collect()),
        action: "RotateKeys".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rotation.object_ref(&())).await {
        tracing::warn!(rotation = %rotation.name_any(), error = %e, "cannot publish the rotation event");
    }
}
