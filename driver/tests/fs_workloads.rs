//! Real programs on a mounted volume: SQLite in WAL mode with mmap, git, tar and rsync. Each one
//! checks itself (`PRAGMA integrity_check`, `git fsck`, a second rsync with nothing to do) and the
//! data is compared with what went in. Needs root, /dev/fuse, and sqlite3 (python3's module), git,
//! tar and rsync on PATH; `.ci/run` installs them. `CRYPTVOL_STRESS_SECS` makes the loops longer.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Volume;

/// Runs `cmd` and returns its stdout; fails the test with stdout and stderr when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

/// Extra seconds of work asked for by `CRYPTVOL_STRESS_SECS` (0 in CI).
fn stress_budget() -> Duration {
    let secs = std::env::var("CRYPTVOL_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_secs(secs)
}

const SQLITE_WORKLOAD: &str = r#"
import sqlite3, sys, random, time
path, seed, rounds, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
db = sqlite3.connect(path)
assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
db.execute("PRAGMA mmap_size=268435456")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB, n INTEGER)")
db.execute("CREATE INDEX IF NOT EXISTS t_n ON t(n)")
start, done = time.time(), 0
while done < rounds or time.time() - start < budget:
    with db:
        for _ in range(200):
            op = rng.random()
            k = "key-%d" % rng.randrange(5000)
            if op < 0.6:
                db.execute("INSERT OR REPLACE INTO t (k, v, n) VALUES (?, ?, ?)",
                           (k, rng.randbytes(rng.randrange(1, 3000)), rng.randrange(10**6)))
            elif op < 0.8:
                db.execute("UPDATE t SET n = n + 1, v = ? WHERE k = ?", (rng.randbytes(rng.randrange(1, 9000)), k))
            else:
                db.execute("DELETE FROM t WHERE k = ?", (k,))
    if done % 10 == 9:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    done += 1
# A second connection reads through the shared memory index while the first still holds the WAL.
other = sqlite3.connect(path)
assert other.execute("SELECT count(*) FROM t").fetchone()[0] == db.execute("SELECT count(*) FROM t").fetchone()[0]
print(db.execute("PRAGMA integrity_check").fetchone()[0])
print(db.execute("SELECT count(*), total(n), total(length(v)) FROM t").fetchone())
db.close(); other.close()
"#;

#[test]
fn sqlite_wal_with_mmap_survives_a_write_heavy_workload() {
    let mut vol = Volume::new();
    let db = vol.at("app.db");
    let budget = stress_budget().as_secs_f64().to_string();
    let out = run(Command::new("python3").args(["-c", SQLITE_WORKLOAD]).arg(&db).args(["7", "40", &budget]));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ok"), "integrity_check: {out}");
    let summary = lines.next().unwrap().to_owned();

    // After a remount (page cache gone, every byte read back through the cipher) the database
    // checks clean and holds the same rows.
    vol.remount();
    let check = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("PRAGMA integrity_check").fetchone()[0])
print(db.execute("SELECT count(*), total(n), total(length(v)) FROM t").fetchone())
"#;
    let again = run(Command::new("python3").args(["-c", check]).arg(&db));
    assert_eq!(again, format!("ok\n{summary}\n"));
}

#[test]
fn git_repository_with_many_commits_checks_clean() {
    let mut vol = Volume::new();
    let repo = vol.at("repo");
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&repo).args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"]);
        cmd.args(["-c", "commit.gpgsign=false", "-c", "gc.auto=0"]).args(args);
        run(&mut cmd)
    };
    std::fs::create_dir(&repo).unwrap();
    git(&["init", "-q", "-b", "main"]);
    let commits = 60 + stress_budget().as_secs() as usize * 5;
    for i in 0..commits {
        let dir = repo.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{}", i % 13)), format!("line {i}\n").repeat(i % 50 + 1)).unwrap();
        std::fs::write(repo.join("big.bin"), common::Rng::new(i as u64 + 1).bytes(20_000 + i * 37)).unwrap();
        git(&["add", "-A"]);
        if i % 10 == 5 {
            git(&["mv", &format!("d{}", i % 7), &format!("moved{i}")]);
        }
        git(&["commit", "-q", "-m", &format!("commit {i}")]);
    }
    git(&["gc", "-q"]); // packs, rewrites refs, deletes loose objects: renames and unlinks
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), commits.to_string());

    vol.remount();
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["status", "--porcelain"]), "");
}

