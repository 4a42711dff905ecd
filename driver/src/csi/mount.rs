//! Kernel mounts the node service makes: bind mounts of staged volumes into pods, and their removal.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Whether `path` is a mount point, from /proc/self/mountinfo (works even when the FUSE server died).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = normalize(path);
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|line| {
        line.split(' ').nth(4).map(unescape).as_deref() == Some(path.as_os_str().as_encoded_bytes())
    }))
}

/// Whether the mount at `path` answers. It asks with statfs, which the kernel never answers from
/// its caches (a cached stat of a dead FUSE mount still succeeds); ENOTCONN, ESTALE or EIO means
/// the server is gone.
pub fn is_alive(path: &Path) -> bool {
    match nix::sys::statvfs::statvfs(path) {
        Ok(_) => true,
        Err(e) => {
            !matches!(e, nix::errno::Errno::ENOTCONN | nix::errno::Errno::ESTALE | nix::errno::Errno::EIO)
        }
    }
}

/// Bind-mounts `source` at `target`, read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(e.into());
        }
    }
    Ok(())
}

/// Unmounts `target` if it is a mount point; a busy or dead mount is detached lazily.
pub fn unmount(target: &Path) -> io::Result<()> {
    while is_mount_point(target)? {
        match nix::mount::umount(target) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(_) => nix::mount::umount2(target, MntFlags::MNT_DETACH)?,
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) if missing; an existing directory is fine.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        // A dead FUSE mount at `dir` makes create_dir_all fail although the directory is there.
        Err(_) if is_mount_point(dir).unwrap_or(false) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the empty directory a target was mounted on; a missing one is fine, and a directory
/// that holds files (not ours to delete) is left in place.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(path = %dir.display(), "target path is not empty; leaving it in place");
            Ok(())
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `target` shows the filesystem mounted at `source` (a bind mount shares its device).
pub fn same_filesystem(source: &Path, target: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(source)?.dev() == std::fs::metadata(target)?.dev())
}

fn normalize(path: &Path) -> PathBuf {
    // Canonicalize the parent only: the path itself may be a dead mount that cannot be resolved.
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf()).join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for space and friends).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/a\040b"), b"/a b");
        assert_eq!(unescape("/plain"), b"/plain");
    }

    #[test]
    fn root_is_a_mount_point_and_tempdirs_are_not() {
        assert!(is_mount_point(Path::new("/")).unwrap() || is_mount_point(Path::new("/proc")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()).unwrap());
    }
}
