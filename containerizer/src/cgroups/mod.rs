//! Task cgroups: one interface over the cgroup v2 (unified) and v1 (legacy, hybrid)
//! hierarchies. Cella only ever writes beneath its base cgroup: by default the
//! calling process's own cgroup in each hierarchy plus `cella/`, or `--cgroup-root`.
//!
//! Each cgroup version is one backend implementing two traits, so the versions offer
//! the same operations and cannot drift apart:
//! - [`CgroupBackend`]: the base cgroup(s) of a version (create, open, list task
//!   cgroups), behind a [`CgroupRoot`];
//! - [`CgroupManager`]: one task's cgroup(s) (placement, limits, usage, kill, removal),
//!   behind a [`TaskCgroup`].
//!
//! [`Host`] reads the mounts and this process's cgroups once and decides the [`Mode`];
//! [`CgroupRoot::discover_on`] picks the backend from it, the only place that looks at
//! the version.

mod device_filter;
mod fsx;
mod host;
mod sampler;
mod scope;
mod stat_files;
mod v1;
mod v2;

pub use host::{Host, Mode, detect_mode, parse_mode, unescape_mountinfo};
pub use sampler::{FULL_SAMPLE_INTERVAL, FullSampleBudget, RUNNING_FULL_SAMPLE_BOUND, TaskSampler};
pub use scope::{SLICE as SYSTEMD_SLICE, enter_scope};
pub use stat_files::{StatFiles, held_descriptors};

use std::ffi::OsString;
use std::fmt::Debug;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::devices::AllowedDevice;
use crate::units::MilliCpus;
use crate::usage::Usage;

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
    /// cgroup v1: the child enters each of these cgroups itself (see `shim/child.rs`).
    V1 { procs_files: Vec<PathBuf> },
    /// cgroup v2 under systemd: the shim runs in the task's delegated scope and
    /// creates the task cgroup `dir` (`<scope>/task`) with `limits` and a device
    /// filter allowing `devices` itself ([`enter_scope`]), then clones the task into it.
    Scope {
        dir: PathBuf,
        limits: CgroupLimits,
        devices: Vec<crate::devices::AllowedDevice>,
    },
}

impl Placement {
    /// Every cgroup directory the task lives in.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Placement::V2 { dir } | Placement::Scope { dir, .. } => vec![dir.clone()],
            Placement::V1 { procs_files } => procs_files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect(),
        }
    }

    /// The `cgroup.procs` file of every cgroup directory the task lives in.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match self {
            Placement::V2 { dir } | Placement::Scope { dir, .. } => vec![dir.join("cgroup.procs")],
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

    /// Best effort, for a shim whose launcher is gone and which knows only the
    /// placement: SIGKILLs every process left in the task's cgroups until none is
    /// left, removes them, and their base when it has no other task. The task (its
    /// namespace's init) is dead already, so the kernel is killing the rest; this
    /// catches any that were mid-exit or had left the namespace's reach.
    pub fn kill_and_remove(&self) {
        let dirs = self.dirs();
        let mut killed = Vec::new();
        fsx::wait_until(ORPHAN_WAIT, || {
            let mut left = false;
            for dir in &dirs {
                let pids = fsx::pids(&dir.join("cgroup.procs")).unwrap_or_default();
                left |= !pids.is_empty();
                fsx::sigkill_new(&pids, &mut killed);
            }
            !left
        });
        for dir in &dirs {
            let _ = fsx::rmdir(dir);
        }
        if matches!(self, Placement::Scope { .. }) {
            // The scope is systemd's: it goes by itself once empty.
            return;
        }
        for base in dirs.iter().filter_map(|d| d.parent()) {
            fsx::remove_base_if_empty(base);
        }
    }
}

/// How long a shim cleaning up after an orphaned task waits for its processes to go.
const ORPHAN_WAIT: Duration = Duration::from_secs(1);

/// Which figures a usage read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figures {
    /// Every figure.
    Every,
    /// All but those the kernel keeps as a running maximum or count that only a
    /// task's summary needs: its memory and pids peaks and pids limit hits.
    Running,
    /// Those people watch live, each one short read: CPU time (`cpu` given: its
    /// exact total, divided in the proportion of the user/system split in `usage`),
    /// memory and processes.
    Live,
    /// Only the memory breakdown: anon, file, kernel and swap.
    Breakdown,
    /// Only those the kernel changes while no process of the task runs: memory
    /// (reclaim of page cache and swap-out, socket buffers) and, on v2, I/O
    /// (writeback) and pressure.
    Asleep,
}

/// One cgroup version's base: where task cgroups are created, found and listed.
pub trait CgroupBackend: Debug + Send + Sync {
    /// `1` or `2`: the cgroup version whose interface files hold the limits.
    fn version(&self) -> u8;

    /// The base directories (one per hierarchy on v1).
    fn base_dirs(&self) -> Vec<PathBuf>;