/// Files, directories and a symlink with old times and assorted modes, under `dir`.
fn populate_old_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let files: [(&str, usize, u32); 5] = [
        ("a.txt", 10, 0o644),
        ("sub/exec.sh", 5000, 0o755),
        ("sub/deeper/big.bin", 300_000, 0o600),
        ("empty", 0, 0o640),
        ("sub/block-exact", 8192, 0o444),
    ];
    for (i, (name, len, mode)) in files.iter().enumerate() {
        let path = dir.join(name);
        std::fs::write(&path, common::Rng::new(i as u64 + 11).bytes(*len)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    std::os::unix::fs::symlink("../a.txt", dir.join("sub/link")).unwrap();
    // 2001-09-09 and 1990: well before anything the test run itself writes.
    for (name, when) in [("a.txt", "200109090146.40"), ("sub/exec.sh", "199001011200.00")] {
        run(Command::new("touch").arg("-m").arg("-t").arg(when).arg(dir.join(name)));
    }
    run(Command::new("touch").arg("-h").arg("-m").arg("-t").arg("199506061200.00").arg(dir.join("sub/link")));
    for name in ["sub/deeper/big.bin", "empty", "sub/block-exact", "sub/deeper", "sub"] {
        run(Command::new("touch").arg("-m").arg("-t").arg("198501020304.05").arg(dir.join(name)));
    }
}

/// Relative path -> (kind and mode, mtime, contents or link target), for every entry below `dir`.
fn snapshot(dir: &Path) -> Vec<(String, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let body = if meta.file_type().is_symlink() {
                std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
            } else if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else {
                std::fs::read(&path).unwrap()
            };
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, meta.mode(), meta.mtime(), body));
        }
    }
    out.sort();
    out
}

#[test]
fn tar_with_old_mtimes_extracts_exactly() {
    let vol = Volume::new();
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("src");
    populate_old_tree(&source);
    let archive = scratch.path().join("tree.tar");
    run(Command::new("tar").arg("-C").arg(&source).arg("-cf").arg(&archive).arg("."));

    let into = vol.at("extracted");
    std::fs::create_dir(&into).unwrap();
    run(Command::new("tar").arg("-C").arg(&into).arg("-xpf").arg(&archive));
    let (want, got) = (snapshot(&source), snapshot(&into));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!((&w.0, w.1, w.2), (&g.0, g.1, g.2), "name, mode and mtime");
        assert!(w.3 == g.3, "contents of {}", w.0);
    }
    // tar's own comparison agrees: no differences in contents, modes or times.
    run(Command::new("tar").arg("-C").arg(&into).arg("--compare").arg("-f").arg(&archive));
}

#[test]
fn rsync_twice_finds_nothing_to_do() {
    let mut vol = Volume::new();
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("src");
    populate_old_tree(&source);
    for i in 0..40 {
        let len = (i * 997) % 20_000;
        std::fs::write(source.join(format!("sub/many-{i}")), common::Rng::new(i as u64 + 99).bytes(len))
            .unwrap();
    }
    let from = format!("{}/", source.display());
    let to = format!("{}/", vol.at("copy").display());
    run(Command::new("rsync").args(["-a", &from, &to]));
    assert_eq!(snapshot(&source), snapshot(&vol.at("copy")));

    let itemized = run(Command::new("rsync").args(["-a", "--itemize-changes", &from, &to]));
    assert_eq!(itemized, "", "the second rsync found changes");
    // Still nothing to do after a remount, and a checksum pass finds the contents equal.
    vol.remount();
    let checked = run(Command::new("rsync").args(["-a", "--checksum", "--itemize-changes", &from, &to]));
    assert_eq!(checked, "", "rsync --checksum found differences");
    let deadline = Instant::now() + stress_budget();
    while Instant::now() < deadline {
        run(Command::new("rsync").args(["-a", "--checksum", &from, &to]));
    }
}
