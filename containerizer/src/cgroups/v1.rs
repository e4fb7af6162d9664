//! cgroup v1 backend: one directory per controller hierarchy (cpu and cpuacct may be
//! one hierarchy or two).
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
use crate::usage::Usage;

/// CFS period; quotas are expressed per this period.
const PERIOD_US: u64 = 100_000;
/// The kernel refuses a CFS quota below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;
/// `cpuacct.stat` counts in USER_HZ, which the kernel's ABI fixes at 100.
const NS_PER_USER_HZ_TICK: u64 = 1_000_000_000 / 100;
const KILL_WAIT: Duration = Duration::from_secs(2);
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// Which entry of the hierarchy list holds each controller.
#[derive(Debug, Clone, Copy)]
struct Roles {
    cpu: usize,
    cpuacct: Option<usize>,
    memory: usize,
    pids: usize,
    blkio: Option<usize>,
    freezer: Option<usize>,
    devices: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// The base cgroup in each distinct hierarchy Cella uses.
    bases: Vec<PathBuf>,
    roles: Roles,
    /// The blkio hierarchy's root cgroup, where this mount shows it.
    blkio_root: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TaskGroup {
    /// The task's directory in each hierarchy, indexed like [`Hierarchies::bases`].
    dirs: Vec<PathBuf>,
    roles: Roles,
}

/// The index of the base for `controller`, adding it unless a co-mounted controller
/// already brought the same hierarchy in.
fn locate(
    sys: &Host,
    controller: &str,
    root: Option<&Path>,
    bases: &mut Vec<PathBuf>,
) -> Result<Option<usize>, CgroupError> {
    let has = |list: &[String]| list.iter().any(|c| c == controller);
    let Some(mount) = sys
        .mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && has(&m.controllers))
    else {
        return Ok(None);
    };
    let Some(own) = sys.own.iter().find(|o| has(&o.controllers)) else {
        return Err(CgroupError::Mounts {
            path: PathBuf::from("/proc/self/cgroup"),
            why: format!(
                "the {controller} hierarchy is mounted but this process has no cgroup in it"
            ),
        });
    };
    let dir = Host::base_dir(mount, &own.path, root)?;
    if let Some(i) = bases.iter().position(|b| *b == dir) {
        return Ok(Some(i));
    }
    bases.push(dir);
    Ok(Some(bases.len() - 1))
}

fn required(controller: &str, index: Option<usize>) -> Result<usize, CgroupError> {
    index.ok_or_else(|| CgroupError::MissingController(controller.to_string()))
}

impl Hierarchies {
    pub fn discover(sys: &Host, root: Option<&Path>) -> Result<Self, CgroupError> {
        let mut bases = Vec::new();
        let memory = required("memory", locate(sys, "memory", root, &mut bases)?)?;
        let cpu = required("cpu", locate(sys, "cpu", root, &mut bases)?)?;
        let pids = required("pids", locate(sys, "pids", root, &mut bases)?)?;
        let cpuacct = locate(sys, "cpuacct", root, &mut bases)?;
        let blkio = locate(sys, "blkio", root, &mut bases)?;
        let freezer = locate(sys, "freezer", root, &mut bases)?;
        let devices = locate(sys, "devices", root, &mut bases)?;
        let blkio_root = sys
            .mounts
            .iter()
            .find(|m| {
                m.fstype == "cgroup" && m.root == "/" && m.controllers.iter().any(|c| c == "blkio")
            })
            .map(|m| m.mount_point.clone());
        Ok(Self {
            bases,
            blkio_root,
            roles: Roles {
                cpu,
                cpuacct,
                memory,
                pids,
                blkio,
                freezer,
                devices,
            },
        })
    }
}

impl CgroupBackend for Hierarchies {
    fn version(&self) -> u8 {
        1
    }

    fn base_dirs(&self) -> Vec<PathBuf> {
        self.bases.clone()
    }

    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup, CgroupError> {
        let mut dirs = Vec::with_capacity(self.bases.len());
        for base in &self.bases {
            dirs.push(fsx::check_name(base, name)?);
        }
        let mut created = Vec::new();
        let result = make_dirs(&self.bases, &dirs, &mut created).and_then(|()| {
            let group = TaskGroup {
                dirs,
                roles: self.roles,
            };
            group.write_limits(limits, false)?;
            group.activate_io_accounting(self.blkio_root.as_deref());
            Ok(TaskCgroup::new(group))
        });
        if result.is_err() {
            fsx::rmdirs_quietly(&created);
        }
        result
    }

    fn open(&self, name: &str) -> TaskCgroup {
        TaskCgroup::new(TaskGroup {
            dirs: self.bases.iter().map(|b| b.join(name)).collect(),
            roles: self.roles,
        })
    }

