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

pub use mode::{Mode, detect_mode, parse_mode, unescape_mountinfo};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::MilliCpus;

/// An error from the cgroup filesystem, always naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no cgroup hierarchy is mounted for the {0} controller (Cella needs cpu, memory and pids)"
    )]
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
            Placement::V1 { procs_files } => procs_files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect(),
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
    /// Finds the base cgroup in each hierarchy. `root` is `--cgroup-root`: an absolute
    /// path is taken from each hierarchy's mount point (`/cella` →
    /// `/sys/fs/cgroup/memory/cella`), a relative one from the calling process's own
    /// cgroup; `None` means the own cgroup plus `cella`. Nothing is created yet.
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
            Backend::V1(h) => h.create(name, limits).map(|c| TaskCgroup {
                inner: Inner::V1(c),
            }),
            Backend::V2(b) => b.create(name, limits).map(|c| TaskCgroup {
                inner: Inner::V2(c),
            }),
        }
    }

    /// A handle on an existing task cgroup (recovery, cleanup after a crash). It is
    /// fine if it does not exist: stats are empty and removal succeeds.
    pub fn open(&self, name: &str) -> TaskCgroup {
        match &self.backend {
            Backend::V1(h) => TaskCgroup {
                inner: Inner::V1(h.open(name)),
            },
            Backend::V2(b) => TaskCgroup {
                inner: Inner::V2(b.open(name)),
            },
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

impl Placement {
    /// The `cgroup.procs` file of every cgroup directory the task lives in.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match self {
            Placement::V2 { dir } => vec![dir.join("cgroup.procs")],
            Placement::V1 { procs_files } => procs_files.clone(),
        }
    }

    /// Moves process `pid` (all its threads) into the task cgroup. The shim uses
    /// clone3(CLONE_INTO_CGROUP) on v2 where it can; this is the portable way.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for file in self.procs_files() {
            fsx::write(&file, &pid)?;
        }
        Ok(())
    }
}

impl CgroupRoot {
    /// cgroup v2 only ("no internal processes"): a cgroup that holds processes cannot
    /// hand controllers to its children, so an agent whose base is beneath its own
    /// cgroup first moves itself into the leaf `<own cgroup>/<leaf>`. Returns the
    /// leaf, or `None` when nothing had to move (v1, or a base elsewhere).
    /// Call it before any other thread or child exists, and before `create`.
    pub fn move_self_into_leaf(&self, leaf: &str) -> Result<Option<PathBuf>, CgroupError> {
        match &self.backend {
            Backend::V1(_) => Ok(None),
            Backend::V2(b) => b.move_self_into_leaf(leaf),
        }
    }
}

/// File helpers shared by both backends; every error names its path.
mod fsx {
    use std::io::{ErrorKind, Write};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::CgroupError;

    pub fn io(path: &Path, source: std::io::Error) -> CgroupError {
        CgroupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// One write(2) of `value`: cgroup files take a whole value per write. No
    /// O_CREAT: kernfs answers EACCES rather than ENOENT to a create.
    pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| io(path, e))
    }

    /// Like [`write`], but a file this kernel does not offer is fine (`Ok(false)`).
    pub fn write_optional(path: &Path, value: &str) -> Result<bool, CgroupError> {
        match write(path, value) {
            Ok(()) => Ok(true),
            Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn is_kind(e: &CgroupError, kind: ErrorKind) -> bool {
        matches!(e, CgroupError::Io { source, .. } if source.kind() == kind)
    }

    pub fn is_errno(e: &CgroupError, errno: i32) -> bool {
        matches!(e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(errno))
    }

    pub fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    pub fn read_u64(path: &Path) -> Option<u64> {
        read(path)?.trim().parse().ok()
    }

    /// The value of `key` in a flat keyed file (`key value` per line).
    pub fn keyed(text: &str, key: &str) -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            if k == key {
                v.trim().parse().ok()
            } else {
                None
            }
        })
    }

    pub fn keyed_file(path: &Path, key: &str) -> Option<u64> {
        keyed(&read(path)?, key)
    }

    /// Pids listed in a `cgroup.procs` file; a cgroup that does not exist has none.
    pub fn pids(procs: &Path) -> Result<Vec<i32>, CgroupError> {
        match std::fs::read_to_string(procs) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(procs, e)),
        }
    }

    /// SIGKILLs every pid; returns how many were not already in `killed`.
    pub fn sigkill_new(pids: &[i32], killed: &mut Vec<i32>) -> usize {
        let mut new = 0;
        for &pid in pids {
            if pid <= 0 || killed.contains(&pid) {
                continue;
            }
            // ESRCH: it exited meanwhile, which is what we want anyway.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
            new += 1;
        }
        new
    }

    /// Polls `done` every 1-5 ms until it holds or `limit` passes.
    pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if done() {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// mkdir; `Ok(true)` if this call created it, `Ok(false)` if it existed.
    pub fn mkdir(path: &Path) -> Result<bool, CgroupError> {
        match std::fs::create_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path, e)),
        }
    }

    /// Creates `path` and any missing parents; returns the ones created, outermost first.
    pub fn mkdir_all(path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
        match std::fs::create_dir(path) {
            Ok(()) => return Ok(vec![path.to_path_buf()]),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Vec::new()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(path, e)),
        }
        let parent = path
            .parent()
            .ok_or_else(|| io(path, ErrorKind::NotFound.into()))?;
        let mut created = mkdir_all(parent)?;
        match mkdir(path) {
            Ok(true) => created.push(path.to_path_buf()),
            Ok(false) => {}
            Err(e) => {
                rmdirs_quietly(&created);
                return Err(e);
            }
        }
        Ok(created)
    }

    /// Best-effort removal of directories created by a failed call, innermost first.
    pub fn rmdirs_quietly(created: &[PathBuf]) {
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// rmdir that treats a missing cgroup as removed and retries EBUSY for ~1 s: a
    /// killed task's exit is not accounted the instant its pids vanish.
    pub fn rmdir(path: &Path) -> Result<(), CgroupError> {
        let mut result = Ok(());
        wait_until(Duration::from_secs(1), || match std::fs::remove_dir(path) {
            Ok(()) => {
                result = Ok(());
                true
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                result = Ok(());
                true
            }
            Err(e) => {
                let retry = e.raw_os_error() == Some(libc::EBUSY);
                result = Err(io(path, e));
                !retry
            }
        });
        result
    }
}
