//! How this host mounts cgroups, and where this process sits in them: read once from
//! /proc/self/mountinfo and /proc/self/cgroup through `procfs`. The mode is decided
//! here and nowhere else.
use std::path::{Path, PathBuf};

use procfs::FromBufRead;
use procfs::process::{MountInfo, MountInfos, Process};
use procfs::{ProcError, ProcessCGroups};

use super::CgroupError;
pub use crate::proc_info::unescape_mountinfo;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Only cgroup2 with the controllers (v2).
    Unified,
    /// v1 controllers plus a cgroup2 mount without them: limits go through v1.
    Hybrid,
    /// Only v1.
    Legacy,
}

/// The mode of this host.
pub fn detect_mode() -> Result<Mode, CgroupError> {
    Host::read()?.mode()
}

/// Mode from the text of a mountinfo file (unit-testable); `None` when it names no
/// cgroup hierarchy Cella could use, or is not mountinfo.
pub fn parse_mode(mountinfo: &str) -> Option<Mode> {
    Host::parse(mountinfo, "").ok()?.mode().ok()
}

/// One cgroup or cgroup2 mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    pub fstype: String,
    /// The cgroup the mount shows at its mount point (usually `/`).
    pub root: String,
    pub mount_point: PathBuf,
    /// v1 controllers of the hierarchy, sorted (empty for cgroup2 and named hierarchies).
    pub controllers: Vec<String>,
}

/// Super options that are not controllers: a hierarchy carrying only these (e.g.
/// `name=systemd`) limits nothing. Options with a value (`name=`, `release_agent=`)
/// are never controllers.
fn is_controller_option(opt: &str, value: Option<&String>) -> bool {
    value.is_none()
        && !matches!(
            opt,
            "rw" | "ro"
                | "none"
                | "xattr"
                | "noprefix"
                | "clone_children"
                | "cpuset_v2_mode"
                | "favordynmods"
        )
}

impl CgroupMount {
    fn from_procfs(mount: &MountInfo) -> Option<Self> {
        let fstype = mount.fs_type.as_str();
        if fstype != "cgroup" && fstype != "cgroup2" {
            return None;
        }
        let mut controllers: Vec<String> = if fstype == "cgroup" {
            mount
                .super_options
                .iter()
                .filter(|(opt, value)| is_controller_option(opt, value.as_ref()))
                .map(|(opt, _)| opt.clone())
                .collect()
        } else {
            Vec::new()
        };
        // procfs keeps the options in a map: sorted, the list does not depend on it.
        controllers.sort();
        Some(Self {
            fstype: fstype.to_string(),
            root: unescape_mountinfo(&mount.root),
            mount_point: PathBuf::from(unescape_mountinfo(&mount.mount_point.to_string_lossy())),
            controllers,
        })
    }
}

/// One line of /proc/self/cgroup: the controllers of a hierarchy and our path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnCgroup {
    /// Empty for the v2 line (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

/// The cgroup mounts of this host and this process's cgroups. [`Host::read`] takes
/// them from /proc; tests build one with [`Host::parse`] and mount points of their
/// choosing, so the layout a backend works in can be injected.
#[derive(Debug, Clone)]
pub struct Host {
    pub(super) mounts: Vec<CgroupMount>,
    pub(super) own: Vec<OwnCgroup>,
}

fn proc_error(path: &str, e: ProcError) -> CgroupError {
    CgroupError::Mounts {
        path: PathBuf::from(path),
        why: e.to_string(),
    }
}

impl Host {
    /// This process's view, from /proc/self/mountinfo and /proc/self/cgroup.
    pub fn read() -> Result<Self, CgroupError> {
        let me = Process::myself().map_err(|e| proc_error("/proc/self", e))?;
        let mounts = me.mountinfo().map_err(|e| proc_error(MOUNTINFO, e))?;
        let own = me.cgroups().map_err(|e| proc_error(SELF_CGROUP, e))?;
        Ok(Self::from_procfs(&mounts, own))
    }

