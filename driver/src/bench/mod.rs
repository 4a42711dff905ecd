//! `cryptvol bench`: cryptvol side by side with the plain backing directory and with gocryptfs on
//! the same file system, plus the latency and memory of the CSI operations.
//!
//! Every target runs the same workloads ([`workload`]) after a warm-up; each figure is the median
//! of the repetitions. How to run it and what the figures were is in `docs/BENCHMARKS.md`.

pub mod csi;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use workload::{drop_caches, higher_is_better, Figure, Workloads};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("{call} failed: {status}")]
    Csi { call: &'static str, status: tonic::Status },
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    Config(#[from] crate::kms::config::ConfigError),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The directory on the file system under test; everything goes in a fresh subdirectory.
    pub dir: PathBuf,
    /// Bytes of the sequential write and read (the 4 KiB write uses a quarter of it).
    pub size: u64,
    pub repeat: usize,
    pub skip_gocryptfs: bool,
    /// At most this many files in the source tree (all of the Python standard library if `None`).
    pub tree_files: Option<usize>,
    /// Empty files created, statted and deleted.
    pub files: usize,
    /// Random 4 KiB reads, and as many writes.
    pub random_ops: usize,
    /// Volumes for the CSI latency and memory figures.
    pub volumes: usize,
    /// Simultaneous CreateVolume calls.
    pub concurrent_creates: usize,
}

impl BenchOptions {
    pub fn new(dir: PathBuf) -> Self {
        BenchOptions {
            dir,
            size: 1 << 30,
            repeat: 3,
            skip_gocryptfs: false,
            tree_files: None,
            files: 10_000,
            random_ops: 10_000,
            volumes: 100,
            concurrent_creates: 50,
        }
    }
}

/// One figure of one target: the median and every sample.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub unit: &'static str,
    pub median: f64,
    pub samples: Vec<f64>,
}

/// The outcome of a run, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, String>,
    pub settings: BTreeMap<String, String>,
    /// Target name (`plain`, `cryptvol`, `gocryptfs`) to figure name to its measurement.
    pub targets: BTreeMap<String, BTreeMap<String, Measured>>,
    /// Targets that did not run, and why.
    pub skipped: BTreeMap<String, String>,
    /// CSI operation latency (ms, s) and node memory (MiB).
    pub csi: BTreeMap<String, Measured>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn collect(runs: Vec<Vec<Figure>>) -> BTreeMap<String, Measured> {
    let mut out: BTreeMap<String, Measured> = BTreeMap::new();
    for figure in runs.into_iter().flatten() {
        let entry = out.entry(figure.name.to_string()).or_insert_with(|| Measured {
            unit: figure.unit,
            median: 0.0,
            samples: Vec::new(),
        });
        entry.samples.push(figure.value);
    }
    for m in out.values_mut() {
        m.median = median(m.samples.clone());
    }
    out
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn machine(dir: &Path) -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("cpu".into(), cpu.unwrap_or("unknown").to_string());
    m.insert("cores".into(), cores.to_string());
    m.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
    );
    m.insert("memory".into(), mem.lines().next().unwrap_or("").trim_start_matches("MemTotal:").trim().into());
    let fs_type = command_line("stat", &["-f", "-c", "%T", &dir.display().to_string()]);
    m.insert("backing_fs".into(), fs_type.unwrap_or_else(|| "unknown".into()));
    let gocryptfs = command_line("gocryptfs", &["-version"]);
    m.insert("gocryptfs".into(), gocryptfs.unwrap_or_else(|| "absent".into()));
    m
}

/// Runs `repeat` repetitions of the workloads on `root` after a warm-up.
fn measure_target(
    w: &Workloads,
    root: &Path,
    backing: &Path,
    repeat: usize,
) -> Result<BTreeMap<String, Measured>, BenchError> {
    w.warm_up(root)?;
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        drop_caches(&[backing]);
        runs.push(w.run(root, backing)?);
    }
    Ok(collect(runs))
}

fn gocryptfs_available() -> Result<(), String> {
    match Command::new("gocryptfs").arg("-version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("gocryptfs -version failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("gocryptfs not found: {e}")),
    }
}

