//! Random-operation test: one seeded sequence of file system operations runs against a plain
//! directory and against a mounted volume, and every result (data, sizes, errno) and the final
//! trees must agree. Set `CRYPTVOL_SEED` to replay a failing seed.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{Rng, Volume};

/// Outcome of one operation on one side: a value, or the errno.
type Outcome<T> = Result<T, i32>;

fn outcome<T>(result: std::io::Result<T>) -> Outcome<T> {
    result.map_err(|err| err.raw_os_error().unwrap_or(-1))
}

/// Names the operations pick from: short, long (side files), non-UTF-8, and too long.
fn name_pool() -> Vec<OsString> {
    let mut names: Vec<OsString> =
        ["a", "b", "c", "dir1", "dir2", "x.txt"].iter().map(OsString::from).collect();
    names.push(OsString::from("long-".repeat(40))); // 200 bytes
    names.push(OsString::from("名".repeat(85))); // 255 bytes
    names.push(OsString::from_vec(vec![0xff, 0x80, b'r', b'a', b'w']));
    names
}

/// Directories the operations work in (relative to the root; some will not exist).
const DIRS: [&str; 5] = ["", "dir1", "dir2", "dir1/dir2", "dir2/a"];
/// Symlink targets: relative names, so nothing ever resolves outside the tree.
const TARGETS: [&str; 4] = ["a", "dir1", "nowhere", "b"];

struct Handle {
    reference: File,
    volume: File,
    append: bool,
}

struct Model {
    rng: Rng,
    seed: u64,
    step: usize,
    reference: PathBuf,
    volume: PathBuf,
    names: Vec<OsString>,
    handles: Vec<Handle>,
    tally: std::cell::RefCell<BTreeMap<String, (u32, u32)>>,
}

impl Model {
    fn pick_path(&mut self) -> PathBuf {
        let dir = DIRS[self.rng.below(DIRS.len() as u64) as usize];
        let name = if self.rng.below(200) == 0 {
            OsString::from("n".repeat(256))
        } else {
            self.names[self.rng.below(self.names.len() as u64) as usize].clone()
        };
        Path::new(dir).join(name)
    }

    fn check<T: PartialEq + std::fmt::Debug>(&self, what: &str, reference: T, volume: T) {
        assert_eq!(
            reference, volume,
            "seed {} step {}: {what}: reference (left) and volume (right) differ",
            self.seed, self.step
        );
    }

    /// Runs `op` on both trees and checks that the outcomes agree.
    fn both<T: PartialEq + std::fmt::Debug>(&self, what: &str, op: impl Fn(&Path) -> std::io::Result<T>) {
        let reference = outcome(op(&self.reference));
        let volume = outcome(op(&self.volume));
        self.check(what, &reference, &volume);
        self.tally(what, volume.is_ok());
    }

