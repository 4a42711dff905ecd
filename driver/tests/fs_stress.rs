//! Multi-process stress test against a model. Several worker processes (this binary started again
//! with `CRYPTVOL_STRESS_WORKER` set) run seeded random operations on their own files of one
//! mounted volume: writes at random offsets, reads, truncates, appends, renames, hard links,
//! unlinks, fsyncs, and reads and writes through shared mmaps with msync. Each checks every result
//! against its in-memory model, and all of them read one shared file. At the end the mount is
//! dropped and mounted again, and every file must match the models.
//!
//! Runs a bounded number of operations by default; `CRYPTVOL_STRESS_SECS=N` runs for N seconds,
//! `CRYPTVOL_STRESS_WORKERS` sets the process count and `CRYPTVOL_SEED` replays a printed seed.
//! Needs root and /dev/fuse. Built with `harness = false`: `main` is the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Rng, Volume};

const WORKER_ENV: &str = "CRYPTVOL_STRESS_WORKER";
/// Operations per worker when no duration is asked for.
const CI_OPS: u64 = 6000;
const SHARED: &str = "shared.bin";
const SHARED_LEN: usize = 3 * 4096 * 17 + 5;
/// Names each worker uses (`w<id>-<name>`); files come and go under them.
const NAMES: usize = 6;
/// Files stay below this size so a run covers many operations.
const MAX_SIZE: u64 = 160 * 1024;

