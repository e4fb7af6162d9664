//! The mount points every image task needs (`/dev` and its nodes, `/proc`, `/sys`,
//! `/mnt/sandbox`), as one read-only layer stacked above the image's layers, made
//! once per runtime directory and shared by every image task (Docker's "init" layer
//! does the same). Without it the shim would create them in each task's writable
//! layer, and the launcher remove them again: about twenty file system changes on
//! every launch. Only empty directories and empty files, each mounted over before
//! the task starts, so the layer changes nothing a task can see.
//!
//! Beside it, the directory every image task's overlay root is mounted on, also made
//! once and shared (see [`root`]).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const NAME: &str = "image-mount-points";
const ROOT: &str = "image-root";
const DIRS: [&str; 7] = [
    "dev",
    "dev/pts",
    "dev/shm",
    "mnt",
    "mnt/sandbox",
    "proc",
    "sys",
];
const FILES: [&str; 6] = [
    "dev/null",
    "dev/zero",
    "dev/full",
    "dev/random",
    "dev/urandom",
    "dev/tty",
];

/// The layer under `runtime_dir`, made if missing (in a temporary directory renamed
/// into place, so a concurrent launch or a crash never leaves half of it).
pub fn layer(runtime_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = runtime_dir.join(NAME);
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(runtime_dir)?;
    let tmp = runtime_dir.join(format!(".{NAME}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o755);
    builder.create(&tmp)?;
    for d in DIRS {
        builder.create(tmp.join(d))?;
    }
    for f in FILES {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp.join(f))?;
    }
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another launch made it first.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The directory under `runtime_dir` every image task's overlay root is mounted on,
/// made if missing. Each task mounts there in its own mount namespace, made private
/// before the mount, so the host only ever sees an empty directory and tasks never
/// see each other's roots. Shared and kept rather than made in each run directory:
/// removing a directory frees its block, and on a file system that discards freed
/// blocks as it frees them (ext4 without a journal, mounted `discard`) the launcher
/// waited for that discard on every task's exit.
pub fn root(runtime_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = runtime_dir.join(ROOT);
    match fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => return Ok(dir),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(runtime_dir)?;
    match fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => Ok(dir),
        // Another launch made it first.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(&dir)?.is_dir() =>
        {
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn made_once_with_every_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let layer = super::layer(dir.path()).unwrap();
        for p in super::DIRS {
            assert!(layer.join(p).is_dir(), "{p}");
        }
        for p in super::FILES {
            assert!(layer.join(p).is_file(), "{p}");
        }
        assert_eq!(super::layer(dir.path()).unwrap(), layer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn one_root_mount_point_shared_and_never_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = super::root(dir.path()).unwrap();
        assert!(root.is_dir());
        assert_eq!(super::root(dir.path()).unwrap(), root);
        std::fs::remove_dir(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), &root).unwrap();
        assert!(
            super::root(dir.path()).is_err(),
            "a link where the root goes is refused"
        );
    }
}
