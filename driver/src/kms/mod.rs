//! KMS providers: wrap and unwrap volume data keys under a key-encryption key chosen per StorageClass.
//!
//! The outside world sits behind [`KmsProvider`]; [`local`] keeps keys in a file, [`aws`] talks to
//! AWS KMS, and the registry in [`config`] maps connection names from the KMS configuration to
//! providers. Every call made through
//! [`KmsClient`] leaves one audit record (target `cryptvol::audit`).

pub mod aws;
pub mod config;
pub mod local;
pub mod picker;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::keys::DataKey;

/// The encryption context key that binds a wrapped data key to its volume.
pub const VOLUME_CONTEXT_KEY: &str = "cryptvol.csi.dev/volume";

/// Target of the audit records, so operators can route them separately.
pub const AUDIT_TARGET: &str = "cryptvol::audit";

/// Key-value pairs bound to every wrap and unwrap (AWS KMS "encryption context").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    /// The context of one volume: `{"cryptvol.csi.dev/volume": <volume id>}`.
    pub fn for_volume(volume_id: &str) -> Self {
        EncryptionContext(BTreeMap::from([(VOLUME_CONTEXT_KEY.to_string(), volume_id.to_string())]))
    }

    /// The volume this context names, if any.
    pub fn volume_id(&self) -> Option<&str> {
        self.0.get(VOLUME_CONTEXT_KEY).map(String::as_str)
    }

    /// An unambiguous byte encoding (length-prefixed, sorted by key) for use as associated data.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            for part in [k.as_bytes(), v.as_bytes()] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }
}

/// Credentials and settings passed per call through the CSI secret fields.
///
/// Values are zeroized on drop and never printed; `Debug` shows only the keys.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, Zeroizing<String>>);

impl Secrets {
    /// Takes the secrets map of a CSI request.
    pub fn from_map(map: impl IntoIterator<Item = (String, String)>) -> Self {
        Secrets(map.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect())
    }

    /// The value of one secret, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    /// The secret keys (never the values), sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// True when no secret was passed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The state of a key-encryption key as the KMS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Enabled,
    Disabled,
    /// Scheduled for deletion; the date is the provider's text (RFC 3339) when known.
    PendingDeletion {
        deletion_date: Option<String>,
    },
    /// Any other provider state (creating, pending import, unavailable), by its provider name.
    Other(String),
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyState::Enabled => f.write_str("enabled"),
            KeyState::Disabled => f.write_str("disabled"),
            KeyState::PendingDeletion { deletion_date: Some(date) } => {
                write!(f, "pending deletion on {date}")
            }
            KeyState::PendingDeletion { deletion_date: None } => f.write_str("pending deletion"),
            KeyState::Other(name) => write!(f, "in state {name}"),
        }
    }
}

/// What `describe_key` learns about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The canonical ARN, which is what headers store and comparisons use.
    pub arn: String,
    pub state: KeyState,
    /// Why the key cannot wrap data keys (not symmetric, not for encryption), if it cannot.
    pub unsuitable: Option<String>,
}

impl KeyInfo {
    /// Refuses keys that are not enabled or not usable for envelope encryption.
    pub fn check_usable(&self) -> Result<(), KmsError> {
        if let Some(reason) = &self.unsuitable {
            return Err(KmsError::UnsuitableKey { key: self.arn.clone(), reason: reason.clone() });
        }
        if self.state != KeyState::Enabled {
            return Err(KmsError::KeyNotEnabled { key: self.arn.clone(), state: self.state.clone() });
        }
        Ok(())
    }
}

/// A data key in its wrapped (encrypted) form; safe to store and to print as base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey(pub Vec<u8>);

/// The KMS actions, named as the AWS KMS API names them (they appear in errors and audit records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsAction {
    DescribeKey,
    GenerateDataKeyWithoutPlaintext,
    Decrypt,
    ReEncrypt,
    ListAliases,
}

impl KmsAction {
    pub fn as_str(self) -> &'static str {
        match self {
            KmsAction::DescribeKey => "kms:DescribeKey",
            KmsAction::GenerateDataKeyWithoutPlaintext => "kms:GenerateDataKeyWithoutPlaintext",
            KmsAction::Decrypt => "kms:Decrypt",
            KmsAction::ReEncrypt => "kms:ReEncrypt",
            KmsAction::ListAliases => "kms:ListAliases",
        }
    }
}

