//! Every path the agent uses under its work directory and its runtime directory, in
//! one place (like Mesos' `src/slave/paths.hpp`): no other module spells one.
//!
//! ```text
//! <work-dir>/                      --work-dir (default /var/lib/cella/agent)
//!   meta/                          the checkpoint
//!     lock                         flock'ed by the running agent, holds its pid
//!     agent.redb                   agent id, boot id, tasks, unacknowledged updates
//!     agent.redb.damaged-<secs>    a damaged checkpoint set aside (--strict=false)
//!   sandboxes/<task>/              a task's sandbox (kept after it ends, until GC)
//!     stdout, stderr               the task's output
//!     .rootfs/upper, .rootfs/work  an image task's writable layer (overlayfs)
//!   images/                        the image store (cella_image::StorePaths)
//! <runtime-dir>/                   --runtime-dir (default /run/cella/agent, a tmpfs)
//!   tasks/<task>/                  the containerizer's run directory of a task
//!                                  (cella_containerizer::paths::RunDir)
//! ```

use std::path::{Path, PathBuf};

const META: &str = "meta";
const LOCK: &str = "lock";
const CHECKPOINT: &str = "agent.redb";
const DAMAGED_SUFFIX: &str = ".damaged-";
const SANDBOXES: &str = "sandboxes";
const IMAGES: &str = "images";
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";
const RUN_DIRS: &str = "tasks";

/// `<work-dir>/meta`: the checkpoint's directory.
pub fn meta_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(META)
}

/// `<work-dir>/meta/lock`: taken (flock) by the agent that owns the work directory.
pub fn lock_file(work_dir: &Path) -> PathBuf {
    meta_dir(work_dir).join(LOCK)
}

/// `<work-dir>/meta/agent.redb`: the checkpoint database.
pub fn checkpoint_file(work_dir: &Path) -> PathBuf {
    meta_dir(work_dir).join(CHECKPOINT)
}

/// `<work-dir>/meta/agent.redb.damaged-<unix seconds>`: where a damaged checkpoint is
/// moved aside.
pub fn damaged_checkpoint_file(work_dir: &Path, unix_secs: u64) -> PathBuf {
    meta_dir(work_dir).join(format!("{CHECKPOINT}{DAMAGED_SUFFIX}{unix_secs}"))
}

/// Whether `name` (a file name in [`meta_dir`]) is a checkpoint set aside by
/// [`damaged_checkpoint_file`].
pub fn is_damaged_checkpoint(name: &str) -> bool {
    name.starts_with(&format!("{CHECKPOINT}{DAMAGED_SUFFIX}"))
}

/// `<work-dir>/images`: the image store.
pub fn images_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(IMAGES)
}

/// `<work-dir>/sandboxes`: one directory per task.
pub fn sandboxes_dir(work_dir: &Path) -> PathBuf {
    work_dir.join(SANDBOXES)
}

/// `<work-dir>/sandboxes/<task>`: the task's sandbox.
pub fn sandbox_dir(work_dir: &Path, task_id: &str) -> PathBuf {
    sandboxes_dir(work_dir).join(task_id)
}

/// `<sandbox>/stdout`: the task's standard output.
pub fn sandbox_stdout(sandbox: &Path) -> PathBuf {
    sandbox.join(STDOUT)
}

/// `<sandbox>/stderr`: the task's standard error.
pub fn sandbox_stderr(sandbox: &Path) -> PathBuf {
    sandbox.join(STDERR)
}

/// `<runtime-dir>/tasks`: the parent of every task's run directory. The containerizer
/// creates those ([`cella_containerizer::paths::RunDir`]); the agent lists them to
/// find the leftovers of tasks it no longer knows.
pub fn run_dirs(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(RUN_DIRS)
}

/// The directories [`crate::agent::Agent::start`] creates before anything else, with
/// their modes: private but for the way down to the sandboxes, which a task that runs
/// without a rootfs as an unprivileged user must be able to traverse (not list) to
/// reach its own; the run directories (launch specs hold the tasks' environments,
/// secrets included) are root's alone.
pub fn directories_to_create(work_dir: &Path, runtime_dir: &Path) -> [(PathBuf, u32); 5] {
    [
        (work_dir.to_path_buf(), 0o711),
        (meta_dir(work_dir), 0o700),
        (sandboxes_dir(work_dir), 0o711),
        (runtime_dir.to_path_buf(), 0o700),
        (run_dirs(runtime_dir), 0o700),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_containerizer::paths::RunDir;

    #[test]
    fn layout() {
        let work = Path::new("/w");
        assert_eq!(lock_file(work), Path::new("/w/meta/lock"));
        assert_eq!(checkpoint_file(work), Path::new("/w/meta/agent.redb"));
        let aside = damaged_checkpoint_file(work, 7);
        assert_eq!(aside, Path::new("/w/meta/agent.redb.damaged-7"));
        let name = aside.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(is_damaged_checkpoint(name));
        assert!(!is_damaged_checkpoint("agent.redb"));
        let sandbox = sandbox_dir(work, "t1");
        assert_eq!(sandbox, Path::new("/w/sandboxes/t1"));
        assert_eq!(
            sandbox_stdout(&sandbox),
            Path::new("/w/sandboxes/t1/stdout")
        );
        assert_eq!(
            sandbox_stderr(&sandbox),
            Path::new("/w/sandboxes/t1/stderr")
        );
    }

    /// The run directories are the containerizer's: the agent must look where it puts
    /// them.
    #[test]
    fn run_dirs_are_where_the_containerizer_puts_them() {
        let runtime = Path::new("/r");
        let run_dir = RunDir::new(runtime, "t1");
        assert_eq!(run_dir.path().parent(), Some(run_dirs(runtime).as_path()));
    }
}