    /// Every task cgroup in any hierarchy: a launch interrupted while creating them
    /// (the launcher killed) may have made only some.
    fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for base in &self.bases {
            names.extend(fsx::list_dir(base)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// v1 has no "no internal processes" rule: nothing has to move.
    fn move_self_into_leaf(&self, _leaf: &str) -> Result<Option<PathBuf>, CgroupError> {
        Ok(None)
    }
}

impl TaskGroup {
    /// Kernels since 6.x count a v1 cgroup's `blkio.throttle.io_service*` only on
    /// disks where blk-throttle was activated, which the first throttle rule on the
    /// disk does. A rule of `0` ("no limit") in the task's own cgroup activates it for
    /// good without limiting anything; written once per process for every disk, best
    /// effort (a disk that refuses it keeps reading 0), and not at all once the
    /// hierarchy's root (`blkio_root`) shows every disk active: a rule costs about
    /// 0.1 ms per disk, at every `cella exec`.
    fn activate_io_accounting(&self, blkio_root: Option<&Path>) {
        static DONE: std::sync::Once = std::sync::Once::new();
        let Some(i) = self.roles.blkio else {
            return;
        };
        let rule = self.dir(i).join("blkio.throttle.read_bps_device");
        DONE.call_once(|| {
            let Ok(disks) = std::fs::read_dir("/sys/block") else {
                return;
            };
            let disks: Vec<PathBuf> = disks.flatten().map(|d| d.path()).collect();
            if blkio_root.is_some_and(|root| active_disks(root) >= disks.len()) {
                return;
            }
            for disk in disks {
                if let Some(dev) = fsx::read(&disk.join("dev")) {
                    let _ = fsx::write(&rule, &format!("{} 0", dev.trim()));
                }
            }
        });
    }
}

/// How many disks have blk-throttle active: the root cgroup has a group on every
/// disk, and its `blkio.throttle.io_service_bytes` lists those where the throttle
/// policy is active (`MAJ:MIN Op value` lines); 0 when unreadable.
fn active_disks(root: &Path) -> usize {
    fsx::read(&root.join("blkio.throttle.io_service_bytes")).map_or(0, |text| devices_in(&text))
}

/// The number of distinct devices in a `blkio.*io_service_bytes` file.
fn devices_in(text: &str) -> usize {
    let mut devices: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|dev| dev.contains(':'))
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices.len()
}

/// Creates each task dir, and its base only when missing (the first task after start),
/// recording in `created` everything made, outermost first.
fn make_dirs(
    bases: &[PathBuf],
    dirs: &[PathBuf],
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    for (base, dir) in bases.iter().zip(dirs) {
        let made = fsx::mkdir_in(base, dir, |made| {
            created.extend(made);
            Ok(())
        })?;
        if !made {
            return Err(fsx::io(dir, ErrorKind::AlreadyExists.into()));
        }
        created.push(dir.clone());
    }
    Ok(())
}

impl TaskGroup {
    fn dir(&self, index: usize) -> &Path {
        &self.dirs[index]
    }

    /// Writes `limits`; with `reset`, an unset limit is set back to "unlimited".
    fn write_limits(&self, limits: &CgroupLimits, reset: bool) -> Result<(), CgroupError> {
        let cpu = self.dir(self.roles.cpu);
        if let Some(cpus) = limits.cpus {
            let quota = cpus.0.saturating_mul(PERIOD_US / 1000).max(MIN_QUOTA_US);
            let shares = (cpus.0.saturating_mul(1024) / 1000).clamp(2, 262_144);
            fsx::write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            fsx::write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            fsx::write(&cpu.join("cpu.shares"), &shares.to_string())?;
        } else if reset {
            fsx::write(&cpu.join("cpu.cfs_quota_us"), "-1")?;
            fsx::write(&cpu.join("cpu.shares"), "1024")?;
        }

        let memory = self.dir(self.roles.memory);
        let limit = memory.join("memory.limit_in_bytes");
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        if let Some(bytes) = limits.memory_bytes {
            let value = bytes.to_string();
            // memsw must stay >= the memory limit: raising needs memsw first,
            // lowering needs the memory limit first.
            match fsx::write(&limit, &value) {
                Err(e) if fsx::is_errno(&e, libc::EINVAL) => {
                    if !fsx::write_optional(&memsw, &value)? {
                        return Err(e);
                    }
                    fsx::write(&limit, &value)?;
                }
                other => {
                    other?;
                    fsx::write_optional(&memsw, &value)?;
                }
            }
            // Only a preference once memsw caps swap; some kernels refuse it.
            let _ = fsx::write(&memory.join("memory.swappiness"), "0");
        } else if reset {
            fsx::write_optional(&memsw, "-1")?;
            fsx::write(&limit, "-1")?;
        }

        let pids = self.dir(self.roles.pids).join("pids.max");
        match limits.pids {
            Some(n) => fsx::write(&pids, &n.to_string())?,
            None if reset => fsx::write(&pids, "max")?,
            None => {}
        }
        Ok(())
    }

