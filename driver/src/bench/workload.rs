//! The file system workloads: each one runs against a directory (the view of one target) and
//! returns its figures.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::BenchError;

const MIB: u64 = 1 << 20;
const SMALL: usize = 4096;

/// One measured figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub value: f64,
}

/// Whether a larger value of a figure in `unit` is better.
pub fn higher_is_better(unit: &str) -> bool {
    unit != "s" && unit != "ms" && unit != "MiB"
}

/// What the workloads need to know about a run.
#[derive(Debug, Clone)]
pub struct Workloads {
    /// Bytes of the sequential write and read.
    pub size: u64,
    /// A tar of a source tree.
    pub tree_tar: PathBuf,
    /// Empty files created, statted and deleted.
    pub files: usize,
    /// Random 4 KiB reads and writes (each).
    pub random_ops: usize,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Drops clean caches: the kernel's page, dentry and inode caches when this process may (root),
/// and in any case the cached pages of every file under `paths`.
pub fn drop_caches(paths: &[&Path]) {
    for path in paths {
        fadvise_tree(path);
    }
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3\n");
}

fn fadvise_tree(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                fadvise_tree(&entry.path());
            }
        }
    } else if meta.is_file() {
        if let Ok(file) = File::open(path) {
            let _ = file.sync_data();
            // SAFETY: the descriptor is open for the duration of the call.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn mb_per_s(bytes: u64, start: Instant) -> f64 {
    bytes as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn per_s(ops: usize, start: Instant) -> f64 {
    ops as f64 / start.elapsed().as_secs_f64()
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Writes `size` bytes to `path` in requests of `request` bytes, then fsyncs; MB/s.
fn write_sequential(path: &Path, size: u64, request: usize) -> Result<f64, BenchError> {
    let mut buf = vec![0u8; request.max(MIB as usize)];
    fill(&mut buf, size);
    let start = Instant::now();
    let mut file = File::create(path).map_err(io(format!("cannot create {}", path.display())))?;
    let mut done = 0u64;
    while done < size {
        let at = (done % MIB) as usize;
        let len = request.min((size - done) as usize).min(buf.len() - at);
        file.write_all(&buf[at..at + len]).map_err(io("write"))?;
        done += len as u64;
    }
    file.sync_all().map_err(io("fsync"))?;
    Ok(mb_per_s(size, start))
}

fn read_sequential(path: &Path) -> Result<f64, BenchError> {
    let mut buf = vec![0u8; MIB as usize];
    let start = Instant::now();
    let file = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let (mut at, mut total) = (0u64, 0u64);
    loop {
        let n = file.read_at(&mut buf, at).map_err(io("read"))?;
        if n == 0 {
            break;
        }
        at += n as u64;
        total += n as u64;
    }
    Ok(mb_per_s(total, start))
}

/// Random aligned 4 KiB preads, then pwrites (fsync at the end), over a file of `size` bytes.
fn random_io(path: &Path, size: u64, ops: usize, backing: &Path) -> Result<(f64, f64), BenchError> {
    let blocks = (size / SMALL as u64).max(1);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * SMALL as u64
    };
    let mut buf = vec![0u8; SMALL];
    drop_caches(&[path, backing]);
    let file = File::options().read(true).write(true).open(path).map_err(io("cannot open for random I/O"))?;
    let start = Instant::now();
    for _ in 0..ops {
        file.read_exact_at(&mut buf, next()).map_err(io("random read"))?;
    }
    let reads = per_s(ops, start);
    fill(&mut buf, 7);
    let start = Instant::now();
    for _ in 0..ops {
        file.write_all_at(&buf, next()).map_err(io("random write"))?;
    }
    file.sync_all().map_err(io("fsync"))?;
    Ok((reads, per_s(ops, start)))
}

fn timed_command(cmd: &mut Command) -> Result<f64, BenchError> {
    let start = Instant::now();
    let status =
        cmd.stdout(std::process::Stdio::null()).status().map_err(io(format!("cannot run {cmd:?}")))?;
    if !status.success() {
        return Err(BenchError::Tool { tool: format!("{cmd:?}"), detail: status.to_string() });
    }
    Ok(start.elapsed().as_secs_f64())
}

fn read_tree(dir: &Path, buf: &mut [u8]) -> Result<(), BenchError> {
    for entry in std::fs::read_dir(dir).map_err(io(format!("cannot list {}", dir.display())))? {
        let entry = entry.map_err(io("readdir"))?;
        let kind = entry.file_type().map_err(io("file type"))?;
        if kind.is_dir() {
            read_tree(&entry.path(), buf)?;
        } else if kind.is_file() {
            let file = File::open(entry.path()).map_err(io("open"))?;
            let mut at = 0;
            loop {
                let n = file.read_at(buf, at).map_err(io("read"))?;
                if n == 0 {
                    break;
                }
                at += n as u64;
            }
        }
    }
    Ok(())
}

fn many_files(dir: &Path, count: usize) -> Result<Vec<Figure>, BenchError> {
    std::fs::create_dir(dir).map_err(io("mkdir"))?;
    let paths: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("file-{i:05}"))).collect();
    let start = Instant::now();
    for p in &paths {
        File::create(p).map_err(io("create"))?;
    }
    let create = per_s(count, start);
    let start = Instant::now();
    for p in &paths {
        std::fs::symlink_metadata(p).map_err(io("stat"))?;
    }
    let stat = per_s(count, start);
    let start = Instant::now();
    for p in &paths {
        std::fs::remove_file(p).map_err(io("unlink"))?;
    }
    let delete = per_s(count, start);
    std::fs::remove_dir(dir).map_err(io("rmdir"))?;
    Ok(vec![
        Figure { name: "files_create", unit: "ops/s", value: create },
        Figure { name: "files_stat", unit: "ops/s", value: stat },
        Figure { name: "files_delete", unit: "ops/s", value: delete },
    ])
}

