//! Detecting how cgroups are mounted, and where this process sits in them.
use std::path::{Path, PathBuf};

use super::CgroupError;

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

pub fn detect_mode() -> Result<Mode, CgroupError> {
    let text = read_proc(MOUNTINFO)?;
    parse_mode(&text).ok_or_else(|| CgroupError::Mounts {
        path: PathBuf::from(MOUNTINFO),
        why: "no cgroup v1 controller hierarchy and no cgroup2 filesystem is mounted".into(),
    })
}

/// Mode from the text of a mountinfo file (unit-testable).
pub fn parse_mode(mountinfo: &str) -> Option<Mode> {
    let mounts = parse_mountinfo(mountinfo);
    let unified = mounts.iter().any(|m| m.fstype == "cgroup2");
    let v1 = mounts
        .iter()
        .any(|m| m.fstype == "cgroup" && !m.controllers.is_empty());
    match (v1, unified) {
        (true, true) => Some(Mode::Hybrid),
        (true, false) => Some(Mode::Legacy),
        (false, true) => Some(Mode::Unified),
        (false, false) => None,
    }
}

/// One cgroup or cgroup2 mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    pub fstype: String,
    /// The cgroup the mount shows at its mount point (usually `/`).
    pub root: String,
    pub mount_point: PathBuf,
    /// v1 controllers of the hierarchy (empty for cgroup2 and named hierarchies).
    pub controllers: Vec<String>,
}

/// Super options that are not controllers: a hierarchy carrying only these (e.g.
/// `name=systemd`) limits nothing.
fn is_controller_option(opt: &str) -> bool {
    !matches!(
        opt,
        "rw" | "ro"
            | "none"
            | "xattr"
            | "noprefix"
            | "clone_children"
            | "cpuset_v2_mode"
            | "favordynmods"
    ) && !opt.starts_with("name=")
        && !opt.starts_with("release_agent=")
}

pub(super) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out: Vec<CgroupMount> = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.is_empty() {
            continue;
        }
        let fstype = right[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let controllers = if fstype == "cgroup" {
            right
                .get(2)
                .map(|opts| {
                    opts.split(',')
                        .filter(|o| is_controller_option(o))
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mount = CgroupMount {
            fstype: fstype.to_string(),
            root: unescape_mountinfo(left[3]),
            mount_point: PathBuf::from(unescape_mountinfo(left[4])),
            controllers,
        };
        // The same hierarchy may be mounted twice (bind mounts); the first one wins.
        let duplicate = out.iter().any(|m| {
            m.mount_point == mount.mount_point
                || (m.fstype == mount.fstype
                    && m.fstype == "cgroup"
                    && m.controllers == mount.controllers)
        });
        if !duplicate {
            out.push(mount);
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/cgroup: the controllers of a hierarchy and our path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnCgroup {
    /// Empty for the v2 line (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

pub(super) fn parse_self_cgroup(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(OwnCgroup {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The mounts and this process's cgroups, read once.
pub(super) struct System {
    pub mounts: Vec<CgroupMount>,
    pub own: Vec<OwnCgroup>,
}

impl System {
    pub fn read() -> Result<Self, CgroupError> {
        Ok(Self {
            mounts: parse_mountinfo(&read_proc(MOUNTINFO)?),
            own: parse_self_cgroup(&read_proc(SELF_CGROUP)?),
        })
    }

    /// The directory of the base cgroup in the hierarchy mounted by `mount`, whose
    /// line in /proc/self/cgroup is `own_path`.
    pub fn base_dir(
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
    pub fn own_dir(mount: &CgroupMount, own_path: &str) -> Result<PathBuf, CgroupError> {
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

fn read_proc(path: &str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: PathBuf::from(path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(cpu.controllers, vec!["cpuacct", "cpu"]);
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
            System::base_dir(&mem, "/process_api/abc", root.map(Path::new)).expect("dir")
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
            System::own_dir(&mem, "/process_api/abc").expect("own"),
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );

        // A container that sees only its own subtree of the hierarchy.
        let sub = CgroupMount {
            root: "/docker/123".into(),
            ..mem
        };
        let dir = System::base_dir(&sub, "/docker/123/inner", None).expect("dir");
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/inner/cella"));
        assert!(System::base_dir(&sub, "/other", None).is_err());
    }

    #[test]
    fn this_host_parses() {
        // Whatever the machine, its own mountinfo must parse to some mode.
        if let Ok(text) = std::fs::read_to_string(MOUNTINFO) {
            assert!(parse_mode(&text).is_some(), "no cgroups in {text}");
        }
    }
}