    /// Pids in any of the task's hierarchies: a crashed shim may have placed a child
    /// in some hierarchies only.
    fn all_pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for dir in &self.dirs {
            for pid in fsx::pids(&dir.join("cgroup.procs"))? {
                if !all.contains(&pid) {
                    all.push(pid);
                }
            }
        }
        Ok(all)
    }
}

impl CgroupManager for TaskGroup {
    fn placement(&self) -> Placement {
        Placement::V1 {
            procs_files: self.dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
        }
    }

    /// Denies every device, then allows each of `allowed`: a child of a cgroup may
    /// only narrow its parent's list, so "a" is denied first.
    fn allow_devices(&self, allowed: &[AllowedDevice]) -> Result<(), CgroupError> {
        let Some(i) = self.roles.devices else {
            return Err(CgroupError::MissingController(
                "devices (a task's device allowlist lives there; mount the v1 devices controller)"
                    .into(),
            ));
        };
        let dir = self.dir(i);
        fsx::write(&dir.join("devices.deny"), "a")?;
        for device in allowed {
            fsx::write(&dir.join("devices.allow"), &device.v1_rule())?;
        }
        Ok(())
    }

    fn update(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.write_limits(limits, true)
    }

    fn cpu_counter(&self, files: &mut StatFiles) -> Option<u64> {
        files.number(self.dir(self.roles.cpuacct?), "cpuacct.usage")
    }

    fn read_usage(&self, files: &mut StatFiles, figures: Figures, cpu: Option<u64>, s: &mut Usage) {
        let m = self.dir(self.roles.memory);
        if figures == Figures::Breakdown {
            breakdown(files, m, s);
            return;
        }
        let every = figures == Figures::Every;
        let asleep = figures == Figures::Asleep;
        let live = figures == Figures::Live;

        if asleep {
            // Only memory changes while the task sleeps (v1 charges writeback to
            // the flusher, not to the task).
        } else if let Some(i) = self.roles.cpuacct {
            let d = self.dir(i);
            // cpuacct.usage is exact (scheduler runtime); the user/system split the
            // kernel keeps is sampled at ticks and can be off by several percent. So
            // the total comes from cpuacct.usage, divided in the ticks' proportion
            // (a live sample keeps the last sample's proportion).
            let total = cpu.or_else(|| files.number(d, "cpuacct.usage"));
            let (user, system) = if live {
                (s.cpu_user_ns, s.cpu_system_ns)
            } else {
                files
                    .text(d, "cpuacct.usage_all", usage_all_totals)
                    .flatten()
                    .or_else(|| {
                        files.text(d, "cpuacct.stat", |text| {
                            let ticks = |key| {
                                fsx::keyed(text, key).map(|t| t.saturating_mul(NS_PER_USER_HZ_TICK))
                            };
                            (ticks("user"), ticks("system"))
                        })
                    })
                    .unwrap_or((None, None))
            };
            (s.cpu_user_ns, s.cpu_system_ns) = split_exact_total(total, user, system);
        }
        if !asleep && !live {
            files.text(self.dir(self.roles.cpu), "cpu.stat", |text| {
                s.cpu_nr_throttled = fsx::keyed(text, "nr_throttled");
                s.cpu_throttled_ns = fsx::keyed(text, "throttled_time");
            });
        }

        s.mem_current_bytes = files.number(m, "memory.usage_in_bytes");
        if every {
            s.mem_peak_bytes = files.number(m, "memory.max_usage_in_bytes");
        }
        if !live {
            breakdown(files, m, s);
        }
        if asleep {
            return;
        }
        let p = self.dir(self.roles.pids);
        s.pids_current = files.number(p, "pids.current");
        if live {
            return;
        }
        s.oom_kills = files.keyed(m, "memory.oom_control", "oom_kill");
        if every {
            s.pids_peak = files.number(p, "pids.peak");
            s.pids_limit_hits = files.keyed(p, "pids.events", "max");
        }

        if let Some(i) = self.roles.blkio {
            let d = self.dir(i);
            // The throttle files count what reached the block layer from this cgroup
            // (the recursive ones include child cgroups; older kernels lack them).
            let mut totals = |recursive: &'static str, own: &'static str| {
                files
                    .text(d, recursive, blkio_totals)
                    .or_else(|| files.text(d, own, blkio_totals))
                    .unwrap_or((None, None))
            };
            (s.io_read_bytes, s.io_write_bytes) = totals(
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
            );
            (s.io_read_ops, s.io_write_ops) = totals(
                "blkio.throttle.io_serviced_recursive",
                "blkio.throttle.io_serviced",
            );
        }
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fsx::pids(&self.dir(self.roles.pids).join("cgroup.procs"))
    }

