//! Task cgroups: one interface over the cgroup v2 (unified) and v1 (legacy, hybrid)
//! hierarchies. Cella only ever writes beneath its base cgroup: by default the
//! calling process's own cgroup in each hierarchy plus `cella/`, or `--cgroup-root`.
//!
//! INTERFACE CONTRACT (used by the isolators, the shim and the tests):
//! - [`detect_mode`] / [`Mode`]: unified / hybrid / legacy, from /proc/self/mountinfo.
//! - [`CgroupRoot::discover`]: the base cgroup in every hierarchy Cella uses.
//! - [`CgroupRoot::create`]: a task cgroup with limits written, no process in it yet.
//! - [`TaskCgroup::placement`]: what `cella-shim` needs to put the child in it.
//! - [`TaskCgroup::stats`], [`TaskCgroup::kill`], [`TaskCgroup::remove`], [`TaskCgroup::update`].

mod mode;
mod v1;
mod v2;

pub use mode::{Mode, detect_mode, parse_mode};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::MilliCpus;

/// An error from the cgroup filesystem, always naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no cgroup hierarchy is mounted for the {0} controller (Cella needs cpu, memory and pids)")]
    MissingController(String),
    #[error("cannot read cgroup mounts from {path}: {why}")]
    Mounts { path: PathBuf, why: String },
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cgroup v2: {0}")]
    V2Setup(String),
    #[error("cgroup {path} still has processes after kill; not removed")]
    Busy { path: PathBuf },
}

/// Limits written into a task's cgroup. `None` leaves the kernel's default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// CFS quota (per 100 ms period) and weight/shares derived from a CPU count.
    pub cpus: Option<MilliCpus>,
    /// Hard memory limit; swap is disabled for the task.
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// What `cella-shim` needs to place the child in the task cgroup before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// cgroup v2: the directory to pass to clone3(CLONE_INTO_CGROUP).
    V2 { dir: PathBuf },
    /// cgroup v1: write the child's pid to each of these `cgroup.procs` files.
    V1 { procs_files: Vec<PathBuf> },
}

impl Placement {
    /// Every cgroup directory the task lives in.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Placement::V2 { dir } => vec![dir.clone()],
            Placement::V1 { procs_files } => {
                procs_files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect()
            }
        }
    }
}

/// Raw figures read from a task's cgroup, normalised to ns and bytes. `None` where
/// this kernel/hierarchy does not offer the figure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub mem_current_bytes: Option<u64>,
    /// The kernel's own peak (v2 `memory.peak` ≥ 5.19, v1 `memory.max_usage_in_bytes`).
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_peak: Option<u64>,
    /// Forks refused at `pids.max` (the `max` counter of `pids.events`).
    pub pids_limit_hits: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// The base cgroup(s) under which Cella creates task cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mode: Mode,
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    V1(v1::Hierarchies),
    V2(v2::Base),
}

impl CgroupRoot {
    /// Finds the base cgroup in each hierarchy. `root` is `--cgroup-root`: a path
    /// relative to each hierarchy's mount point (e.g. `/cella`); `None` means the
    /// calling process's own cgroup plus `cella`. Nothing is created yet.
    pub fn discover(root: Option<&Path>) -> Result<Self, CgroupError> {
        let mode = detect_mode()?;
        let backend = match mode {
            Mode::Unified => Backend::V2(v2::Base::discover(root)?),
            Mode::Hybrid | Mode::Legacy => Backend::V1(v1::Hierarchies::discover(root)?),
        };
        Ok(Self { mode, backend })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `1` or `2`: the cgroup version whose interface files hold the limits.
    pub fn version(&self) -> u8 {
        match self.backend {
            Backend::V1(_) => 1,
            Backend::V2(_) => 2,
        }
    }

    /// The base directories (one per hierarchy on v1).
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::V1(h) => h.base_dirs(),
            Backend::V2(b) => vec![b.dir().to_path_buf()],
        }
    }

    /// Creates the task cgroup `name` (in every hierarchy on v1) and writes `limits`.
    /// On error nothing is left behind.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup, CgroupError> {
        match &self.backend {
            Backend::V1(h) => h.create(name, limits).map(|c| TaskCgroup { inner: Inner::V1(c) }),
            Backend::V2(b) => b.create(name, limits).map(|c| TaskCgroup { inner: Inner::V2(c) }),
        }
    }

    /// A handle on an existing task cgroup (recovery, cleanup after a crash). It is
    /// fine if it does not exist: stats are empty and removal succeeds.
    pub fn open(&self, name: &str) -> TaskCgroup {
        match &self.backend {
            Backend::V1(h) => TaskCgroup { inner: Inner::V1(h.open(name)) },
            Backend::V2(b) => TaskCgroup { inner: Inner::V2(b.open(name)) },
        }
    }

    /// Names of the task cgroups that exist under the base (to find orphans).
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        match &self.backend {
            Backend::V1(h) => h.list(),
            Backend::V2(b) => b.list(),
        }
    }

    /// Removes the base directories if they are empty (the last task is gone).
    /// Busy or missing bases are not an error.
    pub fn remove_base_if_empty(&self) {
        for dir in self.base_dirs() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// One task's cgroup (one directory per hierarchy on v1).
#[derive(Debug, Clone)]
pub struct TaskCgroup {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    V1(v1::TaskGroup),
    V2(v2::TaskGroup),
}

impl TaskCgroup {
    pub fn placement(&self) -> Placement {
        match &self.inner {
            Inner::V1(c) => c.placement(),
            Inner::V2(c) => c.placement(),
        }
    }

    /// Changes the limits of a running task.
    pub fn update(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match &self.inner {
            Inner::V1(c) => c.update(limits),
            Inner::V2(c) => c.update(limits),
        }
    }

    pub fn stats(&self) -> CgroupStats {
        match &self.inner {
            Inner::V1(c) => c.stats(),
            Inner::V2(c) => c.stats(),
        }
    }

    /// Pids of every process in the task cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        match &self.inner {
            Inner::V1(c) => c.pids(),
            Inner::V2(c) => c.pids(),
        }
    }

    /// Kills every process in the cgroup, including ones that daemonized:
    /// `cgroup.kill` on v2 ≥ 5.14, else freeze → SIGKILL each pid → thaw. Returns once
    /// the cgroup is empty (or after a bounded wait, with `Busy`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        match &self.inner {
            Inner::V1(c) => c.kill(),
            Inner::V2(c) => c.kill(),
        }
    }

    /// Kills what is left and removes the directories; idempotent, retries while the
    /// kernel answers EBUSY for a short while.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match &self.inner {
            Inner::V1(c) => c.remove(),
            Inner::V2(c) => c.remove(),
        }
    }
}
