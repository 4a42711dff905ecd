//! Tampering with the backing store while unmounted, and mounting with the wrong key: every
//! altered block, name, target or header reads as EIO, never as other bytes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use common::{backing_entries, errno, Volume};
use cryptvol::cipher::names::{BackingName, NameCipher};
use cryptvol::keys::DataKey;

const HEADER: u64 = 24;
const BACKING_BLOCK: u64 = 4096 + 28;

/// Everything the file system logs in this test binary.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .try_init();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged_lines(volume_id: &str) -> Vec<String> {
    let log = log().lock().unwrap();
    String::from_utf8_lossy(&log).lines().filter(|l| l.contains(volume_id)).map(str::to_owned).collect()
}

/// The backing path of plaintext file `path` (the mount reports backing inode numbers).
fn backing_of(v: &Volume, path: &Path) -> PathBuf {
    let ino = fs::symlink_metadata(path).unwrap().ino();
    find_ino(v.backing(), ino).expect("backing file")
}

fn find_ino(dir: &Path, ino: u64) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.ino() == ino {
            return Some(entry.path());
        }
        if meta.is_dir() {
            if let Some(found) = find_ino(&entry.path(), ino) {
                return Some(found);
            }
        }
    }
    None
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = File::open(path)?.read_at(&mut buf, offset)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn flipped_byte_fails_its_block_only_and_is_logged() {
    log();
    let mut v = Volume::new();
    let data = pattern(3 * 4096, 1);
    fs::write(v.at("f"), &data).unwrap();
    let backing = backing_of(&v, &v.at("f"));
    v.tamper(|_| {
        let f = OpenOptions::new().read(true).write(true).open(&backing).unwrap();
        let at = HEADER + BACKING_BLOCK + 500;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    });
    assert_eq!(read_at(&v.at("f"), 0, 4096).unwrap(), data[..4096]);
    assert_eq!(errno(read_at(&v.at("f"), 4096, 4096)), libc::EIO);
    assert_eq!(read_at(&v.at("f"), 8192, 4096).unwrap(), data[8192..]);
    assert_eq!(errno(fs::read(v.at("f"))), libc::EIO);

    let lines = logged_lines(v.volume_id());
    let line = lines.iter().find(|l| l.contains("content block failed authentication")).expect("log line");
    assert!(line.contains("ERROR") && line.contains("block=1"), "{line}");
    let ino = fs::metadata(&backing).unwrap().ino();
    assert!(line.contains(&format!("file={ino}")), "{line}");
}

#[test]
fn swapped_blocks_fail() {
    let mut v = Volume::new();
    fs::write(v.at("f"), pattern(3 * 4096, 2)).unwrap();
    let backing = backing_of(&v, &v.at("f"));
    v.tamper(|_| {
        let f = OpenOptions::new().read(true).write(true).open(&backing).unwrap();
        let (mut b0, mut b1) = (vec![0u8; BACKING_BLOCK as usize], vec![0u8; BACKING_BLOCK as usize]);
        f.read_exact_at(&mut b0, HEADER).unwrap();
        f.read_exact_at(&mut b1, HEADER + BACKING_BLOCK).unwrap();
        f.write_all_at(&b1, HEADER).unwrap();
        f.write_all_at(&b0, HEADER + BACKING_BLOCK).unwrap();
    });
    assert_eq!(errno(read_at(&v.at("f"), 0, 10)), libc::EIO);
    assert_eq!(errno(read_at(&v.at("f"), 4096, 10)), libc::EIO);
    assert_eq!(read_at(&v.at("f"), 8192, 10).unwrap(), pattern(3 * 4096, 2)[8192..8202]);
}