impl Workloads {
    /// A short pass that warms the target (first-use costs: key derivation, thread start).
    pub fn warm_up(&self, root: &Path) -> Result<(), BenchError> {
        let path = root.join("warm-up.bin");
        write_sequential(&path, (16 * MIB).min(self.size), MIB as usize)?;
        read_sequential(&path)?;
        std::fs::remove_file(&path).map_err(io("remove warm-up file"))
    }

    /// One repetition of every workload on `root`, whose files live under `backing`.
    pub fn run(&self, root: &Path, backing: &Path) -> Result<Vec<Figure>, BenchError> {
        let mut figures = Vec::new();
        let mut push = |name, unit, value| figures.push(Figure { name, unit, value });

        let seq = root.join("seq.bin");
        push("seq_write", "MB/s", write_sequential(&seq, self.size, MIB as usize)?);
        drop_caches(&[&seq, backing]);
        push("seq_read_cold", "MB/s", read_sequential(&seq)?);
        let (reads, writes) = random_io(&seq, self.size, self.random_ops, backing)?;
        push("rand_read_4k", "IOPS", reads);
        push("rand_write_4k", "IOPS", writes);
        std::fs::remove_file(&seq).map_err(io("remove"))?;

        let small = root.join("small.bin");
        push("small_write_4k", "MB/s", write_sequential(&small, self.size / 4, SMALL)?);
        std::fs::remove_file(&small).map_err(io("remove"))?;

        let tree = root.join("tree");
        std::fs::create_dir(&tree).map_err(io("mkdir tree"))?;
        push(
            "tree_extract",
            "s",
            timed_command(Command::new("tar").arg("-xf").arg(&self.tree_tar).arg("-C").arg(&tree))?,
        );
        drop_caches(&[backing]);
        push("tree_ls_lR", "s", timed_command(Command::new("ls").arg("-lR").arg(&tree))?);
        drop_caches(&[backing]);
        let mut buf = vec![0u8; MIB as usize];
        let start = Instant::now();
        read_tree(&tree, &mut buf)?;
        push("tree_read_all", "s", start.elapsed().as_secs_f64());
        push("tree_rm_rf", "s", timed_command(Command::new("rm").arg("-rf").arg(&tree))?);

        figures.extend(many_files(&root.join("many"), self.files)?);
        Ok(figures)
    }
}

/// Makes `out`, a tar of the Python standard library without `__pycache__` and
/// `site-packages`, holding at most `limit` files when given.
pub fn make_tree_tar(out: &Path, limit: Option<usize>) -> Result<usize, BenchError> {
    let output = Command::new("python3")
        .args(["-c", "import sysconfig;print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .map_err(io("cannot run python3 to find its standard library"))?;
    let stdlib = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !stdlib.is_dir() {
        return Err(BenchError::Tool { tool: "python3".into(), detail: "no standard library found".into() });
    }
    let mut files = Vec::new();
    collect_files(&stdlib, Path::new(""), &mut files, limit.unwrap_or(usize::MAX))?;
    let list = out.with_extension("list");
    let mut text = Vec::new();
    for f in &files {
        text.extend_from_slice(f.as_os_str().as_encoded_bytes());
        text.push(b'\n');
    }
    std::fs::write(&list, text).map_err(io("cannot write the tree file list"))?;
    let mut tar = Command::new("tar");
    tar.arg("-cf").arg(out).arg("-C").arg(&stdlib).arg("--no-recursion").arg("-T").arg(&list);
    timed_command(&mut tar)?;
    let _ = std::fs::remove_file(&list);
    Ok(files.len())
}

fn collect_files(base: &Path, rel: &Path, out: &mut Vec<PathBuf>, limit: usize) -> Result<(), BenchError> {
    let mut entries: Vec<_> = std::fs::read_dir(base.join(rel))
        .map_err(io("cannot list the standard library"))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if out.len() >= limit {
            return Ok(());
        }
        let name = entry.file_name();
        if name == "__pycache__" || name == "site-packages" {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        let path = rel.join(&name);
        if kind.is_dir() {
            collect_files(base, &path, out, limit)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
