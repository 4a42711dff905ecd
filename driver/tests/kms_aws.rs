//! The `aws` KMS provider against a real KMS protocol peer: moto's server on loopback, started by
//! these tests, and real AWS KMS when `CRYPTVOL_TEST_AWS_KEY_ARN` and AWS credentials are set.
//!
//! moto is installed with `pip install 'moto[server]'`; without `moto_server` on PATH the moto tests
//! print why and return, or fail when `CRYPTVOL_REQUIRE_MOTO` is set (as CI should set it). Nothing here sends a byte anywhere but 127.0.0.1, except the `real_aws_*`
//! tests when their variables are set. The instance metadata endpoint is disabled for the process.
//!
//! The tests take turns (one lock): some of them set credential variables in the environment.

// Helpers outside `#[test]` functions panic on setup failures just as the tests do.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use cryptvol::csi::controller::ControllerService;
use cryptvol::csi::node::{NodeService, StageVolume};
use cryptvol::header::VolumeHeader;
use cryptvol::kms::aws::{AwsConnection, AwsKms, SECRET_ACCESS_KEY_ID, SECRET_SECRET_ACCESS_KEY};
use cryptvol::kms::config::KmsRegistry;
use cryptvol::kms::{EncryptionContext, KeyState, KmsError, KmsProvider, Secrets, WrappedKey};
use cryptvol::volume::BackingStore;
use cryptvol_proto::csi::v1 as csi;
use csi::controller_server::Controller;
use tonic::Code;

const REGION: &str = "us-east-1";
/// Credential variables the tests clear so that only what a test sets is found.
const CREDENTIAL_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
];

// ---------------------------------------------------------------------------------------------
// The moto server, one per test process

/// moto_server under a shell that kills it when this process's end of the pipe closes, so a test
/// run that ends in any way leaves no server behind.
struct Moto {
    _watchdog: Child,
    addr: SocketAddr,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_listener(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn moto() -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| {
        if !on_path("moto_server") {
            return None;
        }
        let port = free_port();
        let script = format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; read _; kill $pid; wait $pid"
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(wait_for_listener(addr, Duration::from_secs(60)), "moto_server did not listen on {addr}");
        Some(Moto { _watchdog: watchdog, addr })
    })
    .as_ref()
}

impl Moto {
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SDK client for test setup (CreateKey, DisableKey, ...), with its own static credentials.
    fn admin(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("admin", "admin-secret", None, None, "test"))
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }
}

/// Serializes the tests and prepares the environment; `None` (with the reason printed) without moto.
async fn moto_or_skip(test: &str) -> Option<(tokio::sync::MutexGuard<'static, ()>, &'static Moto)> {
    let guard = lock().await;
    match tokio::task::spawn_blocking(moto).await.unwrap() {
        Some(moto) => Some((guard, moto)),
        None => {
            let reason = "moto_server is not on PATH (install it with: pip install 'moto[server]')";
            // CI sets this so that a missing install fails the run instead of skipping it.
            assert!(std::env::var_os("CRYPTVOL_REQUIRE_MOTO").is_none(), "{test}: {reason}");
            println!("skipping {test}: {reason}");
            None
        }
    }
}

async fn lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = LOCK.lock().await;
    // SAFETY of the environment edits: every test holds LOCK while it runs, so no other test
    // thread reads the environment concurrently.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let nowhere = std::env::temp_dir().join("cryptvol-kms-aws-tests-no-such-file");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &nowhere);
    std::env::set_var("AWS_CONFIG_FILE", &nowhere);
    for var in CREDENTIAL_VARS {
        std::env::remove_var(var);
    }
    guard
}

// ---------------------------------------------------------------------------------------------
// Keys, registries and CSI services

async fn create_key(admin: &aws_sdk_kms::Client) -> (String, String) {
    let meta = admin.create_key().send().await.unwrap().key_metadata.unwrap();
    (meta.key_id, meta.arn.unwrap())
}

async fn create_alias(admin: &aws_sdk_kms::Client, key_id: &str) -> String {
    let alias = format!("alias/cryptvol-test-{}", uuid::Uuid::new_v4().simple());
    admin.create_alias().alias_name(&alias).target_key_id(key_id).send().await.unwrap();
    alias
}

