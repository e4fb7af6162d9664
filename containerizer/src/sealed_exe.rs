//! The shim runs from a sealed in-memory copy of its binary, as runc does since
//! CVE-2019-5736: `/proc/<shim>/exe` (and anything a task could reach through it)
//! is a memfd that can be neither written, truncated nor grown, never the host's
//! `cella-shim`. The copy is made once per launcher (the agent at start, `cella exec`
//! per run) and every shim is executed from it through `/proc/self/fd/N`.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// A read-only, sealed copy of an executable.
#[derive(Debug)]
pub struct SealedExe {
    memfd: OwnedFd,
    /// The binary it was copied from (for messages and the shim's argv[0]).
    source: PathBuf,
}

impl SealedExe {
    /// Copies `path` into a close-on-exec memfd and seals it against every change.
    /// Exec'ing `/proc/self/fd/N` opens the file before close-on-exec applies, so the
    /// descriptor never reaches the child.
    pub fn copy_of(path: &Path) -> io::Result<Self> {
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut source = fs::File::open(path).map_err(with_path)?;
        let memfd = memfd_create(
            c"cella-shim",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| with_path(e.into()))?;
        let mut copy = fs::File::from(memfd);
        io::copy(&mut source, &mut copy).map_err(with_path)?;
        let memfd = OwnedFd::from(copy);
        fcntl(
            &memfd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SEAL
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE,
            ),
        )
        .map_err(|e| with_path(e.into()))?;
        let memfd = above_fixed_descriptors(memfd).map_err(|e| with_path(e.into()))?;
        Ok(Self {
            memfd,
            source: path.to_path_buf(),
        })
    }

    /// What to exec: the copy, through this process's descriptor table.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()))
    }

    /// The copy's descriptor number in this process.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.memfd.as_raw_fd()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// The lowest descriptor the copy may have. Below it are those a shim is given at
/// fixed numbers (0-2, and its lock at 3), which the launcher's child puts in place
/// with dup2 just before it execs the copy by its number: a copy among them would be
/// replaced (another thread of the launcher may free descriptor 3 just before the
/// copy is made).
const LOWEST_FD: RawFd = 10;

/// `fd`, or a close-on-exec duplicate of it at [`LOWEST_FD`] or above.
fn above_fixed_descriptors(fd: OwnedFd) -> nix::Result<OwnedFd> {
    if fd.as_raw_fd() >= LOWEST_FD {
        return Ok(fd);
    }
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(LOWEST_FD))?;
    // SAFETY: fcntl has just made this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_runs_and_cannot_be_changed() {
        let exe = SealedExe::copy_of(Path::new("/bin/true")).expect("copy /bin/true");
        let status = std::process::Command::new(exe.exec_path())
            .status()
            .expect("run the copy");
        assert!(status.success());
        let err = fs::OpenOptions::new()
            .write(true)
            .open(exe.exec_path())
            .and_then(|mut f| io::Write::write_all(&mut f, b"x"))
            .expect_err("a sealed copy must not be written");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let seals = fcntl(&exe.memfd, FcntlArg::F_GET_SEALS).expect("F_GET_SEALS");
        assert_ne!(seals & libc::F_SEAL_WRITE, 0);
    }

    #[test]
    fn the_copy_is_never_at_a_descriptor_a_shim_gets_by_number() {
        // In a test process 3 is free: without the move the copy would be there.
        let exe = SealedExe::copy_of(Path::new("/bin/true")).expect("copy /bin/true");
        assert!(
            exe.raw_fd() >= LOWEST_FD,
            "the copy is at fd {}",
            exe.raw_fd()
        );
        let status = std::process::Command::new(exe.exec_path())
            .status()
            .expect("run the copy");
        assert!(status.success());
    }
}
