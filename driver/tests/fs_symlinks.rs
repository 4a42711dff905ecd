//! Symlinks on a real mount: targets bound to their link survive renames and exchanges, and a
//! target moved to another link on the backing store fails with EIO.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use common::{errno, Volume};

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

fn target(path: &Path) -> PathBuf {
    fs::read_link(path).unwrap()
}

#[test]
fn renames_and_exchanges_keep_targets_readable() {
    let mut v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    symlink("../first/target", v.at("a")).unwrap();
    symlink("second", v.at("b")).unwrap();
    fs::write(v.at("file"), b"plain file").unwrap();

    // Rename within and across directories; lstat reports the plaintext length throughout.
    fs::rename(v.at("a"), v.at("a2")).unwrap();
    assert_eq!(target(&v.at("a2")), Path::new("../first/target"));
    fs::rename(v.at("a2"), v.at("d/a3")).unwrap();
    assert_eq!(target(&v.at("d/a3")), Path::new("../first/target"));
    assert_eq!(fs::symlink_metadata(v.at("d/a3")).unwrap().len(), 15);
    assert_eq!(errno(fs::symlink_metadata(v.at("a2"))), libc::ENOENT);

    // Over an existing file, and refused by RENAME_NOREPLACE.
    symlink("x", v.at("over")).unwrap();
    assert_eq!(errno(renameat2(&v.at("over"), &v.at("file"), libc::RENAME_NOREPLACE)), libc::EEXIST);
    assert_eq!(target(&v.at("over")), Path::new("x"));
    fs::rename(v.at("over"), v.at("file")).unwrap();
    assert_eq!(target(&v.at("file")), Path::new("x"));

    // Exchanges: two symlinks, and a symlink with a directory.
    renameat2(&v.at("b"), &v.at("d/a3"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(target(&v.at("b")), Path::new("../first/target"));
    assert_eq!(target(&v.at("d/a3")), Path::new("second"));
    fs::create_dir(v.at("e")).unwrap();
    renameat2(&v.at("b"), &v.at("e"), libc::RENAME_EXCHANGE).unwrap();
    assert!(fs::symlink_metadata(v.at("b")).unwrap().is_dir());
    assert_eq!(target(&v.at("e")), Path::new("../first/target"));

    // Renaming the directory that holds a link keeps it readable.
    fs::rename(v.at("d"), v.at("d2")).unwrap();
    assert_eq!(target(&v.at("d2/a3")), Path::new("second"));

    v.remount();
    assert_eq!(target(&v.at("d2/a3")), Path::new("second"));
    assert_eq!(target(&v.at("e")), Path::new("../first/target"));
    assert_eq!(target(&v.at("file")), Path::new("x"));
    // No temporary copy is left behind.
    let leftovers: Vec<_> = fs::read_dir(v.backing())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cvtmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_rename_keeps_owner_and_times_and_hard_links_to_symlinks_are_refused() {
    let v = Volume::new();
    symlink("t", v.at("l")).unwrap();
    let at = nix::sys::time::TimeSpec::new(1_000_000_000, 123_456_789);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &v.at("l"),
        &at,
        &at,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    std::os::unix::fs::lchown(v.at("l"), Some(1234), Some(5678)).unwrap();
    fs::rename(v.at("l"), v.at("m")).unwrap();
    let meta = fs::symlink_metadata(v.at("m")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 123_456_789));
    symlink("t", v.at("fresh")).unwrap();
    assert_eq!(errno(fs::hard_link(v.at("fresh"), v.at("n"))), libc::EPERM);
}

#[test]
fn a_target_moved_to_another_link_fails_with_eio() {
    let mut v = Volume::new();
    symlink("/the/first/target", v.at("one")).unwrap();
    symlink("/the/other/target", v.at("two")).unwrap();
    let entries = common::backing_entries(v.backing());
    assert_eq!(entries.len(), 2);
    // Swap the two stored targets on the backing store.
    v.tamper(|_| {
        let (a, b) = (fs::read_link(&entries[0]).unwrap(), fs::read_link(&entries[1]).unwrap());
        fs::remove_file(&entries[0]).unwrap();
        fs::remove_file(&entries[1]).unwrap();
        symlink(&b, &entries[0]).unwrap();
        symlink(&a, &entries[1]).unwrap();
    });
    for name in ["one", "two"] {
        assert_eq!(errno(fs::read_link(v.at(name))), libc::EIO, "{name}");
        // lstat still works: the size needs no decryption.
        assert_eq!(fs::symlink_metadata(v.at(name)).unwrap().len(), 17);
    }
    // Renaming a backing symlink to another name breaks it too.
    let mut v = Volume::new();
    symlink("/target", v.at("three")).unwrap();
    symlink("/target", v.at("four")).unwrap();
    let entries = common::backing_entries(v.backing());
    v.tamper(|_| fs::rename(&entries[0], &entries[1]).unwrap());
    let survivor = ["three", "four"].into_iter().find(|n| fs::symlink_metadata(v.at(n)).is_ok()).unwrap();
    assert_eq!(errno(fs::read_link(v.at(survivor))), libc::EIO);
}