fn alias_arn(key_arn: &str, alias: &str) -> String {
    let prefix = &key_arn[..key_arn.find(":key/").unwrap()];
    format!("{prefix}:{alias}")
}

/// Credentials in the CSI secrets, as a StorageClass's secret would pass them.
fn secrets_map() -> HashMap<String, String> {
    HashMap::from([
        (SECRET_ACCESS_KEY_ID.to_string(), "AKIDCRYPTVOLTEST".to_string()),
        (SECRET_SECRET_ACCESS_KEY.to_string(), "secret-from-the-csi-secret".to_string()),
    ])
}

fn secrets() -> Secrets {
    Secrets::from_map(secrets_map())
}

/// A KMS configuration file with one aws connection `aws` to `endpoint`, loaded.
fn registry(dir: &Path, endpoint: &str, extra: &str) -> Arc<KmsRegistry> {
    let path = dir.join("kms.yaml");
    let yaml = format!(
        "default: aws\nconnections:\n  aws:\n    provider: aws\n    region: {REGION}\n    endpoint: {endpoint}\n{extra}"
    );
    std::fs::write(&path, yaml).unwrap();
    Arc::new(KmsRegistry::load(&path).unwrap())
}

struct Cluster {
    dir: tempfile::TempDir,
    store: BackingStore,
    registry: Arc<KmsRegistry>,
    controller: ControllerService,
}

impl Cluster {
    fn new(endpoint: &str, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backing");
        std::fs::create_dir(&root).unwrap();
        let store = BackingStore::new(&root);
        let registry = registry(dir.path(), endpoint, extra);
        let controller = ControllerService::new(store.clone(), registry.clone());
        Cluster { dir, store, registry, controller }
    }

    fn node(&self) -> NodeService {
        NodeService::new("node-1", self.store.clone(), self.registry.clone())
    }

    /// CreateVolume through the gRPC service trait, so the request is parsed as the sidecar sends it.
    async fn create_volume(
        &self,
        name: &str,
        key_id: &str,
        secrets: HashMap<String, String>,
    ) -> Result<csi::Volume, tonic::Status> {
        use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
        let request = csi::CreateVolumeRequest {
            name: name.to_string(),
            parameters: HashMap::from([("kmsKeyId".to_string(), key_id.to_string())]),
            secrets,
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode { mode: Mode::MultiNodeMultiWriter as i32 }),
            }],
            ..Default::default()
        };
        let response = self.controller.create_volume(tonic::Request::new(request)).await?;
        Ok(response.into_inner().volume.unwrap())
    }

    fn header(&self, volume_id: &str) -> VolumeHeader {
        self.store.header(volume_id).unwrap().unwrap()
    }

    /// Every entry of the backing root: volumes and any temp directory a failed create left.
    fn backing_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn stage(&self, volume_id: &str, secrets: HashMap<String, String>) -> Result<(), tonic::Status> {
        self.node()
            .stage(StageVolume {
                volume_id: volume_id.to_string(),
                staging_path: self.dir.path().join("staging").join(volume_id),
                read_only: false,
                key_arn: None,
                secrets: Secrets::from_map(secrets),
            })
            .await
    }
}

fn provider(endpoint: &str) -> AwsKms {
    let mut settings = AwsConnection::new(REGION);
    settings.endpoint = Some(endpoint.to_string());
    AwsKms::new("aws", settings)
}

