//! Which device nodes a task may use. Every task gets a private `/dev` holding only
//! the harmless character devices below (and a private devpts and /dev/shm), and its
//! cgroup allows exactly these devices (v1 `devices` controller, v2 a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program): a node the task finds or creates elsewhere
//! (a volume, a rootfs) stays unusable, and mknod of any device fails.
//!
//! The shim binds the host's nodes into the task's `/dev` (the cgroup allows no mknod,
//! not even to the shim's child). A device is passed in on request
//! (`--device /dev/fuse`): the launcher reads its type and numbers from the host, the
//! shim binds the node at the same path and the cgroup allows read and write of it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cella_proto::validate::is_device_path;
use serde::{Deserialize, Serialize};

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    /// The letter the v1 `devices` controller uses.
    pub fn letter(self) -> char {
        match self {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// One device the task may read and write (never mknod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedDevice {
    pub kind: DeviceKind,
    pub major: u32,
    /// `None`: every minor of `major` (the pseudo-terminals of devpts).
    pub minor: Option<u32>,
}

impl AllowedDevice {
    const fn char(major: u32, minor: u32) -> Self {
        Self {
            kind: DeviceKind::Char,
            major,
            minor: Some(minor),
        }
    }

    /// The rule as written to v1 `devices.allow`: `c 1:3 rw`.
    pub fn v1_rule(&self) -> String {
        let minor = self
            .minor
            .map_or_else(|| "*".to_string(), |m| m.to_string());
        format!("{} {}:{minor} rw", self.kind.letter(), self.major)
    }
}

/// A host device node the shim binds into the task's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path on the host and inside the task, under `/dev`.
    pub path: PathBuf,
    /// What the node is (for the cgroup's allowlist).
    pub device: AllowedDevice,
}

/// The nodes of every task's `/dev`: the numbers are fixed by the kernel
/// (Documentation/admin-guide/devices.txt).
pub const DEFAULT_NODES: [(&str, AllowedDevice); 6] = [
    ("null", AllowedDevice::char(1, 3)),
    ("zero", AllowedDevice::char(1, 5)),
    ("full", AllowedDevice::char(1, 7)),
    ("random", AllowedDevice::char(1, 8)),
    ("urandom", AllowedDevice::char(1, 9)),
    ("tty", AllowedDevice::char(5, 0)),
];

/// `/dev/pts/ptmx` (5:2) and the pseudo-terminals it hands out (136-143:*).
const PTY_DEVICES: [AllowedDevice; 2] = [
    AllowedDevice::char(5, 2),
    AllowedDevice {
        kind: DeviceKind::Char,
        major: 136,
        minor: None,
    },
];

/// The default nodes as the shim creates them.
pub fn default_nodes() -> Vec<DeviceNode> {
    DEFAULT_NODES
        .iter()
        .map(|(name, device)| DeviceNode {
            path: Path::new("/dev").join(name),
            device: *device,
        })
        .collect()
}

/// The cgroup allowlist for a task with `nodes` in its `/dev`.
pub fn allowlist(nodes: &[DeviceNode]) -> Vec<AllowedDevice> {
    let mut list: Vec<AllowedDevice> = nodes.iter().map(|n| n.device).collect();
    list.extend(PTY_DEVICES);
    list.dedup();
    list
}

/// Why a device cannot be passed in.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source} (pass a device node that exists on this host, such as /dev/fuse)")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a device node (pass a character or block device such as /dev/fuse)")]
    NotADevice(PathBuf),
    #[error("{0}: a device is passed by its path under /dev, without '..'")]
    BadPath(PathBuf),
}

/// The node for host device `path`, to appear at the same path in the task.
pub fn host_device(path: &Path) -> Result<DeviceNode, DeviceError> {
    if !is_device_path(path) {
        return Err(DeviceError::BadPath(path.to_path_buf()));
    }
    let meta = std::fs::metadata(path).map_err(|source| DeviceError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Err(DeviceError::NotADevice(path.to_path_buf()));
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        path: path.to_path_buf(),
        device: AllowedDevice {
            kind,
            major: libc::major(rdev),
            minor: Some(libc::minor(rdev)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_rules_and_host_devices() {
        let list = allowlist(&default_nodes());
        let rules: Vec<String> = list.iter().map(AllowedDevice::v1_rule).collect();
        assert!(rules.contains(&"c 1:3 rw".to_string()), "{rules:?}");
        assert!(rules.contains(&"c 136:* rw".to_string()), "{rules:?}");
        assert!(rules.iter().all(|r| !r.contains('m')), "never mknod");

        let null = host_device(Path::new("/dev/null")).expect("/dev/null");
        assert_eq!(null.device, AllowedDevice::char(1, 3));
        assert!(matches!(
            host_device(Path::new("/etc/passwd")),
            Err(DeviceError::BadPath(_))
        ));
        assert!(matches!(
            host_device(Path::new("/dev/../etc/passwd")),
            Err(DeviceError::BadPath(_))
        ));
        assert!(matches!(
            host_device(Path::new("/dev/shm")),
            Err(DeviceError::NotADevice(_))
        ));
    }
}
