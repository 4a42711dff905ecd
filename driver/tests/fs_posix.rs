//! POSIX behaviour of a mounted volume, checked through the real kernel FUSE path.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::{errno, Volume};

fn list(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    names
}

#[test]
fn rename_over_an_existing_file() {
    let v = Volume::new();
    fs::write(v.at("old"), b"new contents").unwrap();
    fs::write(v.at("target"), b"to be replaced").unwrap();
    fs::rename(v.at("old"), v.at("target")).unwrap();
    assert_eq!(fs::read(v.at("target")).unwrap(), b"new contents");
    assert_eq!(errno(fs::metadata(v.at("old"))), libc::ENOENT);
    assert_eq!(list(v.path()), ["target"]);
}

#[test]
fn rename_directories_and_across_directories() {
    let v = Volume::new();
    fs::create_dir_all(v.at("a/sub")).unwrap();
    fs::write(v.at("a/sub/f"), b"deep").unwrap();
    fs::create_dir(v.at("b")).unwrap();
    fs::rename(v.at("a"), v.at("b/a2")).unwrap();
    assert_eq!(fs::read(v.at("b/a2/sub/f")).unwrap(), b"deep");
    fs::rename(v.at("b/a2/sub/f"), v.at("f")).unwrap();
    assert_eq!(fs::read(v.at("f")).unwrap(), b"deep");
    // Over an empty directory: allowed; over a non-empty one: ENOTEMPTY.
    fs::create_dir(v.at("empty")).unwrap();
    fs::rename(v.at("b/a2"), v.at("empty")).unwrap();
    assert!(v.at("empty/sub").is_dir());
    fs::create_dir(v.at("full")).unwrap();
    fs::write(v.at("full/x"), b"").unwrap();
    assert_eq!(errno(fs::rename(v.at("empty"), v.at("full"))), libc::ENOTEMPTY);
    assert!(v.at("full").is_dir() && v.at("empty/sub").is_dir());
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (from, to) = (CString::new(from.as_os_str().as_bytes())?, CString::new(to.as_os_str().as_bytes())?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn rename_noreplace_and_exchange() {
    let v = Volume::new();
    fs::write(v.at("a"), b"A").unwrap();
    fs::write(v.at("b"), b"B").unwrap();
    assert_eq!(errno(renameat2(&v.at("a"), &v.at("b"), libc::RENAME_NOREPLACE)), libc::EEXIST);
    renameat2(&v.at("a"), &v.at("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(v.at("a")).unwrap(), b"B");
    assert_eq!(fs::read(v.at("b")).unwrap(), b"A");
    renameat2(&v.at("a"), &v.at("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(list(v.path()), ["b", "c"]);
}

#[test]
fn hard_links_share_inode_and_size() {
    let v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    fs::write(v.at("one"), b"").unwrap();
    fs::hard_link(v.at("one"), v.at("d/two")).unwrap();
    let mut f = OpenOptions::new().write(true).open(v.at("one")).unwrap();
    f.write_all(&[7u8; 10_000]).unwrap();
    drop(f);
    let (a, b) = (fs::metadata(v.at("one")).unwrap(), fs::metadata(v.at("d/two")).unwrap());
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.len(), 10_000);
    assert_eq!(b.nlink(), 2);
    assert_eq!(fs::read(v.at("d/two")).unwrap(), vec![7u8; 10_000]);
    fs::remove_file(v.at("one")).unwrap();
    assert_eq!(fs::metadata(v.at("d/two")).unwrap().nlink(), 1);
    assert_eq!(fs::read(v.at("d/two")).unwrap().len(), 10_000);

    // A symlink's target is bound to its one name, so it gets no second hard link
    // (docs/SEMANTICS.md); the symlink itself is untouched.
    std::os::unix::fs::symlink("d/two", v.at("sym")).unwrap();
    assert_eq!(errno(fs::hard_link(v.at("sym"), v.at("d/sym2"))), libc::EPERM);
    assert_eq!(errno(fs::symlink_metadata(v.at("d/sym2"))), libc::ENOENT);
    assert_eq!(fs::symlink_metadata(v.at("sym")).unwrap().nlink(), 1);
    assert_eq!(fs::read_link(v.at("sym")).unwrap(), Path::new("d/two"));
}

#[test]
fn symlinks_report_plaintext_length_and_round_trip() {
    let v = Volume::new();
    let targets: [&[u8]; 4] =
        [b"target-file", b"../../some/where/else", "ñame/目標".as_bytes(), b"\xff\xfe raw"];
    for (i, target) in targets.iter().enumerate() {
        let link = v.at(&format!("link{i}"));
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &link).unwrap();
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(meta.len(), target.len() as u64);
        assert_eq!(fs::read_link(&link).unwrap().as_os_str().as_bytes(), *target);
    }
    fs::write(v.at("real"), b"through the link").unwrap();
    std::os::unix::fs::symlink("real", v.at("to-real")).unwrap();
    assert_eq!(fs::read(v.at("to-real")).unwrap(), b"through the link");
    // Targets up to 3043 bytes fit; longer ones are refused.
    let long = "a/".repeat(1521) + "b";
    std::os::unix::fs::symlink(&long, v.at("long")).unwrap();
    assert_eq!(fs::read_link(v.at("long")).unwrap().as_os_str().len(), 3043);
    assert_eq!(errno(std::os::unix::fs::symlink(long + "c", v.at("too-long"))), libc::ENAMETOOLONG);
}

#[test]
fn truncate_down_and_up() {
    let v = Volume::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(v.at("f"), &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(v.at("f")).unwrap();
    f.set_len(5000).unwrap();
    assert_eq!(fs::read(v.at("f")).unwrap(), &data[..5000]);
    f.set_len(4096).unwrap();
    assert_eq!(fs::read(v.at("f")).unwrap(), &data[..4096]);
    f.set_len(9000).unwrap();
    let mut expected = data[..4096].to_vec();
    expected.resize(9000, 0);
    assert_eq!(fs::read(v.at("f")).unwrap(), expected);
    f.set_len(0).unwrap();
    assert_eq!(fs::metadata(v.at("f")).unwrap().len(), 0);
    drop(f);
    // O_TRUNC on open.
    fs::write(v.at("f"), b"longer contents here").unwrap();
    fs::write(v.at("f"), b"short").unwrap();
    assert_eq!(fs::read(v.at("f")).unwrap(), b"short");
}

#[test]
fn writes_beyond_eof_read_back_zeros() {
    let v = Volume::new();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(v.at("f")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 3 * 4096 + 100).unwrap();
    let mut expected = b"head".to_vec();
    expected.resize(3 * 4096 + 100, 0);
    expected.extend_from_slice(b"tail");
    assert_eq!(fs::metadata(v.at("f")).unwrap().len(), expected.len() as u64);
    assert_eq!(fs::read(v.at("f")).unwrap(), expected);
    // A file created by a write at an offset starts with zeros.
    let g = File::create(v.at("g")).unwrap();
    g.write_all_at(b"x", 5000).unwrap();
    let mut buf = Vec::new();
    File::open(v.at("g")).unwrap().read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), 5001);
    assert!(buf[..5000].iter().all(|&b| b == 0));
}

#[test]
fn append_from_two_handles_interleaved() {
    let v = Volume::new();
    fs::write(v.at("log"), b"start\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(v.at("log")).unwrap();
    let mut b = OpenOptions::new().append(true).open(v.at("log")).unwrap();
    let mut expected = b"start\n".to_vec();
    for i in 0..200 {
        let line_a = format!("a{i:04} {}\n", "x".repeat(i % 37));
        let line_b = format!("b{i:04} {}\n", "y".repeat(i * 7 % 4100));
        a.write_all(line_a.as_bytes()).unwrap();
        b.write_all(line_b.as_bytes()).unwrap();
        expected.extend_from_slice(line_a.as_bytes());
        expected.extend_from_slice(line_b.as_bytes());
    }
    drop((a, b));
    assert_eq!(fs::read(v.at("log")).unwrap(), expected);
}

#[test]
fn names_up_to_255_bytes_in_any_encoding() {
    let v = Volume::new();
    let ascii = OsString::from("a".repeat(255));
    let utf8 = OsString::from("名".repeat(85)); // 3 bytes each
    let raw = OsString::from_vec((0..255u32).map(|i| 0x80 | (i % 0x7f) as u8).collect());
    let short_raw = OsString::from_vec(vec![0xff, 0xfe, b'!', 0x80]);
    for name in [&ascii, &utf8, &raw, &short_raw] {
        assert!(name.len() <= 255);
        fs::write(v.path().join(name), name.as_bytes()).unwrap();
        assert_eq!(fs::read(v.path().join(name)).unwrap(), name.as_bytes());
    }
    let dir = OsString::from("d".repeat(255));
    fs::create_dir(v.path().join(&dir)).unwrap();
    fs::write(v.path().join(&dir).join(&utf8), b"nested").unwrap();
    std::os::unix::fs::symlink("x", v.path().join(&dir).join(&ascii)).unwrap();
    fs::hard_link(v.path().join(&raw), v.path().join(&dir).join(&raw)).unwrap();
    let mut expected = vec![ascii.clone(), utf8.clone(), raw.clone(), short_raw.clone(), dir.clone()];
    expected.sort();
    assert_eq!(list(v.path()), expected);
    let mut expected_sub = vec![utf8.clone(), ascii.clone(), raw.clone()];
    expected_sub.sort();
    assert_eq!(list(&v.path().join(&dir)), expected_sub);

    // Long names survive rename and unlink, including their side files.
    let renamed = OsString::from("r".repeat(200));
    fs::rename(v.path().join(&ascii), v.path().join(&renamed)).unwrap();
    fs::remove_file(v.path().join(&utf8)).unwrap();
    let mut expected = vec![renamed, raw.clone(), short_raw, dir.clone()];
    expected.sort();
    assert_eq!(list(v.path()), expected);
    fs::remove_file(v.path().join(&dir).join(&utf8)).unwrap();
    fs::remove_file(v.path().join(&dir).join(&ascii)).unwrap();
    fs::remove_file(v.path().join(&dir).join(&raw)).unwrap();
    fs::remove_dir(v.path().join(&dir)).unwrap();

    let too_long = OsString::from("z".repeat(256));
    assert_eq!(errno(fs::write(v.path().join(&too_long), b"")), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::create_dir(v.path().join(&too_long))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::metadata(v.path().join(&too_long))), libc::ENAMETOOLONG);
    assert_eq!(errno(std::os::unix::fs::symlink("x", v.path().join(&too_long))), libc::ENAMETOOLONG);
}

#[test]
fn timestamps_with_nanoseconds() {
    let v = Volume::new();
    fs::write(v.at("f"), b"t").unwrap();
    let path = CString::new(v.at("f").as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 123_456_789 },
        libc::timespec { tv_sec: 1_700_000_000, tv_nsec: 987_654_321 },
    ];
    // SAFETY: a valid path and a two-element timespec array, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let meta = fs::metadata(v.at("f")).unwrap();
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_234_567_890, 123_456_789));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_700_000_000, 987_654_321));

    // UTIME_NOW for mtime, UTIME_OMIT for atime.
    let now = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: as above.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), now.as_ptr(), 0) };
    assert_eq!(rc, 0);
    let meta = fs::metadata(v.at("f")).unwrap();
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_234_567_890, 123_456_789));
    assert!(meta.mtime() > 1_700_000_000);

    // Symlinks keep their own times.
    std::os::unix::fs::symlink("f", v.at("l")).unwrap();
    let link = CString::new(v.at("l").as_os_str().as_bytes()).unwrap();
    // SAFETY: as above.
    let rc =
        unsafe { libc::utimensat(libc::AT_FDCWD, link.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let meta = fs::symlink_metadata(v.at("l")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_700_000_000, 987_654_321));
}