fn wrapped_key(header: &VolumeHeader) -> WrappedKey {
    header.wrapped_key().unwrap()
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("the call must fail");
    println!("{:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "{needle:?} not in {:?}", status.message());
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by the moto and the real-AWS tests

/// Every form of one key provisions volumes under its canonical ARN; repeats are idempotent; the
/// wrapped key unwraps for its volume only and re-encrypts under the same key.
async fn provision_and_unwrap(
    cluster: &Cluster,
    kms: &AwsKms,
    key_arn: &str,
    forms: &[String],
    secrets_map: fn() -> HashMap<String, String>,
) {
    let secrets = || Secrets::from_map(secrets_map());
    let mut data_keys = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        let name = format!("pvc-{}-{i}", uuid::Uuid::new_v4().simple());
        let volume = cluster.create_volume(&name, form, secrets_map()).await.unwrap();
        assert_eq!(volume.volume_context["cryptvol.csi.dev/keyArn"], key_arn, "form {form}");
        let header = cluster.header(&volume.volume_id);
        assert_eq!(header.key_arn, key_arn);
        for again in forms {
            let repeat = cluster.create_volume(&name, again, secrets_map()).await.unwrap();
            assert_eq!(repeat, volume, "CreateVolume {name} with {again} after {form}");
        }
        assert_eq!(kms.describe_key(form, &secrets()).await.unwrap().arn, key_arn);

        let context = EncryptionContext::for_volume(&volume.volume_id);
        let wrapped = wrapped_key(&header);
        let key = kms.decrypt(key_arn, &wrapped, &context, &secrets()).await.unwrap();
        let again = kms.decrypt(key_arn, &wrapped, &context, &secrets()).await.unwrap();
        assert_eq!(key.expose(), again.expose());
        let other = EncryptionContext::for_volume("some-other-volume");
        let err = kms.decrypt(key_arn, &wrapped, &other, &secrets()).await.unwrap_err();
        assert!(matches!(err, KmsError::InvalidCiphertext { .. }), "{err}");
        let rewrapped = kms.re_encrypt(key_arn, &wrapped, key_arn, &context, &secrets()).await.unwrap();
        let unwrapped = kms.decrypt(key_arn, &rewrapped, &context, &secrets()).await.unwrap();
        assert_eq!(unwrapped.expose(), key.expose());
        data_keys.push(*key.expose());
    }
    data_keys.sort();
    data_keys.dedup();
    assert_eq!(data_keys.len(), forms.len(), "every volume has its own data key");
}

// ---------------------------------------------------------------------------------------------
// moto

#[tokio::test]
async fn every_key_form_provisions_the_canonical_arn_idempotently() {
    let Some((_guard, moto)) = moto_or_skip("every_key_form_provisions_the_canonical_arn_idempotently").await
    else {
        return;
    };
    let admin = moto.admin();
    let (key_id, key_arn) = create_key(&admin).await;
    let alias = create_alias(&admin, &key_id).await;
    let forms = [alias.clone(), alias_arn(&key_arn, &alias), key_id, key_arn.clone()];
    let cluster = Cluster::new(&moto.endpoint(), "");
    provision_and_unwrap(&cluster, &provider(&moto.endpoint()), &key_arn, &forms, secrets_map).await;
    assert_eq!(cluster.store.list().unwrap().len(), forms.len());
}

#[tokio::test]
async fn asymmetric_key_is_refused_with_failed_precondition() {
    let Some((_guard, moto)) = moto_or_skip("asymmetric_key_is_refused_with_failed_precondition").await
    else {
        return;
    };
    let admin = moto.admin();
    let meta = admin
        .create_key()
        .key_spec(KeySpec::Rsa2048)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    let arn = meta.arn.unwrap();
    let cluster = Cluster::new(&moto.endpoint(), "");
    let result = cluster.create_volume("pvc-rsa", &meta.key_id, secrets_map()).await;
    assert_status(result, Code::FailedPrecondition, &[&arn, "RSA_2048", "SIGN_VERIFY"]);
    assert!(cluster.backing_entries().is_empty());
}

#[tokio::test]
async fn disabled_key_is_refused_at_create_and_at_stage() {
    let Some((_guard, moto)) = moto_or_skip("disabled_key_is_refused_at_create_and_at_stage").await else {
        return;
    };
    let admin = moto.admin();
    let (key_id, key_arn) = create_key(&admin).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    let volume = cluster.create_volume("pvc-before", &key_arn, secrets_map()).await.unwrap();
    admin.disable_key().key_id(&key_id).send().await.unwrap();

    let result = cluster.create_volume("pvc-after", &key_arn, secrets_map()).await;
    assert_status(result, Code::FailedPrecondition, &[&key_arn, "disabled"]);
    assert!(cluster.store.header("pvc-after").unwrap().is_none());

    // moto itself would unwrap under the disabled key; the provider's own DescribeKey refuses.
    let result = cluster.stage(&volume.volume_id, secrets_map()).await;
    assert_status(result, Code::FailedPrecondition, &[&key_arn, "disabled"]);
    let header = cluster.header(&volume.volume_id);
    let context = EncryptionContext::for_volume(&volume.volume_id);
    let kms = provider(&moto.endpoint());
    let err = kms.decrypt(&key_arn, &wrapped_key(&header), &context, &secrets()).await.unwrap_err();
    assert!(matches!(err, KmsError::KeyNotEnabled { state: KeyState::Disabled, .. }), "{err}");

    admin.enable_key().key_id(&key_id).send().await.unwrap();
    kms.decrypt(&key_arn, &wrapped_key(&header), &context, &secrets()).await.unwrap();
}

#[tokio::test]
async fn key_pending_deletion_is_refused_with_its_date() {
    let Some((_guard, moto)) = moto_or_skip("key_pending_deletion_is_refused_with_its_date").await else {
        return;
    };
    let admin = moto.admin();
    let (key_id, key_arn) = create_key(&admin).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    let volume = cluster.create_volume("pvc-doomed", &key_arn, secrets_map()).await.unwrap();
    admin.schedule_key_deletion().key_id(&key_id).pending_window_in_days(7).send().await.unwrap();

    let result = cluster.create_volume("pvc-late", &key_arn, secrets_map()).await;
    assert_status(result, Code::FailedPrecondition, &[&key_arn, "pending deletion on "]);
    let result = cluster.stage(&volume.volume_id, secrets_map()).await;
    assert_status(result, Code::FailedPrecondition, &[&key_arn, "pending deletion on "]);
    let kms = provider(&moto.endpoint());
    let info = kms.describe_key(&key_arn, &secrets()).await.unwrap();
    assert!(
        matches!(&info.state, KeyState::PendingDeletion { deletion_date: Some(date) } if date.len() >= 10),
        "{info:?}"
    );
}

#[tokio::test]
async fn wrapped_key_is_bound_to_its_volume_and_re_encrypts_to_another_key() {
    let Some((_guard, moto)) = moto_or_skip("wrapped_key_is_bound_to_its_volume").await else {
        return;
    };
    let admin = moto.admin();
    let (_, key_arn) = create_key(&admin).await;
    let (_, other_arn) = create_key(&admin).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    let a = cluster.create_volume("pvc-a", &key_arn, secrets_map()).await.unwrap();
    let b = cluster.create_volume("pvc-b", &key_arn, secrets_map()).await.unwrap();
    let wrapped_a = wrapped_key(&cluster.header(&a.volume_id));
    let client = cluster.registry.client(None).unwrap();

    // Volume a's wrapped key, presented as volume b's: the encryption context does not match.
    let err = client.decrypt(&key_arn, &wrapped_a, &b.volume_id, &secrets()).await.unwrap_err();
    assert!(matches!(err, KmsError::InvalidCiphertext { .. }), "{err}");
    let key_a = client.decrypt(&key_arn, &wrapped_a, &a.volume_id, &secrets()).await.unwrap();

    let moved = client.re_encrypt(&key_arn, &wrapped_a, &other_arn, &a.volume_id, &secrets()).await.unwrap();
    assert_ne!(moved, wrapped_a);
    let key_moved = client.decrypt(&other_arn, &moved, &a.volume_id, &secrets()).await.unwrap();
    assert_eq!(key_moved.expose(), key_a.expose());
    let err = client.decrypt(&other_arn, &moved, &b.volume_id, &secrets()).await.unwrap_err();
    assert!(matches!(err, KmsError::InvalidCiphertext { .. }), "{err}");
}

#[tokio::test]
async fn credentials_come_from_csi_secrets_when_the_chain_has_none() {
    let Some((_guard, moto)) =
        moto_or_skip("credentials_come_from_csi_secrets_when_the_chain_has_none").await
    else {
        return;
    };
    let admin = moto.admin();
    let (_, key_arn) = create_key(&admin).await;
    let cluster = Cluster::new(&moto.endpoint(), "");

    // The environment holds no credentials (see `lock`): only the secrets can have signed this.
    let volume = cluster.create_volume("pvc-secrets", &key_arn, secrets_map()).await.unwrap();
    let header = cluster.header(&volume.volume_id);
    let client = cluster.registry.client(None).unwrap();
    client.decrypt(&key_arn, &wrapped_key(&header), &volume.volume_id, &secrets()).await.unwrap();

    let no_secrets = cluster.create_volume("pvc-none", &key_arn, HashMap::new()).await;
    assert_status(no_secrets, Code::Unauthenticated, &["kms:DescribeKey", "no usable AWS credentials"]);
    let err = client
        .decrypt(&key_arn, &wrapped_key(&header), &volume.volume_id, &Secrets::default())
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Unauthenticated { .. }), "{err}");

    let half = HashMap::from([(SECRET_ACCESS_KEY_ID.to_string(), "AKID".to_string())]);
    let result = cluster.create_volume("pvc-half", &key_arn, half).await;
    assert_status(result, Code::InvalidArgument, &["awsSecretAccessKey is missing"]);
    let typo = HashMap::from([
        ("accessKeyId".to_string(), "AKID".to_string()),
        (SECRET_SECRET_ACCESS_KEY.to_string(), "s".to_string()),
    ]);
    let result = cluster.create_volume("pvc-typo", &key_arn, typo).await;
    assert_status(result, Code::InvalidArgument, &["accessKeyId"]);
    let result = cluster.stage(&volume.volume_id, HashMap::new()).await;
    assert_status(result, Code::Unauthenticated, &["no usable AWS credentials"]);

    assert_eq!(cluster.store.list().unwrap(), vec![volume.volume_id]);
}

