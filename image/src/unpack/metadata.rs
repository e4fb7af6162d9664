//! The metadata of a tar entry (owner, mode, mtime, xattrs) and how it is applied.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::stat::{Mode, fchmod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown};

use super::{EntryPath, UnpackError, bytes_path, fs};

/// Ownership, mode, mtime and xattrs of one entry.
pub(super) struct Metadata {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn read_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    display: &str,
) -> Result<Metadata, UnpackError> {
    let header = entry.header();
    let bad = |source: io::Error| UnpackError::Tar {
        entry: display.to_owned(),
        source,
    };
    let mut meta = Metadata {
        uid: u32::try_from(header.uid().map_err(bad)?).unwrap_or(u32::MAX),
        gid: u32::try_from(header.gid().map_err(bad)?).unwrap_or(u32::MAX),
        mode: header.mode().map_err(bad)? & 0o7777,
        mtime: i64::try_from(header.mtime().map_err(bad)?).unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions().map_err(bad)? {
        for extension in extensions {
            let extension = extension.map_err(bad)?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
            };
            match key {
                b"uid" => {
                    meta.uid = number()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(meta.uid)
                }
                b"gid" => {
                    meta.gid = number()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(meta.gid)
                }
                b"mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                        && xattr_allowed(name)
                    {
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// Xattrs an image may set: `user.*`, file capabilities and POSIX ACLs. `trusted.*`
/// (overlayfs keeps its metadata there) and other `security.*` attributes are dropped.
fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Owner first, then mode (chown clears setuid/setgid), then xattrs.
pub(super) fn apply_metadata(
    fd: BorrowedFd<'_>,
    meta: &Metadata,
    path: &EntryPath,
) -> Result<(), UnpackError> {
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| super::io(path, "chown", e.into()))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode))
        .map_err(|e| super::io(path, "chmod", e.into()))?;
    for (key, value) in &meta.xattrs {
        fs::set_xattr(fd, key, value).map_err(|e| super::io(path, "set an xattr", e.into()))?;
    }
    Ok(())
}

pub(super) fn set_mtime_at(
    parent: &OwnedFd,
    name: &[u8],
    mtime: i64,
    path: &EntryPath,
) -> Result<(), UnpackError> {
    utimensat(
        parent.as_fd(),
        bytes_path(name),
        &timespec(mtime),
        &timespec(mtime),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| super::io(path, "set the mtime", e.into()))
}

pub(super) fn timespec(seconds: i64) -> TimeSpec {
    TimeSpec::new(seconds, 0)
}