fn run_status(cmd: &mut Command) -> Result<(), BenchError> {
    let out = cmd.output().map_err(io(format!("cannot run {cmd:?}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::Tool {
        tool: format!("{cmd:?}"),
        detail: String::from_utf8_lossy(&out.stderr).trim().into(),
    })
}

fn bench_gocryptfs(
    w: &Workloads,
    dir: &Path,
    repeat: usize,
) -> Result<BTreeMap<String, Measured>, BenchError> {
    let (cipher, plain) = (dir.join("cipher"), dir.join("plain"));
    for d in [&cipher, &plain] {
        std::fs::create_dir_all(d).map_err(io("cannot create the gocryptfs directories"))?;
    }
    run_status(Command::new("gocryptfs").args(["-init", "-q", "-extpass", "echo pw"]).arg(&cipher))?;
    run_status(Command::new("gocryptfs").args(["-q", "-extpass", "echo pw"]).arg(&cipher).arg(&plain))?;
    let result = measure_target(w, &plain, &cipher, repeat);
    let unmounted = run_status(Command::new("fusermount3").arg("-u").arg(&plain));
    if unmounted.is_err() {
        let _ = Command::new("fusermount3").arg("-uz").arg(&plain).status();
    }
    result
}

async fn bench_cryptvol(
    w: &Workloads,
    dir: &Path,
    repeat: usize,
) -> Result<BTreeMap<String, Measured>, BenchError> {
    let plugins = csi::Plugins::start(dir)?;
    let volume = plugins.create("bench-fs").await?;
    let staging = dir.join("staging");
    if let Err(e) = plugins.stage(&volume, &staging).await {
        plugins.remove(&volume.volume_id, &staging, None).await;
        return Err(e);
    }
    let data = plugins.backing.join(&volume.volume_id);
    let (w2, staging2) = (w.clone(), staging.clone());
    let result = tokio::task::spawn_blocking(move || measure_target(&w2, &staging2, &data, repeat))
        .await
        .map_err(|e| BenchError::Tool { tool: "tokio".into(), detail: e.to_string() });
    plugins.remove(&volume.volume_id, &staging, None).await;
    result?
}

/// Runs the whole benchmark; the working directory under `opts.dir` is removed afterwards.
pub async fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let work = opts.dir.join(format!("cryptvol-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io(format!("cannot create {}", work.display())))?;
    let work = work.canonicalize().map_err(io("cannot resolve the work directory"))?;
    let result = run_in(opts, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(opts: &BenchOptions, work: &Path) -> Result<Report, BenchError> {
    let mkdir = |name: &str| -> Result<PathBuf, BenchError> {
        let d = work.join(name);
        std::fs::create_dir_all(&d).map_err(io(format!("cannot create {}", d.display())))?;
        Ok(d)
    };
    // The CSI figures come first, so that the idle memory is that of a fresh node plugin.
    let csi_figures = csi::operation_figures(&mkdir("csi")?, opts.volumes, opts.concurrent_creates).await?;
    let csi = collect(vec![csi_figures]);

    let tree_tar = work.join("tree.tar");
    let tree_count = workload::make_tree_tar(&tree_tar, opts.tree_files)?;
    let w = Workloads { size: opts.size, tree_tar, files: opts.files, random_ops: opts.random_ops };

    let mut targets = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    let plain = mkdir("plain")?;
    let (w2, repeat) = (w.clone(), opts.repeat);
    let measured = tokio::task::spawn_blocking(move || measure_target(&w2, &plain, &plain, repeat))
        .await
        .map_err(|e| BenchError::Tool { tool: "tokio".into(), detail: e.to_string() })??;
    targets.insert("plain".to_string(), measured);
    targets.insert("cryptvol".to_string(), bench_cryptvol(&w, &mkdir("cryptvol")?, opts.repeat).await?);
    let gocryptfs =
        if opts.skip_gocryptfs { Err("--skip-gocryptfs given".to_string()) } else { gocryptfs_available() };
    match gocryptfs {
        Ok(()) => {
            let (w2, dir, repeat) = (w.clone(), mkdir("gocryptfs")?, opts.repeat);
            let measured = tokio::task::spawn_blocking(move || bench_gocryptfs(&w2, &dir, repeat))
                .await
                .map_err(|e| BenchError::Tool { tool: "tokio".into(), detail: e.to_string() })??;
            targets.insert("gocryptfs".to_string(), measured);
        }
        Err(reason) => {
            println!("gocryptfs skipped: {reason}");
            skipped.insert("gocryptfs".to_string(), reason);
        }
    }

    let mut settings = BTreeMap::new();
    settings.insert("size_bytes".into(), opts.size.to_string());
    settings.insert("small_write_bytes".into(), (opts.size / 4).to_string());
    settings.insert("repeat".into(), opts.repeat.to_string());
    settings.insert("tree_files".into(), tree_count.to_string());
    settings.insert("empty_files".into(), opts.files.to_string());
    settings.insert("random_ops".into(), opts.random_ops.to_string());
    settings.insert("csi_volumes".into(), opts.volumes.to_string());
    settings.insert("concurrent_creates".into(), opts.concurrent_creates.to_string());
    Ok(Report { machine: machine(&opts.dir), settings, targets, skipped, csi })
}

/// Speed of cryptvol relative to `other` for one figure: above 1 means cryptvol is faster.
fn speed_ratio(unit: &str, cryptvol: f64, other: f64) -> f64 {
    if higher_is_better(unit) {
        cryptvol / other
    } else {
        other / cryptvol
    }
}

impl Report {
    /// The table of medians, with cryptvol's speed relative to plain and to gocryptfs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let get = |target: &str, figure: &str| self.targets.get(target).and_then(|t| t.get(figure));
        out.push_str(&format!(
            "| {:<16} | {:>6} | {:>10} | {:>10} | {:>10} | {:>8} | {:>12} |\n",
            "figure", "unit", "plain", "cryptvol", "gocryptfs", "vs plain", "vs gocryptfs"
        ));
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
        let Some(cv) = self.targets.get("cryptvol") else { return out };
        for (name, m) in cv {
            let cell = |t: &str| get(t, name).map_or("-".to_string(), |m| format!("{:.2}", m.median));
            let ratio = |t: &str| {
                get(t, name)
                    .map_or("-".to_string(), |o| format!("{:.2}x", speed_ratio(m.unit, m.median, o.median)))
            };
            out.push_str(&format!(
                "| {:<16} | {:>6} | {:>10} | {:>10} | {:>10} | {:>8} | {:>12} |\n",
                name,
                m.unit,
                cell("plain"),
                cell("cryptvol"),
                cell("gocryptfs"),
                ratio("plain"),
                ratio("gocryptfs")
            ));
        }
        out.push('\n');
        out.push_str("| CSI figure | unit | value |\n| --- | --- | ---: |\n");
        for (name, m) in &self.csi {
            out.push_str(&format!("| {name} | {} | {:.2} |\n", m.unit, m.median));
        }
        out
    }
}
