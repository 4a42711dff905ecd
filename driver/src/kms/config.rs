//! The KMS configuration file: connection names mapped to a provider and its settings.
//!
//! ```yaml
//! default: dev
//! connections:
//!   dev:
//!     provider: local
//!     keyFile: /etc/cryptvol/keys/keys.json
//!   prod:
//!     provider: aws
//!     region: eu-west-1
//!     endpoint: https://kms-fips.eu-west-1.amazonaws.com   # optional
//!     timeoutSeconds: 8                                   # optional, whole call with retries
//!     maxAttempts: 3                                      # optional
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::aws::{AwsConnection, AwsKms};
use super::local::LocalKms;
use super::{KmsClient, KmsError};

/// Why a KMS configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read KMS configuration {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("KMS configuration {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("KMS configuration {path}: default connection {name:?} is not among the connections")]
    MissingDefault { path: String, name: String },
}

/// The parsed configuration file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// The connection used when a StorageClass names none.
    pub default: String,
    pub connections: BTreeMap<String, ConnectionConfig>,
}

/// One connection, by provider.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ConnectionConfig {
    /// Keys in a local key file (`cryptvol keys create`); relative paths are relative to the config file.
    Local {
        #[serde(rename = "keyFile")]
        key_file: PathBuf,
    },
    /// AWS KMS through aws-sdk-kms (see docs/KMS-AWS.md).
    Aws(AwsConnection),
}

impl KmsConfig {
    /// A configuration with one local connection named `local`.
    pub fn local(key_file: PathBuf) -> Self {
        KmsConfig {
            default: "local".into(),
            connections: BTreeMap::from([("local".into(), ConnectionConfig::Local { key_file })]),
        }
    }
}

/// The connections of a loaded configuration, ready to use.
#[derive(Debug, Clone)]
pub struct KmsRegistry {
    default: String,
    clients: BTreeMap<String, KmsClient>,
    local_files: Vec<LocalKms>,
}

impl KmsRegistry {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let config: KmsConfig = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: shown.clone(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_config(config, base, &shown)
    }

    /// Builds the registry from a parsed configuration; `base` resolves relative paths.
    pub fn from_config(config: KmsConfig, base: &Path, shown: &str) -> Result<Self, ConfigError> {
        if !config.connections.contains_key(&config.default) {
            return Err(ConfigError::MissingDefault { path: shown.to_string(), name: config.default });
        }
        let mut clients = BTreeMap::new();
        let mut local_files = Vec::new();
        for (name, connection) in config.connections {
            let valid_name = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !valid_name {
                return Err(ConfigError::Parse {
                    path: shown.to_string(),
                    message: format!(
                        "connection name {name:?} must be 1 to 63 characters of A-Z a-z 0-9 - _ ."
                    ),
                });
            }
            let client = match connection {
                ConnectionConfig::Local { key_file } => {
                    let provider = LocalKms::new(base.join(key_file));
                    local_files.push(provider.clone());
                    KmsClient::new(name.clone(), Arc::new(provider))
                }
                ConnectionConfig::Aws(settings) => {
                    settings.validate().map_err(|message| ConfigError::Parse {
                        path: shown.to_string(),
                        message: format!("connection {name}: {message}"),
                    })?;
                    // The SDK client is built on first use: loading the credential chain is async.
                    KmsClient::new(name.clone(), Arc::new(AwsKms::new(name.clone(), settings)))
                }
            };
            clients.insert(name, client);
        }
        Ok(KmsRegistry { default: config.default, clients, local_files })
    }

    /// A registry of ready-made clients (a test double, a provider built in code); the first
    /// client is the default connection. `None` when `clients` is empty.
    pub fn from_clients(clients: impl IntoIterator<Item = KmsClient>) -> Option<Self> {
        let clients: Vec<KmsClient> = clients.into_iter().collect();
        let default = clients.first()?.connection().to_string();
        let clients = clients.into_iter().map(|c| (c.connection().to_string(), c)).collect();
        Some(KmsRegistry { default, clients, local_files: Vec::new() })
    }

