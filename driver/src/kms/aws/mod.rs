//! The `aws` KMS provider: AWS KMS through aws-sdk-kms, the envelope scheme of Amazon EFS.
//!
//! The controller resolves a StorageClass key to its canonical ARN with DescribeKey, refuses keys
//! that are not enabled symmetric encryption keys, and asks GenerateDataKeyWithoutPlaintext for a
//! wrapped AES-256 data key bound to the volume by the encryption context. The node checks the key
//! state with DescribeKey and unwraps with Decrypt, naming the key ARN so that KMS never picks the
//! key from the ciphertext alone. See docs/KMS-AWS.md for configuration, secrets and IAM policies.

mod credentials;
mod error;
mod key_id;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Builder as CallConfig, Region};
use aws_sdk_kms::primitives::{Blob, DateTimeFormat};
use aws_sdk_kms::types::{
    DataKeySpec, EncryptionAlgorithmSpec, KeyManagerType, KeyMetadata, KeySpec, KeyUsageType,
};
use aws_sdk_kms::Client;
use zeroize::Zeroizing;

pub use credentials::{SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY, SECRET_SESSION_TOKEN};
pub use key_id::{check_key_arn, check_key_id};

use super::{
    audit_record, EncryptionContext, KeyInfo, KeyListing, KeyState, KmsAction, KmsError, KmsProvider,
    Secrets, WrappedKey,
};
use crate::keys::DataKey;

/// Default time budget of one provider operation, retries and backoff included: inside the ~10 s
/// that the CSI sidecars wait by default.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 8;
/// Largest accepted `timeoutSeconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 60;
/// Default number of attempts per KMS request (the first try and two retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest accepted `maxAttempts`.
pub const MAX_ATTEMPTS: u32 = 10;
/// Aliases per ListAliases page, and the number of pages `list_keys` reads at most.
const ALIAS_PAGE_SIZE: i32 = 100;
const MAX_ALIAS_PAGES: usize = 50;
/// Prefix of the aliases of AWS managed keys, which only their owning service may use.
const AWS_MANAGED_ALIAS_PREFIX: &str = "alias/aws/";

/// The settings of one `provider: aws` connection in the KMS configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsConnection {
    /// The AWS region of the keys, e.g. `eu-west-1`.
    pub region: String,
    /// An endpoint URL instead of the regional default: a VPC or FIPS endpoint, a local test server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Time budget of one operation, all attempts and backoff included (default 8 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts per KMS request, the first one included (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl AwsConnection {
    /// A connection to `region` with default settings.
    pub fn new(region: impl Into<String>) -> Self {
        AwsConnection { region: region.into(), endpoint: None, timeout_seconds: None, max_attempts: None }
    }

    /// Checks the settings; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let region_ok = !self.region.is_empty()
            && self.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(format!("region {:?} is not an AWS region name (like eu-west-1)", self.region));
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
                return Err(format!("endpoint {endpoint:?} must be an http:// or https:// URL"));
            }
        }
        if let Some(t) = self.timeout_seconds {
            if !(1..=MAX_TIMEOUT_SECONDS).contains(&t) {
                return Err(format!("timeoutSeconds {t} must be between 1 and {MAX_TIMEOUT_SECONDS}"));
            }
        }
        if let Some(n) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&n) {
                return Err(format!("maxAttempts {n} must be between 1 and {MAX_ATTEMPTS}"));
            }
        }
        Ok(())
    }

    /// The time budget of one provider operation.
    pub fn budget(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }

    fn attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// Each attempt gets an equal share of the budget, so the last one still has time to run.
    fn timeouts(&self) -> TimeoutConfig {
        let budget = self.budget();
        let attempt = (budget / self.attempts()).max(Duration::from_secs(1)).min(budget);
        TimeoutConfig::builder()
            .connect_timeout(attempt.min(Duration::from_secs(3)))
            .operation_attempt_timeout(attempt)
            .operation_timeout(budget)
            .build()
    }

    /// Standard retries (throttling, 5xx, timeouts, connection failures) with short backoff.
    fn retries(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.attempts())
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(1))
    }
}

