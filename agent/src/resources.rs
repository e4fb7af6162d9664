//! What this machine can offer: CPUs the agent may use (its affinity mask, limited by
//! its own cgroup's CPU quota), memory (MemTotal, limited by its cgroup's memory
//! limit), the disk of its work directory; minus `--reserve`, overridden by
//! `--resources`.
//!
//! /proc is read through the `procfs` crate (`/proc/meminfo`, `/proc/self/cgroup`,
//! `/proc/self/mountinfo`). The cgroup files themselves (`cpu.max`,
//! `memory.limit_in_bytes`...) are read directly: `procfs` does not cover /sys.

use std::path::{Path, PathBuf};

use cella_containerizer::units::MilliCpus;
use procfs::process::{MountInfo, Process};
use procfs::{Current, Meminfo, ProcessCGroup};

use crate::config::ResourceSpec;

/// The totals the agent reports to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub cpus: MilliCpus,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

impl Totals {
    pub fn to_wire(self) -> cella_proto::v1::Resources {
        cella_proto::v1::Resources {
            cpus: self.cpus.as_cpus(),
            mem_bytes: self.mem_bytes,
            disk_bytes: self.disk_bytes,
        }
    }
}

/// What was measured, before reservations and overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub cpus: MilliCpus,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

/// Measures the machine. `work_dir` must exist.
pub fn detect(work_dir: &Path) -> Detected {
    let affinity = affinity_cpus().unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut cpus = MilliCpus(u64::try_from(affinity).unwrap_or(1).saturating_mul(1000));
    let dirs = own_cgroup_dirs();
    if let Some(quota) = cpu_quota(&dirs, |p| std::fs::read_to_string(p).ok()) {
        cpus = cpus.min(quota);
    }
    // MemTotal, in bytes (procfs converts the kB of /proc/meminfo).
    let mut mem_bytes = Meminfo::current().map_or(0, |m| m.mem_total);
    if let Some(limit) = memory_limit(&dirs, |p| std::fs::read_to_string(p).ok()) {
        mem_bytes = mem_bytes.min(limit);
    }
    let disk_bytes = nix::sys::statvfs::statvfs(work_dir)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()))
        .unwrap_or(0);
    Detected {
        cpus,
        mem_bytes,
        disk_bytes,
    }
}

/// Detected − reserve, then overridden field by field.
pub fn compute(detected: Detected, reserve: ResourceSpec, overrides: ResourceSpec) -> Totals {
    let cpus = MilliCpus(
        detected
            .cpus
            .0
            .saturating_sub(reserve.cpus.map_or(0, |c| c.0)),
    );
    let mem_bytes = detected
        .mem_bytes
        .saturating_sub(reserve.mem_bytes.unwrap_or(0));
    let disk_bytes = detected
        .disk_bytes
        .saturating_sub(reserve.disk_bytes.unwrap_or(0));
    Totals {
        cpus: overrides.cpus.unwrap_or(cpus),
        mem_bytes: overrides.mem_bytes.unwrap_or(mem_bytes),
        disk_bytes: overrides.disk_bytes.unwrap_or(disk_bytes),
    }
}

fn affinity_cpus() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|i| set.is_set(*i).unwrap_or(false))
        .count();
    (n > 0).then_some(n)
}

/// The directories of the agent's own cgroup, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDirs {
    /// cgroup v2: the own cgroup's directory and the mount point (walk up to it).
    pub unified: Option<(PathBuf, PathBuf)>,
    /// v1 `cpu` controller: (own dir, mount point).
    pub cpu: Option<(PathBuf, PathBuf)>,
    /// v1 `memory` controller: (own dir, mount point).
    pub memory: Option<(PathBuf, PathBuf)>,
}

/// The agent's own cgroup directories, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo` (none when they cannot be read).
fn own_cgroup_dirs() -> CgroupDirs {
    let Ok(me) = Process::myself() else {
        return CgroupDirs::default();
    };
    let cgroups = me.cgroups().map(|c| c.0).unwrap_or_default();
    let mounts = me.mountinfo().map(|m| m.0).unwrap_or_default();
    cgroup_dirs(&cgroups, &mounts)
}

