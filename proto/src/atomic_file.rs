//! Files replaced whole: a temporary file written, then renamed over the old one, so
//! that a reader sees the old content or the new, never a part; with the fsyncs, a
//! crash or power loss leaves one or the other too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary file name no other process or thread of this machine makes at the
/// same time: `{prefix}.{pid}.{n}{suffix}`, `n` counted in this process.
pub fn unique_name(prefix: &str, suffix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}.{}.{n}{suffix}", std::process::id())
}

/// Makes a file created, renamed or removed in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Puts `contents` at `path` through `tmp` (a name on the same filesystem that no
/// other process or thread writing at the same time uses):
/// written and fsynced, renamed over `path`, then the directory of `path` fsynced. On
/// failure `tmp` is removed.
pub fn replace(path: &Path, tmp: &Path, contents: &[u8]) -> io::Result<()> {
    replace_with(path, tmp, contents, true)
}

/// Like [`replace`] without the fsyncs, for files that only matter within one boot of
/// the machine: the rename is atomic for every process, but after a power loss the
/// file may be missing or empty.
pub fn replace_volatile(path: &Path, tmp: &Path, contents: &[u8]) -> io::Result<()> {
    replace_with(path, tmp, contents, false)
}

fn replace_with(path: &Path, tmp: &Path, contents: &[u8], durable: bool) -> io::Result<()> {
    // A leftover of a process that died with this name (or anything else put there)
    // goes first; the file is then made new, so that a link planted in its place
    // could not make the write land elsewhere.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(tmp, path)?;
        if durable {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            sync_dir(dir.unwrap_or(Path::new(".")))
        } else {
            Ok(())
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let tmp = dir.path().join(".record.json.tmp");
        std::fs::write(&path, "old, and longer than the new").unwrap();
        replace(&path, &tmp, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        replace_volatile(&path, &tmp, b"newer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_link_planted_as_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let tmp = dir.path().join(".record.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        replace(&dir.path().join("record"), &tmp, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(dir.path().join("record")).unwrap(), b"new");
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_removes_the_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way: the rename of a file over it fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        let tmp = dir.path().join(".taken.tmp");
        assert!(replace(&path, &tmp, b"new").is_err());
        assert!(path.is_dir());
        assert!(!tmp.exists());
    }
}