/// The provider for one connection. The SDK client is built on first use.
pub struct AwsKms {
    connection: String,
    settings: AwsConnection,
    client: tokio::sync::OnceCell<Client>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("connection", &self.connection)
            .field("settings", &self.settings)
            .field("client_built", &self.client.initialized())
            .finish()
    }
}

impl AwsKms {
    /// A provider for the connection `connection` (the name its audit records carry).
    pub fn new(connection: impl Into<String>, settings: AwsConnection) -> Self {
        AwsKms { connection: connection.into(), settings, client: tokio::sync::OnceCell::new() }
    }

    pub fn settings(&self) -> &AwsConnection {
        &self.settings
    }

    /// The shared client with the default credential chain.
    async fn base_client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(self.settings.region.clone()))
                    .timeout_config(self.settings.timeouts())
                    .retry_config(self.settings.retries());
                if let Some(endpoint) = &self.settings.endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    /// The shared client and the per-request settings for one call: the credentials in `secrets`,
    /// if any. Overriding per request keeps one connection pool for every StorageClass.
    async fn client(&self, secrets: &Secrets) -> Result<(&Client, CallConfig), KmsError> {
        let mut call = CallConfig::new();
        if let Some(credentials) = credentials::from_secrets(secrets)? {
            call = call.credentials_provider(credentials);
        }
        Ok((self.base_client().await, call))
    }

    /// Runs one provider operation within the time budget, whatever number of calls it makes.
    async fn bounded<T>(
        &self,
        action: KmsAction,
        key: &str,
        operation: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let budget = self.settings.budget();
        tokio::time::timeout(budget, operation).await.unwrap_or_else(|_| {
            Err(KmsError::Unavailable {
                action,
                key: key.to_string(),
                message: format!(
                    "no answer within {} s ({} attempts per request)",
                    budget.as_secs(),
                    self.settings.attempts()
                ),
            })
        })
    }

    async fn describe(&self, client: &Client, call: &CallConfig, key_id: &str) -> Result<KeyInfo, KmsError> {
        let action = KmsAction::DescribeKey;
        let out = client
            .describe_key()
            .key_id(key_id)
            .customize()
            .config_override(call.clone())
            .send()
            .await
            .map_err(|e| error::classify(action, key_id, e))?;
        let meta = out.key_metadata().ok_or_else(|| missing(action, key_id, "KeyMetadata"))?;
        let arn = meta.arn().ok_or_else(|| missing(action, key_id, "KeyMetadata.Arn"))?;
        Ok(KeyInfo { arn: arn.to_string(), state: key_state(meta), unsuitable: unsuitable(meta) })
    }

    /// DescribeKey before a data operation on `key_arn`, audited on its own; refuses a key that is
    /// not usable, whatever the KMS would do with it.
    async fn check_usable(
        &self,
        client: &Client,
        call: &CallConfig,
        key_arn: &str,
        context: &EncryptionContext,
    ) -> Result<(), KmsError> {
        let started = Instant::now();
        let described = self.describe(client, call, key_arn).await;
        let volume_id = context.volume_id().unwrap_or("");
        audit_record(
            &self.connection,
            KmsAction::DescribeKey,
            key_arn,
            volume_id,
            started,
            described.as_ref().err(),
        );
        let info = described?;
        if info.arn != key_arn {
            return Err(KmsError::InvalidKeyId {
                key: key_arn.to_string(),
                reason: format!("it is not canonical: DescribeKey names the key {}", info.arn),
            });
        }
        info.check_usable()
    }
}

fn missing(action: KmsAction, key: &str, field: &str) -> KmsError {
    KmsError::UnexpectedAnswer { action, key: key.to_string(), detail: format!("the reply has no {field}") }
}

