//! Extended attributes on a real mount: the calls and their flags and errors, encryption on the
//! backing store, and records bound to their file.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{errno, Volume};

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn cname(name: &str) -> CString {
    CString::new(name).unwrap()
}

fn result(rc: isize) -> std::io::Result<usize> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn set(path: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<usize> {
    // SAFETY: the strings are NUL-terminated and `value` is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(c(path).as_ptr(), cname(name).as_ptr(), value.as_ptr().cast(), value.len(), flags)
    };
    result(rc as isize)
}

fn get_sized(path: &Path, name: &str, size: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    // SAFETY: the strings are NUL-terminated and `buf` is valid for `size` bytes.
    let rc =
        unsafe { libc::lgetxattr(c(path).as_ptr(), cname(name).as_ptr(), buf.as_mut_ptr().cast(), size) };
    let len = result(rc)?;
    buf.truncate(len);
    Ok(buf)
}

fn get(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    get_sized(path, name, 65536)
}

/// The length a size query (`size` 0) reports.
fn get_len(path: &Path, name: &str) -> std::io::Result<usize> {
    // SAFETY: a null buffer with size 0 asks for the length only.
    result(unsafe { libc::lgetxattr(c(path).as_ptr(), cname(name).as_ptr(), std::ptr::null_mut(), 0) })
}

fn list_sized(path: &Path, size: usize) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; size];
    // SAFETY: the path is NUL-terminated and `buf` is valid for `size` bytes.
    let len = result(unsafe { libc::llistxattr(c(path).as_ptr(), buf.as_mut_ptr().cast(), size) })?;
    let mut names: Vec<String> = buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect();
    names.sort();
    Ok(names)
}

fn list(path: &Path) -> Vec<String> {
    list_sized(path, 65536).unwrap()
}

fn remove(path: &Path, name: &str) -> std::io::Result<usize> {
    // SAFETY: the strings are NUL-terminated.
    result(unsafe { libc::lremovexattr(c(path).as_ptr(), cname(name).as_ptr()) } as isize)
}

