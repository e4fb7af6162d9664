//! The local allowlist every task must fit ([`TaskPolicy`]), checked when a launch
//! arrives, after the master's own checks and whatever they allowed.
//!
//! * Tasks run as `task_user` (default `nobody`) unless they name a user; a user that
//!   resolves to uid 0 runs only with `allow_root_tasks`.
//! * A volume's host path must lie within an allowed prefix with a mode at least as
//!   wide (`rw` covers `ro`); a rootfs within an allowed rootfs prefix. Paths are
//!   compared component by component after resolving symbolic links, so neither
//!   `/srv/data/../../etc` nor a link planted under an allowed prefix leads out.
//!
//! * A host device must be one the agent allows, by exact path (after resolving
//!   symbolic links on both sides): whatever the master's ACL grants, a node hands out
//!   only the devices its operator listed.
//!
//! The defaults allow no volume, no rootfs, no device and no root task: an operator
//! opens what the node's tasks need (`--allow-volume`, `--allow-rootfs`,
//! `--allow-device`, `--allow-root-tasks`).

use std::path::{Path, PathBuf};

use cella_proto::v1;
use cella_proto::validate::is_confined_absolute;

/// The user tasks run as when they name none.
pub const DEFAULT_TASK_USER: &str = "nobody";
pub use cella_containerizer::task::{DEFAULT_DISK_BYTES, DEFAULT_PIDS_LIMIT};

/// A host directory tasks may mount: everything beneath `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAllow {
    pub prefix: PathBuf,
    /// Read-write allowed (read-only always is).
    pub read_write: bool,
}

impl VolumeAllow {
    /// Parses `PREFIX[:ro|rw]` (read-only when no mode is given).
    pub fn parse(s: &str) -> Result<VolumeAllow, String> {
        let (path, read_write) = match s.rsplit_once(':') {
            Some((p, "rw")) => (p, true),
            Some((p, "ro")) => (p, false),
            _ => (s, false),
        };
        let prefix = PathBuf::from(path);
        if !is_confined_absolute(&prefix) {
            return Err(format!(
                "{s:?}: give an absolute directory without '..', optionally with :ro or :rw \
                 (e.g. /srv/data:rw)"
            ));
        }
        Ok(VolumeAllow { prefix, read_write })
    }
}

/// What the agent lets a task be and use; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPolicy {
    pub task_user: String,
    pub allow_root: bool,
    pub volumes: Vec<VolumeAllow>,
    pub rootfs: Vec<PathBuf>,
    /// Host devices tasks may be given (exact paths).
    pub devices: Vec<PathBuf>,
    /// The limits a task gets when it sets none: no task runs without them.
    pub default_pids: u64,
    pub default_disk_bytes: u64,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        TaskPolicy {
            task_user: DEFAULT_TASK_USER.into(),
            allow_root: false,
            volumes: Vec::new(),
            rootfs: Vec::new(),
            devices: Vec::new(),
            default_pids: DEFAULT_PIDS_LIMIT,
            default_disk_bytes: DEFAULT_DISK_BYTES,
        }
    }
}

/// Why the agent refuses a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "user {user:?} is root (uid 0) and this agent does not run root tasks \
         (allow_root_tasks is off in its configuration)"
    )]
    Root { user: String },
    #[error(
        "volume {path} ({mode}) is outside what this agent allows (its allow_volumes: {allowed})"
    )]
    Volume {
        path: String,
        mode: &'static str,
        allowed: String,
    },
    #[error("rootfs {path} is outside what this agent allows (its allow_rootfs: {allowed})")]
    Rootfs { path: String, allowed: String },
    #[error("device {path} is not one this agent allows (its allow_devices: {allowed})")]
    Device { path: String, allowed: String },
    #[error("{path}: {message}")]
    Path { path: String, message: String },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Root { .. } => "root",
            Refusal::Volume { .. } | Refusal::Path { .. } => "volume",
            Refusal::Rootfs { .. } => "rootfs",
            Refusal::Device { .. } => "device",
        }
    }
}

