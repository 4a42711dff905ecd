//! Revocation on nodes: the key of every staged volume is checked again on an interval; a volume
//! whose key the KMS refuses is locked (keys dropped, every request failing) and unlocked, without
//! a remount, when the KMS serves the key again. `docs/SEMANTICS.md` lists the causes and errnos.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NodeService, Staged};
use crate::fs::LockCause;
use crate::header::{VolumeHeader, VolumeState};
use crate::keys::VolumeKeys;
use crate::kms::{KmsError, Secrets};
use crate::metrics::AuthFailure;

/// How often keys are checked, and how long an unreachable KMS is tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCheck {
    /// Time between two checks of every staged volume.
    pub interval: Duration,
    /// How long after the last successful check an unreachable KMS still leaves a volume served.
    pub grace: Duration,
}

impl Default for KeyCheck {
    fn default() -> Self {
        KeyCheck { interval: Duration::from_secs(60), grace: Duration::from_secs(600) }
    }
}

/// What the node keeps, in memory only, to check a staged volume's key again.
#[derive(Debug)]
pub(super) struct KeyWatch {
    /// Tells a stage from a later stage of the same volume id.
    pub generation: u64,
    /// The CSI secrets the volume was staged with (zeroized on drop, never persisted).
    pub secrets: Secrets,
    /// The header as last read; used when the backing store cannot be read.
    pub header: VolumeHeader,
    /// When the KMS last unwrapped the key.
    pub last_success: Instant,
}

impl KeyWatch {
    pub(super) fn new(secrets: Secrets, header: VolumeHeader) -> Self {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        KeyWatch {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            secrets,
            header,
            last_success: Instant::now(),
        }
    }
}

/// The outcome of one check.
enum Verdict {
    /// The KMS unwrapped the volume's own data key.
    Usable(Arc<VolumeKeys>),
    /// The volume must be locked for `cause`; `reason` is the KMS answer.
    Lock(LockCause, String),
    /// Nothing is known for sure (an unreachable KMS within the grace period, another failure):
    /// the volume stays as it is.
    Keep,
}