#[test]
fn block_moved_between_files_fails() {
    let mut v = Volume::new();
    fs::write(v.at("a"), pattern(2 * 4096, 3)).unwrap();
    fs::write(v.at("b"), pattern(2 * 4096, 4)).unwrap();
    let (a, b) = (backing_of(&v, &v.at("a")), backing_of(&v, &v.at("b")));
    v.tamper(|_| {
        let mut block = vec![0u8; BACKING_BLOCK as usize];
        File::open(&b).unwrap().read_exact_at(&mut block, HEADER).unwrap();
        OpenOptions::new().write(true).open(&a).unwrap().write_all_at(&block, HEADER).unwrap();
    });
    assert_eq!(errno(read_at(&v.at("a"), 0, 4096)), libc::EIO);
    assert_eq!(read_at(&v.at("a"), 4096, 4096).unwrap(), pattern(2 * 4096, 3)[4096..]);
    assert_eq!(fs::read(v.at("b")).unwrap(), pattern(2 * 4096, 4));
}

#[test]
fn cut_at_a_block_boundary_is_eio_not_a_shorter_file() {
    let mut v = Volume::new();
    fs::write(v.at("f"), pattern(3 * 4096 + 100, 5)).unwrap();
    let backing = backing_of(&v, &v.at("f"));
    v.tamper(|_| {
        OpenOptions::new().write(true).open(&backing).unwrap().set_len(HEADER + 2 * BACKING_BLOCK).unwrap();
    });
    assert_eq!(errno(fs::read(v.at("f"))), libc::EIO);
    assert_eq!(errno(read_at(&v.at("f"), 4096, 4096)), libc::EIO);
    assert_eq!(read_at(&v.at("f"), 0, 4096).unwrap(), pattern(4096, 5));
}

#[test]
fn damaged_layouts_and_headers_fail() {
    let mut v = Volume::new();
    for name in ["trailing", "header-id", "magic"] {
        fs::write(v.at(name), pattern(5000, 6)).unwrap();
    }
    let (trailing, header_id, magic) = (
        backing_of(&v, &v.at("trailing")),
        backing_of(&v, &v.at("header-id")),
        backing_of(&v, &v.at("magic")),
    );
    v.tamper(|_| {
        // A last block of 10 bytes cannot hold a sealed byte: no plaintext size maps to it.
        OpenOptions::new().write(true).open(&trailing).unwrap().set_len(HEADER + BACKING_BLOCK + 10).unwrap();
        let f = OpenOptions::new().write(true).open(&header_id).unwrap();
        f.write_all_at(&[0x55; 16], 8).unwrap();
        OpenOptions::new().write(true).open(&magic).unwrap().write_all_at(b"XXXX", 0).unwrap();
    });
    for name in ["trailing", "header-id", "magic"] {
        assert_eq!(errno(fs::read(v.at(name))), libc::EIO, "{name}");
        assert_eq!(errno(read_at(&v.at(name), 0, 1)), libc::EIO, "{name}");
    }
    // The damaged file can still be emptied and reused.
    fs::write(v.at("magic"), b"fresh").unwrap();
    assert_eq!(fs::read(v.at("magic")).unwrap(), b"fresh");
}

#[test]
fn corrupted_names_fail_listing() {
    let mut v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    fs::write(v.at("d/visible"), b"1").unwrap();
    fs::write(v.at("d/victim"), b"2").unwrap();
    let victim = backing_of(&v, &v.at("d/victim"));
    v.tamper(|_| {
        let name = victim.file_name().unwrap().to_str().unwrap().to_owned();
        let mut bytes = name.into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        fs::rename(&victim, victim.with_file_name(String::from_utf8(bytes).unwrap())).unwrap();
    });
    assert_eq!(errno(fs::read_dir(v.at("d")).unwrap().collect::<Result<Vec<_>, _>>()), libc::EIO);
    assert_eq!(errno(fs::metadata(v.at("d/victim"))), libc::ENOENT);
    assert_eq!(fs::read(v.at("d/visible")).unwrap(), b"1");
}

#[test]
fn names_moved_between_directories_fail() {
    let mut v = Volume::new();
    fs::create_dir(v.at("a")).unwrap();
    fs::create_dir(v.at("b")).unwrap();
    fs::write(v.at("a/secret"), b"s").unwrap();
    let from = backing_of(&v, &v.at("a/secret"));
    let to_dir = backing_of(&v, &v.at("b"));
    v.tamper(|_| fs::rename(&from, to_dir.join(from.file_name().unwrap())).unwrap());
    assert_eq!(errno(fs::read_dir(v.at("b")).unwrap().collect::<Result<Vec<_>, _>>()), libc::EIO);
}