impl fmt::Display for KmsAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a KMS call failed. Each variant maps to one gRPC status at the CSI boundary.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS key {key:?} does not exist")]
    KeyNotFound { key: String },
    #[error("KMS key id {key:?} is malformed: {reason}")]
    InvalidKeyId { key: String, reason: String },
    #[error("{action} on key {key} was denied: {message}")]
    AccessDenied { action: KmsAction, key: String, message: String },
    #[error("KMS key {key} is {state}")]
    KeyNotEnabled { key: String, state: KeyState },
    #[error("KMS key {key} cannot wrap data keys: {reason}")]
    UnsuitableKey { key: String, reason: String },
    #[error("{action} with key {key} refused the wrapped data key (wrong key, wrong volume or tampered)")]
    InvalidCiphertext { action: KmsAction, key: String },
    #[error("{action} on key {key} could not reach the KMS: {message}")]
    Unavailable { action: KmsAction, key: String, message: String },
    #[error("KMS connection {name:?} is not configured")]
    UnknownConnection { name: String },
    #[error("local key file {path}: {message}")]
    KeyFile { path: String, message: String },
    /// `cryptvol keys create` of a name the key file already holds.
    #[error("local key {key:?} exists already")]
    KeyExists { key: String },
    /// No credentials could be found, or the KMS did not accept them (unknown, expired, bad signature).
    #[error("{action} on key {key} was not authenticated: {message}")]
    Unauthenticated { action: KmsAction, key: String, message: String },
    /// The CSI secrets passed for this connection are incomplete or carry keys the provider does not take.
    #[error("KMS credentials in the CSI secrets: {message}")]
    InvalidSecrets { message: String },
    /// The KMS answered in a way cryptvol never expects: an error code for a malformed request, an
    /// unknown error code, or a success reply missing a field. A fault to report, not to retry.
    #[error("{action} with key {key}: unexpected KMS answer: {detail}")]
    UnexpectedAnswer { action: KmsAction, key: String, detail: String },
}

impl KmsError {
    /// A short name of the failure, the `outcome` label of the KMS call metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            KmsError::KeyNotFound { .. } => "key_not_found",
            KmsError::InvalidKeyId { .. } => "invalid_key_id",
            KmsError::AccessDenied { .. } => "access_denied",
            KmsError::KeyNotEnabled { .. } => "key_not_enabled",
            KmsError::UnsuitableKey { .. } => "unsuitable_key",
            KmsError::InvalidCiphertext { .. } => "invalid_ciphertext",
            KmsError::Unavailable { .. } => "unavailable",
            KmsError::UnknownConnection { .. } => "unknown_connection",
            KmsError::KeyFile { .. } => "key_file",
            KmsError::KeyExists { .. } => "key_exists",
            KmsError::Unauthenticated { .. } => "unauthenticated",
            KmsError::InvalidSecrets { .. } => "invalid_secrets",
            KmsError::UnexpectedAnswer { .. } => "unexpected_answer",
        }
    }
}

/// A key management service that wraps and unwraps volume data keys.
#[async_trait]
pub trait KmsProvider: Send + Sync + fmt::Debug {
    /// Resolves a key id, ARN or alias to the canonical ARN and reports its state.
    async fn describe_key(&self, key_id: &str, secrets: &Secrets) -> Result<KeyInfo, KmsError>;

