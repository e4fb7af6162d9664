//! Garbage collection of the sandboxes of ended tasks (`<work-dir>/sandboxes/<id>`):
//! after `--gc-delay`, or earlier, oldest first, while the work directory's filesystem
//! is more than 90% full.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::time::{now_ns, unix_ns};
use tokio::sync::watch;

use crate::paths;
use crate::periodic::Periodic;
use crate::state::{Shared, lock};

/// The share of the work directory's filesystem above which sandboxes are removed
/// before their `--gc-delay`.
pub const GC_DISK_THRESHOLD: f64 = 0.9;

/// How often the garbage collector looks at how full the work directory's
/// filesystem is (one statvfs).
pub const GC_DISK_CHECK: Duration = Duration::from_secs(2);

/// Garbage-collects the sandboxes of ended tasks: a sweep (every
/// `min(--gc-delay, 60 s)`) removes `<work-dir>/sandboxes/<id>` of every task that is
/// not running any more and ended more than `--gc-delay` ago. The filesystem's fill is
/// checked more often (every [`GC_DISK_CHECK`]): when it is more than 90% full, a sweep
/// runs at once and ended tasks' sandboxes go earlier, oldest first, until it is not.
/// A task's end is its checkpointed end time, or for a task already forgotten (its
/// last update acknowledged) the last modification of its sandbox.
pub async fn gc_loop(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let period = shared
        .config
        .gc_delay
        .min(Duration::from_secs(60))
        .max(Duration::from_millis(200));
    let mut timer = Periodic::new(period.min(GC_DISK_CHECK), stop);
    let sandboxes = paths::sandboxes_dir(&shared.config.work_dir);
    let mut last_sweep = Instant::now();
    while timer.next().await {
        let disk_full = disk_used_share(&sandboxes).is_some_and(|s| s > GC_DISK_THRESHOLD);
        if !disk_full && last_sweep.elapsed() < period {
            continue;
        }
        last_sweep = Instant::now();
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || gc_sweep(&shared)).await;
    }
}

fn modified_ns(path: &Path) -> u64 {
    // lstat: a task's stdout replaced by a link to a host file is not followed.
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map_or(0, unix_ns)
}

/// The used share of the filesystem holding `dir`, as `df` counts it: used blocks
/// against used and available ones. Blocks the filesystem keeps back (ext4's
/// reserve for root, or space a host's thin provisioning withholds) count neither
/// way, so "90% full" here is what an operator's `df` says.
fn disk_used_share(dir: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)]
    let (blocks, free, avail) = (
        u64::from(st.blocks()),
        u64::from(st.blocks_free()),
        u64::from(st.blocks_available()),
    );
    Some(used_share(blocks, free, avail))
}

/// `df`'s use share from statvfs' block counts (zero for an empty filesystem).
#[allow(clippy::cast_precision_loss)]
fn used_share(blocks: u64, free: u64, avail: u64) -> f64 {
    let used = blocks.saturating_sub(free);
    let usable = used.saturating_add(avail);
    if usable == 0 {
        0.0
    } else {
        used as f64 / usable as f64
    }
}

/// One garbage-collection sweep; returns the ids whose sandboxes were removed.
pub fn gc_sweep(shared: &Shared) -> Vec<String> {
    let root = paths::sandboxes_dir(&shared.config.work_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let delay_ns = u64::try_from(shared.config.gc_delay.as_nanos()).unwrap_or(u64::MAX);
    let now = now_ns();
    // (end, id) of every ended task's sandbox.
    let mut ended: Vec<(u64, String)> = Vec::new();
    for e in entries.flatten() {
        let Ok(id) = e.file_name().into_string() else {
            continue;
        };
        let path = e.path();
        let end = match lock(&shared.tasks).get(&id) {
            Some(t) if !t.state.is_terminal() => continue,
            Some(t) if t.ended_ns > 0 => t.ended_ns,
            _ => [paths::sandbox_stdout(&path), paths::sandbox_stderr(&path)]
                .iter()
                .map(|p| modified_ns(p))
                .chain([modified_ns(&path)])
                .max()
                .unwrap_or(0),
        };
        ended.push((end, id));
    }
    ended.sort();
    let remove = |id: &str| -> bool {
        if lock(&shared.tasks)
            .get(id)
            .is_some_and(|t| !t.state.is_terminal())
        {
            return false;
        }
        match std::fs::remove_dir_all(paths::sandbox_dir(&shared.config.work_dir, id)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task_id = id, "removing the sandbox failed: {e}");
                false
            }
        }
    };
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (end, id) in ended {
        if now.saturating_sub(end) >= delay_ns {
            if remove(&id) {
                tracing::info!(task_id = %id, "sandbox removed (--gc-delay passed)");
                removed.push(id);
            }
        } else {
            kept.push(id);
        }
    }
    // Oldest first while the disk is too full.
    for id in kept {
        if disk_used_share(&root).is_none_or(|s| s <= GC_DISK_THRESHOLD) {
            break;
        }
        if remove(&id) {
            tracing::warn!(task_id = %id, "sandbox removed early: the work directory's filesystem is more than 90% full");
            removed.push(id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_used_share_is_dfs() {
        // A filesystem keeping 161 of 252 blocks back: 68 used, 23 available is
        // 75% (df), not 91%.
        let share = super::used_share(252, 184, 23);
        assert!((share - 68.0 / 91.0).abs() < 1e-9, "{share}");
        assert!(super::used_share(100, 100, 100).abs() < 1e-9);
        assert!((super::used_share(100, 0, 0) - 1.0).abs() < 1e-9);
        assert!(super::used_share(0, 0, 0).abs() < 1e-9);
    }
}
