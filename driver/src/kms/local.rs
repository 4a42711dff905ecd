//! The `local` KMS provider: named 256-bit key-encryption keys kept in a key file.
//!
//! For development, tests and air-gapped clusters. The file holds every version of every key, so
//! whoever can read it can unwrap every volume that uses it: keep it mode 0600 (or in a Secret) and
//! treat it as the root of trust. Wrapping is AES-256-GCM with the key ARN and the encryption
//! context as associated data, so a wrapped key opens only for its own key and volume.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::{
    EncryptionContext, KeyInfo, KeyListing, KeyState, KmsAction, KmsError, KmsProvider, Secrets, WrappedKey,
};
use crate::keys::{DataKey, KEY_LEN};

/// Prefix of the canonical ARN of a local key: `cryptvol:local:key/<name>`.
pub const ARN_PREFIX: &str = "cryptvol:local:key/";
const WRAP_MAGIC: &[u8; 4] = b"CVLK";
const WRAP_AAD_LABEL: &[u8] = b"cryptvol/local-wrap/v1";
const NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = 4 + 4 + NONCE_LEN + KEY_LEN + 16;

/// The on-disk key file.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub keys: BTreeMap<String, LocalKey>,
}

/// One named key with all its versions (newest last).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalKey {
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Base64 key material, version 1 first.
    versions: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.keys.iter()).finish()
    }
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey")
            .field("enabled", &self.enabled)
            .field("created_at", &self.created_at)
            .field("versions", &self.versions.len())
            .finish()
    }
}

impl LocalKey {
    /// The number of versions; the newest wraps new data keys.
    pub fn version_count(&self) -> usize {
        self.versions.len()
    }
}

/// Checks a key name: 1 to 64 characters of `A-Z a-z 0-9 - _`.
pub fn validate_name(name: &str) -> Result<(), KmsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KmsError::InvalidKeyId {
            key: name.to_string(),
            reason: "local key names are 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'".into(),
        })
    }
}

/// The canonical ARN of a local key.
pub fn arn_of(name: &str) -> String {
    format!("{ARN_PREFIX}{name}")
}

/// Accepts `name`, `key/name`, `alias/name` or the canonical ARN and returns the key name.
pub fn parse_key_id(key_id: &str) -> Result<&str, KmsError> {
    let name = key_id
        .strip_prefix(ARN_PREFIX)
        .or_else(|| key_id.strip_prefix("key/"))
        .or_else(|| key_id.strip_prefix("alias/"))
        .unwrap_or(key_id);
    validate_name(name).map_err(|_| KmsError::InvalidKeyId {
        key: key_id.to_string(),
        reason: format!(
            "a local key id is NAME, key/NAME, alias/NAME or {ARN_PREFIX}NAME with NAME of 1 to 64 \
             characters of A-Z, a-z, 0-9, '-' and '_'"
        ),
    })?;
    Ok(name)
}

