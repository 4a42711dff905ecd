//! The rest of the POSIX surface on a real mount: SEEK_DATA/SEEK_HOLE, copy_file_range and
//! reflink requests, `du`, sockets, sticky and setgid directories, directory timestamps.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{errno, Volume};

fn lseek(file: &fs::File, offset: i64, whence: i32) -> std::io::Result<i64> {
    // SAFETY: a plain system call on an open descriptor.
    match unsafe { libc::lseek(file.as_raw_fd(), offset, whence) } {
        -1 => Err(std::io::Error::last_os_error()),
        at => Ok(at),
    }
}

#[test]
fn seek_data_and_hole_see_one_data_extent() {
    let v = Volume::new();
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(v.at("f")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 9996).unwrap(); // a gap of zero blocks in between
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(lseek(&f, 5000, libc::SEEK_DATA).unwrap(), 5000);
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE).unwrap(), 10_000);
    assert_eq!(lseek(&f, 9999, libc::SEEK_HOLE).unwrap(), 10_000);
    assert_eq!(errno(lseek(&f, 10_000, libc::SEEK_DATA)), libc::ENXIO);
    assert_eq!(errno(lseek(&f, 20_000, libc::SEEK_HOLE)), libc::ENXIO);
    let empty = fs::File::create(v.at("empty")).unwrap();
    assert_eq!(errno(lseek(&empty, 0, libc::SEEK_DATA)), libc::ENXIO);
}

fn copy_file_range(
    from: &fs::File,
    off_in: i64,
    to: &fs::File,
    off_out: i64,
    len: usize,
) -> std::io::Result<usize> {
    let (mut off_in, mut off_out) = (off_in, off_out);
    // SAFETY: both descriptors are open and the offsets are valid pointers for the call.
    let rc =
        unsafe { libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, len, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// The file id in a backing file's header.
fn file_id(backing: &Path) -> Vec<u8> {
    fs::read(backing).unwrap()[8..24].to_vec()
}

#[test]
fn copies_are_re_encrypted_and_reflinks_fail_cleanly() {
    let v = Volume::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(v.at("src"), &data).unwrap();

    // A direct copy_file_range, into the middle of an existing file, looping as callers do.
    fs::write(v.at("dst"), vec![1u8; 10]).unwrap();
    let src = fs::File::open(v.at("src")).unwrap();
    let dst = OpenOptions::new().write(true).open(v.at("dst")).unwrap();
    let mut done = 0;
    while done < data.len() {
        let n = copy_file_range(&src, done as i64, &dst, 5 + done as i64, data.len() - done).unwrap();
        assert!(n > 0);
        done += n;
    }
    assert_eq!(copy_file_range(&src, data.len() as i64, &dst, 0, 10).unwrap(), 0, "end of the source");
    let copied = fs::read(v.at("dst")).unwrap();
    assert_eq!(&copied[..5], &[1u8; 5]);
    assert_eq!(&copied[5..], &data[..]);

    // cp: with --reflink=auto it copies (under a new file identity); --reflink=always fails
    // without leaving a wrong or truncated target.
    let cp = |args: &[&str]| Command::new("cp").args(args).current_dir(v.path()).status().unwrap();
    assert!(cp(&["--reflink=auto", "src", "auto"]).success());
    assert_eq!(fs::read(v.at("auto")).unwrap(), data);
    assert!(!cp(&["--reflink=always", "src", "always"]).success());
    let left = fs::metadata(v.at("always")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "a failed reflink left a partial copy");

    let ids: Vec<Vec<u8>> = common::backing_entries(v.backing())
        .iter()
        .filter(|p| fs::metadata(p).unwrap().len() > 1000)
        .map(|p| file_id(p))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "every copy has its own identity");
}

#[test]
fn du_counts_plaintext_blocks() {
    let v = Volume::new();
    fs::write(v.at("f"), vec![3u8; 10_000]).unwrap();
    assert_eq!(fs::metadata(v.at("f")).unwrap().blocks(), 24, "three 4 KiB blocks");
    fs::write(v.at("e"), b"").unwrap();
    assert_eq!(fs::metadata(v.at("e")).unwrap().blocks(), 0);
    let out = Command::new("du").args(["-k", "--apparent-size", "f"]).current_dir(v.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("10\t"));
    let out = Command::new("du").args(["-k", "f"]).current_dir(v.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("12\t"));
}

#[test]
fn sockets_fifos_and_no_devices() {
    let v = Volume::new();
    let listener = std::os::unix::net::UnixListener::bind(v.at("sock")).unwrap();
    drop(listener);
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &fs::symlink_metadata(v.at("sock")).unwrap().file_type()
    ));
    let dev = std::ffi::CString::new(v.at("dev").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; a character device 1:3 (/dev/null).
    let rc = unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
}

