//! Crash safety: writers rewrite and extend files with fsync on a staged volume while the node
//! plugin is killed with SIGKILL; the plugin is started again and heals the mount. Then every
//! 4 KiB block reads as its old or its new contents or fails with EIO (never other bytes),
//! `cryptvol fsck` reports exactly the blocks that fail, and after `--repair-truncate` every file
//! reads whole. Each block written carries its file, index and generation, so the check is exact.
//! Needs root and /dev/fuse. `CRYPTVOL_CRASH_ROUNDS` repeats the kill (default 4).
#![allow(clippy::unwrap_used)]

mod csi_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptvol_proto::csi::v1 as csi;
use csi::node_client::NodeClient;
use csi_harness::{capability, Harness};
use tonic::transport::Channel;

const BLOCK: usize = 4096;
const WRITERS: usize = 4;
/// Blocks each file starts with; writers extend files up to `MAX_BLOCKS`.
const START_BLOCKS: u64 = 48;
const MAX_BLOCKS: u64 = 900;

/// The contents of block `block` of file `file` at generation `generation`: a readable tag, then
/// bytes derived from the three numbers.
fn block_contents(file: usize, block: u64, generation: u64) -> Vec<u8> {
    let mut out = format!("file {file:02} block {block:06} gen {generation:08}\n").into_bytes();
    let mut x = ((file as u64 + 1) * 0x9e37_79b9) ^ block.wrapping_mul(0x85eb_ca6b) ^ (generation << 20);
    while out.len() < BLOCK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// Which generation a block holds, if it is a well-formed block of `file` at index `block`.
fn generation_of(file: usize, block: u64, data: &[u8]) -> Option<u64> {
    let line = data.get(..data.iter().take(64).position(|&b| b == b'\n')?)?;
    let text = std::str::from_utf8(line).ok()?;
    let generation: u64 =
        text.strip_prefix(&format!("file {file:02} block {block:06} gen "))?.parse().ok()?;
    (data == block_contents(file, block, generation).as_slice()).then_some(generation)
}

/// Per block of one file: the generation last acknowledged (write returned) and the newest one
/// ever issued. After a crash a block must hold a generation between the two.
#[derive(Default, Clone)]
struct Ledger {
    acked: Vec<Option<u64>>,
    issued: Vec<u64>,
}

struct NodeProcess(Child);

impl NodeProcess {
    fn start(h: &Harness, kms: &Path, sock: &Path, state: &Path) -> NodeProcess {
        let _ = std::fs::remove_file(sock);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptvol-node"));
        cmd.arg("--endpoint").arg(format!("unix://{}", sock.display()));
        cmd.arg("--backing-root").arg(&h.backing).arg("--kms-config").arg(kms).arg("--node-id").arg("n1");
        cmd.arg("--state-dir").arg(state);
        NodeProcess(cmd.env("CRYPTVOL_LOG_LEVEL", "warn").spawn().unwrap())
    }

    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lazily unmounts the staging path when the test ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

async fn connect(sock: &Path) -> NodeClient<Channel> {
    let probe = sock.to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the node socket", Duration::from_secs(30), || probe.exists())
    })
    .await
    .unwrap();
    NodeClient::new(cryptvol::server::connect(sock).await.unwrap())
}

/// Writes whole blocks of generation `generation` at `first..first + count`, then fsyncs.
fn write_run(file: &File, index: usize, first: u64, count: u64, generation: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(count as usize * BLOCK);
    for block in first..first + count {
        buf.extend_from_slice(&block_contents(index, block, generation));
    }
    file.write_all_at(&buf, first * BLOCK as u64)?;
    file.sync_data()
}

/// Rewrites and extends file `index` until a write fails (the plugin died) or `stop` is set.
fn writer(
    path: PathBuf,
    index: usize,
    ledger: Arc<Mutex<Ledger>>,
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut rng = index as u64 * 7919 + 17;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while !stop.load(Ordering::Relaxed) {
        let len = ledger.lock().unwrap().issued.len() as u64;
        // Mostly rewrites of runs up to 300 blocks (more than one backing write each), some
        // extensions by up to 300 blocks.
        let (first, count) = if len == 0 || (next() % 4 == 0 && len < MAX_BLOCKS) {
            (len, 1 + next() % 300.min(MAX_BLOCKS - len))
        } else {
            let first = next() % len;
            (first, 1 + next() % 300.min(len - first))
        };
        let generation = {
            let mut l = ledger.lock().unwrap();
            let generation = ops.fetch_add(1, Ordering::SeqCst) + 1;
            for block in first..first + count {
                if block as usize >= l.issued.len() {
                    l.issued.push(generation);
                    l.acked.push(None);
                } else {
                    l.issued[block as usize] = generation;
                }
            }
            generation
        };
        if write_run(&file, index, first, count, generation).is_err() {
            return;
        }
        let mut l = ledger.lock().unwrap();
        for block in first..first + count {
            l.acked[block as usize] = Some(generation);
        }
    }
}