/// Checks that KMS used the key cryptvol named: keys are compared by canonical ARN everywhere.
fn answered_for(action: KmsAction, key_arn: &str, reported: Option<&str>) -> Result<(), KmsError> {
    match reported {
        Some(arn) if arn == key_arn => Ok(()),
        Some(arn) => Err(KmsError::UnexpectedAnswer {
            action,
            key: key_arn.to_string(),
            detail: format!("the reply names key {arn}"),
        }),
        None => Err(missing(action, key_arn, "KeyId")),
    }
}

fn key_state(meta: &KeyMetadata) -> KeyState {
    use aws_sdk_kms::types::KeyState as Aws;
    match meta.key_state() {
        Some(Aws::Enabled) => KeyState::Enabled,
        Some(Aws::Disabled) => KeyState::Disabled,
        Some(Aws::PendingDeletion | Aws::PendingReplicaDeletion) => KeyState::PendingDeletion {
            deletion_date: meta.deletion_date().and_then(|d| d.fmt(DateTimeFormat::DateTime).ok()),
        },
        Some(state @ (Aws::Creating | Aws::PendingImport | Aws::Unavailable | Aws::Updating)) => {
            KeyState::Other(state.as_str().to_string())
        }
        // The SDK enum is non-exhaustive: a state newer than this build is passed on by name.
        Some(state) => KeyState::Other(state.as_str().to_string()),
        None => KeyState::Other("unreported (DescribeKey gave no KeyState)".into()),
    }
}