    /// Creates the task cgroup `name` (in every hierarchy on v1) and writes `limits`.
    /// On error nothing is left behind.
    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup, CgroupError>;

    /// A handle on an existing task cgroup (recovery, cleanup after a crash). It is
    /// fine if it does not exist: stats are empty and removal succeeds.
    fn open(&self, name: &str) -> TaskCgroup;

    /// Names of the task cgroups that exist under the base (to find orphans).
    fn list(&self) -> Result<Vec<String>, CgroupError>;

    /// cgroup v2 only ("no internal processes"): a cgroup that holds processes cannot
    /// hand controllers to its children, so an agent whose base is beneath its own
    /// cgroup first moves itself into the leaf `<own cgroup>/<leaf>`. Returns the
    /// leaf, or `None` when nothing had to move (v1, or a base elsewhere).
    /// Call it before any other thread or child exists, and before `create`.
    fn move_self_into_leaf(&self, leaf: &str) -> Result<Option<PathBuf>, CgroupError>;

    /// The command (and its arguments) the shim of task `name` is started through,
    /// before the shim's own path; empty to start the shim directly. Under systemd
    /// this is `systemd-run --scope ...`, which puts the shim in the task's scope.
    fn shim_launcher(&self, _name: &str) -> Vec<OsString> {
        Vec::new()
    }
}

/// One task's cgroup (one directory per hierarchy on v1), as youki's `CgroupManager`.
pub trait CgroupManager: Debug + Send + Sync {
    /// What `cella-shim` needs to put the child in it.
    fn placement(&self) -> Placement;

    /// Restricts the task to read and write `allowed` devices and nothing else
    /// (no mknod): v1 `devices.deny`/`devices.allow`, v2 a device filter program.
    /// Called once, before the task runs.
    fn allow_devices(&self, allowed: &[AllowedDevice]) -> Result<(), CgroupError>;

    /// Changes the limits of a running task.
    fn update(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;

    /// The task's figures, normalised to ns and bytes; `None` where this
    /// kernel/hierarchy does not offer a figure (and always for the disk, which is
    /// not a cgroup's to measure). Opens every file by path: a sampler reading a
    /// task again and again holds them open ([`TaskSampler`]).
    fn stats(&self) -> Usage {
        let mut usage = Usage::default();
        self.read_usage(&mut StatFiles::by_path(), Figures::Every, None, &mut usage);
        usage
    }

    /// The cheapest figure that moves whenever any process of the task runs: its
    /// CPU time counter (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    fn cpu_counter(&self, files: &mut StatFiles) -> Option<u64>;

    /// Reads the task's `figures` (see [`CgroupManager::stats`]) through `files`
    /// into `usage`, leaving its other fields as they are; `cpu` is the value
    /// [`CgroupManager::cpu_counter`] has just read, if any (v1 takes its exact CPU
    /// total from it instead of reading it again).
    fn read_usage(
        &self,
        files: &mut StatFiles,
        figures: Figures,
        cpu: Option<u64>,
        usage: &mut Usage,
    );

    /// Pids of every process in the task cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;

    /// Kills every process in the cgroup, including ones that daemonized:
    /// `cgroup.kill` on v2 ≥ 5.14, else freeze → SIGKILL each pid → thaw. Returns once
    /// the cgroup is empty (or after a bounded wait, with `Busy`).
    fn kill(&self) -> Result<(), CgroupError>;

    /// Kills what is left and removes the directories; idempotent, retries while the
    /// kernel answers EBUSY for a short while.
    fn remove(&self) -> Result<(), CgroupError>;
}

/// The base cgroup(s) under which Cella creates task cgroups: the backend of this
/// host's mode (its operations are those of [`CgroupBackend`]).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mode: Mode,
    backend: Arc<dyn CgroupBackend>,
}

impl CgroupRoot {
    /// Finds the base cgroup in each hierarchy. `root` is `--cgroup-root`: an absolute
    /// path is taken from each hierarchy's mount point (`/cella` →
    /// `/sys/fs/cgroup/memory/cella`), a relative one from the calling process's own
    /// cgroup; `None` means the own cgroup plus `cella`. Nothing is created yet.
    pub fn discover(root: Option<&Path>) -> Result<Self, CgroupError> {
        Self::discover_on(&Host::read()?, root)
    }

    /// [`CgroupRoot::discover`] on a given host layout (tests inject one).
    pub fn discover_on(host: &Host, root: Option<&Path>) -> Result<Self, CgroupError> {
        Self::discover_with(host, root, None)
    }

    /// Like [`CgroupRoot::discover`], with tasks in transient scopes of the systemd
    /// slice `slice` (e.g. [`SYSTEMD_SLICE`]) when the host has cgroup v2 only and
    /// no `root` is given; `None`, or any other host, chooses as `discover` does.
    pub fn discover_in_slice(
        root: Option<&Path>,
        slice: Option<&str>,
    ) -> Result<Self, CgroupError> {
        Self::discover_with(&Host::read()?, root, slice)
    }