#[test]
fn chmod_and_chown_read_back() {
    let v = Volume::new();
    fs::write(v.at("f"), b"mode").unwrap();
    fs::set_permissions(v.at("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(v.at("f")).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(v.at("f"), Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(v.at("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    fs::set_permissions(v.at("f"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(v.at("f")).unwrap().mode() & 0o7777, 0o4755);
    fs::create_dir(v.at("d")).unwrap();
    fs::set_permissions(v.at("d"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(fs::metadata(v.at("d")).unwrap().mode() & 0o7777, 0o1777);
    // New files get the requested mode exactly, whatever this process's umask.
    let f = OpenOptions::new().write(true).create_new(true).mode(0o666).open(v.at("g")).unwrap();
    drop(f);
    let umask = {
        // SAFETY: umask only swaps the process mask; it is restored right away.
        let old = unsafe { libc::umask(0) };
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        old
    };
    assert_eq!(fs::metadata(v.at("g")).unwrap().mode() & 0o777, 0o666 & !umask);
}

#[test]
fn mkdir_rmdir_readdir() {
    let v = Volume::new();
    let mut expected = Vec::new();
    for i in 0..50 {
        let name = format!("dir-{i:02}");
        fs::create_dir(v.at(&name)).unwrap();
        expected.push(OsString::from(name));
        let file = format!("file-{i:02}");
        fs::write(v.at(&file), file.as_bytes()).unwrap();
        expected.push(OsString::from(file));
    }
    expected.sort();
    assert_eq!(list(v.path()), expected);
    assert_eq!(errno(fs::create_dir(v.at("dir-00"))), libc::EEXIST);
    fs::write(v.at("dir-01/inner"), b"").unwrap();
    assert_eq!(errno(fs::remove_dir(v.at("dir-01"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_dir(v.at("file-01"))), libc::ENOTDIR);
    for i in (0..50).step_by(2) {
        fs::remove_dir(v.at(&format!("dir-{i:02}"))).unwrap();
    }
    expected.retain(|n| {
        !(n.to_string_lossy().starts_with("dir-")
            && n.to_string_lossy()[4..].parse::<u32>().unwrap() % 2 == 0)
    });
    assert_eq!(list(v.path()), expected);
    assert!(list(&v.at("dir-03")).is_empty());
    File::open(v.path()).unwrap().sync_all().unwrap(); // fsyncdir
                                                       // A FIFO is an entry like any other.
    let fifo = CString::new(v.at("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fs::metadata(v.at("fifo")).unwrap().file_type()));
}

#[test]
fn large_writes_and_reads() {
    let v = Volume::new();
    let data: Vec<u8> =
        (0..(4 << 20) + 123).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(v.at("big")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(v.at("big")).unwrap().len(), data.len() as u64);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact(&mut back).unwrap();
    assert!(back == data, "1 MiB writes read back differently");
    let mut middle = vec![0u8; 3 << 20];
    f.read_exact_at(&mut middle, 777).unwrap();
    assert!(middle[..] == data[777..777 + (3 << 20)]);
}

fn tree(root: &Path, dir: &Path, out: &mut BTreeMap<OsString, (u64, u64, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().as_os_str().to_owned();
        let body = if meta.is_file() {
            fs::read(&path).unwrap()
        } else if meta.file_type().is_symlink() {
            fs::read_link(&path).unwrap().into_os_string().into_vec()
        } else {
            Vec::new()
        };
        out.insert(rel, (meta.ino(), meta.len(), body));
        if meta.is_dir() {
            tree(root, &path, out);
        }
    }
}

#[test]
fn remount_shows_the_same_tree_and_inode_numbers() {
    let mut v = Volume::new();
    fs::create_dir_all(v.at("a/b/c")).unwrap();
    fs::write(v.at("a/b/c/file"), b"persisted").unwrap();
    fs::write(v.at("top"), vec![1u8; 70_000]).unwrap();
    fs::hard_link(v.at("top"), v.at("a/top-link")).unwrap();
    std::os::unix::fs::symlink("a/b", v.at("sym")).unwrap();
    fs::write(v.path().join("q".repeat(230)), b"long name").unwrap();
    let root_ino = fs::metadata(v.path()).unwrap().ino();
    let mut before = BTreeMap::new();
    tree(v.path(), v.path(), &mut before);
    v.remount();
    let mut after = BTreeMap::new();
    tree(v.path(), v.path(), &mut after);
    assert_eq!(before, after);
    assert_eq!(fs::metadata(v.path()).unwrap().ino(), root_ino);
    assert_eq!(before.len(), 8);
}

#[test]
fn statfs_reports_the_backing_store() {
    let v = Volume::new();
    let path = CString::new(v.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out pointer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0);
    assert_eq!(st.f_namemax, 255);
}

#[test]
fn busy_unmount_detaches_and_drops_the_keys() {
    let mut v = Volume::new();
    fs::write(v.at("f"), b"still open").unwrap();
    let open = File::open(v.at("f")).unwrap();
    let mounted_dev = fs::metadata(v.path()).unwrap().dev();
    v.unmount(); // busy: detached lazily
    assert_ne!(fs::metadata(v.path()).unwrap().dev(), mounted_dev, "still mounted");
    let mut buf = [0u8; 4];
    assert_eq!(errno(open.read_at(&mut buf, 0)), libc::ENOKEY);
}

#[test]
fn unmount_releases_every_reference_to_the_keys() {
    use cryptvol::fs::{init_root, mount, MountOptions};
    use std::sync::Arc;

    let (backing, mountpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_root(backing.path()).unwrap();
    init_root(backing.path()).unwrap(); // idempotent
    let keys = Arc::new(cryptvol::keys::DataKey::generate().unwrap().derive());
    let opts = MountOptions { volume_id: "keys-test".into(), ..MountOptions::default() };
    let m = mount(backing.path(), mountpoint.path(), Arc::clone(&keys), opts.clone()).unwrap();
    assert_eq!(m.mountpoint(), mountpoint.path().canonicalize().unwrap());
    let debug = format!("{m:?}");
    assert!(debug.contains("keys-test") && !debug.contains("Keys"), "{debug}");
    fs::write(mountpoint.path().join("f"), b"data").unwrap();
    m.unmount().unwrap();
    assert_eq!(Arc::strong_count(&keys), 1);

    // Busy: detached lazily, and the keys are released all the same.
    let m = mount(backing.path(), mountpoint.path(), Arc::clone(&keys), opts).unwrap();
    let open = File::open(mountpoint.path().join("f")).unwrap();
    drop(m);
    assert_eq!(Arc::strong_count(&keys), 1);
    drop(open);
}

#[test]
fn read_only_mount_reads_and_refuses_changes() {
    use cryptvol::fs::{mount, MountOptions};
    use std::sync::Arc;

    let mut v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    fs::write(v.at("d/f"), b"readable").unwrap();
    v.unmount();
    let keys = Arc::new(v.key().derive());
    let opts = MountOptions { volume_id: "ro-test".into(), read_only: true, threads: 2 };
    let m = mount(v.backing(), v.path(), keys, opts).unwrap();
    assert_eq!(fs::read(v.at("d/f")).unwrap(), b"readable");
    assert_eq!(errno(fs::write(v.at("d/f"), b"x")), libc::EROFS);
    assert_eq!(errno(fs::create_dir(v.at("e"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(v.at("d/f"))), libc::EROFS);
    m.unmount().unwrap();
}
