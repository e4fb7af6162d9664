//! Every on-disk path the containerizer uses, in one place.

use std::path::{Path, PathBuf};

/// Default root of run directories for the agent (a tmpfs: gone after a reboot).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cella/agent";

/// The layout of one task's run directory.
#[derive(Debug, Clone)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(runtime_root: &Path, task_id: &str) -> Self {
        Self(runtime_root.join("tasks").join(task_id))
    }

    pub fn from_path(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The launch specification read by `cella-shim`. Also the shim's lock: `flock`ed
    /// by the launcher before it starts the shim, and held by the shim for its whole
    /// life through the inherited descriptor (its fd 3). While the lock is taken, a
    /// shim lives or is starting, even before it has written `shim.pid`.
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }

    /// A FIFO on which the shim reports its [`crate::events::ShimEvent`]s.
    pub fn events(&self) -> PathBuf {
        self.0.join("events")
    }

    /// The shim's pid and start time, written by the shim.
    pub fn shim_pid(&self) -> PathBuf {
        self.0.join("shim.pid")
    }

    /// The task's pid (in the host's pid namespace) and start time.
    pub fn task_pid(&self) -> PathBuf {
        self.0.join("task.pid")
    }

    /// The task's exit status, written atomically by the shim when it ends.
    pub fn exit_status(&self) -> PathBuf {
        self.0.join("exit_status")
    }

    /// Where an image task's overlay root is mounted (in the task's mount namespace
    /// only: the host sees an empty directory) when the runtime directory's shared
    /// mount point cannot be made.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }

    /// Anything the shim itself has to say (it has no terminal).
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
}