#[tokio::test]
async fn default_chain_credentials_from_the_environment() {
    let Some((_guard, moto)) = moto_or_skip("default_chain_credentials_from_the_environment").await else {
        return;
    };
    let admin = moto.admin();
    let (_, key_arn) = create_key(&admin).await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDFROMENV");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret-from-env");
    let cluster = Cluster::new(&moto.endpoint(), "");
    let created = cluster.create_volume("pvc-env", &key_arn, HashMap::new()).await;
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    assert_eq!(created.unwrap().volume_context["cryptvol.csi.dev/keyArn"], key_arn);
}

#[tokio::test]
async fn unknown_and_malformed_key_ids_are_invalid_arguments() {
    let Some((_guard, moto)) = moto_or_skip("unknown_and_malformed_key_ids_are_invalid_arguments").await
    else {
        return;
    };
    let cluster = Cluster::new(&moto.endpoint(), "");
    let missing = cluster.create_volume("pvc-1", "alias/no-such-alias", secrets_map()).await;
    assert_status(missing, Code::InvalidArgument, &["kmsKeyId", "alias/no-such-alias", "does not exist"]);
    let malformed = cluster.create_volume("pvc-2", "arn:aws:kms:us-east-1:acct:key/x", secrets_map()).await;
    assert_status(malformed, Code::InvalidArgument, &["kmsKeyId", "malformed"]);
    assert!(cluster.backing_entries().is_empty());
}

