//! cgroup v2 under systemd: every task in a transient scope of its own,
//! `cella-task-<task>.scope` in `cella.slice`, which systemd delegates to Cella.
//!
//! Why not beneath the agent's unit: systemd (before 254 and `DelegateSubgroup=`)
//! starts a restarted service's process in the unit's own cgroup. Once tasks sit in
//! cgroups beneath it with controllers enabled, the "no internal processes" rule
//! makes that impossible and the agent fails to start (status 219/CGROUP). Scopes
//! in a slice of their own keep the agent's unit free of tasks, so the agent can
//! be stopped, restarted or killed while its tasks run on; systemd accounts for
//! them and removes what is left of a scope once its last process is gone.
//!
//! A scope must hold a process when it is created, so the shim is started through
//! `systemd-run --scope` (which asks systemd for the scope over its private bus and
//! then execs the shim, keeping its pid and descriptors). Inside the delegated
//! scope the shim moves itself into the leaf `shim/`, enables the controllers and
//! creates `task/` with the limits ([`enter_scope`]), and clones the task into it.
//! The task's usage is the task's alone; the shim's few pages are not in it.
//!
//! ```text
//! /sys/fs/cgroup/cella.slice/cella-task-<task>.scope/  Delegate=yes, made by systemd
//!                                           shim/  cella-shim
//!                                           task/  the task: limits, usage, kill
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::host::Host;
use super::stat_files::StatFiles;
use super::{
    CgroupBackend, CgroupError, CgroupLimits, CgroupManager, Figures, Placement, TaskCgroup, fsx,
    v2,
};
use crate::devices::AllowedDevice;
use crate::usage::Usage;

/// The slice Cella's task scopes go to.
pub const SLICE: &str = "cella.slice";
/// Scope names are `cella-task-<task id>.scope` (task ids are valid in unit names).
const SCOPE_PREFIX: &str = "cella-task-";
const SCOPE_SUFFIX: &str = ".scope";
/// The leaf of a scope that holds the shim, and the task's cgroup.
const SHIM_LEAF: &str = "shim";
const TASK_LEAF: &str = "task";
/// Controllers handed to a task; `io` is optional.
const WANTED: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// The scope backend: the slice's directory in the cgroup2 mount.
#[derive(Debug, Clone)]
pub struct Slice {
    name: String,
    dir: PathBuf,
    /// The service this process runs as (`cella-agent.service`), if any.
    own_service: Option<String>,
}

impl Slice {
    /// The slice `name` (a top-level slice such as `cella.slice`) on this host's
    /// cgroup2 mount.
    pub fn discover(sys: &Host, name: &str) -> Result<Self, CgroupError> {
        let Some(mount) = sys.mounts.iter().find(|m| m.fstype == "cgroup2") else {
            return Err(CgroupError::Mounts {
                path: PathBuf::from("/proc/self/mountinfo"),
                why: "no cgroup2 filesystem is mounted".into(),
            });
        };
        if !name.ends_with(".slice") || name.contains('/') || name[..name.len() - 6].contains('-') {
            return Err(CgroupError::V2Setup(format!(
                "{name:?} is not a top-level slice: name one like cella.slice"
            )));
        }
        let own_service = sys
            .own
            .iter()
            .find(|o| o.controllers.is_empty())
            .and_then(|o| o.path.rsplit('/').next())
            .filter(|unit| unit.ends_with(".service"))
            .map(str::to_string);
        Ok(Self {
            name: name.to_string(),
            dir: mount.mount_point.join(name),
            own_service,
        })
    }

    fn scope_name(task: &str) -> String {
        format!("{SCOPE_PREFIX}{task}{SCOPE_SUFFIX}")
    }

    fn scope_dir(&self, task: &str) -> Result<PathBuf, CgroupError> {
        fsx::check_name(&self.dir, &Self::scope_name(task))
    }