    /// Counts successes and failures per operation, so a run that only ever hits ENOENT shows.
    fn tally(&self, what: &str, ok: bool) {
        let op = what.split(' ').next().unwrap_or(what).to_owned();
        let mut tally = self.tally.borrow_mut();
        let entry = tally.entry(op).or_insert((0, 0));
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    fn step(&mut self) {
        let a = self.pick_path();
        let b = self.pick_path();
        let offset = match self.rng.below(4) {
            0 => self.rng.below(64),
            1 => self.rng.below(3) * 4096 + self.rng.below(3) * 4095,
            _ => self.rng.below(20_000),
        };
        let len = match self.rng.below(4) {
            0 => self.rng.below(16) as usize,
            1 => 4096,
            _ => self.rng.below(9000) as usize,
        };
        let data = self.rng.bytes(len);
        let what = format!("{a:?} {b:?} offset {offset} len {len}");
        match self.rng.below(17) {
            0 | 1 => {
                let what = format!("write {what}");
                self.both(&what, |root| {
                    let f =
                        OpenOptions::new().write(true).create(true).truncate(false).open(root.join(&a))?;
                    f.write_all_at(&data, offset)
                });
            }
            2 | 3 => {
                self.both(&format!("read {what}"), |root| {
                    let mut buf = vec![0u8; len];
                    let n = File::open(root.join(&a))?.read_at(&mut buf, offset)?;
                    buf.truncate(n);
                    Ok(buf)
                });
            }
            4 => {
                let size = offset + len as u64;
                self.both(&format!("truncate {what}"), |root| {
                    OpenOptions::new().write(true).open(root.join(&a))?.set_len(size)
                });
            }
            5 => {
                self.both(&format!("append {what}"), |root| {
                    OpenOptions::new().append(true).create(true).open(root.join(&a))?.write_all(&data)
                });
            }
            6 => {
                self.both(&format!("rename {what}"), |root| fs::rename(root.join(&a), root.join(&b)));
            }
            7 => {
                // A symlink gets no second hard link on a volume (docs/SEMANTICS.md); the
                // reference is held to the same rule.
                self.both(&format!("link {what}"), |root| {
                    if fs::symlink_metadata(root.join(&a)).is_ok_and(|m| m.file_type().is_symlink()) {
                        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                    }
                    fs::hard_link(root.join(&a), root.join(&b))
                });
            }
            8 => {
                self.both(&format!("unlink {what}"), |root| fs::remove_file(root.join(&a)));
            }
            9 => {
                self.both(&format!("mkdir {what}"), |root| fs::create_dir(root.join(&a)));
            }
            10 => {
                self.both(&format!("rmdir {what}"), |root| fs::remove_dir(root.join(&a)));
            }
            11 => {
                let target = TARGETS[self.rng.below(TARGETS.len() as u64) as usize];
                self.both(&format!("symlink {target} {what}"), |root| {
                    std::os::unix::fs::symlink(target, root.join(&a))?;
                    fs::read_link(root.join(&a))
                });
            }
            12 => {
                self.both(&format!("lstat {what}"), |root| {
                    fs::symlink_metadata(root.join(&a)).map(|m| summary(&m))
                });
                self.both(&format!("readlink {what}"), |root| fs::read_link(root.join(&a)));
            }
            13 => {
                self.both(&format!("readdir {what}"), |root| {
                    listing(&root.join(a.parent().unwrap_or(Path::new(""))))
                });
            }
            14 => self.open_handle(&a),
            15 | 16 => self.use_handle(offset, &data),
            _ => unreachable!(),
        }
    }

    fn open_handle(&mut self, path: &Path) {
        let append = self.rng.below(3) == 0;
        let open = |root: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .append(append)
                .create(true)
                .truncate(false)
                .open(root.join(path))
        };
        let (reference, volume) = (outcome(open(&self.reference)), outcome(open(&self.volume)));
        match (reference, volume) {
            (Ok(reference), Ok(volume)) => {
                self.tally("open", true);
                if self.handles.len() >= 4 {
                    self.handles.remove(0);
                }
                self.handles.push(Handle { reference, volume, append });
            }
            (reference, volume) => {
                self.check(&format!("open {path:?}"), reference.map(|_| ()).err(), volume.map(|_| ()).err())
            }
        }
    }