    /// The client for a connection name, or the default connection for `None`.
    pub fn client(&self, name: Option<&str>) -> Result<&KmsClient, KmsError> {
        let name = name.unwrap_or(&self.default);
        self.clients.get(name).ok_or_else(|| KmsError::UnknownConnection { name: name.to_string() })
    }

    /// The default connection name.
    pub fn default_connection(&self) -> &str {
        &self.default
    }

    /// Checks that every connection can serve: local key files exist and parse. AWS connections are
    /// not called here (probes are frequent and KMS calls are billed and audited); their settings
    /// were checked when the configuration loaded.
    pub fn check_ready(&self) -> Result<(), KmsError> {
        self.local_files.iter().try_for_each(LocalKms::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("kms.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_local_connections_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "default: dev\nconnections:\n  dev:\n    provider: local\n    keyFile: keys.json\n",
        );
        let registry = KmsRegistry::load(&path).unwrap();
        assert_eq!(registry.client(None).unwrap().connection(), "dev");
        assert!(matches!(registry.client(Some("prod")), Err(KmsError::UnknownConnection { .. })));
        assert!(registry.check_ready().is_err(), "the key file does not exist yet");
        crate::kms::local::KeyFile::update(&dir.path().join("keys.json"), true, |f| f.create_key("k"))
            .unwrap();
        registry.check_ready().unwrap();
    }

    #[test]
    fn refuses_bad_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let missing_default =
            write(dir.path(), "default: x\nconnections:\n  dev:\n    provider: local\n    keyFile: k\n");
        assert!(matches!(KmsRegistry::load(&missing_default), Err(ConfigError::MissingDefault { .. })));
        let unknown_provider = write(dir.path(), "default: x\nconnections:\n  x:\n    provider: vault\n");
        let err = KmsRegistry::load(&unknown_provider).unwrap_err().to_string();
        assert!(err.contains("vault"), "{err}");
        let unknown_field = write(dir.path(), "default: x\nconnections: {}\nextra: 1\n");
        assert!(KmsRegistry::load(&unknown_field).unwrap_err().to_string().contains("extra"));
    }

    #[test]
    fn loads_aws_connections_without_calling_aws() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "default: prod\nconnections:\n  prod:\n    provider: aws\n    region: eu-west-1\n    \
             endpoint: http://127.0.0.1:9\n    timeoutSeconds: 4\n    maxAttempts: 2\n",
        );
        let config: KmsConfig = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ConnectionConfig::Aws(aws) = &config.connections["prod"] else { panic!("not aws: {config:?}") };
        assert_eq!(aws.region, "eu-west-1");
        assert_eq!(aws.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(aws.budget(), std::time::Duration::from_secs(4));
        assert_eq!(aws.max_attempts, Some(2));
        let registry = KmsRegistry::load(&path).unwrap();
        assert_eq!(registry.client(None).unwrap().connection(), "prod");
        registry.check_ready().unwrap();
    }

    #[test]
    fn refuses_bad_aws_settings_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("region: eu-west-1\n    regoin: x\n", "regoin"),
            ("endpoint: http://127.0.0.1:9\n", "region"),
            ("region: EU West\n", "region"),
            ("region: eu-west-1\n    endpoint: 127.0.0.1:9\n", "endpoint"),
            ("region: eu-west-1\n    timeoutSeconds: 0\n", "timeoutSeconds"),
            ("region: eu-west-1\n    maxAttempts: 99\n", "maxAttempts"),
        ];
        for (settings, named) in cases {
            let path = write(
                dir.path(),
                &format!("default: p\nconnections:\n  p:\n    provider: aws\n    {settings}"),
            );
            let err = KmsRegistry::load(&path).unwrap_err().to_string();
            assert!(err.contains(named), "{settings:?}: {err}");
        }
    }
}