#[test]
fn set_get_list_remove_with_flags_and_sizes() {
    let v = Volume::new();
    let f = v.at("f");
    fs::write(&f, b"data").unwrap();
    assert_eq!(list(&f), Vec::<String>::new());
    assert_eq!(errno(get(&f, "user.missing")), libc::ENODATA);

    set(&f, "user.mime", b"text/plain", 0).unwrap();
    set(&f, "user.empty", b"", 0).unwrap();
    assert_eq!(get(&f, "user.mime").unwrap(), b"text/plain");
    assert_eq!(get(&f, "user.empty").unwrap(), b"");
    assert_eq!(list(&f), ["user.empty", "user.mime"]);

    // Flags.
    assert_eq!(errno(set(&f, "user.mime", b"x", libc::XATTR_CREATE)), libc::EEXIST);
    assert_eq!(errno(set(&f, "user.new", b"x", libc::XATTR_REPLACE)), libc::ENODATA);
    set(&f, "user.mime", b"text/html", libc::XATTR_REPLACE).unwrap();
    set(&f, "user.new", b"x", libc::XATTR_CREATE).unwrap();
    assert_eq!(get(&f, "user.mime").unwrap(), b"text/html");

    // Sizes: a size query, a buffer too small (ERANGE), for values and lists.
    assert_eq!(get_len(&f, "user.mime").unwrap(), 9);
    assert_eq!(errno(get_sized(&f, "user.mime", 4)), libc::ERANGE);
    assert_eq!(errno(list_sized(&f, 5)), libc::ERANGE);
    // SAFETY: a null buffer with size 0 asks for the length only.
    let list_len = unsafe { libc::llistxattr(c(&f).as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(list_len as usize, "user.empty\0user.mime\0user.new\0".len());

    remove(&f, "user.new").unwrap();
    assert_eq!(errno(remove(&f, "user.new")), libc::ENODATA);
    assert_eq!(list(&f), ["user.empty", "user.mime"]);
    // The file's contents are untouched.
    assert_eq!(fs::read(&f).unwrap(), b"data");

    // Directories hold attributes too; symlinks refuse `user.` ones as on every Linux file system.
    fs::create_dir(v.at("d")).unwrap();
    set(&v.at("d"), "user.dir", b"yes", 0).unwrap();
    assert_eq!(get(&v.at("d"), "user.dir").unwrap(), b"yes");
    std::os::unix::fs::symlink("f", v.at("l")).unwrap();
    assert_eq!(errno(set(&v.at("l"), "user.x", b"1", 0)), libc::EPERM);
    assert_eq!(list(&v.at("l")), Vec::<String>::new());

    // Binary values and the largest name.
    let long_name = format!("user.{}", "n".repeat(250));
    let binary: Vec<u8> = (0..=255).collect();
    set(&f, &long_name, &binary, 0).unwrap();
    assert_eq!(get(&f, &long_name).unwrap(), binary);
    assert_eq!(errno(set(&f, &format!("user.{}", "n".repeat(251)), b"", 0)), libc::ERANGE);
    // Beyond what one record (or the ext4 backing store) holds: ENOSPC, as on ext4.
    assert_eq!(errno(set(&f, "user.huge", &vec![7u8; 65536], 0)), libc::ENOSPC);
    assert_eq!(get(&f, "user.mime").unwrap(), b"text/html");
}

#[test]
fn attributes_survive_remount_renames_and_hard_links() {
    let mut v = Volume::new();
    fs::create_dir(v.at("a")).unwrap();
    fs::write(v.at("a/f"), b"x").unwrap();
    set(&v.at("a/f"), "user.k", b"v1", 0).unwrap();
    fs::rename(v.at("a/f"), v.at("g")).unwrap();
    fs::hard_link(v.at("g"), v.at("a/h")).unwrap();
    assert_eq!(get(&v.at("a/h"), "user.k").unwrap(), b"v1");
    set(&v.at("a/h"), "user.k2", b"v2", 0).unwrap();
    v.remount();
    assert_eq!(get(&v.at("g"), "user.k").unwrap(), b"v1");
    assert_eq!(list(&v.at("g")), ["user.k", "user.k2"]);
    // A new file starts without attributes; the kernel's capability check finds none.
    fs::write(v.at("new"), b"y").unwrap();
    assert_eq!(errno(get(&v.at("new"), "security.capability")), libc::ENODATA);
    fs::write(v.at("new"), b"still writable").unwrap();
}

/// The raw backing record of a backing path.
fn backing_record(path: &Path) -> Vec<u8> {
    get(path, "user.cryptvol").unwrap()
}

#[test]
fn names_and_values_are_encrypted_and_records_are_bound_to_their_file() {
    let mut v = Volume::new();
    fs::write(v.at("one"), b"1").unwrap();
    fs::write(v.at("two"), b"2").unwrap();
    set(&v.at("one"), "user.secret-name", b"secret-value-one", 0).unwrap();
    set(&v.at("two"), "user.secret-name", b"secret-value-two", 0).unwrap();
    let entries = common::backing_entries(v.backing());
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        assert_eq!(list(entry), ["user.cryptvol"], "only the sealed record is stored");
        let record = backing_record(entry);
        for plain in [&b"secret-name"[..], b"secret-value"] {
            assert!(!record.windows(plain.len()).any(|w| w == plain), "plaintext on the backing store");
        }
    }

    // Moving one file's record onto the other: the other's attributes fail with EIO.
    let (a, b) = (entries[0].clone(), entries[1].clone());
    v.tamper(|_| {
        let record = backing_record(&a);
        set(&b, "user.cryptvol", &record, 0).unwrap();
    });
    let failed: Vec<i32> = ["one", "two"]
        .iter()
        .map(|n| get(&v.at(n), "user.secret-name"))
        .filter_map(|r| r.err())
        .map(|e| e.raw_os_error().unwrap())
        .collect();
    assert_eq!(failed, [libc::EIO], "exactly the file holding a moved record fails");
    // Listing fails the same way; the file's contents still read.
    assert!(["one", "two"].iter().any(|n| list_sized(&v.at(n), 1024).is_err()));
    assert_eq!(fs::read(v.at("one")).unwrap(), b"1");

    // A record cut short or flipped fails too.
    v.tamper(|_| {
        let mut record = backing_record(&a);
        let last = record.len() - 1;
        record[last] ^= 1;
        set(&a, "user.cryptvol", &record, 0).unwrap();
    });
    assert!(["one", "two"].iter().all(|n| errno(get(&v.at(n), "user.secret-name")) == libc::EIO));
}
