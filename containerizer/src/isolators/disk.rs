//! Disk space used under the sandbox and in the private /tmp, measured by walking
//! the tree (as Mesos' `disk/du`), and enforced: a task over `--disk` is killed with
//! `DISK_LIMIT`. The private /tmp is a tmpfs sized to the limit, so it cannot be used
//! to escape it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Isolator, IsolatorError};
use crate::spec::ShimSpec;
use crate::task::{TaskConfig, TaskId};
use crate::usage::{Limitation, Usage};

struct Watched {
    sandbox: PathBuf,
    limit: Option<u64>,
    measure: bool,
    pid: Option<i32>,
}

#[derive(Default)]
pub struct DiskIsolator {
    tasks: Mutex<HashMap<TaskId, Watched>>,
}

impl DiskIsolator {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<TaskId, Watched>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        let mut guard = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

/// Bytes allocated to files under `root` (st_blocks, hard links counted once), not
/// crossing into other filesystems. Files that vanish during the walk are skipped.
pub fn disk_usage(root: &Path) -> io::Result<u64> {
    let top = std::fs::symlink_metadata(root)?;
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = top.blocks() * 512;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Bytes used in the task's private /tmp (a tmpfs only the task's namespace sees),
/// by statfs through the task's root link in /proc (nothing to parse there).
fn tmp_usage(pid: i32) -> Option<u64> {
    let stat = nix::sys::statfs::statfs(format!("/proc/{pid}/root/tmp").as_str()).ok()?;
    let used_blocks = stat.blocks().saturating_sub(stat.blocks_free());
    u64::try_from(stat.block_size())
        .ok()
        .map(|bs| used_blocks * bs)
}

impl Isolator for DiskIsolator {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn prepare(
        &self,
        id: &TaskId,
        config: &TaskConfig,
        spec: &mut ShimSpec,
    ) -> Result<(), IsolatorError> {
        let limit = config.resources.disk_bytes;
        spec.filesystem.tmp_size_bytes = limit;
        let watched = Watched {
            sandbox: config.sandbox.clone(),
            limit,
            measure: config.measure_disk || limit.is_some(),
            pid: None,
        };
        self.with(|t| t.insert(id.clone(), watched));
        Ok(())
    }

    fn recover(&self, tasks: &[(TaskId, TaskConfig)]) -> Result<(), IsolatorError> {
        for (id, config) in tasks {
            let watched = Watched {
                sandbox: config.sandbox.clone(),
                limit: config.resources.disk_bytes,
                measure: config.measure_disk || config.resources.disk_bytes.is_some(),
                pid: None,
            };
            self.with(|t| t.insert(id.clone(), watched));
        }
        Ok(())
    }

    fn isolate(&self, id: &TaskId, pid: i32) {
        self.with(|t| t.get_mut(id).map(|w| w.pid = Some(pid)));
    }

    fn usage(&self, id: &TaskId, usage: &mut Usage) {
        let Some((sandbox, pid)) = self.with(|t| {
            t.get(id)
                .filter(|w| w.measure)
                .map(|w| (w.sandbox.clone(), w.pid))
        }) else {
            return;
        };
        let tmp = pid.and_then(tmp_usage).unwrap_or(0);
        usage.disk_used_bytes = disk_usage(&sandbox).ok().map(|bytes| bytes + tmp);
    }

    fn usage_is_costly(&self) -> bool {
        true
    }

    fn watch(&self, id: &TaskId, usage: &Usage) -> Option<Limitation> {
        let limit = self.with(|t| t.get(id).and_then(|w| w.limit))?;
        usage
            .disk_used_bytes
            .filter(|used| *used > limit)
            .map(|_| Limitation::DiskLimit)
    }

    fn cleanup(&self, id: &TaskId) -> Result<(), IsolatorError> {
        self.with(|t| t.remove(id));
        Ok(())
    }
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
}
