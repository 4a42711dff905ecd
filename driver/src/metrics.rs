//! Prometheus metrics of both plugins: one process-wide registry and the `/metrics` endpoint.
//!
//! Every metric is created once, when [`get`] is first called, and the FUSE hot path only touches
//! counters it holds directly (an array indexed by [`FuseOp`]): no label hashing and no allocation
//! per operation. `docs/METRICS.md` lists every family.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The FUSE operations counted by [`Metrics::fuse_op`], one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Statfs,
    Getxattr,
    Listxattr,
    Setxattr,
    Removexattr,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl FuseOp {
    /// Every operation, in declaration order (the index of each is `op as usize`).
    pub const ALL: [FuseOp; 31] = [
        FuseOp::Lookup,
        FuseOp::Forget,
        FuseOp::Getattr,
        FuseOp::Setattr,
        FuseOp::Readlink,
        FuseOp::Mknod,
        FuseOp::Mkdir,
        FuseOp::Unlink,
        FuseOp::Rmdir,
        FuseOp::Symlink,
        FuseOp::Rename,
        FuseOp::Link,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Write,
        FuseOp::Flush,
        FuseOp::Release,
        FuseOp::Fsync,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Releasedir,
        FuseOp::Fsyncdir,
        FuseOp::Statfs,
        FuseOp::Getxattr,
        FuseOp::Listxattr,
        FuseOp::Setxattr,
        FuseOp::Removexattr,
        FuseOp::Create,
        FuseOp::Fallocate,
        FuseOp::Lseek,
        FuseOp::CopyFileRange,
    ];

    /// The label value, as the FUSE protocol names the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Forget => "forget",
            FuseOp::Getattr => "getattr",
            FuseOp::Setattr => "setattr",
            FuseOp::Readlink => "readlink",
            FuseOp::Mknod => "mknod",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Unlink => "unlink",
            FuseOp::Rmdir => "rmdir",
            FuseOp::Symlink => "symlink",
            FuseOp::Rename => "rename",
            FuseOp::Link => "link",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Write => "write",
            FuseOp::Flush => "flush",
            FuseOp::Release => "release",
            FuseOp::Fsync => "fsync",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Fsyncdir => "fsyncdir",
            FuseOp::Statfs => "statfs",
            FuseOp::Getxattr => "getxattr",
            FuseOp::Listxattr => "listxattr",
            FuseOp::Setxattr => "setxattr",
            FuseOp::Removexattr => "removexattr",
            FuseOp::Create => "create",
            FuseOp::Fallocate => "fallocate",
            FuseOp::Lseek => "lseek",
            FuseOp::CopyFileRange => "copy_file_range",
        }
    }
}

/// What failed authentication, for `cryptvol_authentication_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A content block (tampered, moved, truncated, another key).
    Block,
    /// A file header or a backing size that no plaintext maps to.
    FileHeader,
    /// An entry name or its long-name side file.
    Name,
    /// A directory id file.
    DirId,
    /// A symlink target.
    Symlink,
    /// An extended attribute record.
    Xattr,
    /// The volume header seal.
    HeaderSeal,
}

impl AuthFailure {
    const ALL: [AuthFailure; 7] = [
        AuthFailure::Block,
        AuthFailure::FileHeader,
        AuthFailure::Name,
        AuthFailure::DirId,
        AuthFailure::Symlink,
        AuthFailure::Xattr,
        AuthFailure::HeaderSeal,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Block => "block",
            AuthFailure::FileHeader => "file_header",
            AuthFailure::Name => "name",
            AuthFailure::DirId => "dir_id",
            AuthFailure::Symlink => "symlink",
            AuthFailure::Xattr => "xattr",
            AuthFailure::HeaderSeal => "header_seal",
        }
    }
}

