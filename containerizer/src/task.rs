//! What a caller asks the containerizer to run: the task's identity and its
//! configuration, independent of how each isolator carries it out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::MilliCpus;

/// A task's identity: also the name of its cgroups and run directory, so it is
/// restricted to characters that are safe in a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid task id {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.')"
)]
pub struct InvalidTaskId(pub String);

impl TaskId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTaskId> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidTaskId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = InvalidTaskId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The task's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// The host's network stack.
    #[default]
    Host,
    /// A new network namespace holding only the loopback interface.
    None,
}

/// Which seccomp filter the task runs under.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompChoice {
    /// Cella's default allowlist, derived from Docker's default profile.
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
    /// A profile in Docker's JSON format, read from this file.
    Profile(PathBuf),
}

/// A host directory or file made visible to the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub task: PathBuf,
    pub read_only: bool,
}

/// A root filesystem stacked from an image's unpacked layers with overlayfs. The
/// writable upper layer lives in the task's sandbox (so `--disk` counts it) under
/// [`IMAGE_UPPER_IN_SANDBOX`], hidden from the task's own view of its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootfs {
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// The root stays read-only: only the sandbox, /tmp and volumes are writable.
    pub read_only: bool,
}

/// The directory of the sandbox that holds an image task's overlay upper and work
/// directories.
pub const IMAGE_UPPER_IN_SANDBOX: &str = ".rootfs";

/// A resource limit applied with setrlimit before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The `RLIMIT_*` resource number (e.g. `libc::RLIMIT_NOFILE`).
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The process limit of a task that sets none, in `cella exec` and on agents
/// (`default_pids_limit`): no task runs without one.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// The disk limit of a task that sets none (10 GiB; `default_disk` on agents).
pub const DEFAULT_DISK_BYTES: u64 = 10 << 30;

/// Resource limits of a task. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: Option<MilliCpus>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub disk_bytes: Option<u64>,
}

/// Everything needed to launch one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Program and arguments; the program is looked up in the task's `PATH`.
    pub command: Vec<String>,
    /// Environment, `KEY=VALUE`. The launcher adds a default `PATH` if missing.
    pub env: Vec<String>,
    pub resources: Resources,
    pub net: NetMode,
    /// A directory to pivot_root into; `None` shows the host's tree read-only.
    pub rootfs: Option<PathBuf>,
    /// An image's layers to stack as the root filesystem (instead of `rootfs`).
    #[serde(default)]
    pub image: Option<ImageRootfs>,
    /// The task's writable working directory on the host (the sandbox). Without a
    /// rootfs it appears at the same path inside; with one, at `workdir_in_task`.
    pub sandbox: PathBuf,
    /// Working directory inside the task; defaults to the sandbox's path (no rootfs)
    /// or `/` (rootfs).
    pub workdir_in_task: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    /// Host device nodes passed in (`/dev/fuse`): created at the same path in the
    /// task's private /dev and allowed in its cgroup. See [`crate::devices`].
    pub devices: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// `NAME`, `UID` or `UID:GID`; `None` keeps the caller's identity (root).
    pub user: Option<String>,
    pub seccomp: SeccompChoice,
    /// Capability names (`CAP_NET_ADMIN`, `net_admin`) or `ALL`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub rlimits: Vec<Rlimit>,
    /// Where the task's stdout/stderr go.
    pub stdio: Stdio,
    /// Measure the disk space used under the sandbox even without a disk limit
    /// (it walks the tree, so callers that do not report it can turn it off).
    pub measure_disk: bool,
    /// Bytes the sandbox holds at launch, when the launcher knows them (it measured
    /// them, or the sandbox is new): the disk watcher's first walk then waits as
    /// long as a fast writer needs to fill the room left, instead of walking at once.
    #[serde(default)]
    pub sandbox_bytes_at_launch: Option<u64>,
}

/// The task's standard streams.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Stdio {
    /// Inherit the launcher's stdin, stdout and stderr (`cella exec`).
    #[default]
    Inherit,
    /// stdin from /dev/null, stdout and stderr appended to these files (cluster tasks).
    Files { stdout: PathBuf, stderr: PathBuf },
}

impl TaskConfig {
    /// A configuration with Cella's default isolation for `command`, working in `sandbox`.
    pub fn new(command: Vec<String>, sandbox: PathBuf) -> Self {
        Self {
            command,
            env: Vec::new(),
            resources: Resources::default(),
            net: NetMode::Host,
            rootfs: None,
            image: None,
            sandbox,
            workdir_in_task: None,
            volumes: Vec::new(),
            devices: Vec::new(),
            hostname: None,
            user: None,
            seccomp: SeccompChoice::Default,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            rlimits: Vec::new(),
            stdio: Stdio::Inherit,
            measure_disk: true,
            sandbox_bytes_at_launch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        assert!(TaskId::new("web-1.a_b").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(TaskId::new(bad).is_err(), "{bad:?}");
        }
    }
}