/// Runs `script` with `sh -c` as `uid`/`gid` inside the volume.
fn run_as(v: &Volume, uid: u32, gid: u32, script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .current_dir(v.path())
        .uid(uid)
        .gid(gid)
        .status()
        .unwrap()
        .success()
}

#[test]
fn sticky_directories_protect_other_users_entries() {
    let v = Volume::new();
    fs::set_permissions(v.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(v.at("tmp")).unwrap();
    fs::set_permissions(v.at("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(run_as(&v, 1001, 1001, "echo a > tmp/a && echo b > tmp/b"));
    // Another user may neither remove nor rename them.
    assert!(!run_as(&v, 1002, 1002, "rm -f tmp/a"));
    assert!(!run_as(&v, 1002, 1002, "mv tmp/b tmp/c"));
    assert!(v.at("tmp/a").exists() && v.at("tmp/b").exists());
    // Their owner may, and so may root (the directory's owner).
    assert!(run_as(&v, 1001, 1001, "rm tmp/a"));
    fs::remove_file(v.at("tmp/b")).unwrap();
    // Without the sticky bit, anyone with write permission may.
    assert!(run_as(&v, 1001, 1001, "echo c > c"));
    assert!(run_as(&v, 1002, 1002, "rm -f c"));
    assert!(!v.at("c").exists());
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let v = Volume::new();
    fs::set_permissions(v.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(v.at("shared")).unwrap();
    std::os::unix::fs::chown(v.at("shared"), None, Some(4242)).unwrap();
    fs::set_permissions(v.at("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    assert!(run_as(&v, 1001, 1001, "touch shared/f && mkdir shared/d && mkdir own"));
    let (f, d) = (fs::metadata(v.at("shared/f")).unwrap(), fs::metadata(v.at("shared/d")).unwrap());
    assert_eq!((f.uid(), f.gid()), (1001, 4242), "new files take the directory's group");
    assert_eq!(d.gid(), 4242);
    assert_ne!(d.mode() & libc::S_ISGID, 0, "new directories inherit the setgid bit");
    let own = fs::metadata(v.at("own")).unwrap();
    assert_eq!((own.gid(), own.mode() & libc::S_ISGID), (1001, 0));
}

#[test]
fn directories_keep_nanosecond_timestamps() {
    let v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    let path = std::ffi::CString::new(v.at("d").as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec { tv_sec: 1_111_111_111, tv_nsec: 111_111_111 },
        libc::timespec { tv_sec: 1_222_222_222, tv_nsec: 222_222_222 },
    ];
    // SAFETY: a valid path and a two-element timespec array.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }, 0);
    let meta = fs::metadata(v.at("d")).unwrap();
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_111_111_111, 111_111_111));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_222_222_222, 222_222_222));
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let from = std::ffi::CString::new(from.as_os_str().as_encoded_bytes())?;
    let to = std::ffi::CString::new(to.as_os_str().as_encoded_bytes())?;
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

/// Names are encrypted under their directory's id, and long ones keep a side file: an exchange
/// across directories of long-named entries must leave every name decryptable.
#[test]
fn exchange_and_noreplace_across_directories_with_long_names() {
    let mut v = Volume::new();
    fs::create_dir(v.at("a")).unwrap();
    fs::create_dir(v.at("b")).unwrap();
    let (long_a, long_b) = ("a".repeat(240), "b".repeat(200));
    let (pa, pb) = (v.at(&format!("a/{long_a}")), v.at(&format!("b/{long_b}")));
    fs::write(&pa, b"from a").unwrap();
    fs::create_dir(&pb).unwrap();
    fs::write(pb.join("inside"), b"in b").unwrap();
    assert_eq!(errno(renameat2(&pa, &pb, libc::RENAME_NOREPLACE)), libc::EEXIST);
    renameat2(&pa, &pb, libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(&pb).unwrap(), b"from a");
    assert_eq!(fs::read(pa.join("inside")).unwrap(), b"in b");
    renameat2(&pb, &v.at("b/short"), libc::RENAME_NOREPLACE).unwrap();
    v.remount();
    let names = |dir: &str| {
        let mut n: Vec<String> =
            fs::read_dir(v.at(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    assert_eq!(names("a"), std::slice::from_ref(&long_a));
    assert_eq!(names("b"), ["short"]);
    assert_eq!(fs::read(v.at(&format!("a/{long_a}/inside"))).unwrap(), b"in b");
    // Exactly one long name is left, so exactly one side file: none for a name that is gone.
    let side_files = common::backing_entries(v.backing())
        .iter()
        .flat_map(|dir| fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()))
        .filter(|name| name.ends_with(".name"))
        .count();
    assert_eq!(side_files, 1);
}