/// The causes a locked volume is counted under (`docs/SEMANTICS.md`).
pub const LOCK_CAUSES: [&str; 3] = ["key_revoked", "access_denied", "kms_unreachable"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KmsCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FuseErrorLabels {
    op: &'static str,
    errno: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

/// Largest errno counted per value; anything above shares the last slot (Linux stops at 133).
const MAX_ERRNO: usize = 134;

/// Every metric of this process.
pub struct Metrics {
    registry: Registry,
    kms_calls: Family<KmsCallLabels, Counter>,
    kms_latency: HistogramFamily,
    staged_volumes: Gauge,
    locked_volumes: Family<CauseLabels, Gauge>,
    volumes_by_key_state: Family<StateLabels, Gauge>,
    rotations: Family<OutcomeLabels, Counter>,
    fuse_ops: [Counter; FuseOp::ALL.len()],
    fuse_errors: Family<FuseErrorLabels, Counter>,
    /// Counters of `fuse_errors`, made on the first error of each op and errno, then reused.
    fuse_error_slots: Box<[[OnceLock<Counter>; MAX_ERRNO]; FuseOp::ALL.len()]>,
    bytes_encrypted: Counter,
    bytes_decrypted: Counter,
    auth_failures: [Counter; AuthFailure::ALL.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The metrics of this process, created on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s: local keys answer in microseconds, a KMS across a region in seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("cryptvol");
        let kms_calls = Family::<KmsCallLabels, Counter>::default();
        registry.register("kms_calls", "KMS calls by operation and outcome", kms_calls.clone());
        let kms_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "kms_call_duration_seconds",
            "Latency of KMS calls by operation, retries included",
            kms_latency.clone(),
        );
        let staged_volumes = Gauge::default();
        registry.register("staged_volumes", "Volumes this node plugin serves", staged_volumes.clone());
        let locked_volumes = Family::<CauseLabels, Gauge>::default();
        for cause in LOCK_CAUSES {
            locked_volumes.get_or_create(&CauseLabels { cause }).set(0);
        }
        registry.register("locked_volumes", "Staged volumes locked, by cause", locked_volumes.clone());
        let volumes_by_key_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "volumes_by_key_state",
            "PersistentVolumes by the state of their KMS key (controller)",
            volumes_by_key_state.clone(),
        );
        let rotations = Family::<OutcomeLabels, Counter>::default();
        // Shown at 0 before the first rotation; failure outcomes appear when they happen.
        let _ = rotations.get_or_create(&OutcomeLabels { outcome: "success".into() });
        registry.register("key_rotations", "Data key re-wraps by outcome (controller)", rotations.clone());

        let fuse_op_family = Family::<OpLabels, Counter>::default();
        let fuse_ops =
            FuseOp::ALL.map(|op| fuse_op_family.get_or_create(&OpLabels { op: op.as_str() }).clone());
        registry.register("fuse_operations", "FUSE requests served, by operation", fuse_op_family);
        let fuse_errors = Family::<FuseErrorLabels, Counter>::default();
        registry.register(
            "fuse_errors",
            "FUSE requests answered with an error, by operation and errno",
            fuse_errors.clone(),
        );
        let fuse_error_slots = Box::new(std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())));

        let bytes_encrypted = Counter::default();
        registry.register(
            "bytes_encrypted",
            "Plaintext bytes sealed into content blocks (partial-block writes count the whole block)",
            bytes_encrypted.clone(),
        );
        let bytes_decrypted = Counter::default();
        registry.register(
            "bytes_decrypted",
            "Plaintext bytes opened from content blocks",
            bytes_decrypted.clone(),
        );
        let auth_family = Family::<KindLabels, Counter>::default();
        let auth_failures = AuthFailure::ALL
            .map(|kind| auth_family.get_or_create(&KindLabels { kind: kind.as_str() }).clone());
        registry.register(
            "authentication_failures",
            "Integrity checks that failed, by what was checked",
            auth_family,
        );
        Metrics {
            registry,
            kms_calls,
            kms_latency,
            staged_volumes,
            locked_volumes,
            volumes_by_key_state,
            rotations,
            fuse_ops,
            fuse_errors,
            fuse_error_slots,
            bytes_encrypted,
            bytes_decrypted,
            auth_failures,
        }
    }

    /// Counts one KMS call and its latency.
    pub fn kms_call(&self, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.kms_calls.get_or_create(&KmsCallLabels { operation, outcome }).inc();
        self.kms_latency.get_or_create(&OperationLabels { operation }).observe(seconds);
    }

    /// Counts one FUSE request.
    #[inline]
    pub fn fuse_op(&self, op: FuseOp) {
        self.fuse_ops[op as usize].inc();
    }

    /// Counts one FUSE error reply.
    pub fn fuse_error(&self, op: FuseOp, errno: i32) {
        let slot = (errno.max(0) as usize).min(MAX_ERRNO - 1);
        self.fuse_error_slots[op as usize][slot]
            .get_or_init(|| {
                let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
                self.fuse_errors.get_or_create(&FuseErrorLabels { op: op.as_str(), errno: name }).clone()
            })
            .inc();
    }

    /// Counts plaintext bytes sealed into content blocks.
    #[inline]
    pub fn encrypted(&self, bytes: usize) {
        self.bytes_encrypted.inc_by(bytes as u64);
    }

    /// Counts plaintext bytes opened from content blocks.
    #[inline]
    pub fn decrypted(&self, bytes: usize) {
        self.bytes_decrypted.inc_by(bytes as u64);
    }

    /// Counts one failed integrity check.
    pub fn auth_failure(&self, kind: AuthFailure) {
        self.auth_failures[kind as usize].inc();
    }

    /// Sets the number of staged volumes (node plugin).
    pub fn set_staged(&self, volumes: usize) {
        self.staged_volumes.set(volumes as i64);
    }

    /// Sets the number of locked volumes of each cause in [`LOCK_CAUSES`]; causes absent count 0.
    pub fn set_locked(&self, by_cause: &BTreeMap<&'static str, i64>) {
        for cause in LOCK_CAUSES {
            let count = by_cause.get(cause).copied().unwrap_or(0);
            self.locked_volumes.get_or_create(&CauseLabels { cause }).set(count);
        }
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Sets `cryptvol_volumes_by_key_state` to `counts` (state name to number of volumes); states
/// absent from `counts` drop out of the family. Called by the controller's key-state reconciler.
pub fn set_volumes_by_key_state(counts: &BTreeMap<String, i64>) {
    let family = &get().volumes_by_key_state;
    family.clear();
    for (state, count) in counts {
        family.get_or_create(&StateLabels { state: state.clone() }).set(*count);
    }
}

/// Counts one key rotation (re-wrap) with `outcome` (`success`, or a short failure reason).
pub fn record_rotation(outcome: &str) {
    get().rotations.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
}

/// Parses `--metrics-address`: `HOST:PORT`, or the empty string to serve no metrics.
pub fn parse_address(text: &str) -> Result<MetricsAddress, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(MetricsAddress(None));
    }
    text.parse::<SocketAddr>().map(|addr| MetricsAddress(Some(addr))).map_err(|_| {
        format!(
            "{text:?} is not an IP address and port like 0.0.0.0:9809 or [::]:9809 (empty disables metrics)"
        )
    })
}