/// Finds the own cgroup directories from the own cgroups (`/proc/self/cgroup`) and
/// the mounts (`/proc/self/mountinfo`).
pub fn cgroup_dirs(own: &[ProcessCGroup], mounts: &[MountInfo]) -> CgroupDirs {
    let join = |mount: &MountInfo, path: &str| -> Option<(PathBuf, PathBuf)> {
        // The cgroup path is relative to the hierarchy's root; the mount shows `root`.
        let rel = if mount.root == "/" {
            path
        } else {
            path.strip_prefix(mount.root.as_str())?
        };
        let rel = rel.trim_start_matches('/');
        // procfs leaves mountinfo's octal escapes (`\040` for a space) in the mount
        // point; the containerizer's mountinfo reader undoes them.
        let point = PathBuf::from(cella_containerizer::cgroups::unescape_mountinfo(
            &mount.mount_point.to_string_lossy(),
        ));
        Some((point.join(rel), point))
    };
    let mut dirs = CgroupDirs::default();
    for cgroup in own {
        let path = cgroup.pathname.as_str();
        if cgroup.controllers.is_empty() {
            if let Some(mount) = mounts.iter().find(|m| m.fs_type == "cgroup2") {
                dirs.unified = join(mount, path);
            }
            continue;
        }
        for (want, slot) in [("cpu", &mut dirs.cpu), ("memory", &mut dirs.memory)] {
            if !cgroup.controllers.iter().any(|c| c == want) {
                continue;
            }
            if let Some(mount) = mounts
                .iter()
                .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key(want))
            {
                *slot = join(mount, path);
            }
        }
    }
    dirs
}

fn ancestors(dir: &Path, top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        out.push(d.to_path_buf());
        if d == top || !d.starts_with(top) {
            break;
        }
        cur = d.parent();
    }
    out
}

/// The tightest CPU quota on the way up from the own cgroup, in thousandths of a CPU.
pub fn cpu_quota(dirs: &CgroupDirs, read: impl Fn(&Path) -> Option<String>) -> Option<MilliCpus> {
    let mut best: Option<u64> = None;
    let mut take = |m: u64| best = Some(best.map_or(m, |b| b.min(m)));
    // On a hybrid host the v1 controllers hold the limits, so v1 comes first.
    if let Some((dir, top)) = &dirs.cpu {
        for d in ancestors(dir, top) {
            let quota = read(&d.join("cpu.cfs_quota_us"));
            let period = read(&d.join("cpu.cfs_period_us"));
            if let (Some(q), Some(p)) = (quota, period)
                && let Some(m) = quota_millis(q.trim(), p.trim())
            {
                take(m);
            }
        }
    } else if let Some((dir, top)) = &dirs.unified {
        for d in ancestors(dir, top) {
            if let Some(m) = read(&d.join("cpu.max")).and_then(|t| parse_cpu_max(&t)) {
                take(m);
            }
        }
    }
    best.map(|m| MilliCpus(m.max(1)))
}

/// `cpu.max`: `max 100000` (no limit) or `QUOTA PERIOD`.
pub fn parse_cpu_max(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period = parts.next().unwrap_or("100000");
    quota_millis(quota, period)
}

