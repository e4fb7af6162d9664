//! The launch specification the launcher writes for `cella-shim`: everything the
//! shim needs, fully resolved (uids, capability mask, compiled seccomp program), so
//! the shim does no lookups and no compilation between clone and exec.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::Placement;
use crate::devices::DeviceNode;
use crate::task::{NetMode, Rlimit, Stdio};

/// A bind mount to set up inside the task's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Source on the host.
    pub source: PathBuf,
    /// Target path as the task sees it (inside the rootfs when there is one).
    pub target: PathBuf,
    pub read_only: bool,
}

/// An overlay mounted as the task's root: the image's layers under a writable upper
/// directory. The shim creates `upper`, `work` and `mount_point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// Lower directories, lowest first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the overlay is mounted, in the task's mount namespace (a directory of
    /// the runtime directory shared by image tasks); it becomes `rootfs`.
    pub mount_point: PathBuf,
    /// Keep the root read-only (the upper directory then only holds mount points).
    pub read_only: bool,
    /// Directories the task expects in its root (its working directory), created
    /// before the root turns read-only.
    pub create_dirs: Vec<PathBuf>,
    /// A directory inside the task's view (its sandbox's copy of the upper
    /// directory) covered by an empty read-only tmpfs.
    pub hide: Option<PathBuf>,
}

/// The filesystem the task sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemSpec {
    /// pivot_root into this directory; `None`: the host's tree, read-only.
    pub rootfs: Option<PathBuf>,
    /// Mount this overlay on `rootfs` first.
    #[serde(default)]
    pub overlay: Option<OverlaySpec>,
    /// Writable bind mounts (the sandbox) and volumes, in order.
    pub binds: Vec<BindMount>,
    /// Size limit of the private /tmp (tmpfs); `None`: the tmpfs default.
    pub tmp_size_bytes: Option<u64>,
    /// The nodes of the task's private /dev (the defaults and those passed in).
    pub devices: Vec<DeviceNode>,
    /// Host paths hidden from a task without a rootfs: a directory behind an empty
    /// read-only tmpfs, a file behind the task's /dev/null. Missing ones are skipped.
    pub masked: Vec<PathBuf>,
}

/// A seccomp program for the shim to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProgram {
    /// The default program, compiled into the shim when Cella was built: the spec
    /// stays small and nothing is compiled or copied per launch.
    Default,
    /// A compiled program (`struct sock_filter` as u64: code<<48 | jt<<40 | jf<<32 | k).
    Custom(Vec<u64>),
}

/// The identity the task runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything `cella-shim` needs to start one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub task_id: String,
    /// The task's run directory: the shim writes `shim.pid`, `task.pid` and
    /// `exit_status` there, and reports events on the `events` FIFO.
    pub run_dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Working directory inside the task.
    pub cwd: PathBuf,
    pub hostname: Option<String>,
    pub net: NetMode,
    pub filesystem: FilesystemSpec,
    /// `None`: keep root.
    pub identity: Option<Identity>,
    pub rlimits: Vec<Rlimit>,
    /// Capabilities the task keeps, as a bit mask of `CAP_*` numbers.
    pub capabilities: u64,
    /// The seccomp filter loaded last before exec; `None`: unconfined.
    pub seccomp: Option<SeccompProgram>,
    pub cgroup: Placement,
    pub stdio: Stdio,
    /// When the launcher is gone by the time the task ends, the shim kills what is
    /// left in the task's cgroups, removes them and the run directory (`cella exec`,
    /// whose launcher is not coming back). The agent sets this to false: it recovers.
    pub cleanup_if_orphaned: bool,
}
