//! What this machine can offer: CPUs the agent may use (its affinity mask, limited by
//! its own cgroup's CPU quota), memory (MemTotal, limited by its cgroup's memory
//! limit), the disk of its work directory; minus `--reserve`, overridden by
//! `--resources`.

use std::path::{Path, PathBuf};

use cella_containerizer::units::MilliCpus;

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
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dirs = cgroup_dirs(&cgroups, &mountinfo);
    if let Some(quota) = cpu_quota(&dirs, |p| std::fs::read_to_string(p).ok()) {
        cpus = cpus.min(quota);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut mem_bytes = parse_meminfo_total(&meminfo).unwrap_or(0);
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

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => value.checked_mul(1024),
            _ => None,
        }
    })
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

/// Finds the own cgroup directories from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
pub fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> CgroupDirs {
    // (fstype, super options, mount root, mount point)
    let mounts: Vec<(&str, Vec<&str>, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let root = *fields.get(3)?;
            let point = *fields.get(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let opts = r.next().unwrap_or("").split(',').collect();
            Some((fstype, opts, root, point))
        })
        .collect();
    let join = |point: &str, root: &str, path: &str| -> Option<(PathBuf, PathBuf)> {
        // The cgroup path is relative to the hierarchy's root; the mount shows `root`.
        let rel = if root == "/" {
            path
        } else {
            path.strip_prefix(root)?
        };
        let rel = rel.trim_start_matches('/');
        let point = PathBuf::from(cella_containerizer::cgroups::unescape_mountinfo(point));
        Some((point.join(rel), point))
    };
    let mut dirs = CgroupDirs::default();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            if let Some((_, _, root, point)) = mounts.iter().find(|m| m.0 == "cgroup2") {
                dirs.unified = join(point, root, path);
            }
            continue;
        }
        let names: Vec<&str> = controllers.split(',').collect();
        for (want, slot) in [("cpu", &mut dirs.cpu), ("memory", &mut dirs.memory)] {
            if !names.contains(&want) {
                continue;
            }
            if let Some((_, _, root, point)) = mounts
                .iter()
                .find(|m| m.0 == "cgroup" && m.1.contains(&want))
            {
                *slot = join(point, root, path);
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
    use std::collections::HashMap;

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

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(16_318_480 * 1024));
        assert_eq!(parse_meminfo_total("garbage"), None);
    }

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
        let dirs = cgroup_dirs(CGROUP_HYBRID, MOUNTINFO_HYBRID);
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
        let files: HashMap<&str, &str> = [
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
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p.to_str().unwrap_or("")).map(|s| s.to_string());
        assert_eq!(cpu_quota(&v1, read), Some(MilliCpus(2500)));
        assert_eq!(memory_limit(&v1, read), Some(1 << 30));
    }

    #[test]
    fn unified_limits_walk_up() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let dirs = cgroup_dirs("0::/a/b\n", mountinfo);
        assert_eq!(
            dirs.unified,
            Some((
                PathBuf::from("/sys/fs/cgroup/a/b"),
                PathBuf::from("/sys/fs/cgroup")
            ))
        );
        let files: HashMap<&str, &str> = [
            ("/sys/fs/cgroup/a/b/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/a/cpu.max", "300000 100000\n"),
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("/sys/fs/cgroup/a/memory.max", "536870912\n"),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p.to_str().unwrap_or("")).map(|s| s.to_string());
        assert_eq!(cpu_quota(&dirs, read), Some(MilliCpus(3000)));
        assert_eq!(memory_limit(&dirs, read), Some(512 << 20));
    }

    #[test]
    fn mount_root_inside_a_container() {
        let mountinfo = "30 25 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dirs = cgroup_dirs("0::/kubepods/pod1/c\n", mountinfo);
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
