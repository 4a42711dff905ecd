//! The backing store holds no plaintext: after writing known names, contents and symlink
//! targets, none of them (nor any 8-byte piece of them) appears in a backing file or name.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{backing_files, Volume};

const NAMES: [&str; 4] = ["passwords-2024.txt", "quarterly-report-draft", "payroll", "Geheimnisse-Übersicht"];
const CONTENT: &str = "TOP SECRET: the launch code is 0000-1111-2222. ";
const TARGET: &str = "/srv/confidential/target-path";

/// Every name, symlink target and file content of the backing tree, as byte strings.
fn backing_strings(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        out.push((format!("name {}", path.display()), entry.file_name().as_bytes().to_vec()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            out.push((
                format!("target {}", path.display()),
                fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec(),
            ));
        } else if kind.is_dir() {
            backing_strings(&path, out);
        } else {
            out.push((format!("content {}", path.display()), fs::read(&path).unwrap()));
        }
    }
}

fn windows(secret: &[u8]) -> Vec<&[u8]> {
    secret.windows(8.min(secret.len())).collect()
}

#[test]
fn no_plaintext_reaches_the_backing_store() {
    let mut v = Volume::new();
    let body = CONTENT.repeat(2000); // ~94 KiB of a repeating pattern
    fs::create_dir(v.at(NAMES[1])).unwrap();
    fs::write(v.at(NAMES[0]), &body).unwrap();
    fs::write(v.at(NAMES[1]).join(NAMES[2]), &body[..5000]).unwrap();
    fs::write(v.at(&NAMES[3].repeat(8)), b"long name").unwrap(); // > 175 bytes: a long name
    std::os::unix::fs::symlink(TARGET, v.at(NAMES[1]).join("link")).unwrap();
    v.unmount();

    let mut found = Vec::new();
    backing_strings(v.backing(), &mut found);
    assert!(found.len() >= 8, "the backing tree is unexpectedly small: {found:?}");
    let secrets: Vec<&[u8]> =
        NAMES.iter().map(|n| n.as_bytes()).chain([CONTENT.as_bytes(), TARGET.as_bytes()]).collect();
    for (what, bytes) in &found {
        for secret in &secrets {
            for piece in windows(secret) {
                assert!(
                    !bytes.windows(piece.len()).any(|w| w == piece),
                    "{what} contains plaintext {:?}",
                    String::from_utf8_lossy(piece)
                );
            }
        }
    }

    // Equal plaintext blocks never give equal ciphertext blocks (fresh nonce per block).
    let big = backing_files(v.backing()).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let data = fs::read(big).unwrap();
    let mut blocks: Vec<&[u8]> = data[24..].chunks(4124).collect();
    let count = blocks.len();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), count);
    assert!(count >= 23);
}
