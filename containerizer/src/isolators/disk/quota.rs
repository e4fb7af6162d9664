//! Project quotas, as Mesos' `disk/xfs` isolator: on a filesystem mounted with
//! project quotas enforced (XFS `prjquota`/`pquota`; ext4 made with the `project` and
//! `quota` features and mounted `prjquota`), each task's sandbox gets a project id of
//! its own, inherited by everything created beneath it (`FS_XFLAG_PROJINHERIT`), and
//! that project gets a hard block limit: a write past the limit fails with `EDQUOT`
//! in the kernel, so the sandbox never holds more than its limit. Usage comes from the
//! quota, without walking the tree.
//!
//! Ids are taken from [`PROJECT_IDS`]. An id is free when its quota has no limit and
//! charges no inode; it is taken under an exclusive `flock` of the filesystem's mount
//! point, so concurrent launchers (the agent, several `cella exec`) never share one.
//! Nothing is recorded elsewhere: after a restart the id is read back from the
//! sandbox directory itself.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::walk::walk;
use crate::safe_open;

/// Project ids Cella gives sandboxes (Mesos' default `--xfs_project_range`). Other
/// users of project quotas on the same filesystem must keep out of this range.
pub const PROJECT_IDS: RangeInclusive<u32> = 5000..=9999;

/// `PRJQUOTA` of `<linux/quota.h>`.
const PRJQUOTA: libc::c_int = 2;
/// `FS_XFLAG_PROJINHERIT` of `<linux/fs.h>`: new files and directories beneath take
/// the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// Quota block limits are counted in units of 1 KiB (`QIF_DQBLKSIZE`).
const QUOTA_BLOCK: u64 = 1024;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// A filesystem that enforces project quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaFs {
    /// The block device `quotactl` is addressed to.
    device: CString,
    mount_point: PathBuf,
}

impl QuotaFs {
    /// The filesystem holding `path`, if it enforces project quotas.
    pub fn of(path: &Path) -> Option<QuotaFs> {
        let path = std::fs::canonicalize(path).ok()?;
        let mounts = procfs::process::Process::myself().ok()?.mountinfo().ok()?;
        // The mount whose point is the longest prefix of the path is the one holding it.
        let mount = mounts
            .into_iter()
            .filter(|m| path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len())?;
        let enforced = matches!(mount.fs_type.as_str(), "xfs" | "ext4")
            && ["prjquota", "pquota", "pqenforce"]
                .iter()
                .any(|o| mount.super_options.contains_key(*o));
        if !enforced {
            return None;
        }
        let device = CString::new(mount.mount_source?.into_bytes()).ok()?;
        Some(QuotaFs {
            device,
            mount_point: mount.mount_point,
        })
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    fn quotactl(&self, cmd: libc::c_int, id: u32, q: &mut libc::dqblk) -> io::Result<()> {
        let id =
            libc::c_int::try_from(id).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `device` is a NUL-terminated path and `q` a valid, writable `dqblk`
        // for the whole call, which is what Q_GETQUOTA and Q_SETQUOTA read or fill.
        let rc = unsafe {
            libc::quotactl(
                libc::QCMD(cmd, PRJQUOTA),
                self.device.as_ptr(),
                id,
                (&raw mut *q).cast::<libc::c_char>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The quota of project `id`; all zeroes when the filesystem has none for it yet.
    fn get(&self, id: u32) -> io::Result<libc::dqblk> {
        // SAFETY: `dqblk` is plain integers; all zeroes is valid.
        let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
        match self.quotactl(libc::Q_GETQUOTA, id, &mut q) {
            // XFS has no quota record for an id nothing was ever charged to.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(q),
            other => other.map(|()| q),
        }
    }

    /// Sets the hard block limit of project `id` (0: none), rounded up to 1 KiB.
    fn set_limit(&self, id: u32, bytes: u64) -> io::Result<()> {
        // SAFETY: `dqblk` is plain integers; all zeroes is valid.
        let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
        q.dqb_bhardlimit = bytes.div_ceil(QUOTA_BLOCK);
        q.dqb_bsoftlimit = 0;
        q.dqb_valid = libc::QIF_BLIMITS;
        self.quotactl(libc::Q_SETQUOTA, id, &mut q)
    }

    /// Bytes charged to project `id` (delayed allocations included).
    pub fn used(&self, id: u32) -> io::Result<u64> {
        self.get(id).map(|q| q.dqb_curspace)
    }

    /// Takes a free project id and gives it a hard limit of `limit` bytes.
    pub fn allocate(&self, limit: u64) -> io::Result<u32> {
        let root = File::open(&self.mount_point)?;
        // Held until `root` is dropped: no other launcher picks an id meanwhile.
        let _lock = nix::fcntl::Flock::lock(root, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let span = PROJECT_IDS.end() - PROJECT_IDS.start() + 1;
        // Start somewhere else each time so that a long run of taken ids is not rescanned.
        let offset = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for i in 0..span {
            let id = PROJECT_IDS.start() + (offset.wrapping_add(i) % span);
            let q = self.get(id)?;
            if q.dqb_bhardlimit == 0 && q.dqb_curinodes == 0 && q.dqb_curspace == 0 {
                self.set_limit(id, limit)?;
                return Ok(id);
            }
        }
        Err(io::Error::other(format!(
            "every project id in {}..={} of {} is in use",
            PROJECT_IDS.start(),
            PROJECT_IDS.end(),
            self.mount_point.display()
        )))
    }

    /// Removes the limit of project `id`. Files still charged to it keep it taken.
    pub fn release(&self, id: u32) -> io::Result<()> {
        self.set_limit(id, 0)
    }
}

fn xattr(file: &File) -> io::Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: `file` is open for the call and `attr` is a writable `fsxattr`.
    unsafe { fs_get_xattr(file.as_raw_fd(), &raw mut attr) }.map_err(io::Error::from)?;
    Ok(attr)
}

/// Gives `file` project `id`, inherited by new entries when it is a directory
/// (id 0 clears the inheritance).
fn set_project(file: &File, id: u32) -> io::Result<()> {
    let mut attr = xattr(file)?;
    let inherit = id != 0 && file.metadata()?.is_dir();
    let xflags = if inherit {
        attr.xflags | FS_XFLAG_PROJINHERIT
    } else {
        attr.xflags & !FS_XFLAG_PROJINHERIT
    };
    if attr.projid == id && attr.xflags == xflags {
        return Ok(());
    }
    attr.projid = id;
    attr.xflags = xflags;
    // SAFETY: `file` is open for the call and `attr` is a valid `fsxattr`.
    unsafe { fs_set_xattr(file.as_raw_fd(), &raw const attr) }.map_err(io::Error::from)?;
    Ok(())
}

/// The project id of the directory `dir`.
pub fn project_of(dir: &Path) -> io::Result<u32> {
    let file = safe_open::open_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
    xattr(&file).map(|a| a.projid)
}

/// Gives `dir` and everything beneath it on the same filesystem project `id`. Only
/// regular files and directories are opened ([`walk`]); a link, FIFO or socket the
/// task made was created with the project of its directory.
pub fn set_project_tree(dir: &Path, id: u32) -> io::Result<()> {
    let top = safe_open::open_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
    set_project(&top, id)?;
    walk(dir, |parent, name, meta| {
        if !(meta.is_dir() || meta.is_file()) {
            return;
        }
        // A file that vanished or refuses the attribute is left as it is.
        if let Ok(Some(file)) = safe_open::open_entry(parent, name) {
            let _ = set_project(&file, id);
        }
    })?;
    Ok(())
}