    /// The same from the text of the two files.
    pub fn parse(mountinfo: &str, self_cgroup: &str) -> Result<Self, CgroupError> {
        let mounts = MountInfos::from_buf_read(mountinfo.as_bytes())
            .map_err(|e| proc_error(MOUNTINFO, e))?;
        let own = ProcessCGroups::from_buf_read(self_cgroup.as_bytes())
            .map_err(|e| proc_error(SELF_CGROUP, e))?;
        Ok(Self::from_procfs(&mounts, own))
    }

    fn from_procfs(mountinfo: &MountInfos, own: ProcessCGroups) -> Self {
        let mut mounts: Vec<CgroupMount> = Vec::new();
        for mount in mountinfo.iter().filter_map(CgroupMount::from_procfs) {
            // The same hierarchy may be mounted twice (bind mounts); the first one wins.
            let duplicate = mounts.iter().any(|m| {
                m.mount_point == mount.mount_point
                    || (m.fstype == mount.fstype
                        && m.fstype == "cgroup"
                        && m.controllers == mount.controllers)
            });
            if !duplicate {
                mounts.push(mount);
            }
        }
        let own = own
            .into_iter()
            .map(|c| OwnCgroup {
                controllers: c.controllers,
                path: c.pathname,
            })
            .collect();
        Self { mounts, own }
    }

    /// Unified, hybrid or legacy: the one place the mode is decided.
    pub fn mode(&self) -> Result<Mode, CgroupError> {
        let unified = self.mounts.iter().any(|m| m.fstype == "cgroup2");
        let v1 = self
            .mounts
            .iter()
            .any(|m| m.fstype == "cgroup" && !m.controllers.is_empty());
        match (v1, unified) {
            (true, true) => Ok(Mode::Hybrid),
            (true, false) => Ok(Mode::Legacy),
            (false, true) => Ok(Mode::Unified),
            (false, false) => Err(CgroupError::Mounts {
                path: PathBuf::from(MOUNTINFO),
                why: "no cgroup v1 controller hierarchy and no cgroup2 filesystem is mounted"
                    .into(),
            }),
        }
    }

    /// The directory of the base cgroup in the hierarchy mounted by `mount`, whose
    /// line in /proc/self/cgroup is `own_path`.
    pub(super) fn base_dir(
        mount: &CgroupMount,
        own_path: &str,
        root: Option<&Path>,
    ) -> Result<PathBuf, CgroupError> {
        let rel = root.unwrap_or(Path::new("cella"));
        if rel.is_absolute() {
            return Ok(mount.mount_point.join(rel.strip_prefix("/").unwrap_or(rel)));
        }
        Ok(Self::own_dir(mount, own_path)?.join(rel))
    }

