//! Capacity on a real mount: writes, truncates and fallocate that would pass the volume's capacity
//! fail with ENOSPC before anything is written, `statfs` reports the capacity, and raising it takes
//! effect on the live mount.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{errno, Volume};

const MIB: u64 = 1 << 20;

fn statvfs(v: &Volume) -> nix::sys::statvfs::Statvfs {
    nix::sys::statvfs::statvfs(v.path()).unwrap()
}

fn total_bytes(v: &Volume) -> u64 {
    let st = statvfs(v);
    st.blocks() * st.fragment_size()
}

fn free_bytes(v: &Volume) -> u64 {
    let st = statvfs(v);
    st.blocks_available() * st.fragment_size()
}

#[test]
fn filling_a_volume_gives_enospc_without_tearing_and_expansion_lifts_it() {
    let v = Volume::new();
    v.mount().set_capacity(Some(MIB));
    assert_eq!(total_bytes(&v), MIB);
    assert_eq!(free_bytes(&v), MIB);

    // Fill with 64 KiB writes until the volume refuses one.
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(v.at("fill")).unwrap();
    let mut written = 0u64;
    let err = loop {
        // A write may be cut short at the limit; the next one then fails.
        let at = (written % chunk.len() as u64) as usize;
        match f.write(&chunk[at..]) {
            Ok(n) => written += n as u64,
            Err(err) => break err,
        }
        assert!(written < 2 * MIB, "the capacity was never enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert!(written >= MIB - 128 * 1024, "only {written} bytes fit in 1 MiB");
    // Nothing torn: the file holds exactly the writes that succeeded, and they read back.
    let data = fs::read(v.at("fill")).unwrap();
    assert_eq!(data.len() as u64, written);
    assert!(data.iter().zip(chunk.iter().cycle()).all(|(a, b)| a == b));
    assert!(free_bytes(&v) < 64 * 1024);
    let (limit, used) = v.mount().usage();
    assert_eq!(limit, Some(MIB));
    assert_eq!(used, fs::metadata(&common::backing_entries(v.backing())[0]).unwrap().len());

    // Growing by truncate and a new file are refused too; shrinking is always allowed.
    assert_eq!(
        errno(OpenOptions::new().write(true).open(v.at("fill")).unwrap().set_len(2 * MIB)),
        libc::ENOSPC
    );
    let small = OpenOptions::new().create(true).truncate(true).write(true).open(v.at("small")).unwrap();
    assert_eq!(errno(small.write_all_at(&chunk, 0)), libc::ENOSPC);
    assert_eq!(fs::metadata(v.at("small")).unwrap().len(), 0);

    // Expansion on the live mount: the same write now succeeds and statfs shows the new size.
    v.mount().set_capacity(Some(2 * MIB));
    assert_eq!(total_bytes(&v), 2 * MIB);
    small.write_all_at(&chunk, 0).unwrap();
    assert_eq!(fs::read(v.at("small")).unwrap(), chunk);

    // Removing a file gives its space back.
    let before = v.mount().usage().1;
    fs::remove_file(v.at("fill")).unwrap();
    assert_eq!(v.mount().usage().1, before - common_backing_size(written));
}

fn common_backing_size(plain: u64) -> u64 {
    cryptvol::cipher::content::backing_size(plain)
}

#[test]
fn usage_is_counted_at_mount_and_renames_over_files_release_it() {
    let mut v = Volume::new();
    fs::write(v.at("a"), vec![1u8; 100_000]).unwrap();
    fs::write(v.at("b"), vec![2u8; 50_000]).unwrap();
    fs::hard_link(v.at("a"), v.at("a2")).unwrap();
    fs::create_dir(v.at("d")).unwrap();
    fs::write(v.at("d/c"), vec![3u8; 10]).unwrap();
    let expected = common_backing_size(100_000) + common_backing_size(50_000) + common_backing_size(10);
    assert_eq!(v.mount().usage(), (None, expected));
    v.remount();
    assert_eq!(v.mount().usage(), (None, expected));

    fs::rename(v.at("d/c"), v.at("b")).unwrap();
    assert_eq!(v.mount().usage().1, common_backing_size(100_000) + common_backing_size(10));
    // The last link of a hard-linked file frees it, not the first.
    fs::remove_file(v.at("a")).unwrap();
    assert_eq!(v.mount().usage().1, common_backing_size(100_000) + common_backing_size(10));
    fs::remove_file(v.at("a2")).unwrap();
    assert_eq!(v.mount().usage().1, common_backing_size(10));

    // Without a limit, statfs reports the backing file system.
    let backing = nix::sys::statvfs::statvfs(v.backing()).unwrap();
    let backing_total = backing.blocks() * backing.fragment_size();
    assert_eq!(total_bytes(&v) / 4096, backing_total / 4096);
}

fn fallocate(file: &fs::File, mode: i32, offset: i64, len: i64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor.
    match unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn fallocate_allocates_or_reserves_and_refuses_other_modes() {
    let v = Volume::new();
    fs::write(v.at("f"), b"abc").unwrap();
    let f = OpenOptions::new().read(true).write(true).open(v.at("f")).unwrap();
    fallocate(&f, 0, 0, 2).unwrap();
    assert_eq!(fs::read(v.at("f")).unwrap(), b"abc", "inside the file: nothing changes");
    fallocate(&f, 0, 5000, 5000).unwrap();
    let data = fs::read(v.at("f")).unwrap();
    assert_eq!(data.len(), 10_000);
    assert!(data[3..].iter().all(|&b| b == 0));

    let usage = v.mount().usage().1;
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(fs::metadata(v.at("f")).unwrap().len(), 10_000, "keep-size keeps the size");
    assert_eq!(v.mount().usage().1, usage);
    let backing = &common::backing_entries(v.backing())[0];
    assert!(std::os::unix::fs::MetadataExt::blocks(&fs::metadata(backing).unwrap()) * 512 >= 1 << 20);
    f.write_all_at(b"tail", 10_000).unwrap();
    assert_eq!(&fs::read(v.at("f")).unwrap()[10_000..], b"tail");

    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_INSERT_RANGE,
    ] {
        assert_eq!(errno(fallocate(&f, mode, 0, 4096)), libc::EOPNOTSUPP, "mode {mode:#x}");
    }
    assert_eq!(fs::read(v.at("f")).unwrap().len(), 10_004);

    // Both modes are held to the capacity.
    v.mount().set_capacity(Some(MIB));
    assert_eq!(errno(fallocate(&f, 0, 0, 2 << 20)), libc::ENOSPC);
    assert_eq!(errno(fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20)), libc::ENOSPC);
    assert_eq!(fs::metadata(v.at("f")).unwrap().len(), 10_004);
}

/// A backing store that runs out of space: the space a write needs is reserved before any block
/// is sealed, so the write fails whole and no block is left torn.
#[test]
fn a_full_backing_store_fails_writes_without_tearing_a_block() {
    let backing = tempfile::Builder::new().prefix("cv-tmpfs-").tempdir().unwrap();
    let mountpoint = tempfile::Builder::new().prefix("cv-mnt-").tempdir().unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        backing.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=400k"),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _tmpfs = Unmount(backing.path());
    cryptvol::fs::init_root(backing.path()).unwrap();
    let key = cryptvol::keys::DataKey::generate().unwrap();
    let opts = cryptvol::fs::MountOptions { volume_id: "tmpfs".into(), read_only: false, threads: 2 };
    let mount =
        cryptvol::fs::mount(backing.path(), mountpoint.path(), std::sync::Arc::new(key.derive()), opts)
            .unwrap();

    let path = mountpoint.path().join("fill");
    let chunk: Vec<u8> = (0..100_000).map(|i| (i % 241) as u8).collect();
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
    let mut written = 0u64;
    let err = loop {
        let at = (written % chunk.len() as u64) as usize;
        match f.write_at(&chunk[at..], written) {
            Ok(n) => written += n as u64,
            Err(err) => break err,
        }
        assert!(written < 4 * MIB, "a 400 KiB tmpfs never filled up");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Every byte that was acknowledged reads back; nothing fails authentication.
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len() as u64, written);
    assert!(data.iter().zip(chunk.iter().cycle()).all(|(a, b)| a == b));
    drop(f);
    mount.unmount().unwrap();
}