fn quota_millis(quota: &str, period: &str) -> Option<u64> {
    if quota == "max" || quota.starts_with('-') {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok()?;
    if period == 0 {
        return None;
    }
    // Rounded up: a quota of 1.5 CPUs is 1500 milli-CPUs.
    Some(quota.saturating_mul(1000).div_ceil(period))
}

/// The tightest memory limit on the way up from the own cgroup.
pub fn memory_limit(dirs: &CgroupDirs, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
    let mut best: Option<u64> = None;
    let (pair, file) = if dirs.memory.is_some() {
        (&dirs.memory, "memory.limit_in_bytes")
    } else {
        (&dirs.unified, "memory.max")
    };
    if let Some((dir, top)) = pair {
        for d in ancestors(dir, top) {
            let Some(text) = read(&d.join(file)) else {
                continue;
            };
            let text = text.trim();
            if text == "max" {
                continue;
            }
            // v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages); the
            // min with MemTotal takes care of it.
            if let Ok(v) = text.parse::<u64>() {
                best = Some(best.map_or(v, |b| b.min(v)));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromRead;
    use std::collections::HashMap;

    /// The CPU quota and the memory limit under `dirs` when the cgroup files hold
    /// `files` (path and content).
    fn limits(dirs: &CgroupDirs, files: &[(&str, &str)]) -> (Option<MilliCpus>, Option<u64>) {
        let files: HashMap<&str, &str> = files.iter().copied().collect();
        let read = |p: &Path| files.get(p.to_str().unwrap_or("")).map(|s| s.to_string());
        (cpu_quota(dirs, read), memory_limit(dirs, read))
    }

    const MOUNTINFO_HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 33 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
40 33 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,memory
";
    const CGROUP_HYBRID: &str = "\
12:memory:/system.slice/agent.service
4:cpu,cpuacct:/system.slice/agent.service
0::/system.slice/agent.service
";

    /// `/proc/self/cgroup` and `/proc/self/mountinfo` as procfs reads them.
    fn parsed(proc_cgroup: &str, mountinfo: &str) -> CgroupDirs {
        let own = procfs::ProcessCGroups::from_read(proc_cgroup.as_bytes()).unwrap();
        let mounts = procfs::process::MountInfos::from_read(mountinfo.as_bytes()).unwrap();
        cgroup_dirs(&own.0, &mounts.0)
    }

    /// MemTotal in bytes, as [`detect`] takes it: procfs converts the kB of
    /// /proc/meminfo (a number in kB would be 1024 times too small).
    #[test]
    fn meminfo() {
        let parse_meminfo_total = |text: &str| {
            Meminfo::from_read(text.as_bytes())
                .ok()
                .map(|m| m.mem_total)
        };
        let text = MEMINFO;
        assert_eq!(parse_meminfo_total(text), Some(16_318_480 * 1024));
        assert_eq!(parse_meminfo_total("garbage"), None);
    }

    const MEMINFO: &str = "\
MemTotal:       16318480 kB
MemFree:         1000000 kB
MemAvailable:    9000000 kB
Buffers:          100000 kB
Cached:          5000000 kB
SwapCached:            0 kB
Active:          6000000 kB
Inactive:        4000000 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               100 kB
Writeback:             0 kB
Mapped:           500000 kB
Slab:             400000 kB
Committed_AS:    8000000 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       50000 kB
VmallocChunk:          0 kB
";

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1500));
        assert_eq!(parse_cpu_max("50000 100000"), Some(500));
        assert_eq!(parse_cpu_max("1 0"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn hybrid_dirs_and_v1_limits() {
        let dirs = parsed(CGROUP_HYBRID, MOUNTINFO_HYBRID);
        // A hybrid host has a cgroup2 mount, but its own cgroup line "0::" points
        // there; limits are on the v1 controllers.
        assert_eq!(
            dirs.cpu,
            Some((
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
            ))
        );
        assert_eq!(
            dirs.memory.as_ref().map(|d| d.0.clone()),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/system.slice/agent.service"
            ))
        );
        assert!(dirs.unified.is_some());
        let v1 = dirs;
        let files = [
            (
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service/cpu.cfs_quota_us",
                "-1\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service/cpu.cfs_period_us",
                "100000\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/cpu.cfs_quota_us",
                "250000\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/cpu.cfs_period_us",
                "100000\n",
            ),
            (
                "/sys/fs/cgroup/memory/system.slice/agent.service/memory.limit_in_bytes",
                "1073741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ];
        assert_eq!(limits(&v1, &files), (Some(MilliCpus(2500)), Some(1 << 30)));
    }

    #[test]
    fn unified_limits_walk_up() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let dirs = parsed("0::/a/b\n", mountinfo);
        assert_eq!(
            dirs.unified,
            Some((
                PathBuf::from("/sys/fs/cgroup/a/b"),
                PathBuf::from("/sys/fs/cgroup")
            ))
        );
        let files = [
            ("/sys/fs/cgroup/a/b/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/a/cpu.max", "300000 100000\n"),
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("/sys/fs/cgroup/a/memory.max", "536870912\n"),
        ];
        assert_eq!(
            limits(&dirs, &files),
            (Some(MilliCpus(3000)), Some(512 << 20))
        );
    }

    #[test]
    fn mount_root_inside_a_container() {
        let mountinfo = "30 25 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dirs = parsed("0::/kubepods/pod1/c\n", mountinfo);
        assert_eq!(
            dirs.unified.map(|d| d.0),
            Some(PathBuf::from("/sys/fs/cgroup/c"))
        );
        assert_eq!(
            cella_containerizer::cgroups::unescape_mountinfo("/a\\040b"),
            "/a b"
        );
    }

    #[test]
    fn reserve_and_override() {
        let detected = Detected {
            cpus: MilliCpus(4000),
            mem_bytes: 8 << 30,
            disk_bytes: 100 << 30,
        };
        let reserve = ResourceSpec {
            cpus: Some(MilliCpus(500)),
            mem_bytes: Some(1 << 30),
            disk_bytes: Some(200 << 30),
        };
        let t = compute(
            detected,
            reserve,
            ResourceSpec {
                mem_bytes: Some(2 << 30),
                ..Default::default()
            },
        );
        assert_eq!(t.cpus, MilliCpus(3500));
        assert_eq!(t.mem_bytes, 2 << 30);
        assert_eq!(t.disk_bytes, 0);
    }

    #[test]
    fn detect_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let d = detect(dir.path());
        assert!(d.cpus.0 >= 1, "{d:?}");
        assert!(d.mem_bytes > 0, "{d:?}");
        assert!(d.disk_bytes > 0, "{d:?}");
    }
}