impl KeyFile {
    /// Reads a key file; a missing file is an error (the provider never invents keys).
    pub fn load(path: &Path) -> Result<Self, KmsError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| key_file_error(path, e))?);
        serde_json::from_str(&text).map_err(|e| key_file_error(path, e))
    }

    /// Writes the key file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KmsError> {
        let text = Zeroizing::new(serde_json::to_vec_pretty(self).map_err(|e| key_file_error(path, e))?);
        crate::atomic::write_file(path, &text, 0o600).map_err(|e| key_file_error(path, e))
    }

    /// Runs `change` on the key file under an exclusive lock, creating the file if `create` is set.
    pub fn update<T>(
        path: &Path,
        create: bool,
        change: impl FnOnce(&mut KeyFile) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let lock_path = lock_path(path);
        if create {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|e| key_file_error(dir, e))?;
            }
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| key_file_error(&lock_path, e))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| key_file_error(&lock_path, e))?;
        let mut file = match KeyFile::load(path) {
            Ok(file) => file,
            Err(_) if create && !path.exists() => KeyFile::default(),
            Err(e) => return Err(e),
        };
        let out = change(&mut file)?;
        file.save(path)?;
        Ok(out)
    }

    /// Adds a new key with one fresh version.
    pub fn create_key(&mut self, name: &str) -> Result<(), KmsError> {
        validate_name(name)?;
        if self.keys.contains_key(name) {
            return Err(KmsError::KeyExists { key: name.into() });
        }
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut key = LocalKey { enabled: true, created_at, versions: Vec::new() };
        key.versions.push(fresh_material()?);
        self.keys.insert(name.to_string(), key);
        Ok(())
    }

    /// Adds a new version to a key; new wraps use it, old wraps still open.
    pub fn rotate_key(&mut self, name: &str) -> Result<usize, KmsError> {
        let key = self.key_mut(name)?;
        key.versions.push(fresh_material()?);
        Ok(key.versions.len())
    }

    /// Enables or disables a key; a disabled key neither wraps nor unwraps.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), KmsError> {
        self.key_mut(name)?.enabled = enabled;
        Ok(())
    }

    fn key_mut(&mut self, name: &str) -> Result<&mut LocalKey, KmsError> {
        self.keys.get_mut(name).ok_or_else(|| KmsError::KeyNotFound { key: name.to_string() })
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

fn fresh_material() -> Result<Zeroizing<String>, KmsError> {
    let key = DataKey::generate()
        .map_err(|e| KmsError::KeyFile { path: "(random source)".into(), message: e.to_string() })?;
    Ok(Zeroizing::new(B64.encode(key.expose())))
}

fn key_file_error(path: &Path, err: impl std::fmt::Display) -> KmsError {
    KmsError::KeyFile { path: path.display().to_string(), message: err.to_string() }
}

/// The provider: reads the key file on every call, so `cryptvol keys disable` takes effect at once.
#[derive(Debug, Clone)]
pub struct LocalKms {
    path: PathBuf,
}

impl LocalKms {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalKms { path: path.into() }
    }

    /// Reads the key file without using any key, to prove the configuration is loadable.
    pub fn check(&self) -> Result<(), KmsError> {
        KeyFile::load(&self.path).map(|_| ())
    }

    fn material(
        &self,
        action: KmsAction,
        key_arn: &str,
        version: Option<u32>,
    ) -> Result<(u32, Cipher), KmsError> {
        let name = key_arn.strip_prefix(ARN_PREFIX).ok_or_else(|| KmsError::InvalidKeyId {
            key: key_arn.to_string(),
            reason: format!("{action} needs a canonical local key ARN ({ARN_PREFIX}NAME)"),
        })?;
        let file = KeyFile::load(&self.path)?;
        let key = file.keys.get(name).ok_or_else(|| KmsError::KeyNotFound { key: key_arn.to_string() })?;
        if !key.enabled {
            return Err(KmsError::KeyNotEnabled { key: key_arn.to_string(), state: KeyState::Disabled });
        }
        let version = version.unwrap_or(key.versions.len() as u32);
        let encoded = version
            .checked_sub(1)
            .and_then(|i| key.versions.get(i as usize))
            .ok_or_else(|| KmsError::InvalidCiphertext { action, key: key_arn.to_string() })?;
        let raw = Zeroizing::new(B64.decode(encoded.as_bytes()).map_err(|e| key_file_error(&self.path, e))?);
        let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| {
            key_file_error(&self.path, format!("key {name} version {version} is not 32 bytes"))
        })?;
        Ok((version, Cipher(cipher)))
    }

    fn wrap(
        &self,
        key_arn: &str,
        key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let (version, cipher) = self.material(KmsAction::GenerateDataKeyWithoutPlaintext, key_arn, None)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| key_file_error(&self.path, e))?;
        let aad = associated_data(key_arn, context);
        let sealed = cipher
            .0
            .encrypt(&Nonce::from(nonce), Payload { msg: key.expose(), aad: &aad })
            .map_err(|_| key_file_error(&self.path, "AES-GCM refused to encrypt"))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(WRAP_MAGIC);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(WrappedKey(out))
    }

    fn unwrap(
        &self,
        action: KmsAction,
        key_arn: &str,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let refused = || KmsError::InvalidCiphertext { action, key: key_arn.to_string() };
        let blob = &wrapped.0;
        if blob.len() != WRAPPED_LEN || &blob[..4] != WRAP_MAGIC {
            return Err(refused());
        }
        let version = u32::from_be_bytes([blob[4], blob[5], blob[6], blob[7]]);
        let (_, cipher) = self.material(action, key_arn, Some(version))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[8..8 + NONCE_LEN]);
        let aad = associated_data(key_arn, context);
        let plain = Zeroizing::new(
            cipher
                .0
                .decrypt(&Nonce::from(nonce), Payload { msg: &blob[8 + NONCE_LEN..], aad: &aad })
                .map_err(|_| refused())?,
        );
        DataKey::from_slice(&plain).ok_or_else(refused)
    }
}

/// Wraps the AES key so the key schedule is dropped promptly (aes-gcm zeroizes it on drop).
struct Cipher(Aes256Gcm);

fn associated_data(key_arn: &str, context: &EncryptionContext) -> Vec<u8> {
    let mut aad = WRAP_AAD_LABEL.to_vec();
    aad.extend_from_slice(&(key_arn.len() as u32).to_be_bytes());
    aad.extend_from_slice(key_arn.as_bytes());
    aad.extend_from_slice(&context.canonical_bytes());
    aad
}

#[async_trait]
impl KmsProvider for LocalKms {
    async fn describe_key(&self, key_id: &str, _secrets: &Secrets) -> Result<KeyInfo, KmsError> {
        let name = parse_key_id(key_id)?;
        let file = KeyFile::load(&self.path)?;
        let key = file.keys.get(name).ok_or_else(|| KmsError::KeyNotFound { key: key_id.to_string() })?;
        let state = if key.enabled { KeyState::Enabled } else { KeyState::Disabled };
        Ok(KeyInfo { arn: arn_of(name), state, unsuitable: None })
    }