/// Why a key cannot wrap data keys, if it cannot.
fn unsuitable(meta: &KeyMetadata) -> Option<String> {
    let mut reasons = Vec::new();
    #[allow(deprecated)] // older servers report only CustomerMasterKeySpec
    let spec = meta.key_spec().map(KeySpec::as_str).or(meta.customer_master_key_spec().map(|s| s.as_str()));
    match spec {
        Some(spec) if spec == KeySpec::SymmetricDefault.as_str() => {}
        Some(spec) => reasons.push(format!("its key spec is {spec}, not SYMMETRIC_DEFAULT")),
        None => reasons.push("DescribeKey reported no key spec".to_string()),
    }
    match meta.key_usage() {
        Some(KeyUsageType::EncryptDecrypt) => {}
        Some(usage) => reasons.push(format!("its key usage is {}, not ENCRYPT_DECRYPT", usage.as_str())),
        // A SYMMETRIC_DEFAULT key can have no other usage, so the spec check above decides.
        None => {}
    }
    if meta.key_manager() == Some(&KeyManagerType::Aws) {
        reasons.push("it is an AWS managed key, which only the AWS service that owns it may use".to_string());
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn context_map(context: &EncryptionContext) -> HashMap<String, String> {
    context.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[async_trait]
impl KmsProvider for AwsKms {
    async fn describe_key(&self, key_id: &str, secrets: &Secrets) -> Result<KeyInfo, KmsError> {
        check_key_id(key_id)?;
        let (client, call) = self.client(secrets).await?;
        self.bounded(KmsAction::DescribeKey, key_id, self.describe(client, &call, key_id)).await
    }

    async fn generate_wrapped_key(
        &self,
        key_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        let action = KmsAction::GenerateDataKeyWithoutPlaintext;
        check_key_arn(action, key_arn)?;
        let (client, call) = self.client(secrets).await?;
        self.bounded(action, key_arn, async {
            let out = client
                .generate_data_key_without_plaintext()
                .key_id(key_arn)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(context_map(context)))
                .customize()
                .config_override(call.clone())
                .send()
                .await
                .map_err(|e| error::classify(action, key_arn, e))?;
            answered_for(action, key_arn, out.key_id())?;
            let blob = out.ciphertext_blob().ok_or_else(|| missing(action, key_arn, "CiphertextBlob"))?;
            Ok(WrappedKey(blob.as_ref().to_vec()))
        })
        .await
    }

    async fn decrypt(
        &self,
        key_arn: &str,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<DataKey, KmsError> {
        let action = KmsAction::Decrypt;
        check_key_arn(action, key_arn)?;
        let (client, call) = self.client(secrets).await?;
        self.bounded(action, key_arn, async {
            // KMS test servers unwrap under disabled keys; production must not depend on KMS alone.
            self.check_usable(client, &call, key_arn, context).await?;
            let mut out = client
                .decrypt()
                .key_id(key_arn)
                .ciphertext_blob(Blob::new(wrapped.0.clone()))
                .set_encryption_context(Some(context_map(context)))
                .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
                .customize()
                .config_override(call.clone())
                .send()
                .await
                .map_err(|e| error::classify(action, key_arn, e))?;
            answered_for(action, key_arn, out.key_id())?;
            let plaintext = Zeroizing::new(
                out.plaintext.take().ok_or_else(|| missing(action, key_arn, "Plaintext"))?.into_inner(),
            );
            DataKey::from_slice(&plaintext)
                .ok_or_else(|| KmsError::InvalidCiphertext { action, key: key_arn.to_string() })
        })
        .await
    }

    async fn re_encrypt(
        &self,
        source_arn: &str,
        wrapped: &WrappedKey,
        target_arn: &str,
        context: &EncryptionContext,
        secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        let action = KmsAction::ReEncrypt;
        check_key_arn(action, source_arn)?;
        check_key_arn(action, target_arn)?;
        let (client, call) = self.client(secrets).await?;
        self.bounded(action, target_arn, async {
            self.check_usable(client, &call, source_arn, context).await?;
            if target_arn != source_arn {
                self.check_usable(client, &call, target_arn, context).await?;
            }
            let out = client
                .re_encrypt()
                .ciphertext_blob(Blob::new(wrapped.0.clone()))
                .source_key_id(source_arn)
                .set_source_encryption_context(Some(context_map(context)))
                .source_encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
                .destination_key_id(target_arn)
                .set_destination_encryption_context(Some(context_map(context)))
                .destination_encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
                .customize()
                .config_override(call.clone())
                .send()
                .await
                .map_err(|e| error::classify(action, target_arn, e))?;
            answered_for(action, target_arn, out.key_id())?;
            answered_for(action, source_arn, out.source_key_id())?;
            let blob = out.ciphertext_blob().ok_or_else(|| missing(action, target_arn, "CiphertextBlob"))?;
            Ok(WrappedKey(blob.as_ref().to_vec()))
        })
        .await
    }

    async fn list_keys(&self, secrets: &Secrets) -> Result<Vec<KeyListing>, KmsError> {
        let action = KmsAction::ListAliases;
        let (client, call) = self.client(secrets).await?;
        let mut listing = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_ALIAS_PAGES {
            let page = self
                .bounded(action, "*", async {
                    client
                        .list_aliases()
                        .limit(ALIAS_PAGE_SIZE)
                        .set_marker(marker.clone())
                        .customize()
                        .config_override(call.clone())
                        .send()
                        .await
                        .map_err(|e| error::classify(action, "*", e))
                })
                .await?;
            for alias in page.aliases() {
                let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) else {
                    continue; // an alias that points at no key cannot be used
                };
                if name.starts_with(AWS_MANAGED_ALIAS_PREFIX) {
                    continue;
                }
                let key_arn = alias
                    .alias_arn()
                    .and_then(|arn| key_id::key_arn_for_alias(arn, target))
                    .unwrap_or_else(|| target.to_string());
                listing.push(KeyListing {
                    alias: name.to_string(),
                    alias_arn: alias.alias_arn().map(str::to_string),
                    key_arn,
                });
            }
            marker = match (page.truncated(), page.next_marker()) {
                (true, Some(next)) => Some(next.to_string()),
                _ => None,
            };
            if marker.is_none() {
                listing.sort_by(|a, b| a.alias.cmp(&b.alias));
                return Ok(listing);
            }
        }
        tracing::warn!(
            connection = %self.connection,
            shown = listing.len(),
            "more than {} aliases; the listing is cut",
            ALIAS_PAGE_SIZE as usize * MAX_ALIAS_PAGES
        );
        listing.sort_by(|a, b| a.alias.cmp(&b.alias));
        Ok(listing)
    }
}