    fn task(&self, task: &str, limits: CgroupLimits) -> Result<ScopedTask, CgroupError> {
        let scope = self.scope_dir(task)?;
        Ok(ScopedTask {
            group: v2::TaskGroup::at(scope.join(TASK_LEAF)),
            scope,
            limits,
            devices: std::sync::OnceLock::new(),
        })
    }
}

impl CgroupBackend for Slice {
    fn version(&self) -> u8 {
        2
    }

    /// None of Cella's own: the slice and the scopes are systemd's, and systemd
    /// removes them.
    fn base_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Nothing exists before the shim runs: the scope is made for its process, and
    /// the shim creates the task's cgroup with `limits` ([`enter_scope`]).
    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup, CgroupError> {
        let task = self.task(name, *limits)?;
        if task.scope.exists() {
            return Err(CgroupError::V2Setup(format!(
                "{} already exists: task {name} is running or its scope is not gone yet \
                 (systemctl status {})",
                task.scope.display(),
                Self::scope_name(name)
            )));
        }
        Ok(TaskCgroup::new(task))
    }

    fn open(&self, name: &str) -> TaskCgroup {
        let scope = self.dir.join(Self::scope_name(name));
        TaskCgroup::new(ScopedTask {
            group: v2::TaskGroup::at(scope.join(TASK_LEAF)),
            scope,
            limits: CgroupLimits::default(),
            devices: std::sync::OnceLock::new(),
        })
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        Ok(fsx::list_dir(&self.dir)?
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix(SCOPE_PREFIX)
                    .and_then(|n| n.strip_suffix(SCOPE_SUFFIX))
                    .map(str::to_string)
            })
            .collect())
    }

    fn move_self_into_leaf(&self, _leaf: &str) -> Result<Option<PathBuf>, CgroupError> {
        Ok(None)
    }

    fn shim_launcher(&self, name: &str) -> Vec<OsString> {
        [
            "systemd-run",
            "--scope",
            "--quiet",
            "--collect",
            // The shim leaves the scope's own cgroup for a leaf and hands controllers
            // to the task's: the scope must be delegated.
            "--property=Delegate=yes",
            // Task processes are counted and limited in `task/`, not by systemd.
            "--property=TasksMax=infinity",
        ]
        .into_iter()
        .map(OsString::from)
        // At shutdown the agent stops before its tasks' scopes (stop order is the
        // reverse of start order): a task killed by the shutdown is then not
        // reported as ended by an agent that is still up, but LOST (the machine
        // rebooted) by the agent of the next boot.
        .chain(
            self.own_service
                .iter()
                .map(|unit| OsString::from(format!("--property=Before={unit}"))),
        )
        .chain([
            OsString::from(format!("--slice={}", self.name)),
            OsString::from(format!("--unit={}", Self::scope_name(name))),
            OsString::from(format!("--description=Cella task {name}")),
            OsString::from("--"),
        ])
        .collect()
    }
}

/// One task's cgroup `<scope>/task`, managed like any v2 task cgroup; only its
/// placement differs (the shim creates it).
#[derive(Debug)]
struct ScopedTask {
    group: v2::TaskGroup,
    scope: PathBuf,
    limits: CgroupLimits,
    /// The device allowlist, attached by the shim once it has created `task/`.
    devices: std::sync::OnceLock<Vec<AllowedDevice>>,
}

impl CgroupManager for ScopedTask {
    fn placement(&self) -> Placement {
        Placement::Scope {
            dir: self.group.dir().to_path_buf(),
            limits: self.limits,
            devices: self.devices.get().cloned().unwrap_or_default(),
        }
    }

    /// The task's cgroup does not exist yet: the shim creates it in the scope and
    /// attaches the device filter there before the task runs ([`enter_scope`]).
    fn allow_devices(&self, allowed: &[AllowedDevice]) -> Result<(), CgroupError> {
        self.devices
            .set(allowed.to_vec())
            .map_err(|_| CgroupError::V2Setup("the device allowlist was set twice".into()))
    }

    fn update(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.group.update(limits)
    }