/// Accepts on `listener` and pipes each connection to `upstream` until the test ends.
fn forward(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn kms_down_is_unavailable_in_bounded_time_and_leaves_nothing() {
    let Some((_guard, moto)) =
        moto_or_skip("kms_down_is_unavailable_in_bounded_time_and_leaves_nothing").await
    else {
        return;
    };
    let (_, key_arn) = create_key(&moto.admin()).await;

    // Nothing listens on the port: every attempt is refused, and the retries give up quickly.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::new(&endpoint, "    timeoutSeconds: 3\n");
    let started = Instant::now();
    let result = cluster.create_volume("pvc-down", &key_arn, secrets_map()).await;
    assert_status(result, Code::Unavailable, &["kms:DescribeKey"]);
    // Bounded, not hanging: the budget is 3 s; the bound is loose because test machines are shared.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(cluster.backing_entries().is_empty(), "{:?}", cluster.backing_entries());

    // The KMS comes back on the same address: the sidecar's retry succeeds.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    forward(listener, moto.addr);
    let volume = cluster.create_volume("pvc-down", &key_arn, secrets_map()).await.unwrap();
    assert_eq!(cluster.backing_entries(), vec![volume.volume_id]);
}

#[tokio::test]
async fn kms_that_never_answers_is_cut_at_the_time_budget() {
    let Some((_guard, moto)) = moto_or_skip("kms_that_never_answers_is_cut_at_the_time_budget").await else {
        return;
    };
    let (_, key_arn) = create_key(&moto.admin()).await;
    // Accepts connections and never answers: each attempt times out, and the budget ends it all.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let cluster = Cluster::new(&endpoint, "    timeoutSeconds: 2\n");
    let started = Instant::now();
    let result = cluster.create_volume("pvc-silent", &key_arn, secrets_map()).await;
    let elapsed = started.elapsed();
    assert_status(result, Code::Unavailable, &["kms:DescribeKey"]);
    // It waited for the timeouts, and gave up instead of hanging (a loose bound: shared machines).
    assert!(elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(20), "took {elapsed:?}");
    // Each attempt gets 1 s of the 2 s budget: the first times out and a retry follows.
    let connections = held.lock().unwrap().len();
    assert!(connections >= 2, "{connections} connection(s): the timed-out attempt was not retried");
    assert!(cluster.backing_entries().is_empty());
}

#[tokio::test]
async fn list_keys_shows_customer_aliases_with_their_key_arns() {
    let Some((_guard, moto)) = moto_or_skip("list_keys_shows_customer_aliases_with_their_key_arns").await
    else {
        return;
    };
    let admin = moto.admin();
    let (key_id, key_arn) = create_key(&admin).await;
    let alias = create_alias(&admin, &key_id).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDADMIN");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "admin-secret");
    let listed = cryptvol::kms::picker::list_keys(&cluster.registry, Some("aws")).await;
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let listed = listed.unwrap();
    let entry = listed.iter().find(|k| k.alias == alias).expect("the new alias is listed");
    assert_eq!(entry.key_arn, key_arn);
    assert_eq!(entry.alias_arn.as_deref(), Some(alias_arn(&key_arn, &alias).as_str()));
    assert!(listed.iter().all(|k| !k.alias.starts_with("alias/aws/")), "AWS managed aliases are hidden");
    let table = cryptvol::kms::picker::render_table(&listed);
    assert!(table.lines().any(|l| l.starts_with(&alias) && l.ends_with(&key_arn)), "{table}");
}

// ---------------------------------------------------------------------------------------------
// Audit records

/// Collects the `operation` and `volume_id` of every audit record.
#[derive(Clone, Default)]
struct AuditLog(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != cryptvol::kms::AUDIT_TARGET {
            return;
        }
        #[derive(Default)]
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "operation" => self.0 = value.to_string(),
                    "volume_id" => self.1 = value.to_string(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push((fields.0, fields.1));
    }
}

#[tokio::test]
async fn the_describe_call_inside_decrypt_is_audited_too() {
    use tracing_subscriber::layer::SubscriberExt;
    let Some((_guard, moto)) = moto_or_skip("the_describe_call_inside_decrypt_is_audited_too").await else {
        return;
    };
    let (_, key_arn) = create_key(&moto.admin()).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    let volume = cluster.create_volume("pvc-audit", &key_arn, secrets_map()).await.unwrap();
    let wrapped = wrapped_key(&cluster.header(&volume.volume_id));

    let log = AuditLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let client = cluster.registry.client(None).unwrap();
    client.decrypt(&key_arn, &wrapped, &volume.volume_id, &secrets()).await.unwrap();
    let records = log.0.lock().unwrap().clone();
    let expected = [("kms:DescribeKey", "pvc-audit"), ("kms:Decrypt", "pvc-audit")]
        .map(|(op, vol)| (op.to_string(), vol.to_string()));
    assert_eq!(records, expected);
}

// ---------------------------------------------------------------------------------------------
// Real AWS KMS

/// The key and region for the real-AWS tests, or `None` with the reason printed.
fn real_aws(test: &str) -> Option<(String, String)> {
    let Ok(key_arn) = std::env::var("CRYPTVOL_TEST_AWS_KEY_ARN") else {
        println!("skipping {test}: CRYPTVOL_TEST_AWS_KEY_ARN is not set");
        return None;
    };
    let has_credentials = ["AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if !has_credentials {
        println!("skipping {test}: no AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or web identity)");
        return None;
    }
    let region = key_arn.split(':').nth(3).filter(|r| !r.is_empty()).map(str::to_string);
    let Some(region) = region else {
        panic!("CRYPTVOL_TEST_AWS_KEY_ARN {key_arn:?} is not a key ARN");
    };
    Some((key_arn, region))
}

#[tokio::test]
async fn real_aws_provisions_unwraps_and_binds_to_the_volume() {
    // Read before `lock` clears the credential variables, and restored for this test only.
    let Some((key_arn, region)) = real_aws("real_aws_provisions_unwraps_and_binds_to_the_volume") else {
        return;
    };
    let profile_files = ["AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"];
    let saved: Vec<(&str, Option<std::ffi::OsString>)> =
        CREDENTIAL_VARS.iter().chain(&profile_files).map(|v| (*v, std::env::var_os(v))).collect();
    let _guard = lock().await;
    for (var, value) in &saved {
        match value {
            Some(value) => std::env::set_var(var, value),
            None => std::env::remove_var(var),
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("kms.yaml");
    let yaml = format!("default: aws\nconnections:\n  aws:\n    provider: aws\n    region: {region}\n");
    std::fs::write(&path, yaml).unwrap();
    let registry = Arc::new(KmsRegistry::load(&path).unwrap());
    let root = dir.path().join("backing");
    std::fs::create_dir(&root).unwrap();
    let store = BackingStore::new(&root);
    let cluster =
        Cluster { controller: ControllerService::new(store.clone(), registry.clone()), dir, store, registry };
    let key_id = key_arn.rsplit('/').next().unwrap().to_string();
    let kms = AwsKms::new("aws", AwsConnection::new(region));
    // The real-AWS run signs with the default chain: no credentials in the CSI secrets.
    provision_and_unwrap(&cluster, &kms, &key_arn, &[key_arn.clone(), key_id], HashMap::new).await;
}

/// Rotation end to end against the KMS protocol: provision under key A, write through a real
/// mount, re-wrap under key B (ReEncrypt) while staged, unstage, disable A, stage again, read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_to_a_second_key_then_staging_with_only_that_key() {
    let Some((_guard, moto)) = moto_or_skip("rotation_to_a_second_key_then_staging_with_only_that_key").await
    else {
        return;
    };
    let admin = moto.admin();
    let (key_a, arn_a) = create_key(&admin).await;
    let (key_b, arn_b) = create_key(&admin).await;
    let alias_b = create_alias(&admin, &key_b).await;
    let cluster = Cluster::new(&moto.endpoint(), "");
    let volume = cluster.create_volume("pvc-rotate", &arn_a, secrets_map()).await.unwrap();
    let id = volume.volume_id.clone();
    let node = cluster.node();
    let staging = cluster.dir.path().join("staging-rotate");
    let stage = |key_arn: &str| StageVolume {
        volume_id: id.clone(),
        staging_path: staging.clone(),
        read_only: false,
        key_arn: Some(key_arn.to_string()),
        secrets: secrets(),
    };
    node.stage(stage(&arn_a)).await.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(staging.join("file"), &data).unwrap();

    let done =
        cryptvol::rotation::rotate_volume(&cluster.store, &cluster.registry, &id, Some(&alias_b), &secrets())
            .await
            .unwrap();
    assert_eq!((done.from_key_arn.as_str(), done.to_key_arn.as_str()), (arn_a.as_str(), arn_b.as_str()));
    assert_eq!(cluster.header(&id).key_arn, arn_b);
    std::fs::write(staging.join("during"), b"written after the rotation").unwrap();
    assert_eq!(std::fs::read(staging.join("file")).unwrap(), data, "the staged volume kept working");
    node.unstage(&id, &staging).await.unwrap();

    admin.disable_key().key_id(&key_a).send().await.unwrap();
    // The PV still names key A; the sealed header vouches for B.
    node.stage(stage(&arn_a)).await.unwrap();
    assert_eq!(std::fs::read(staging.join("file")).unwrap(), data);
    assert_eq!(std::fs::read(staging.join("during")).unwrap(), b"written after the rotation");
    node.unstage(&id, &staging).await.unwrap();
    admin.enable_key().key_id(&key_a).send().await.unwrap();
}
