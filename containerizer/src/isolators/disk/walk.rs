//! Walking a sandbox the task controls: directories are opened only beneath the
//! sandbox, without following any link (a directory swapped for a link to `/` during
//! the walk is skipped, not followed), every other entry is only `lstat`ed by name
//! relative to its directory, and nothing but directories is opened (`O_DIRECTORY`:
//! the kernel refuses anything else before opening it).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::safe_open;

/// Calls `visit(directory, name, lstat of the entry)` for every entry beneath `dir`
/// on the filesystem of `dir`, depth first; returns the `lstat` of `dir` itself.
pub fn walk(dir: &Path, mut visit: impl FnMut(&File, &OsStr, &Metadata)) -> io::Result<Metadata> {
    let top = safe_open::open_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
    let top_meta = top.metadata()?;
    // An empty stack entry stands for the top, which is open already.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let opened;
        let parent = if rel.as_os_str().is_empty() {
            &top
        } else {
            let Ok(Some(dir)) = safe_open::open_dir_beneath(&top, &rel) else {
                continue;
            };
            opened = dir;
            &opened
        };
        // Listed through the descriptor: the path may have changed since.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", parent.as_raw_fd())) else {
            continue;
        };
        for entry in entries.flatten() {
            // DirEntry::metadata is fstatat(AT_SYMLINK_NOFOLLOW) on the directory.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != top_meta.dev() {
                continue;
            }
            let name = entry.file_name();
            visit(parent, &name, &meta);
            if meta.is_dir() {
                stack.push(rel.join(name));
            }
        }
    }
    Ok(top_meta)
}

/// Bytes allocated to files under `root` (st_blocks, hard links counted once), not
/// crossing into other filesystems. Files that vanish during the walk are skipped.
pub fn disk_usage(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let top = walk(root, |_, _, meta| {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            return;
        }
        total += meta.blocks() * 512;
    })?;
    Ok(total + top.blocks() * 512)
}

/// Bytes used in the task's private /tmp (a tmpfs only the task's namespace sees),
/// by statfs through the task's root link in /proc (nothing to parse there).
pub fn tmp_usage(pid: i32) -> Option<u64> {
    let stat = nix::sys::statfs::statfs(format!("/proc/{pid}/root/tmp").as_str()).ok()?;
    let used_blocks = stat.blocks().saturating_sub(stat.blocks_free());
    u64::try_from(stat.block_size())
        .ok()
        .map(|bs| used_blocks * bs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let before = super::disk_usage(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let after = super::disk_usage(dir.path()).unwrap();
        let grown = after - before;
        assert!(
            (1 << 20..(1 << 20) + 65536).contains(&grown),
            "grew by {grown}"
        );
    }

    #[test]
    fn never_follows_links_nor_opens_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("usr")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut names = Vec::new();
        super::walk(d, |_, name, _| names.push(name.to_owned())).unwrap();
        names.sort();
        assert_eq!(names, ["a", "fifo", "sub", "usr"]);
        let used = super::disk_usage(d).unwrap();
        assert!(used < (1 << 20) + (1 << 18), "followed a link: {used}");
    }
}