/// `path` with symbolic links resolved.
fn resolved(path: &Path) -> Result<PathBuf, Refusal> {
    path.canonicalize().map_err(|e| Refusal::Path {
        path: path.display().to_string(),
        message: format!("cannot be resolved on this agent: {e}"),
    })
}

/// An allowed prefix, resolved when it exists (a prefix that is itself a link).
fn resolved_prefix(prefix: &Path) -> PathBuf {
    prefix
        .canonicalize()
        .unwrap_or_else(|_| prefix.to_path_buf())
}

fn listing<'a>(items: impl Iterator<Item = String> + 'a) -> String {
    let all: Vec<String> = items.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

impl TaskPolicy {
    /// Gives `info` this node's default process and disk limits where it sets none
    /// (0), before it is checkpointed, so a recovered task keeps the limits it ran with.
    pub fn apply_defaults(&self, info: &mut v1::TaskInfo) {
        if info.pids_limit == 0 {
            info.pids_limit = self.default_pids;
        }
        let resources = info.resources.get_or_insert_default();
        if resources.disk_bytes == 0 {
            resources.disk_bytes = self.default_disk_bytes;
        }
    }

    /// For `cella dev`: tasks run as root unless they name a user, any volume and
    /// rootfs.
    pub fn permissive() -> TaskPolicy {
        TaskPolicy {
            task_user: "root".into(),
            allow_root: true,
            volumes: vec![VolumeAllow {
                prefix: PathBuf::from("/"),
                read_write: true,
            }],
            rootfs: vec![PathBuf::from("/")],
            ..TaskPolicy::default()
        }
    }

    /// The user `info` runs as: its own, or the agent's task user.
    pub fn user_of<'a>(&'a self, info: &'a v1::TaskInfo) -> &'a str {
        if info.user.is_empty() {
            &self.task_user
        } else {
            &info.user
        }
    }

    /// Checks `info`, which runs as `uid`, against the allowlist.
    pub fn check(&self, info: &v1::TaskInfo, uid: u32) -> Result<(), Refusal> {
        self.check_user(info, uid)?;
        self.check_paths(info)
    }

    /// A task that runs as `uid` (resolved from [`TaskPolicy::user_of`]).
    pub fn check_user(&self, info: &v1::TaskInfo, uid: u32) -> Result<(), Refusal> {
        if uid == 0 && !self.allow_root {
            return Err(Refusal::Root {
                user: self.user_of(info).to_string(),
            });
        }
        Ok(())
    }

    /// A task's volumes and rootfs.
    pub fn check_paths(&self, info: &v1::TaskInfo) -> Result<(), Refusal> {
        for v in &info.volumes {
            let path = resolved(Path::new(&v.host_path))?;
            let ok = self.volumes.iter().any(|allow| {
                path.starts_with(resolved_prefix(&allow.prefix))
                    && (allow.read_write || v.read_only)
            });
            if !ok {
                return Err(Refusal::Volume {
                    path: path.display().to_string(),
                    mode: if v.read_only { "ro" } else { "rw" },
                    allowed: listing(self.volumes.iter().map(|a| {
                        format!(
                            "{}:{}",
                            a.prefix.display(),
                            if a.read_write { "rw" } else { "ro" }
                        )
                    })),
                });
            }
        }
        // An image from a directory or an archive on this node is a root filesystem
        // from the host too: the same allowlist applies.
        let local_image = info.image.as_ref().and_then(|image| {
            match cella_image::ImageReference::parse(&image.reference, "localhost") {
                Ok(cella_image::ImageReference::OciLayout { dir, .. }) => Some(dir),
                Ok(cella_image::ImageReference::DockerArchive { file, .. }) => Some(file),
                _ => None,
            }
        });
        let rootfs = (!info.rootfs.is_empty())
            .then(|| std::path::PathBuf::from(&info.rootfs))
            .or(local_image);
        if let Some(rootfs) = rootfs {
            let path = resolved(&rootfs)?;
            if !self
                .rootfs
                .iter()
                .any(|prefix| path.starts_with(resolved_prefix(prefix)))
            {
                return Err(Refusal::Rootfs {
                    path: path.display().to_string(),
                    allowed: listing(self.rootfs.iter().map(|p| p.display().to_string())),
                });
            }
        }
        self.check_devices(info)
    }

    /// A task's host devices: each exactly one the agent allows.
    fn check_devices(&self, info: &v1::TaskInfo) -> Result<(), Refusal> {
        for device in &info.devices {
            let refused = || Refusal::Device {
                path: device.clone(),
                allowed: listing(self.devices.iter().map(|p| p.display().to_string())),
            };
            // Nothing allowed: refused without looking at the host.
            if self.devices.is_empty() {
                return Err(refused());
            }
            // A node missing here is not one the agent allows either.
            let path = resolved(Path::new(device)).map_err(|_| refused())?;
            if !self.devices.iter().any(|d| resolved_prefix(d) == path) {
                return Err(refused());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(volumes: &[(&str, bool)], rootfs: &str) -> v1::TaskInfo {
        v1::TaskInfo {
            volumes: volumes
                .iter()
                .map(|(p, ro)| v1::Volume {
                    host_path: (*p).into(),
                    task_path: "/data".into(),
                    read_only: *ro,
                })
                .collect(),
            rootfs: rootfs.into(),
            ..Default::default()
        }
    }

    #[test]
    fn allowlist() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let other = dir.path().join("database");
        std::fs::create_dir_all(data.join("x")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("out")).unwrap();
        let policy = TaskPolicy {
            volumes: vec![VolumeAllow::parse(&format!("{}:ro", data.display())).unwrap()],
            ..TaskPolicy::default()
        };
        let d = |p: &Path| p.display().to_string();
        assert!(
            policy
                .check(&task(&[(&d(&data.join("x")), true)], ""), 1000)
                .is_ok()
        );
        let e = policy
            .check(&task(&[(&d(&data), false)], ""), 1000)
            .unwrap_err();
        assert_eq!(e.reason(), "volume");
        assert!(
            policy
                .check(&task(&[(&d(&other), true)], ""), 1000)
                .is_err()
        );
        // A link under the prefix that leads out is judged by where it leads.
        assert!(
            policy
                .check(&task(&[(&d(&data.join("out")), true)], ""), 1000)
                .is_err()
        );
        assert!(matches!(
            policy.check(&task(&[], ""), 0),
            Err(Refusal::Root { .. })
        ));
        let e = policy.check(&task(&[], "/"), 1000).unwrap_err();
        assert!(e.to_string().contains("allow_rootfs: none"), "{e}");
        assert!(
            TaskPolicy::permissive()
                .check(&task(&[("/", false)], "/"), 0)
                .is_ok()
        );
        let mut fuse = task(&[], "");
        fuse.devices = vec!["/dev/null".into()];
        let e = policy.check(&fuse, 1000).unwrap_err();
        assert_eq!(e.reason(), "device");
        assert!(
            e.to_string().contains(
                "device /dev/null is not one this agent allows (its allow_devices: none)"
            ),
            "{e}"
        );
        let devices = TaskPolicy {
            devices: vec!["/dev/null".into()],
            ..TaskPolicy::default()
        };
        assert!(devices.check(&fuse, 1000).is_ok());
        for other in ["/dev/zero", "/dev/no-such-device"] {
            fuse.devices = vec![other.into()];
            assert_eq!(devices.check(&fuse, 1000).unwrap_err().reason(), "device");
        }
        assert!(VolumeAllow::parse("data:rw").is_err());
        assert_eq!(
            VolumeAllow::parse("/srv:rw").unwrap(),
            VolumeAllow {
                prefix: "/srv".into(),
                read_write: true
            }
        );
    }
}