fn shared_contents(seed: u64) -> Vec<u8> {
    Rng::new(seed ^ 0x5eed).bytes(SHARED_LEN)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn main() {
    match std::env::var(WORKER_ENV) {
        Ok(spec) => worker(&spec),
        Err(_) => coordinator(),
    }
}

fn coordinator() {
    let seed = env_u64("CRYPTVOL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let secs = env_u64("CRYPTVOL_STRESS_SECS").unwrap_or(0);
    let workers = env_u64("CRYPTVOL_STRESS_WORKERS").unwrap_or(3);
    println!("fs_stress: seed {seed} (replay with CRYPTVOL_SEED={seed}), {workers} workers, {secs} s");

    let mut vol = Volume::new();
    std::fs::write(vol.at(SHARED), shared_contents(seed)).unwrap();
    let reference = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let children: Vec<_> = (0..workers)
        .map(|id| {
            let spec =
                format!("{}|{}|{id}|{}|{secs}", vol.path().display(), reference.path().display(), seed);
            Command::new(std::env::current_exe().unwrap()).env(WORKER_ENV, spec).spawn().unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    let mut total_ops = 0;
    for (id, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failed.push(id);
        }
        let ops_file = reference.path().join(format!("w{id}.ops"));
        total_ops +=
            std::fs::read_to_string(ops_file).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    }
    assert!(failed.is_empty(), "workers {failed:?} failed; replay with CRYPTVOL_SEED={seed}");
    println!("fs_stress: {total_ops} operations in {:.1} s", started.elapsed().as_secs_f64());

    // Every byte read back through a fresh mount (no page cache) must match the models.
    vol.remount();
    assert_eq!(std::fs::read(vol.at(SHARED)).unwrap(), shared_contents(seed));
    let mut on_volume: Vec<String> = std::fs::read_dir(vol.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != SHARED)
        .collect();
    on_volume.sort();
    let mut expected: Vec<String> = std::fs::read_dir(reference.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".ops"))
        .collect();
    expected.sort();
    assert_eq!(on_volume, expected, "names after remount; seed {seed}");
    for name in &expected {
        let want = std::fs::read(reference.path().join(name)).unwrap();
        let got = std::fs::read(vol.at(name)).unwrap();
        assert!(
            want == got,
            "{name} after remount differs ({} vs {} bytes); seed {seed}",
            got.len(),
            want.len()
        );
    }
    println!("fs_stress: ok, {} files checked after remount", expected.len());
}

/// One worker's model: plaintext of each inode, and which inode each of its names links to.
struct Model {
    dir: PathBuf,
    id: u64,
    rng: Rng,
    shared: Vec<u8>,
    inodes: Vec<Vec<u8>>,
    names: BTreeMap<usize, usize>,
    log: Vec<String>,
}

fn worker(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [dir, reference, id, seed, secs] = parts[..] else { panic!("bad {WORKER_ENV}: {spec}") };
    let (id, seed, secs): (u64, u64, u64) =
        (id.parse().unwrap(), seed.parse().unwrap(), secs.parse().unwrap());
    let mut model = Model {
        dir: PathBuf::from(dir),
        id,
        rng: Rng::new(seed.wrapping_add(id.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        shared: shared_contents(seed),
        inodes: Vec::new(),
        names: BTreeMap::new(),
        log: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut ops = 0u64;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while if secs == 0 { ops < CI_OPS } else { Instant::now() < deadline } {
            model.step();
            ops += 1;
            if ops.is_multiple_of(200) {
                model.check_all();
            }
        }
        model.check_all();
    }));
    std::fs::write(Path::new(reference).join(format!("w{id}.ops")), ops.to_string()).unwrap();
    if result.is_err() {
        eprintln!("worker {id} failed after {ops} operations; last operations:");
        for line in model.log.iter().rev().take(25).rev() {
            eprintln!("  {line}");
        }
        std::process::exit(1);
    }
    for (&name, &inode) in &model.names {
        std::fs::write(Path::new(reference).join(model.file_name(name)), &model.inodes[inode]).unwrap();
    }
}

impl Model {
    fn file_name(&self, name: usize) -> String {
        format!("w{}-{name}", self.id)
    }

    fn path(&self, name: usize) -> PathBuf {
        self.dir.join(self.file_name(name))
    }

    fn note(&mut self, line: String) {
        if self.log.len() > 1000 {
            self.log.drain(..500);
        }
        self.log.push(line);
    }

    /// A name that currently exists, or `None`.
    fn existing(&mut self) -> Option<usize> {
        let present: Vec<usize> = self.names.keys().copied().collect();
        (!present.is_empty()).then(|| present[self.rng.below(present.len() as u64) as usize])
    }

    fn step(&mut self) {
        let name = self.rng.below(NAMES as u64) as usize;
        let Some(inode) = self.names.get(&name).copied() else {
            self.note(format!("create {name}"));
            File::create(self.path(name)).unwrap();
            self.inodes.push(Vec::new());
            self.names.insert(name, self.inodes.len() - 1);
            return;
        };
        match self.rng.below(100) {
            0..=24 => self.write(name, inode),
            25..=39 => self.read(name, inode),
            40..=46 => self.truncate(name, inode),
            47..=54 => self.append(name, inode),
            55..=62 => self.mmap_write(name, inode),
            63..=68 => self.mmap_read(name, inode),
            69..=73 => self.rename(name),
            74..=78 => self.link(name, inode),
            79..=82 => self.unlink(name),
            83..=86 => {
                self.note(format!("fsync {name}"));
                OpenOptions::new().write(true).open(self.path(name)).unwrap().sync_all().unwrap();
            }
            _ => self.read_shared(),
        }
    }

    fn write(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len() as u64;
        let offset = self.rng.below((size + 8192).min(MAX_SIZE));
        let len = 1 + self.rng.below(20_000.min(MAX_SIZE - offset)) as usize;
        let data = self.rng.bytes(len);
        self.note(format!("write {name} at {offset} len {len} (size {size})"));
        let file = OpenOptions::new().write(true).open(self.path(name)).unwrap();
        file.write_all_at(&data, offset).unwrap();
        let content = &mut self.inodes[inode];
        let end = offset as usize + len;
        if content.len() < end {
            content.resize(end, 0);
        }
        content[offset as usize..end].copy_from_slice(&data);
    }

    fn read(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len() as u64;
        let offset = self.rng.below(size + 100);
        let len = self.rng.below(30_000) as usize;
        self.note(format!("read {name} at {offset} len {len} (size {size})"));
        let file = File::open(self.path(name)).unwrap();
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut buf[got..], offset + got as u64).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        let content = &self.inodes[inode];
        let lo = (offset as usize).min(content.len());
        let hi = (offset as usize + len).min(content.len());
        assert!(buf[..got] == content[lo..hi], "read of {name} at {offset} len {len} differs from the model");
    }

    fn truncate(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len() as u64;
        let new = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.below(size + 1),
            _ => self.rng.below((size + 10_000).min(MAX_SIZE)),
        };
        self.note(format!("truncate {name} to {new} (size {size})"));
        OpenOptions::new().write(true).open(self.path(name)).unwrap().set_len(new).unwrap();
        self.inodes[inode].resize(new as usize, 0);
    }

    fn append(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len() as u64;
        let len = 1 + self.rng.below(9000.min(MAX_SIZE.saturating_sub(size).max(1))) as usize;
        let data = self.rng.bytes(len);
        self.note(format!("append {name} len {len} (size {size})"));
        let mut file = OpenOptions::new().append(true).open(self.path(name)).unwrap();
        file.write_all(&data).unwrap();
        self.inodes[inode].extend_from_slice(&data);
    }

    /// Maps the whole file shared, changes a range in memory, msyncs and unmaps.
    fn mmap_write(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len();
        if size == 0 {
            return;
        }
        let offset = self.rng.below(size as u64) as usize;
        let len = 1 + self.rng.below((size - offset).min(12_000) as u64) as usize;
        let data = self.rng.bytes(len);
        self.note(format!("mmap write {name} at {offset} len {len} (size {size})"));
        let file = OpenOptions::new().read(true).write(true).open(self.path(name)).unwrap();
        let map = Mapping::new(&file, size, true);
        // SAFETY: the mapping covers `size` bytes and `offset + len <= size`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.ptr.add(offset), len) };
        map.sync();
        drop(map);
        self.inodes[inode][offset..offset + len].copy_from_slice(&data);
    }

    fn mmap_read(&mut self, name: usize, inode: usize) {
        let size = self.inodes[inode].len();
        if size == 0 {
            return;
        }
        self.note(format!("mmap read {name} (size {size})"));
        let file = File::open(self.path(name)).unwrap();
        let map = Mapping::new(&file, size, false);
        // SAFETY: the mapping covers `size` readable bytes.
        let seen = unsafe { std::slice::from_raw_parts(map.ptr, size) };
        assert!(seen == self.inodes[inode].as_slice(), "mmap read of {name} differs from the model");
    }

    fn rename(&mut self, from: usize) {
        let to = self.rng.below(NAMES as u64) as usize;
        self.note(format!("rename {from} -> {to}"));
        std::fs::rename(self.path(from), self.path(to)).unwrap();
        // Renaming one name of an inode onto another of the same inode does nothing (POSIX).
        if from != to && self.names.get(&to) != self.names.get(&from) {
            let inode = self.names.remove(&from).unwrap();
            self.names.insert(to, inode);
        }
    }

    fn link(&mut self, name: usize, inode: usize) {
        let to = self.rng.below(NAMES as u64) as usize;
        if self.names.contains_key(&to) {
            return;
        }
        self.note(format!("link {name} -> {to}"));
        std::fs::hard_link(self.path(name), self.path(to)).unwrap();
        self.names.insert(to, inode);
    }

    fn unlink(&mut self, name: usize) {
        self.note(format!("unlink {name}"));
        std::fs::remove_file(self.path(name)).unwrap();
        self.names.remove(&name);
    }

    fn read_shared(&mut self) {
        let offset = self.rng.below(SHARED_LEN as u64) as usize;
        let len = self.rng.below(20_000).min((SHARED_LEN - offset) as u64) as usize;
        self.note(format!("read shared at {offset} len {len}"));
        let mut buf = vec![0u8; len];
        File::open(self.dir.join(SHARED)).unwrap().read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == self.shared[offset..offset + len], "shared file differs at {offset}");
    }

    fn check_all(&mut self) {
        if let Some(name) = self.existing() {
            self.note(format!("check all (from {name})"));
        }
        for (&name, &inode) in &self.names {
            let got = std::fs::read(self.path(name)).unwrap();
            assert!(got == self.inodes[inode], "{} differs from the model", self.file_name(name));
        }
        let mut present: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&format!("w{}-", self.id)))
            .collect();
        present.sort();
        let mut want: Vec<String> = self.names.keys().map(|&n| self.file_name(n)).collect();
        want.sort();
        assert_eq!(present, want, "names in the directory");
    }
}

/// A shared mapping of the first `len` bytes of a file, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize, writable: bool) -> Self {
        use std::os::fd::AsRawFd;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping of an open file; the kernel picks the address.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Mapping { ptr: ptr.cast(), len }
    }

    fn sync(&self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