/// Reads one block with O_DIRECT (no read-ahead over neighbouring blocks): its bytes or errno.
fn read_block(path: &Path, block: u64, size: u64) -> Result<Vec<u8>, i32> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| e.raw_os_error().unwrap())?;
    let want = (size - block * BLOCK as u64).min(BLOCK as u64) as usize;
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, block * BLOCK as u64).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    Ok(buf)
}

/// Checks every block of every file through the mount against the ledgers; returns the
/// unreadable (file name, block) pairs.
fn check_blocks(mount: &Path, ledgers: &[Ledger]) -> BTreeSet<(String, u64)> {
    let mut unreadable = BTreeSet::new();
    for (index, ledger) in ledgers.iter().enumerate() {
        let name = format!("f{index}");
        let path = mount.join(&name);
        let size = std::fs::metadata(&path).unwrap().len();
        let acked_len = ledger.acked.iter().take_while(|a| a.is_some()).count() as u64;
        assert!(
            size >= acked_len * BLOCK as u64 && size <= ledger.issued.len() as u64 * BLOCK as u64,
            "{name}: size {size} outside [{acked_len}, {}] blocks",
            ledger.issued.len()
        );
        for block in 0..size.div_ceil(BLOCK as u64) {
            match read_block(&path, block, size) {
                Ok(data) => {
                    let generation = generation_of(index, block, &data).unwrap_or_else(|| {
                        panic!(
                            "{name} block {block} holds bytes no write put there: {:?}",
                            (
                                data.len(),
                                data.iter().zip(block_contents(index, block, 0)).position(|(a, b)| *a != b)
                            )
                        )
                    });
                    let (acked, issued) = (ledger.acked[block as usize], ledger.issued[block as usize]);
                    assert!(
                        acked.is_none_or(|a| generation >= a) && generation <= issued,
                        "{name} block {block}: generation {generation}, acknowledged {acked:?}, issued {issued}"
                    );
                }
                Err(errno) => {
                    assert_eq!(errno, libc::EIO, "{name} block {block}: errno {errno}");
                    unreadable.insert((name.clone(), block));
                }
            }
        }
    }
    unreadable
}

