//! Concurrent writers on one file: partial-block updates from several handles and threads never
//! lose an update and never leave a block that fails authentication.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Barrier;
use std::thread;

use common::{Rng, Volume};

const THREADS: usize = 4;

/// Opens for `O_DIRECT` I/O: the kernel then sends writes inside the file to the file system in
/// parallel instead of serializing them on its own inode lock, so the file system's lock is what
/// keeps partial-block updates apart.
fn open_direct(path: &std::path::Path) -> File {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).unwrap()
}

#[test]
fn disjoint_bytes_in_shared_blocks() {
    let mut v = Volume::new();
    // Thread t owns bytes [k*100 + t*25, k*100 + t*25 + 25): every 4 KiB block is shared by all
    // threads, so each write is a read-modify-write of a block another thread is changing.
    let stripes = 1000u64;
    fs::write(v.at("f"), vec![0u8; stripes as usize * 100]).unwrap();
    fs::hard_link(v.at("f"), v.at("f-link")).unwrap();
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        for t in 0..THREADS as u64 {
            let (path, barrier) = (v.at(if t % 2 == 0 { "f" } else { "f-link" }), &barrier);
            scope.spawn(move || {
                let file = open_direct(&path);
                barrier.wait();
                for k in (0..stripes).step_by(2).chain((0..stripes / 2).rev().map(|j| 2 * j + 1)) {
                    file.write_all_at(&[b'a' + t as u8; 25], k * 100 + t * 25).unwrap();
                }
            });
        }
    });
    let mut model = Vec::new();
    for _ in 0..stripes {
        for t in 0..THREADS as u8 {
            model.extend_from_slice(&[b'a' + t; 25]);
        }
    }
    assert!(fs::read(v.at("f")).unwrap() == model);
    v.remount();
    assert!(fs::read(v.at("f-link")).unwrap() == model, "differs after remount");
}

#[test]
fn overlapping_writes_with_equal_data_and_readers() {
    let v = Volume::new();
    let size = 64 * 1024;
    let pattern: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(v.at("f"), vec![0u8; size]).unwrap();
    let barrier = Barrier::new(THREADS + 1);
    thread::scope(|scope| {
        for t in 0..THREADS as u64 {
            let (path, pattern, barrier) = (v.at("f"), &pattern, &barrier);
            scope.spawn(move || {
                let file = open_direct(&path);
                let mut rng = Rng::new(t + 1);
                barrier.wait();
                for _ in 0..300 {
                    // Unaligned ranges that overlap between threads, all writing the same bytes.
                    let start = rng.below(size as u64 - 1) as usize;
                    let len = 1 + rng.below(9000.min((size - start) as u64)) as usize;
                    file.write_all_at(&pattern[start..start + len], start as u64).unwrap();
                }
                file.write_all_at(&pattern[size - 1..], size as u64 - 1).unwrap();
            });
        }
        // A reader running alongside must never see an authentication failure.
        let (path, barrier) = (v.at("f"), &barrier);
        scope.spawn(move || {
            let file = open_direct(&path);
            barrier.wait();
            let mut buf = vec![0u8; 16 * 1024];
            for i in 0..300u64 {
                file.read_at(&mut buf, (i * 4093) % size as u64).unwrap();
            }
        });
    });
    let content = fs::read(v.at("f")).unwrap();
    assert_eq!(content.len(), size);
    // Bytes no thread wrote are still zero; the rest are the pattern.
    for (i, (&got, &want)) in content.iter().zip(&pattern).enumerate() {
        assert!(got == want || got == 0, "byte {i}: {got} is neither {want} nor 0");
    }
}

#[test]
fn concurrent_appends_keep_every_record() {
    let v = Volume::new();
    fs::write(v.at("log"), b"").unwrap();
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (path, barrier) = (v.at("log"), &barrier);
            scope.spawn(move || {
                let mut file = OpenOptions::new().append(true).open(path).unwrap();
                barrier.wait();
                for i in 0..250 {
                    let record = format!("<{t}:{i:04}:{}>\n", "z".repeat((i * 37 + t * 11) % 3000));
                    file.write_all(record.as_bytes()).unwrap();
                }
            });
        }
    });
    let log = fs::read_to_string(v.at("log")).unwrap();
    let mut seen = vec![Vec::new(); THREADS];
    for line in log.lines() {
        let body = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')).expect("intact record");
        let mut parts = body.splitn(3, ':');
        let (t, i) = (
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
        );
        assert_eq!(parts.next().unwrap().len(), (i * 37 + t * 11) % 3000);
        seen[t].push(i);
    }
    for records in seen {
        assert_eq!(records, (0..250).collect::<Vec<_>>(), "records lost or reordered within a writer");
    }
}

#[test]
fn racing_writes_and_truncates_leave_every_block_valid() {
    let mut v = Volume::new();
    fs::write(v.at("f"), vec![1u8; 50_000]).unwrap();
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        for t in 0..THREADS as u64 {
            let (path, barrier) = (v.at("f"), &barrier);
            scope.spawn(move || {
                let file = if t % 2 == 0 {
                    open_direct(&path)
                } else {
                    OpenOptions::new().read(true).write(true).open(path).unwrap()
                };
                let mut rng = Rng::new(100 + t);
                barrier.wait();
                for _ in 0..200 {
                    let offset = rng.below(60_000);
                    match rng.below(4) {
                        0 => file.set_len(offset).unwrap(),
                        1 => {
                            let mut buf = vec![0u8; 5000];
                            file.read_at(&mut buf, offset).unwrap();
                        }
                        _ => {
                            let len = 1 + rng.below(6000) as usize;
                            file.write_all_at(&rng.bytes(len), offset).unwrap();
                        }
                    }
                }
            });
        }
    });
    let size = fs::metadata(v.at("f")).unwrap().len();
    assert_eq!(fs::read(v.at("f")).unwrap().len() as u64, size);
    v.remount();
    assert_eq!(fs::read(v.at("f")).unwrap().len() as u64, size, "a block fails after remount");
}