/// Where `/metrics` is served; `None` serves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<SocketAddr>);

/// A running `/metrics` endpoint; it stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` and serves `GET /metrics` on it (HTTP/1.1) until the returned server is dropped.
pub async fn serve(address: SocketAddr) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let metrics = get();
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    continue;
                }
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| async move {
                    Ok::<_, std::convert::Infallible>(answer(metrics, &req))
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%address, "serving metrics at /metrics");
    Ok(MetricsServer { address, task })
}

fn answer<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "only /metrics is served here\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into());
    }
    reply(StatusCode::OK, CONTENT_TYPE, metrics.encode())
}

/// Starts the endpoint when an address is configured; a failure to bind is fatal to the plugin.
pub async fn start(address: MetricsAddress) -> std::io::Result<Option<MetricsServer>> {
    match address.0 {
        None => {
            tracing::info!("metrics endpoint disabled");
            Ok(None)
        }
        Some(addr) => serve(addr).await.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_name_the_problem() {
        assert_eq!(parse_address("").unwrap(), MetricsAddress(None));
        assert_eq!(parse_address("127.0.0.1:9809").unwrap().0.unwrap().port(), 9809);
        assert!(parse_address("[::]:9808").unwrap().0.is_some());
        let err = parse_address("localhost").unwrap_err();
        assert!(err.contains("\"localhost\"") && err.contains("0.0.0.0:9809"), "{err}");
        assert!(parse_address("0.0.0.0:99999").is_err());
    }

    #[test]
    fn families_are_encoded_with_the_prefix() {
        let m = get();
        m.fuse_op(FuseOp::Statfs);
        m.fuse_error(FuseOp::Lookup, libc::ENOENT);
        m.fuse_error(FuseOp::Lookup, libc::ENOENT);
        m.auth_failure(AuthFailure::HeaderSeal);
        record_rotation("success");
        set_volumes_by_key_state(&BTreeMap::from([("enabled".to_string(), 3)]));
        let text = m.encode();
        assert!(text.contains("cryptvol_fuse_operations_total{op=\"statfs\"}"), "{text}");
        assert!(text.contains("cryptvol_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}"), "{text}");
        assert!(text.contains("cryptvol_authentication_failures_total{kind=\"header_seal\"}"), "{text}");
        assert!(text.contains("cryptvol_volumes_by_key_state{state=\"enabled\"} 3"), "{text}");
        assert!(text.contains("cryptvol_locked_volumes{cause=\"access_denied\"} 0"), "{text}");
        assert!(text.contains("cryptvol_key_rotations_total{outcome=\"success\"}"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        set_volumes_by_key_state(&BTreeMap::from([("disabled".to_string(), 1)]));
        assert!(!m.encode().contains("state=\"enabled\""));
    }
}