    fn kill(&self) -> Result<(), CgroupError> {
        let mut killed = Vec::new();
        let state = self
            .roles
            .freezer
            .map(|i| self.dir(i).join("freezer.state"));
        // Freezing first stops a fork loop from outrunning us.
        let frozen = match &state {
            Some(state) => fsx::write_optional(state, "FROZEN")?,
            None => false,
        };
        if let (true, Some(state)) = (frozen, &state) {
            // A task stuck in FREEZING (e.g. in uninterruptible sleep) still gets its
            // SIGKILL; the loop below catches whatever forks meanwhile.
            fsx::wait_until(FREEZE_WAIT, || {
                fsx::read(state).is_some_and(|s| s.trim() == "FROZEN")
            });
        }
        let killing = fsx::sigkill_until_quiet(KILL_WAIT, &mut killed, || self.all_pids());
        let thawing = match (frozen, &state) {
            (true, Some(state)) => fsx::write(state, "THAWED"),
            _ => Ok(()),
        };
        killing?;
        thawing?;

        let mut last = Ok(Vec::new());
        let empty = fsx::wait_until(KILL_WAIT, || {
            last = self.all_pids();
            match &last {
                Ok(pids) => {
                    fsx::sigkill_new(pids, &mut killed);
                    pids.is_empty()
                }
                Err(_) => true,
            }
        });
        last?;
        if empty {
            Ok(())
        } else {
            Err(CgroupError::Busy {
                path: self.dir(self.roles.pids).to_path_buf(),
            })
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        if !self.all_pids()?.is_empty() {
            self.kill()?;
        }
        let mut first = None;
        for dir in self.dirs.iter().rev() {
            if let Err(e) = fsx::rmdir(dir) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The memory breakdown of the task whose memory cgroup is `m`: anon, file, swap
/// (`s.mem_current_bytes` read already) and kernel.
fn breakdown(files: &mut StatFiles, m: &Path, s: &mut Usage) {
    files.text(m, "memory.stat", |text| {
        // total_rss already includes transparent huge pages (total_rss_huge is a
        // subset of it, see Documentation/admin-guide/cgroup-v1/memory.rst).
        s.mem_anon_bytes = fsx::keyed(text, "total_rss");
        s.mem_file_bytes = fsx::keyed(text, "total_cache");
        // Present only when swap is accounted, exactly like the memsw files.
        s.mem_swap_bytes = fsx::keyed(text, "total_swap");
    });
    if s.mem_swap_bytes.is_none()
        && let (Some(memsw), Some(usage)) = (
            files.number(m, "memory.memsw.usage_in_bytes"),
            s.mem_current_bytes,
        )
    {
        s.mem_swap_bytes = Some(memsw.saturating_sub(usage));
    }
    s.mem_kernel_bytes = files.number(m, "memory.kmem.usage_in_bytes");
}

/// User and system time summed over the CPUs of `cpuacct.usage_all` (a `cpu user
/// system` header, then one line per CPU); `None` if a line does not parse.
fn usage_all_totals(text: &str) -> Option<(Option<u64>, Option<u64>)> {
    let (mut user, mut system) = (0u64, 0u64);
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(u), Some(s)) = (fields.next(), fields.next()) else {
            continue;
        };
        user = user.saturating_add(u.parse().ok()?);
        system = system.saturating_add(s.parse().ok()?);
    }
    Some((Some(user), Some(system)))
}

/// Read and Write byte totals over all devices of a `blkio.*io_service_bytes` file
/// (`MAJ:MIN Op value` lines plus a `Total value` line).
fn blkio_totals(text: &str) -> (Option<u64>, Option<u64>) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_dev), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => write = write.saturating_add(value),
            _ => {}
        }
    }
    (Some(read), Some(write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_sums_devices() {
        let text =
            "8:0 Read 4096\n8:0 Write 100\n8:0 Sync 1\n8:16 Read 10\n8:16 Write 0\nTotal 4206\n";
        assert_eq!(blkio_totals(text), (Some(4106), Some(100)));
        assert_eq!(blkio_totals("Total 0\n"), (Some(0), Some(0)));
        assert_eq!(devices_in(text), 2);
        assert_eq!(devices_in("Total 0\n"), 0);
    }

    #[test]
    fn usage_all_sums_cpus() {
        let text = "cpu user system\n0 100 20\n1 5 1\n";
        assert_eq!(usage_all_totals(text), Some((Some(105), Some(21))));
        assert_eq!(usage_all_totals("cpu user system\n0 x 1\n"), None);
    }
}
