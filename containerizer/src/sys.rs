//! Thin wrappers over the few Linux system calls that neither `nix` nor `std` offer
//! (clone3, mount_setattr, close_range, pidfd_open).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `struct clone_args` of clone3(2), the fields Cella uses (size CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What a fork-like clone returned.
pub enum Forked {
    Parent(i32),
    Child,
}

/// A fork-like clone3 (no CLONE_VM): the child gets a copy of the address space and
/// returns `Child`. With `cgroup_fd`, the child starts in that cgroup v2 directory.
/// Falls back to clone(2) when clone3 is missing (kernel < 5.3) and no cgroup fd is
/// asked for.
///
/// The caller must be single-threaded: the child only has the calling thread.
pub fn fork_with_flags(flags: u64, cgroup_fd: Option<RawFd>) -> io::Result<Forked> {
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    }
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child runs on a copy of
    // this address space and stack, so returning into Rust code in both is sound as
    // long as the process is single-threaded (documented requirement of this fn).
    // `args` is a valid clone_args of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = if ret == -1
        && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
        && cgroup_fd.is_none()
    {
        // SAFETY: as above; the raw clone syscall with a null stack is fork-like.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        }
    } else {
        ret
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(
            i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?,
        )),
    }
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on `path` (recursively with `recursive`): one system call to make a
/// whole tree read-only, instead of a remount per mount point. Kernel ≥ 5.12.
pub fn mount_setattr(
    path: &std::ffi::CStr,
    recursive: bool,
    set: u64,
    clear: u64,
) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags: libc::c_uint = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: `path` is a valid NUL-terminated string and `attr` a valid mount_attr of
    // the size passed; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &raw mut attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Marks every descriptor from `first` up close-on-exec (close_range with
/// CLOSE_RANGE_CLOEXEC, kernel ≥ 5.11), falling back to walking /proc/self/fd.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let first_u =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first_u,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    cloexec_each_listed(first)
}

/// [`cloexec_from`] for kernels before 5.11: each descriptor /proc/self/fd lists.
fn cloexec_each_listed(first: RawFd) -> io::Result<()> {
    let fds: Vec<RawFd> = procfs::process::Process::myself()
        .and_then(|me| me.fd())
        .map_err(io::Error::other)?
        .filter_map(|fd| fd.ok().map(|info| info.fd))
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // Descriptors that vanished meanwhile (the directory's own) are fine to miss.
        let _ = nix::fcntl::fcntl(
            // SAFETY: fd is a descriptor number of this process; fcntl on a closed one
            // fails with EBADF, which is ignored.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(())
}

/// pidfd_open(2): a descriptor that becomes readable when `pid` exits; works for
/// processes that are not our children (the agent after a restart). Kernel ≥ 5.3.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn the_proc_fallback_marks_descriptors_close_on_exec() {
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let fd = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD(900)).expect("dup");
        // SAFETY: F_DUPFD just returned this descriptor; nothing else owns it.
        let dup = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let flags = || nix::fcntl::fcntl(&dup, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        super::cloexec_each_listed(dup.as_raw_fd()).expect("fallback");
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