#[test]
fn damaged_long_name_side_file_fails_listing() {
    let mut v = Volume::new();
    let long = "L".repeat(240);
    fs::write(v.path().join(&long), b"x").unwrap();
    let entry = backing_of(&v, &v.path().join(&long));
    let side = PathBuf::from(format!("{}.name", entry.display()));
    assert!(side.exists());
    v.tamper(|_| {
        let mut text = fs::read_to_string(&side).unwrap();
        text.replace_range(0..1, if text.starts_with('A') { "B" } else { "A" });
        fs::write(&side, text).unwrap();
    });
    assert_eq!(errno(fs::read_dir(v.path()).unwrap().collect::<Result<Vec<_>, _>>()), libc::EIO);
    assert_eq!(fs::read(v.path().join(&long)).unwrap(), b"x");
    v.tamper(|_| fs::remove_file(&side).unwrap());
    assert_eq!(errno(fs::read_dir(v.path()).unwrap().collect::<Result<Vec<_>, _>>()), libc::EIO);
}

#[test]
fn directory_without_its_id_fails_lookup() {
    let mut v = Volume::new();
    fs::create_dir(v.at("d")).unwrap();
    fs::write(v.at("d/f"), b"x").unwrap();
    let dir = backing_of(&v, &v.at("d"));
    v.tamper(|_| fs::write(dir.join(".cvdir"), b"short").unwrap());
    assert_eq!(errno(fs::metadata(v.at("d"))), libc::EIO);
    v.tamper(|_| fs::remove_file(dir.join(".cvdir")).unwrap());
    assert_eq!(errno(fs::read(v.at("d/f"))), libc::EIO);
}

#[test]
fn corrupted_symlink_target_fails_readlink() {
    let mut v = Volume::new();
    std::os::unix::fs::symlink("the/real/target", v.at("l")).unwrap();
    let backing = backing_of(&v, &v.at("l"));
    v.tamper(|_| {
        let stored = fs::read_link(&backing).unwrap().into_os_string().into_string().unwrap();
        let mut bytes = stored.into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        fs::remove_file(&backing).unwrap();
        std::os::unix::fs::symlink(String::from_utf8(bytes).unwrap(), &backing).unwrap();
    });
    assert_eq!(errno(fs::read_link(v.at("l"))), libc::EIO);
    assert_eq!(errno(fs::metadata(v.at("l"))), libc::EIO);
}

#[test]
fn wrong_key_decrypts_no_name_and_no_content() {
    let mut v = Volume::new();
    fs::write(v.at("file"), pattern(6000, 7)).unwrap();
    v.unmount();
    let wrong = DataKey::generate().unwrap();
    v.mount_with(&wrong).unwrap();
    assert_eq!(errno(fs::read_dir(v.path()).unwrap().collect::<Result<Vec<_>, _>>()), libc::EIO);
    assert_eq!(errno(fs::metadata(v.at("file"))), libc::ENOENT);

    // Give the backing file the name the wrong key expects: its contents still fail.
    v.unmount();
    let root_id: [u8; 16] = fs::read(v.backing().join(".cvdir")).unwrap().try_into().unwrap();
    let keys = wrong.derive();
    let BackingName::Short(name) = NameCipher::new(keys.names()).encrypt(&root_id, b"file").unwrap() else {
        panic!("short name expected");
    };
    let entries = backing_entries(v.backing());
    assert_eq!(entries.len(), 1);
    fs::rename(&entries[0], v.backing().join(name)).unwrap();
    v.mount_with(&wrong).unwrap();
    assert_eq!(fs::metadata(v.at("file")).unwrap().len(), 6000);
    assert_eq!(errno(fs::read(v.at("file"))), libc::EIO);
    let mut buf = [0u8; 1];
    assert_eq!(errno(File::open(v.at("file")).unwrap().read(&mut buf)), libc::EIO);
}