    /// Creates a fresh 256-bit data key and returns only its wrapped form.
    async fn generate_wrapped_key(
        &self,
        key_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError>;

    /// Unwraps a data key; fails unless `key_arn` and `context` are the ones it was wrapped with.
    async fn decrypt(
        &self,
        key_arn: &str,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<DataKey, KmsError>;

    /// Re-wraps a data key under `target_arn` (the newest material of a key, or another key)
    /// without exposing it to the caller.
    async fn re_encrypt(
        &self,
        source_arn: &str,
        wrapped: &WrappedKey,
        target_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError>;

    /// The keys a StorageClass can name through this connection, by alias (a console key picker).
    async fn list_keys(&self, secrets: &Secrets) -> Result<Vec<KeyListing>, KmsError>;
}

/// One entry of [`KmsProvider::list_keys`]: an alias and the key it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    /// `alias/NAME`, which a StorageClass can use as `kmsKeyId`.
    pub alias: String,
    /// The alias ARN, when the provider has one.
    pub alias_arn: Option<String>,
    /// The canonical ARN of the key the alias points to.
    pub key_arn: String,
}

/// One configured connection: a provider and the name it is configured under. Every call is audited.
#[derive(Debug, Clone)]
pub struct KmsClient {
    connection: String,
    provider: Arc<dyn KmsProvider>,
}

impl KmsClient {
    pub fn new(connection: impl Into<String>, provider: Arc<dyn KmsProvider>) -> Self {
        KmsClient { connection: connection.into(), provider }
    }

    /// The connection name, as StorageClasses and headers refer to it.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    pub async fn describe_key(
        &self,
        key_id: &str,
        volume_id: &str,
        secrets: &Secrets,
    ) -> Result<KeyInfo, KmsError> {
        let started = Instant::now();
        let result = self.provider.describe_key(key_id, secrets).await;
        let arn = result.as_ref().map(|info| info.arn.as_str()).unwrap_or(key_id);
        self.audit(KmsAction::DescribeKey, arn, volume_id, started, result.as_ref().err());
        result
    }

    pub async fn generate_wrapped_key(
        &self,
        key_arn: &str,
        volume_id: &str,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        let started = Instant::now();
        let context = EncryptionContext::for_volume(volume_id);
        let result = self.provider.generate_wrapped_key(key_arn, &context, secrets).await;
        let action = KmsAction::GenerateDataKeyWithoutPlaintext;
        self.audit(action, key_arn, volume_id, started, result.as_ref().err());
        result
    }

    pub async fn decrypt(
        &self,
        key_arn: &str,
        wrapped: &WrappedKey,
        volume_id: &str,
        secrets: &Secrets,
    ) -> Result<DataKey, KmsError> {
        let started = Instant::now();
        let context = EncryptionContext::for_volume(volume_id);
        let result = self.provider.decrypt(key_arn, wrapped, &context, secrets).await;
        self.audit(KmsAction::Decrypt, key_arn, volume_id, started, result.as_ref().err());
        result
    }

    pub async fn re_encrypt(
        &self,
        source_arn: &str,
        wrapped: &WrappedKey,
        target_arn: &str,
        volume_id: &str,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        let started = Instant::now();
        let context = EncryptionContext::for_volume(volume_id);
        let result = self.provider.re_encrypt(source_arn, wrapped, target_arn, &context, secrets).await;
        self.audit(KmsAction::ReEncrypt, target_arn, volume_id, started, result.as_ref().err());
        result
    }

    /// Lists the keys of this connection by alias; audited with key `*` and no volume.
    pub async fn list_keys(&self, secrets: &Secrets) -> Result<Vec<KeyListing>, KmsError> {
        let started = Instant::now();
        let result = self.provider.list_keys(secrets).await;
        self.audit(KmsAction::ListAliases, "*", "", started, result.as_ref().err());
        result
    }

    fn audit(
        &self,
        action: KmsAction,
        key: &str,
        volume_id: &str,
        started: Instant,
        error: Option<&KmsError>,
    ) {
        audit_record(&self.connection, action, key, volume_id, started, error);
    }
}

/// Emits one audit record for one KMS call. [`KmsClient`] calls it once per trait method; a provider
/// that makes further KMS calls inside one method (a state check before Decrypt) calls it for each.
pub(crate) fn audit_record(
    connection: &str,
    action: KmsAction,
    key: &str,
    volume_id: &str,
    started: Instant,
    error: Option<&KmsError>,
) {
    let seconds = started.elapsed().as_secs_f64();
    let outcome = error.map_or("success", KmsError::outcome);
    crate::metrics::get().kms_call(action.as_str(), outcome, seconds);
    let latency_ms = seconds * 1000.0;
    match error {
        None => tracing::info!(
            target: AUDIT_TARGET,
            operation = action.as_str(),
            connection,
            key_arn = key,
            volume_id,
            outcome = "success",
            latency_ms,
            "kms call"
        ),
        Some(err) => tracing::warn!(
            target: AUDIT_TARGET,
            operation = action.as_str(),
            connection,
            key_arn = key,
            volume_id,
            outcome = "failure",
            error = %err,
            latency_ms,
            "kms call"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_bytes_are_unambiguous() {
        let a = EncryptionContext(BTreeMap::from([("ab".into(), "c".into())]));
        let b = EncryptionContext(BTreeMap::from([("a".into(), "bc".into())]));
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(EncryptionContext::for_volume("v1").volume_id(), Some("v1"));
    }

    #[test]
    fn secrets_debug_hides_values() {
        let s = Secrets::from_map([("awsSecretAccessKey".to_string(), "hunter2".to_string())]);
        let shown = format!("{s:?}");
        assert!(shown.contains("awsSecretAccessKey"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn unusable_keys_are_refused() {
        let disabled = KeyInfo { arn: "k".into(), state: KeyState::Disabled, unsuitable: None };
        assert!(matches!(disabled.check_usable(), Err(KmsError::KeyNotEnabled { .. })));
        let asym = KeyInfo { arn: "k".into(), state: KeyState::Enabled, unsuitable: Some("RSA".into()) };
        assert!(matches!(asym.check_usable(), Err(KmsError::UnsuitableKey { .. })));
    }
}