    fn cpu_counter(&self, files: &mut StatFiles) -> Option<u64> {
        self.group.cpu_counter(files)
    }

    fn read_usage(
        &self,
        files: &mut StatFiles,
        figures: Figures,
        cpu: Option<u64>,
        usage: &mut Usage,
    ) {
        self.group.read_usage(files, figures, cpu, usage);
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        self.group.pids()
    }

    fn kill(&self) -> Result<(), CgroupError> {
        self.group.kill()
    }

    /// Removes `task/` (and `shim/` once the shim is gone); the empty scope is then
    /// stopped and removed by systemd.
    fn remove(&self) -> Result<(), CgroupError> {
        self.group.remove()?;
        let _ = std::fs::remove_dir(self.scope.join(SHIM_LEAF));
        Ok(())
    }
}

/// Run by the shim, first thing, in the scope `systemd-run` started it in: moves the
/// shim into `<scope>/shim`, enables the controllers for the scope's children and
/// creates `task_dir` (`<scope>/task`) with `limits` and the device filter that allows
/// only `devices`.
pub fn enter_scope(
    task_dir: &Path,
    limits: &CgroupLimits,
    devices: &[AllowedDevice],
) -> Result<(), CgroupError> {
    let Some(scope) = task_dir.parent() else {
        return Err(CgroupError::V2Setup(format!(
            "{} is not in a scope",
            task_dir.display()
        )));
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| fsx::io(Path::new("/proc/self/cgroup"), e))?;
    let scope_name = scope.file_name().unwrap_or_default().to_string_lossy();
    if !own
        .lines()
        .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{scope_name}")))
    {
        return Err(CgroupError::V2Setup(format!(
            "the shim is not in {} but in {:?}: it must be started by systemd-run --scope",
            scope.display(),
            own.trim()
        )));
    }
    let leaf = scope.join(SHIM_LEAF);
    fsx::mkdir(&leaf)?;
    fsx::write(&leaf.join("cgroup.procs"), "0")?;
    let available = fsx::read(&scope.join("cgroup.controllers")).unwrap_or_default();
    let request: Vec<String> = WANTED
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    fsx::write(&scope.join("cgroup.subtree_control"), &request.join(" "))?;
    fsx::mkdir(task_dir)?;
    v2::TaskGroup::at(task_dir.to_path_buf()).write_initial_limits(limits)?;
    super::device_filter::attach(task_dir, devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice() -> Slice {
        let host = Host::parse(
            "41 31 0:38 / /fake rw - cgroup2 cgroup2 rw\n",
            "0::/system.slice/cella-agent.service\n",
        )
        .expect("layout");
        Slice::discover(&host, SLICE).expect("slice")
    }

    #[test]
    fn tasks_live_in_scopes_of_the_slice() {
        let s = slice();
        assert!(s.base_dirs().is_empty(), "systemd owns the slice");
        assert_eq!(
            s.open("t-1").placement(),
            Placement::Scope {
                dir: PathBuf::from("/fake/cella.slice/cella-task-t-1.scope/task"),
                limits: CgroupLimits::default(),
                devices: Vec::new(),
            }
        );
        let launcher: Vec<String> = s
            .shim_launcher("t-1")
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(launcher[..2], ["systemd-run", "--scope"]);
        assert!(launcher.contains(&"--unit=cella-task-t-1.scope".to_string()));
        assert!(launcher.contains(&"--slice=cella.slice".to_string()));
        assert_eq!(launcher.last().map(String::as_str), Some("--"));
        assert!(
            launcher.contains(&"--property=Before=cella-agent.service".to_string()),
            "the agent stops before its tasks at shutdown: {launcher:?}"
        );
    }

    #[test]
    fn only_top_level_slices() {
        let host =
            Host::parse("41 31 0:38 / /fake rw - cgroup2 cgroup2 rw\n", "0::/\n").expect("layout");
        assert!(Slice::discover(&host, "a-b.slice").is_err());
        assert!(Slice::discover(&host, "cella").is_err());
    }
}
