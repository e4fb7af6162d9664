//! cgroup v2 backend (Documentation/admin-guide/cgroup-v2.rst): one tree, controllers
//! handed down through `cgroup.subtree_control`, processes only in leaves.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::host::Host;
use super::stat_files::StatFiles;
use super::{
    CgroupBackend, CgroupError, CgroupLimits, CgroupManager, Figures, Placement, TaskCgroup, fsx,
    split_exact_total,
};
use crate::devices::AllowedDevice;
use crate::usage::{Pressure, Usage};

const PERIOD_US: u64 = 100_000;
/// The kernel refuses a CFS quota below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;
/// Controllers Cella enables for task cgroups; `io` is optional.
const WANTED: [&str; 4] = ["cpu", "memory", "pids", "io"];
const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];
const KILL_WAIT: Duration = Duration::from_secs(2);
const FREEZE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Base {
    dir: PathBuf,
    /// The cgroup2 mount point (the root cgroup as this process sees it).
    mount: PathBuf,
    /// This process's cgroup when discovered.
    own: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TaskGroup {
    dir: PathBuf,
}

/// v1 `cpu.shares` from milli-cpus, then the conversion to `cpu.weight` that runc,
/// crun and systemd share, so a task weighs the same whichever runtime placed it.
fn cpu_weight(millis: u64) -> u64 {
    let shares = (millis.saturating_mul(1024) / 1000).clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn words(path: &Path) -> Vec<String> {
    fsx::read(path)
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn setup_error(dir: &Path, what: &str) -> CgroupError {
    CgroupError::V2Setup(format!(
        "{what} in {}. Cella needs the cpu, memory and pids controllers delegated to its base cgroup, \
         and cgroup v2 only hands controllers to children of a cgroup that holds no processes itself: \
         run the agent in a delegated cgroup (systemd: Delegate=yes in its unit) and let it move itself \
         into a leaf, or pass --cgroup-root naming a cgroup whose parent has +cpu +memory +pids in \
         cgroup.subtree_control",
        dir.display()
    ))
}

impl Base {
    pub fn discover(sys: &Host, root: Option<&Path>) -> Result<Self, CgroupError> {
        let Some(mount) = sys.mounts.iter().find(|m| m.fstype == "cgroup2") else {
            return Err(CgroupError::Mounts {
                path: PathBuf::from("/proc/self/mountinfo"),
                why: "no cgroup2 filesystem is mounted".into(),
            });
        };
        let Some(own) = sys.own.iter().find(|o| o.controllers.is_empty()) else {
            return Err(CgroupError::Mounts {
                path: PathBuf::from("/proc/self/cgroup"),
                why: "this process has no cgroup v2 (0::) entry".into(),
            });
        };
        Ok(Self {
            dir: Host::base_dir(mount, &own.path, root)?,
            mount: mount.mount_point.clone(),
            own: Host::own_dir(mount, &own.path)?,
        })
    }

    /// Creates the task's directory (and the base with its controllers for the first
    /// task) and writes `limits`; on error nothing is left behind.
    fn create_group(&self, name: &str, limits: &CgroupLimits) -> Result<TaskGroup, CgroupError> {
        let group = TaskGroup {
            dir: fsx::check_name(&self.dir, name)?,
        };
        let mut created = Vec::new();
        let mut enabled = false;
        let result = (|| {
            // The base exists for every task but the first: try the task dir alone.
            let made = fsx::mkdir_in(&self.dir, &group.dir, |made| {
                // Recorded first: a base whose controllers cannot be enabled goes too.
                created.extend(made.iter().cloned());
                self.enable_controllers(&made)?;
                enabled = true;
                Ok(())
            })?;
            if !made {
                return Err(fsx::io(&group.dir, ErrorKind::AlreadyExists.into()));
            }
            created.push(group.dir.clone());
            match group.write_limits(limits, false) {
                // A base made by someone else may lack the controllers; enabling them
                // now makes their files appear in the task dir too.
                Err(e) if !enabled && fsx::is_kind(&e, ErrorKind::NotFound) => {
                    self.enable_controllers(&[])?;
                    group.write_limits(limits, false)
                }
                other => other,
            }
        })();
        match result {
            Ok(()) => Ok(group),
            Err(e) => {
                fsx::rmdirs_quietly(&created);
                Err(e)
            }
        }
    }

    /// Enables the wanted controllers in `cgroup.subtree_control` from the parent of
    /// the outermost directory just created (or of the base) down to the base.
    fn enable_controllers(&self, created: &[PathBuf]) -> Result<(), CgroupError> {
        let top = created.first().unwrap_or(&self.dir);
        let mut chain: Vec<&Path> = Vec::new();
        if let Some(parent) = top.parent().filter(|p| p.starts_with(&self.mount)) {
            chain.push(parent);
        }
        chain.extend(created.iter().map(PathBuf::as_path));
        if created.is_empty() {
            chain.push(&self.dir);
        }
        for dir in chain {
            let available = words(&dir.join("cgroup.controllers"));
            let control = dir.join("cgroup.subtree_control");
            let enabled = words(&control);
            let missing: Vec<&str> = WANTED
                .into_iter()
                .filter(|c| available.iter().any(|a| a == c) && !enabled.iter().any(|e| e == c))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let request: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
            if let Err(e) = fsx::write(&control, &request.join(" ")) {
                if fsx::is_kind(&e, ErrorKind::NotFound) {
                    // Removed meanwhile by another launcher: the caller makes it again.
                    return Err(e);
                }
                return Err(setup_error(
                    dir,
                    &format!("cannot enable {} ({e})", request.join(" ")),
                ));
            }
        }
        if !self.dir.exists() {
            return Err(fsx::io(&self.dir, ErrorKind::NotFound.into()));
        }
        let enabled = words(&self.dir.join("cgroup.subtree_control"));
        let lacking: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|c| !enabled.iter().any(|e| e == c))
            .collect();
        if !lacking.is_empty() {
            return Err(setup_error(
                &self.dir,
                &format!("the {} controller(s) are not available", lacking.join(", ")),
            ));
        }
        Ok(())
    }
}

impl CgroupBackend for Base {
    fn version(&self) -> u8 {
        2
    }

    fn base_dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup, CgroupError> {
        self.create_group(name, limits).map(TaskCgroup::new)
    }

    fn open(&self, name: &str) -> TaskCgroup {
        TaskCgroup::new(TaskGroup {
            dir: self.dir.join(name),
        })
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        fsx::list_dir(&self.dir)
    }

    /// Moves the processes of this process's own cgroup into `<own>/<leaf>` when the
    /// base lies directly beneath it, so the own cgroup may hand controllers down.
    fn move_self_into_leaf(&self, leaf: &str) -> Result<Option<PathBuf>, CgroupError> {
        // The root cgroup is exempt from the no-internal-processes rule.
        if self.dir.parent() != Some(self.own.as_path()) || self.own == self.mount {
            return Ok(None);
        }
        let leaf = fsx::check_name(&self.own, leaf)?;
        fsx::mkdir(&leaf)?;
        let procs = leaf.join("cgroup.procs");
        // Ourselves first, then anything else that lives with us (helpers started
        // before us); a process that exits meanwhile is fine.
        fsx::write(&procs, "0")?;
        for pid in fsx::pids(&self.own.join("cgroup.procs"))? {
            match fsx::write(&procs, &pid.to_string()) {
                Err(e) if fsx::is_errno(&e, libc::ESRCH) => {}
                other => other?,
            }
        }
        Ok(Some(leaf))
    }
}

impl TaskGroup {
    /// The task cgroup at `dir` (which may not exist yet).
    pub(super) fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the limits of a new task cgroup.
    pub(super) fn write_initial_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(limits, false)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `limits`; with `reset`, an unset limit is set back to "unlimited".
    fn write_limits(&self, limits: &CgroupLimits, reset: bool) -> Result<(), CgroupError> {
        if let Some(cpus) = limits.cpus {
            let quota = cpus.0.saturating_mul(PERIOD_US / 1000).max(MIN_QUOTA_US);
            fsx::write(&self.file("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            fsx::write(&self.file("cpu.weight"), &cpu_weight(cpus.0).to_string())?;
        } else if reset {
            fsx::write(&self.file("cpu.max"), &format!("max {PERIOD_US}"))?;
            fsx::write(&self.file("cpu.weight"), "100")?;
        }
        if let Some(bytes) = limits.memory_bytes {
            fsx::write(&self.file("memory.max"), &bytes.to_string())?;
            // Absent without swap accounting: then there is no swap to cap.
            fsx::write_optional(&self.file("memory.swap.max"), "0")?;
        } else if reset {
            fsx::write(&self.file("memory.max"), "max")?;
            fsx::write_optional(&self.file("memory.swap.max"), "max")?;
        }
        if !reset {
            // An OOM in a task kills the whole task, not one process of it (≥ 4.19).
            fsx::write_optional(&self.file("memory.oom.group"), "1")?;
        }
        match limits.pids {
            Some(n) => fsx::write(&self.file("pids.max"), &n.to_string())?,
            None if reset => fsx::write(&self.file("pids.max"), "max")?,
            None => {}
        }
        Ok(())
    }

    /// Whether any process is in the cgroup or below it; a missing cgroup is empty.
    fn populated(&self) -> bool {
        fsx::keyed_file(&self.file("cgroup.events"), "populated").is_some_and(|v| v != 0)
    }

    fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// The fallback for kernels without cgroup.kill: freeze so nothing forks while we
    /// signal, SIGKILL every pid (frozen tasks still die of it), thaw.
    fn freeze_and_kill(&self) -> Result<(), CgroupError> {
        let freeze = self.file("cgroup.freeze");
        let frozen = fsx::write_optional(&freeze, "1")?;
        if frozen {
            fsx::wait_until(FREEZE_WAIT, || {
                fsx::keyed_file(&self.file("cgroup.events"), "frozen") == Some(1)
            });
        }
        let mut killed = Vec::new();
        let killing = fsx::sigkill_until_quiet(KILL_WAIT, &mut killed, || self.pids());
        let thawed = if frozen {
            fsx::write_optional(&freeze, "0").map(|_| ())
        } else {
            Ok(())
        };
        killing?;
        thawed
    }
}

impl CgroupManager for TaskGroup {
    fn placement(&self) -> Placement {
        Placement::V2 {
            dir: self.dir.clone(),
        }
    }

    fn allow_devices(&self, allowed: &[AllowedDevice]) -> Result<(), CgroupError> {
        super::device_filter::attach(&self.dir, allowed)
    }

    fn update(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(limits, true)
    }

    fn cpu_counter(&self, files: &mut StatFiles) -> Option<u64> {
        files.keyed(&self.dir, "cpu.stat", "usage_usec")
    }

    fn read_usage(&self, files: &mut StatFiles, figures: Figures, cpu: Option<u64>, s: &mut Usage) {
        let d = self.dir.as_path();
        if figures == Figures::Breakdown {
            breakdown(files, d, s);
            return;
        }
        let every = figures == Figures::Every;
        let asleep = figures == Figures::Asleep;
        let live = figures == Figures::Live;
        let us = |v: Option<u64>| v.map(|v| v.saturating_mul(1000));

        if live {
            // The counter is cpu.stat's exact total: divided in the last sample's
            // proportion rather than read again.
            let total = us(cpu);
            (s.cpu_user_ns, s.cpu_system_ns) =
                split_exact_total(total, s.cpu_user_ns, s.cpu_system_ns);
        } else if !asleep {
            files.text(d, "cpu.stat", |text| {
                s.cpu_user_ns = us(fsx::keyed(text, "user_usec"));
                s.cpu_system_ns = us(fsx::keyed(text, "system_usec"));
                // These two only exist while the cpu controller is enabled.
                s.cpu_nr_throttled = fsx::keyed(text, "nr_throttled");
                s.cpu_throttled_ns = us(fsx::keyed(text, "throttled_usec"));
            });
        }

        s.mem_current_bytes = files.number(d, "memory.current");
        if every {
            s.mem_peak_bytes = files.number(d, "memory.peak");
        }
        if !live {
            breakdown(files, d, s);
        }
        if !asleep {
            s.pids_current = files.number(d, "pids.current");
        }
        if live {
            return;
        }
        if !asleep {
            s.oom_kills = files.keyed(d, "memory.events", "oom_kill");
        }
        if every {
            s.pids_peak = files.number(d, "pids.peak");
            s.pids_limit_hits = files.keyed(d, "pids.events", "max");
        }

        if let Some(io) = files.text(d, "io.stat", io_totals) {
            s.io_read_bytes = Some(io.read_bytes);
            s.io_write_bytes = Some(io.write_bytes);
            s.io_read_ops = Some(io.read_ops);
            s.io_write_ops = Some(io.write_ops);
        }
        // Absent without PSI (CONFIG_PSI, or psi=0 on the kernel's command line).
        s.cpu_pressure = files.text(d, "cpu.pressure", Pressure::parse).flatten();
        s.memory_pressure = files.text(d, "memory.pressure", Pressure::parse).flatten();
        s.io_pressure = files.text(d, "io.pressure", Pressure::parse).flatten();
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fsx::pids(&self.file("cgroup.procs"))
    }

    fn kill(&self) -> Result<(), CgroupError> {
        // cgroup.kill (≥ 5.14) also catches processes forked while it runs.
        if !fsx::write_optional(&self.file("cgroup.kill"), "1")? {
            if !self.exists() {
                return Ok(());
            }
            self.freeze_and_kill()?;
        }
        let mut killed = Vec::new();
        let empty = fsx::wait_until(KILL_WAIT, || {
            if !self.populated() {
                return true;
            }
            // Without cgroup.kill a straggler may have forked after the last pass.
            if let Ok(pids) = self.pids() {
                fsx::sigkill_new(&pids, &mut killed);
            }
            false
        });
        if empty {
            Ok(())
        } else {
            Err(CgroupError::Busy {
                path: self.dir.clone(),
            })
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if self.populated() {
            self.kill()?;
        }
        fsx::rmdir(&self.dir)
    }
}

/// The memory breakdown of the task whose cgroup is `d`: anon, file, kernel, swap.
fn breakdown(files: &mut StatFiles, d: &Path, s: &mut Usage) {
    files.text(d, "memory.stat", |text| {
        s.mem_anon_bytes = fsx::keyed(text, "anon");
        s.mem_file_bytes = fsx::keyed(text, "file");
        s.mem_kernel_bytes = fsx::keyed(text, "kernel").or_else(|| kernel_parts(text));
    });
    s.mem_swap_bytes = files.number(d, "memory.swap.current");
}

/// Kernel memory before 5.18 added the `kernel` key: the sum of its parts.
fn kernel_parts(stat: &str) -> Option<u64> {
    let parts: Vec<u64> = ["kernel_stack", "slab", "sock", "percpu", "pagetables"]
        .into_iter()
        .filter_map(|k| fsx::keyed(stat, k))
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.iter().fold(0u64, |a, b| a.saturating_add(*b)))
    }
}

/// Bytes and operations read and written, summed over the devices of `io.stat`.
#[derive(Debug, Default, PartialEq, Eq)]
struct IoTotals {
    read_bytes: u64,
    write_bytes: u64,
    read_ops: u64,
    write_ops: u64,
}

/// `rbytes`, `wbytes`, `rios` and `wios` summed over the devices of `io.stat`
/// (`MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...` per line).
fn io_totals(text: &str) -> IoTotals {
    let mut t = IoTotals::default();
    for field in text.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let total = match key {
            "rbytes" => &mut t.read_bytes,
            "wbytes" => &mut t.write_bytes,
            "rios" => &mut t.read_ops,
            "wios" => &mut t.write_ops,
            _ => continue,
        };
        *total = total.saturating_add(value);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_the_usual_conversion() {
        assert_eq!(cpu_weight(1000), 39); // 1024 shares
        assert_eq!(cpu_weight(500), 20);
        assert_eq!(cpu_weight(1), 1); // shares clamp to 2
        assert_eq!(cpu_weight(1_000_000), 10_000); // shares clamp to 262144
    }

    #[test]
    fn io_stat_sums_devices() {
        let text = "8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n\
                    253:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n";
        assert_eq!(
            io_totals(text),
            IoTotals {
                read_bytes: 4196,
                write_bytes: 512,
                read_ops: 2,
                write_ops: 1
            }
        );
        assert_eq!(io_totals(""), IoTotals::default());
    }

    #[test]
    fn kernel_memory_fallback() {
        let stat = "anon 10\nfile 20\nkernel_stack 1\npagetables 2\npercpu 3\nsock 4\nslab 5\n";
        assert_eq!(kernel_parts(stat), Some(15));
        assert_eq!(kernel_parts("anon 1\n"), None);
    }

    /// Kills and removes whatever a test left in a v2 cgroup, even after a failure.
    struct Cleanup(Vec<PathBuf>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                let _ = TaskGroup { dir: dir.clone() }.remove();
            }
        }
    }

    fn spawn_daemon(task: &TaskGroup) -> i32 {
        use std::io::Write;
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "read x; sleep 1000 & exit 0"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(shell.id()).expect("pid");
        task.placement().attach(pid).expect("attach");
        shell
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"\n")
            .expect("release");
        assert!(shell.wait().expect("wait").success());
        let pids = task.pids().expect("pids");
        assert_eq!(pids.len(), 1, "the daemonized sleep stays: {pids:?}");
        pids[0]
    }

    /// On a hybrid host the cgroup2 mount carries no cpu/memory/pids, which lets the
    /// controller-free half of this backend run against the real kernel: the setup
    /// error, cgroup.kill, the freeze fallback and removal. Unified hosts run all of
    /// it through tests/cgroups.rs instead.
    #[test]
    fn controller_free_parts_on_a_hybrid_host() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_support::cannot_run("this test creates cgroups: run it as root");
            return;
        }
        let sys = Host::read().expect("read the cgroup mounts");
        if sys.mode().ok() != Some(super::super::Mode::Hybrid) {
            eprintln!("not a hybrid host: the v2 backend is tested whole by tests/cgroups.rs");
            return;
        }
        let mount = sys
            .mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .expect("cgroup2 mount");
        let own = sys
            .own
            .iter()
            .find(|o| o.controllers.is_empty())
            .expect("0:: line");
        let own = Host::own_dir(mount, &own.path).expect("own dir");
        let base = Base {
            dir: own.join(format!("cella-v2-unit-{}", std::process::id())),
            mount: mount.mount_point.clone(),
            own,
        };

        let err = base
            .create("t", &CgroupLimits::default())
            .expect_err("no controllers to enable");
        assert!(
            matches!(&err, CgroupError::V2Setup(m) if m.contains("Delegate=yes")),
            "{err}"
        );
        assert!(
            !base.dir.exists(),
            "a failed create left {}",
            base.dir.display()
        );

        let task = TaskGroup {
            dir: base.dir.join("t"),
        };
        let _cleanup = Cleanup(vec![base.dir.clone(), task.dir.clone()]);
        fsx::mkdir(&base.dir).expect("mkdir base");
        fsx::mkdir(&task.dir).expect("mkdir task");

        let orphan = spawn_daemon(&task);
        task.kill().expect("kill");
        assert!(!task.populated());
        assert!(
            task.pids().expect("pids").is_empty(),
            "{orphan} survived cgroup.kill"
        );

        let orphan = spawn_daemon(&task);
        task.freeze_and_kill().expect("freeze and kill");
        assert!(
            fsx::wait_until(Duration::from_secs(2), || !task.populated()),
            "{orphan} survived"
        );
        assert_eq!(
            fsx::read(&task.file("cgroup.freeze"))
                .as_deref()
                .map(str::trim),
            Some("0")
        );
        assert!(task.stats().cpu_user_ns.is_some());

        task.remove().expect("remove");
        task.remove().expect("remove again");
        fsx::rmdir(&base.dir).expect("rmdir base");
        assert!(!base.dir.exists());
    }
}