/// Runs `cryptvol fsck` on the volume; returns its exit code and parsed JSON report.
fn fsck(h: &Harness, kms: &Path, volume_id: &str, repair: bool) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptvol"));
    cmd.arg("fsck").arg("--backing-root").arg(&h.backing).arg("--volume-id").arg(volume_id);
    cmd.arg("--kms-config").arg(kms).arg("--json");
    if repair {
        cmd.arg("--repair-truncate");
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("fsck output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), report)
}

/// The unreadable blocks fsck reports, as (file name, block); whole files of impossible length
/// count every block.
fn fsck_blocks(report: &serde_json::Value, mount_sizes: &BTreeMap<String, u64>) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    for p in report["problems"].as_array().unwrap() {
        let name = p["path"].as_str().unwrap().trim_start_matches('/').to_owned();
        match p["kind"].as_str().unwrap() {
            "unreadableBlock" => {
                out.insert((name, p["block"].as_u64().unwrap()));
            }
            "badLength" => {
                for block in 0..mount_sizes[&name].div_ceil(BLOCK as u64) {
                    out.insert((name.clone(), block));
                }
            }
            other => panic!("unexpected damage {other}: {p}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_leaves_old_or_new_blocks_and_fsck_finds_the_rest() {
    let rounds: usize = std::env::var("CRYPTVOL_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let mut h = Harness::start().await;
    // Room for every writer's largest file (the volume's capacity is enforced).
    let v = h.create_with("crash", csi_harness::params("app"), 64 << 20).await.unwrap();
    let kms = h.path("kms.yaml");
    let config = format!(
        "default: local\nconnections:\n  local:\n    provider: local\n    keyFile: {}\n",
        h.key_file.display()
    );
    std::fs::write(&kms, config).unwrap();
    let (sock, state, staging) = (h.path("crash-node.sock"), h.path("node-state"), h.path("staging"));
    let _unmount = Unmount(staging.clone());

    let mut plugin = NodeProcess::start(&h, &kms, &sock, &state);
    let mut node = connect(&sock).await;
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    let ops = Arc::new(AtomicU64::new(0));
    let ledgers: Vec<_> = (0..WRITERS).map(|_| Arc::new(Mutex::new(Ledger::default()))).collect();
    for (index, ledger) in ledgers.iter().enumerate() {
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(staging.join(format!("f{index}")))
            .unwrap();
        write_run(&file, index, 0, START_BLOCKS, 0).unwrap();
        *ledger.lock().unwrap() =
            Ledger { acked: vec![Some(0); START_BLOCKS as usize], issued: vec![0; START_BLOCKS as usize] };
    }

    let mut torn_total = 0;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = ledgers
            .iter()
            .enumerate()
            .map(|(index, ledger)| {
                let (path, ledger, ops, stop) =
                    (staging.join(format!("f{index}")), ledger.clone(), ops.clone(), stop.clone());
                std::thread::spawn(move || writer(path, index, ledger, ops, stop))
            })
            .collect();
        // Kill once the writers are well under way.
        let target = ops.load(Ordering::SeqCst) + 60;
        let progress = ops.clone();
        tokio::task::spawn_blocking(move || {
            wait_until("the writers", Duration::from_secs(120), || progress.load(Ordering::SeqCst) >= target)
        })
        .await
        .unwrap();
        plugin.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }

        // Started again with its state, the plugin re-serves the staging path.
        plugin = NodeProcess::start(&h, &kms, &sock, &state);
        let probe = staging.join("f0");
        tokio::task::spawn_blocking(move || {
            wait_until("the healed volume", Duration::from_secs(60), || {
                File::open(&probe).and_then(|f| f.metadata()).is_ok()
            })
        })
        .await
        .unwrap();
        let snapshot: Vec<Ledger> = ledgers.iter().map(|l| l.lock().unwrap().clone()).collect();
        let unreadable = check_blocks(&staging, &snapshot);
        let sizes: BTreeMap<String, u64> = (0..WRITERS)
            .map(|i| (format!("f{i}"), std::fs::metadata(staging.join(format!("f{i}"))).unwrap().len()))
            .collect();
        let (code, report) = fsck(&h, &kms, &v.volume_id, false);
        assert_eq!(fsck_blocks(&report, &sizes), unreadable, "fsck and the mount disagree: {report}");
        assert_eq!(code, if unreadable.is_empty() { 0 } else { 4 }, "{report}");
        println!(
            "round {round}: {} operations so far, {} unreadable blocks: {unreadable:?}",
            ops.load(Ordering::SeqCst),
            unreadable.len()
        );
        torn_total += unreadable.len();

        // Repair with no mount serving the volume, then serve it again: every file reads whole,
        // and what survived is still old-or-new per block.
        plugin.kill();
        let (code, report) = fsck(&h, &kms, &v.volume_id, true);
        assert_eq!(code, if unreadable.is_empty() { 0 } else { 1 }, "{report}");
        assert_eq!(fsck(&h, &kms, &v.volume_id, false).0, 0, "damage left after the repair");
        plugin = NodeProcess::start(&h, &kms, &sock, &state);
        let probe = staging.join("f0");
        tokio::task::spawn_blocking(move || {
            wait_until("the healed volume", Duration::from_secs(60), || {
                File::open(&probe).and_then(|f| f.metadata()).is_ok()
            })
        })
        .await
        .unwrap();
        for (index, ledger) in ledgers.iter().enumerate() {
            let mut l = ledger.lock().unwrap();
            let size = std::fs::metadata(staging.join(format!("f{index}"))).unwrap().len();
            // The repaired length is the new truth: later writers extend from it.
            let blocks = size.div_ceil(BLOCK as u64) as usize;
            l.acked.truncate(blocks);
            l.issued.truncate(blocks);
            assert_eq!(size % BLOCK as u64, 0, "f{index}: whole blocks only were written");
        }
        let snapshot: Vec<Ledger> = ledgers.iter().map(|l| l.lock().unwrap().clone()).collect();
        assert!(check_blocks(&staging, &snapshot).is_empty(), "unreadable blocks after the repair");
        for ledger in &ledgers {
            let mut l = ledger.lock().unwrap();
            // Blocks now hold one definite generation each; whatever it is counts as acknowledged.
            let issued = l.issued.clone();
            l.acked = issued.iter().map(|_| Some(0)).collect();
        }
    }
    println!("{rounds} crashes, {torn_total} unreadable blocks found and repaired in all");

    // The text report, for a volume named by its directory, ends with the summary line.
    let out = Command::new(env!("CARGO_BIN_EXE_cryptvol"))
        .arg("fsck")
        .arg("--volume-dir")
        .arg(h.backing.join(&v.volume_id))
        .arg("--kms-config")
        .arg(&kms)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let summary = format!("{WRITERS} files, ");
    assert!(text.contains(&summary) && text.contains(" 0 problems"), "{text}");
}