    async fn generate_wrapped_key(
        &self,
        key_arn: &str,
        context: &EncryptionContext,
        _secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        // The plaintext exists only inside this call, as the AWS KMS service would hold it.
        let key = DataKey::generate().map_err(|e| key_file_error(&self.path, e))?;
        self.wrap(key_arn, &key, context)
    }

    async fn decrypt(
        &self,
        key_arn: &str,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        _secrets: &Secrets,
    ) -> Result<DataKey, KmsError> {
        self.unwrap(KmsAction::Decrypt, key_arn, wrapped, context)
    }

    async fn re_encrypt(
        &self,
        source_arn: &str,
        wrapped: &WrappedKey,
        target_arn: &str,
        context: &EncryptionContext,
        _secrets: &Secrets,
    ) -> Result<WrappedKey, KmsError> {
        let key = self.unwrap(KmsAction::ReEncrypt, source_arn, wrapped, context)?;
        self.wrap(target_arn, &key, context)
    }

    async fn list_keys(&self, _secrets: &Secrets) -> Result<Vec<KeyListing>, KmsError> {
        let file = KeyFile::load(&self.path)?;
        Ok(file
            .keys
            .keys()
            .map(|name| KeyListing { alias: format!("alias/{name}"), alias_arn: None, key_arn: arn_of(name) })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(names: &[&str]) -> (tempfile::TempDir, LocalKms) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeyFile::update(&path, true, |f| {
            for n in names {
                f.create_key(n)?;
            }
            Ok(())
        })
        .unwrap();
        (dir, LocalKms::new(path))
    }

    #[tokio::test]
    async fn wraps_and_unwraps_for_its_own_volume_only() {
        let (_dir, kms) = setup(&["a", "b"]);
        let s = Secrets::default();
        let arn = kms.describe_key("alias/a", &s).await.unwrap().arn;
        assert_eq!(arn, "cryptvol:local:key/a");
        let ctx = EncryptionContext::for_volume("vol-1");
        let wrapped = kms.generate_wrapped_key(&arn, &ctx, &s).await.unwrap();
        let key = kms.decrypt(&arn, &wrapped, &ctx, &s).await.unwrap();
        let again = kms.decrypt(&arn, &wrapped, &ctx, &s).await.unwrap();
        assert_eq!(key.expose(), again.expose());

        let other_volume = EncryptionContext::for_volume("vol-2");
        assert!(matches!(
            kms.decrypt(&arn, &wrapped, &other_volume, &s).await,
            Err(KmsError::InvalidCiphertext { .. })
        ));
        let other_key = arn_of("b");
        assert!(matches!(
            kms.decrypt(&other_key, &wrapped, &ctx, &s).await,
            Err(KmsError::InvalidCiphertext { .. })
        ));
        let mut tampered = wrapped.clone();
        tampered.0[30] ^= 1;
        assert!(kms.decrypt(&arn, &tampered, &ctx, &s).await.is_err());
    }

    #[tokio::test]
    async fn disabled_keys_refuse_and_rotation_keeps_old_wraps() {
        let (dir, kms) = setup(&["a"]);
        let path = dir.path().join("keys.json");
        let s = Secrets::default();
        let arn = arn_of("a");
        let ctx = EncryptionContext::for_volume("v");
        let old = kms.generate_wrapped_key(&arn, &ctx, &s).await.unwrap();
        let before = kms.decrypt(&arn, &old, &ctx, &s).await.unwrap();

        assert_eq!(KeyFile::update(&path, false, |f| f.rotate_key("a")).unwrap(), 2);
        let after = kms.decrypt(&arn, &old, &ctx, &s).await.unwrap();
        assert_eq!(before.expose(), after.expose());
        let rewrapped = kms.re_encrypt(&arn, &old, &arn, &ctx, &s).await.unwrap();
        assert_eq!(&rewrapped.0[4..8], &2u32.to_be_bytes());
        assert_eq!(kms.decrypt(&arn, &rewrapped, &ctx, &s).await.unwrap().expose(), before.expose());

        KeyFile::update(&path, false, |f| f.set_enabled("a", false)).unwrap();
        assert_eq!(kms.describe_key("a", &s).await.unwrap().state, KeyState::Disabled);
        assert!(matches!(kms.decrypt(&arn, &old, &ctx, &s).await, Err(KmsError::KeyNotEnabled { .. })));
        assert!(kms.generate_wrapped_key(&arn, &ctx, &s).await.is_err());
    }

    #[tokio::test]
    async fn unknown_and_malformed_keys() {
        let (_dir, kms) = setup(&["a"]);
        let s = Secrets::default();
        assert!(matches!(kms.describe_key("nope", &s).await, Err(KmsError::KeyNotFound { .. })));
        assert!(matches!(kms.describe_key("bad name!", &s).await, Err(KmsError::InvalidKeyId { .. })));
    }

    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _kms) = setup(&["a"]);
        let mode = fs::metadata(dir.path().join("keys.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