    /// Writes or reads through a kept-open handle; its name may have been renamed or unlinked.
    fn use_handle(&mut self, offset: u64, data: &[u8]) {
        if self.handles.is_empty() {
            return;
        }
        let index = self.rng.below(self.handles.len() as u64) as usize;
        let read = self.rng.below(2) == 0;
        let handle = &mut self.handles[index];
        let (reference, volume) = if read {
            let read_at = |f: &File| {
                let mut buf = vec![0u8; data.len()];
                f.read_at(&mut buf, offset).map(|n| {
                    buf.truncate(n);
                    (buf, f.metadata().map(|m| m.len()).unwrap_or(0))
                })
            };
            (outcome(read_at(&handle.reference)), outcome(read_at(&handle.volume)))
        } else if handle.append {
            let append = |f: &mut File| {
                f.write_all(data).map(|()| (Vec::new(), f.metadata().map(|m| m.len()).unwrap_or(0)))
            };
            (outcome(append(&mut handle.reference)), outcome(append(&mut handle.volume)))
        } else {
            let write_at = |f: &File| {
                f.write_all_at(data, offset)
                    .map(|()| (Vec::new(), f.metadata().map(|m| m.len()).unwrap_or(0)))
            };
            (outcome(write_at(&handle.reference)), outcome(write_at(&handle.volume)))
        };
        self.tally("handle", volume.is_ok());
        self.check(
            &format!("handle {index} read {read} offset {offset} len {}", data.len()),
            reference,
            volume,
        );
    }
}

/// What is compared of a `stat`: type, size (not for directories, whose backing size differs), links.
type Summary = (String, u64, u64);

/// A whole tree: path → (stat summary, contents or link target).
type Tree = BTreeMap<Vec<u8>, (Summary, Vec<u8>)>;

fn summary(meta: &fs::Metadata) -> Summary {
    let size = if meta.is_dir() { 0 } else { meta.len() };
    (format!("{:?}", meta.file_type()), size, meta.nlink())
}

fn listing(dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut names =
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

fn snapshot(root: &Path) -> Tree {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for name in listing(&dir).unwrap() {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(&path).unwrap();
            let body = if meta.is_file() {
                fs::read(&path).unwrap()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&path).unwrap().into_os_string().into_vec()
            } else {
                pending.push(path.clone());
                Vec::new()
            };
            out.insert(
                path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec(),
                (summary(&meta), body),
            );
        }
    }
    out
}

fn run(seed: u64, steps: usize) {
    let reference = tempfile::tempdir().unwrap();
    let mut volume = Volume::new();
    let mut model = Model {
        rng: Rng::new(seed),
        seed,
        step: 0,
        reference: reference.path().to_path_buf(),
        volume: volume.path().to_path_buf(),
        names: name_pool(),
        handles: Vec::new(),
        tally: Default::default(),
    };
    // Start from a populated tree so most operations find their parents and targets.
    for dir in ["dir1", "dir2", "dir1/dir2", "dir2/a"] {
        model.both(&format!("setup mkdir {dir}"), |root| fs::create_dir(root.join(dir)));
    }
    for (i, dir) in DIRS.iter().enumerate() {
        for name in ["b", "c", "x.txt"] {
            let body = vec![i as u8; 5000 * i + 7];
            model.both(&format!("setup write {dir}/{name}"), |root| {
                fs::write(root.join(dir).join(name), &body)
            });
        }
    }
    for step in 0..steps {
        model.step = step;
        model.step();
        if step % 1000 == 999 {
            // Everything must also survive a remount.
            model.handles.clear();
            volume.remount();
        }
    }
    model.handles.clear();
    eprintln!("seed {seed}: operations (ok, failed): {:?}", model.tally.borrow());
    let (expected, actual) = (snapshot(reference.path()), snapshot(volume.path()));
    assert!(
        expected == actual,
        "seed {seed}: final trees differ:\nreference {expected:#?}\nvolume {actual:#?}"
    );
    volume.remount();
    assert!(snapshot(volume.path()) == expected, "seed {seed}: tree differs after the final remount");
    eprintln!("seed {seed}: final tree of {} entries matches", expected.len());
}

#[test]
fn random_operations_match_a_plain_directory() {
    let seeds: Vec<u64> = match std::env::var("CRYPTVOL_SEED") {
        Ok(seed) => vec![seed.parse().expect("CRYPTVOL_SEED is a number")],
        Err(_) => vec![0x5eed_0001, 0x5eed_0002, 0x5eed_0003],
    };
    for seed in seeds {
        eprintln!("random operations with seed {seed}");
        run(seed, 2500);
    }
}
