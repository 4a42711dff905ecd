//! Looks at the backing store from the host: what the driver stored for a volume, and whether any
//! of it is plaintext.

use std::path::{Path, PathBuf};

use crate::{E2eError, Result};

/// What a scan of one directory tree found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Regular files read.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Every place a needle was found: a file's contents, a name, or a symlink target.
    pub findings: Vec<String>,
}

/// Walks `root` without following symlinks and looks for each needle in every name, symlink
/// target and regular file's contents.
pub fn scan(root: &Path, needles: &[&[u8]]) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            check(&mut scan, &path, "name", name.as_encoded_bytes(), needles);
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                check(&mut scan, &path, "symlink target", target.as_os_str().as_encoded_bytes(), needles);
            } else if kind.is_file() {
                let contents = std::fs::read(&path).map_err(io(&path))?;
                scan.files += 1;
                scan.bytes += contents.len() as u64;
                check(&mut scan, &path, "contents", &contents, needles);
            }
        }
    }
    Ok(scan)
}

fn check(scan: &mut Scan, path: &Path, what: &str, haystack: &[u8], needles: &[&[u8]]) {
    for needle in needles {
        if !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == *needle) {
            scan.findings.push(format!(
                "{}: {what} holds {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            ));
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> E2eError {
    let path: PathBuf = path.to_path_buf();
    move |source| E2eError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles_in_contents_names_and_link_targets() {
        let dir = std::env::temp_dir().join(format!("cryptvol-e2e-scan-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/plain"), b"xx SECRET yy").unwrap();
        std::fs::write(dir.join("SECRET-name"), b"nothing").unwrap();
        std::os::unix::fs::symlink("to/SECRET", dir.join("link")).unwrap();
        std::fs::write(dir.join("clean"), b"ciphertext").unwrap();

        let found = scan(&dir, &[b"SECRET"]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.files, 3);
        assert_eq!(found.bytes, 12 + 7 + 10);
        assert_eq!(found.findings.len(), 3, "{:?}", found.findings);
    }
}