    /// This process's cgroup directory in the hierarchy mounted by `mount`.
    pub(super) fn own_dir(mount: &CgroupMount, own_path: &str) -> Result<PathBuf, CgroupError> {
        // Our path is relative to the hierarchy's root, the mount shows `mount.root`
        // of it: only the part below the mount's root is reachable.
        let below = if mount.root == "/" {
            Some(own_path)
        } else {
            own_path
                .strip_prefix(mount.root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let Some(below) = below else {
            return Err(CgroupError::Mounts {
                path: mount.mount_point.clone(),
                why: format!(
                    "this process's cgroup {own_path} is outside the mounted subtree {}; pass an absolute --cgroup-root",
                    mount.root
                ),
            });
        };
        let below = below.trim_start_matches('/');
        if below.is_empty() {
            return Ok(mount.mount_point.clone());
        }
        Ok(mount.mount_point.join(below))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
        Host::parse(text, "").expect("mountinfo parses").mounts
    }

    fn parse_self_cgroup(text: &str) -> Vec<OwnCgroup> {
        Host::parse("", text).expect("/proc/self/cgroup parses").own
    }

    /// This development host: v1 controllers in separate hierarchies (cpu and cpuacct
    /// apart) plus an empty cgroup2 mount.
    const HOST: &str = "\
22 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Ubuntu 18.04 style: systemd's hybrid layout with co-mounted cpu,cpuacct.
    const HYBRID_SYSTEMD: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
33 25 0:30 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,net_cls,net_prio
";

    /// CentOS 7 style: v1 only.
    const LEGACY: &str = "\
24 18 0:19 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
25 24 0:20 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
27 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuacct,cpu
28 24 0:23 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
29 24 0:24 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
";

    /// Fedora / Debian 11+ style: cgroup2 only.
    const UNIFIED: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn modes() {
        assert_eq!(parse_mode(HOST), Some(Mode::Hybrid));
        assert_eq!(parse_mode(HYBRID_SYSTEMD), Some(Mode::Hybrid));
        assert_eq!(parse_mode(LEGACY), Some(Mode::Legacy));
        assert_eq!(parse_mode(UNIFIED), Some(Mode::Unified));
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn named_hierarchy_alone_is_not_v1() {
        let systemd_only = "\
25 24 0:20 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 24 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(parse_mode(systemd_only), Some(Mode::Unified));
        assert_eq!(
            parse_mode(systemd_only.lines().next().unwrap_or_default()),
            None
        );
    }

    #[test]
    fn controllers_and_duplicates() {
        let mut text = LEGACY.to_string();
        // A bind mount of the memory hierarchy elsewhere must not count twice.
        text.push_str("90 24 0:23 / /mnt/memory rw,relatime - cgroup cgroup rw,memory\n");
        let mounts = parse_mountinfo(&text);
        let cpu = mounts
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == "cpu"))
            .expect("cpu");
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            mounts
                .iter()
                .filter(|m| m.controllers == ["memory"])
                .count(),
            1
        );
        let systemd = mounts
            .iter()
            .find(|m| m.mount_point.ends_with("systemd"))
            .expect("systemd");
        assert!(systemd.controllers.is_empty());
    }

    #[test]
    fn escaped_mount_point() {
        let text = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text)[0].mount_point,
            Path::new("/mnt/my cgroups")
        );
        let text = "35 24 0:30 /a\\011b /mnt/x\\134y rw - cgroup2 cgroup2 rw\n";
        let mount = &parse_mountinfo(text)[0];
        assert_eq!(mount.mount_point, Path::new("/mnt/x\\y"));
        assert_eq!(mount.root, "/a\tb");
    }

    #[test]
    fn self_cgroup_and_base_dirs() {
        let own = parse_self_cgroup(
            "4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/user.slice/x.scope\n",
        );
        assert_eq!(own[0].controllers, vec!["memory"]);
        assert_eq!(own[0].path, "/process_api/abc");
        assert!(own[2].controllers.is_empty());

        let mem = CgroupMount {
            fstype: "cgroup".into(),
            root: "/".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            controllers: vec!["memory".into()],
        };
        let dir = |root: Option<&str>| {
            Host::base_dir(&mem, "/process_api/abc", root.map(Path::new)).expect("dir")
        };
        assert_eq!(
            dir(None),
            Path::new("/sys/fs/cgroup/memory/process_api/abc/cella")
        );
        assert_eq!(
            dir(Some("t-1")),
            Path::new("/sys/fs/cgroup/memory/process_api/abc/t-1")
        );
        assert_eq!(
            dir(Some("/cella")),
            Path::new("/sys/fs/cgroup/memory/cella")
        );
        assert_eq!(
            Host::own_dir(&mem, "/process_api/abc").expect("own"),
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );

        // A container that sees only its own subtree of the hierarchy.
        let sub = CgroupMount {
            root: "/docker/123".into(),
            ..mem
        };
        let dir = Host::base_dir(&sub, "/docker/123/inner", None).expect("dir");
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/inner/cella"));
        assert!(Host::base_dir(&sub, "/other", None).is_err());
    }

    #[test]
    fn this_host_parses() {
        // Whatever the machine, its own mountinfo must parse to some mode.
        let text = std::fs::read_to_string(MOUNTINFO).expect("read mountinfo");
        assert!(parse_mode(&text).is_some(), "no cgroups in {text}");
        let host = Host::read().expect("read through procfs");
        assert_eq!(host.mode().ok(), parse_mode(&text));
        assert!(!host.own.is_empty(), "this process has cgroups");
    }
}