    fn discover_with(
        host: &Host,
        root: Option<&Path>,
        slice: Option<&str>,
    ) -> Result<Self, CgroupError> {
        let mode = host.mode()?;
        if let (Mode::Unified, None, Some(slice)) = (mode, root, slice) {
            return Ok(Self {
                mode,
                backend: Arc::new(scope::Slice::discover(host, slice)?),
            });
        }
        let backend: Arc<dyn CgroupBackend> = match mode {
            Mode::Unified => Arc::new(v2::Base::discover(host, root)?),
            Mode::Hybrid | Mode::Legacy => Arc::new(v1::Hierarchies::discover(host, root)?),
        };
        Ok(Self { mode, backend })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Removes the base directories if they are empty (the last task is gone).
    /// Busy or missing bases are not an error.
    pub fn remove_base_if_empty(&self) {
        for dir in self.backend.base_dirs() {
            fsx::remove_base_if_empty(&dir);
        }
    }
}

impl Deref for CgroupRoot {
    type Target = dyn CgroupBackend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

/// One task's cgroup: the [`CgroupManager`] of its backend, cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskCgroup(Arc<dyn CgroupManager>);

impl TaskCgroup {
    fn new(manager: impl CgroupManager + 'static) -> Self {
        Self(Arc::new(manager))
    }
}

impl Deref for TaskCgroup {
    type Target = dyn CgroupManager;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// Scales a sampled user/system split so that it adds up to the exact `total`.
fn split_exact_total(
    total: Option<u64>,
    user: Option<u64>,
    system: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    match (total, user, system) {
        (Some(total), Some(user), Some(system)) => {
            let sampled = u128::from(user) + u128::from(system);
            if sampled == 0 {
                // No tick landed yet (a short task): without evidence of the split,
                // the time is counted as user time.
                return (Some(total), Some(0));
            }
            let user_share = u128::from(total) * u128::from(user) / sampled;
            let user_share = u64::try_from(user_share).unwrap_or(total);
            (Some(user_share), Some(total - user_share.min(total)))
        }
        (_, user, system) => (user, system),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_adds_up_to_the_exact_total() {
        assert_eq!(
            split_exact_total(Some(1000), Some(300), Some(100)),
            (Some(750), Some(250))
        );
        assert_eq!(
            split_exact_total(Some(1000), Some(0), Some(0)),
            (Some(1000), Some(0))
        );
        assert_eq!(
            split_exact_total(None, Some(3), Some(4)),
            (Some(3), Some(4))
        );
        assert_eq!(split_exact_total(Some(10), None, None), (None, None));
    }

    /// A layout injected through [`Host::parse`]: the backends find their bases under
    /// whatever mount points it names.
    #[test]
    fn bases_follow_an_injected_layout() {
        let mountinfo = "\
32 31 0:29 / /fake/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /fake/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /fake/pids rw - cgroup cgroup rw,pids
41 31 0:38 / /fake/unified rw - cgroup2 cgroup2 rw
";
        let own = "5:pids:/job\n4:memory:/job\n2:cpu,cpuacct:/job\n0::/job\n";
        let host = Host::parse(mountinfo, own).expect("layout");
        let root = CgroupRoot::discover_on(&host, None).expect("v1 bases");
        assert_eq!(root.mode(), Mode::Hybrid);
        assert_eq!(root.version(), 1);
        assert_eq!(
            root.base_dirs(),
            [
                "/fake/memory/job/cella",
                "/fake/cpu,cpuacct/job/cella",
                "/fake/pids/job/cella"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            root.open("t").placement().dirs(),
            [
                "/fake/memory/job/cella/t",
                "/fake/cpu,cpuacct/job/cella/t",
                "/fake/pids/job/cella/t"
            ]
            .map(PathBuf::from)
        );

        let unified = Host::parse(
            "41 31 0:38 / /fake2 rw - cgroup2 cgroup2 rw\n",
            "0::/svc/agent\n",
        )
        .expect("layout");
        let root = CgroupRoot::discover_on(&unified, Some(Path::new("/tasks"))).expect("v2");
        assert_eq!(root.version(), 2);
        assert_eq!(root.base_dirs(), vec![PathBuf::from("/fake2/tasks")]);
        assert_eq!(
            root.open("t").placement(),
            Placement::V2 {
                dir: PathBuf::from("/fake2/tasks/t")
            }
        );

        let without_pids = Host::parse(
            "35 31 0:32 / /fake/memory rw - cgroup cgroup rw,memory\n",
            "4:memory:/\n",
        )
        .expect("layout");
        assert!(matches!(
            CgroupRoot::discover_on(&without_pids, None),
            Err(CgroupError::MissingController(_))
        ));
    }
}