impl NodeService {
    /// Checks every staged volume's key once per interval, for as long as the runtime runs.
    pub fn start_key_checks(&self) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(node.key_check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate, and every volume was just checked by its stage.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                node.check_keys().await;
            }
        })
    }

    /// Checks the key of every staged volume once, concurrently, and applies the verdicts.
    pub async fn check_keys(&self) {
        let ids: Vec<String> = self.staged.lock().await.keys().cloned().collect();
        let mut checks = tokio::task::JoinSet::new();
        for id in ids {
            let node = self.clone();
            checks.spawn(async move { node.check_key(&id).await });
        }
        while checks.join_next().await.is_some() {}
    }

    async fn check_key(&self, id: &str) {
        let snapshot = self.staged.lock().await.get(id).map(|s| {
            let w = &s.watch;
            (w.generation, w.secrets.clone(), w.header.clone(), w.last_success)
        });
        let Some((generation, secrets, last_header, last_success)) = snapshot else { return };
        let header = self.current_header(id, last_header).await;
        let verdict = self.judge(id, &header, &secrets, last_success).await;
        self.apply(id, generation, header, verdict).await;
    }

    /// The volume's header as the backing store holds it now (a rotation may have re-wrapped the
    /// key under another key), or the last one read when the store cannot tell.
    async fn current_header(&self, id: &str, last: VolumeHeader) -> VolumeHeader {
        let store = self.store.clone();
        let owned = id.to_string();
        let read = tokio::task::spawn_blocking(move || store.header(&owned)).await;
        match read {
            Ok(Ok(Some(header))) if header.state == VolumeState::Ready && header.volume_id == id => header,
            Ok(Ok(Some(_))) => {
                tracing::warn!(volume_id = %id, "volume header is being deleted or names another volume; checking the last header read");
                last
            }
            Ok(Ok(None)) => {
                tracing::warn!(volume_id = %id, "volume header is gone; checking the last header read");
                last
            }
            Ok(Err(e)) => {
                tracing::warn!(volume_id = %id, error = %e, "cannot read the volume header; checking the last one read");
                last
            }
            Err(e) => {
                tracing::warn!(volume_id = %id, error = %e, "header read task failed; checking the last header read");
                last
            }
        }
    }

    /// Asks the KMS to unwrap the key again and decides what the answer means for the volume.
    async fn judge(
        &self,
        id: &str,
        header: &VolumeHeader,
        secrets: &Secrets,
        last_success: Instant,
    ) -> Verdict {
        let client = match self.kms.client(Some(&header.kms_connection)) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(volume_id = %id, error = %e, "cannot check the volume key");
                return Verdict::Keep;
            }
        };
        let Some(wrapped) = header.wrapped_key() else {
            tracing::warn!(volume_id = %id, "volume header holds no readable wrapped key; key not checked");
            return Verdict::Keep;
        };
        let err = match client.decrypt(&header.key_arn, &wrapped, id, secrets).await {
            Ok(data_key) => return same_key(id, header, Arc::new(data_key.derive())),
            Err(err) => err,
        };
        match &err {
            KmsError::KeyNotEnabled { .. }
            | KmsError::KeyNotFound { .. }
            | KmsError::InvalidCiphertext { .. } => Verdict::Lock(LockCause::KeyRevoked, err.to_string()),
            KmsError::AccessDenied { .. } | KmsError::Unauthenticated { .. } => {
                Verdict::Lock(LockCause::AccessDenied, err.to_string())
            }
            KmsError::Unavailable { .. } => {
                let unreachable_for = last_success.elapsed();
                if unreachable_for >= self.key_check.grace {
                    return Verdict::Lock(LockCause::KmsUnreachable, err.to_string());
                }
                tracing::warn!(
                    volume_id = %id,
                    error = %err,
                    since_last_success_s = unreachable_for.as_secs(),
                    grace_s = self.key_check.grace.as_secs(),
                    "KMS unreachable; the volume stays served during the grace period"
                );
                Verdict::Keep
            }
            KmsError::InvalidKeyId { .. }
            | KmsError::UnsuitableKey { .. }
            | KmsError::UnknownConnection { .. }
            | KmsError::KeyFile { .. }
            | KmsError::KeyExists { .. }
            | KmsError::InvalidSecrets { .. }
            | KmsError::UnexpectedAnswer { .. } => {
                tracing::warn!(volume_id = %id, error = %err, "key check failed; the volume stays as it is");
                Verdict::Keep
            }
        }
    }

    /// Applies a verdict, unless the volume was unstaged, staged again or is busy meanwhile (the
    /// next check decides then).
    async fn apply(&self, id: &str, generation: u64, header: VolumeHeader, verdict: Verdict) {
        let Ok(guard) = self.in_flight.claim(id) else {
            tracing::debug!(volume_id = %id, "volume busy; its key check applies at the next interval");
            return;
        };
        let (locker, was) = {
            let mut staged = self.staged.lock().await;
            let Some(entry) = staged.get_mut(id).filter(|s| s.watch.generation == generation) else { return };
            entry.watch.header = header;
            if matches!(verdict, Verdict::Usable(_)) {
                entry.watch.last_success = Instant::now();
            }
            (entry.mount.locker(), entry.mount.lock_cause())
        };
        match verdict {
            Verdict::Usable(keys) => {
                let Some(cause) = was else { return };
                locker.unlock(keys);
                tracing::info!(volume_id = %id, was = %cause, "key usable again; volume unlocked");
                publish_gauges(&*self.staged.lock().await);
                drop(guard);
                self.events.volume_unlocked(id).await;
            }
            Verdict::Lock(cause, reason) => {
                if was == Some(cause) {
                    return;
                }
                let blocking = locker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || blocking.lock(cause)).await {
                    // The lock flag and the key drop come first; only cache invalidation can be lost.
                    tracing::error!(volume_id = %id, error = %e, "locking task failed");
                }
                let errno = errno_name(cause.errno());
                tracing::warn!(volume_id = %id, %cause, errno, reason = %reason, "volume locked; keys dropped");
                publish_gauges(&*self.staged.lock().await);
                drop(guard);
                self.events.volume_locked(id, cause.as_str(), errno, &reason).await;
            }
            Verdict::Keep => {}
        }
    }
}

/// Checks that freshly unwrapped keys are the volume's own, against the header seal.
fn same_key(id: &str, header: &VolumeHeader, keys: Arc<VolumeKeys>) -> Verdict {
    match header.verify_seal(&keys) {
        Ok(true) => Verdict::Usable(keys),
        Ok(false) => {
            tracing::warn!(volume_id = %id, "volume header carries no seal; cannot confirm the unwrapped key");
            Verdict::Keep
        }
        Err(e) => {
            crate::metrics::get().auth_failure(AuthFailure::HeaderSeal);
            tracing::error!(volume_id = %id, error = %e, "unwrapped key does not open the header seal; volume left as it is");
            Verdict::Keep
        }
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EACCES => "EACCES",
        _ => "an error",
    }
}

/// Sets the staged and locked volume gauges from the staged volumes.
pub(super) fn publish_gauges(staged: &HashMap<String, Staged>) {
    let metrics = crate::metrics::get();
    metrics.set_staged(staged.len());
    let mut locked = BTreeMap::new();
    for cause in staged.values().filter_map(|s| s.mount.lock_cause()) {
        *locked.entry(cause.as_str()).or_insert(0) += 1;
    }
    metrics.set_locked(&locked);
}
