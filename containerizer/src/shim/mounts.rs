//! The task's filesystem, set up in its private mount namespace.
//!
//! Without a rootfs the task sees the host's tree, read-only: a single recursive
//! mount_setattr turns every mount read-only, then only the sandbox, the volumes
//! given read-write, a private /tmp and /dev/shm, and the new /proc are made writable
//! again, each `nodev,nosuid` so a root task cannot create a device node and open the
//! host's disk through it. With a rootfs the same is done after pivot_root. Either
//! way the task gets a private, minimal /dev (a read-only tmpfs holding bind mounts of
//! the host's nodes of [`crate::devices`], a private devpts and /dev/shm), never the
//! host's /dev itself.
//! An image's root is an overlay mounted here first, then used as the rootfs; its root
//! directory stays writable unless the image is read-only.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use super::in_root::{Links, Root, Want};

use crate::devices::DeviceNode;
use crate::proc_info::unescape_mountinfo;
use crate::spec::{FilesystemSpec, OverlaySpec};
use crate::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, mount_setattr};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A mount target that is not what it must be (a symbolic link, a file for a
    /// directory, the root itself): refused rather than followed.
    #[error("mount target {path} {why}")]
    Refused { path: PathBuf, why: String },
}

fn err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> MountError + 'a {
    move |e| MountError::Mount {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn ioerr<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Mount {
        what,
        path: path.to_path_buf(),
        source,
    }
}

const NONE: Option<&str> = None;

/// Paths under /proc a task may read but never write (as Docker's defaults).
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Paths under /proc that reveal the host's kernel; hidden behind /dev/null.
const PROC_MASKED: [&str; 4] = ["kcore", "keys", "timer_list", "sched_debug"];

pub fn setup(fs_spec: &FilesystemSpec) -> Result<(), MountError> {
    let root = Path::new("/");
    // Nothing mounted from here on may propagate back to the host.
    mount(
        NONE,
        root,
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )
    .map_err(err("making mounts private", root))?;

    if let Some(overlay) = &fs_spec.overlay {
        mount_overlay(overlay)?;
    }

    // Everything is laid out under `base` first: the rootfs, or the host's `/`.
    let base: PathBuf = match &fs_spec.rootfs {
        Some(rootfs) => {
            mount(
                Some(rootfs),
                rootfs,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .map_err(err("binding the rootfs", rootfs))?;
            rootfs.clone()
        }
        None => PathBuf::from("/"),
    };
    // Every mount target is resolved in `base`, never outside it (see in_root.rs).
    let in_root = Root::open(&base)?;
    let mut writable: Vec<PathBuf> = Vec::new();

    // Bind sources are opened before /tmp is replaced: a sandbox under /tmp would
    // otherwise be hidden by the private tmpfs. Binding from /proc/self/fd/N reaches
    // the directory through the descriptor, whatever is mounted over its path.
    let mut sources = Vec::with_capacity(fs_spec.binds.len());
    for bind in &fs_spec.binds {
        let fd = nix::fcntl::open(
            &bind.source,
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("opening", &bind.source))?;
        sources.push((fd, bind.source.is_dir()));
    }
    // The host's device nodes, opened before anything is mounted over its /dev.
    let mut device_sources = Vec::with_capacity(fs_spec.devices.len());
    for node in &fs_spec.devices {
        let fd = nix::fcntl::open(&node.path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(err("opening the host's", &node.path))?;
        device_sources.push(fd);
    }

    let tmp_opts = match fs_spec.tmp_size_bytes {
        Some(size) => format!("mode=1777,size={size}"),
        None => "mode=1777".to_string(),
    };
    let private = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let tmp = in_root.target(Path::new("/tmp"), Want::Dir, Links::Refuse)?;
    mount(
        Some("tmpfs"),
        &tmp.mount_path(),
        Some("tmpfs"),
        private,
        Some(tmp_opts.as_str()),
    )
    .map_err(err("mounting a private /tmp on", Path::new("/tmp")))?;
    writable.push(PathBuf::from("/tmp"));

    // Every task gets its own /dev, with or without a rootfs: the host's holds its
    // disks, /dev/kvm and /dev/userfaultfd.
    setup_dev(&in_root, &fs_spec.devices, &device_sources)?;
    writable.push(PathBuf::from("/dev/pts"));
    writable.push(PathBuf::from("/dev/shm"));
    // Before the binds: a sandbox beneath a masked directory is bound back in.
    for path in &fs_spec.masked {
        mask(path)?;
    }

    for (bind, (fd, is_dir)) in fs_spec.binds.iter().zip(&sources) {
        let want = if *is_dir { Want::Dir } else { Want::File };
        let target = in_root.target(&bind.target, want, Links::InRoot)?;
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount(
            Some(&via),
            &target.mount_path(),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(err("bind mounting", &bind.target))?;
        if !bind.read_only {
            writable.push(bind.target.clone());
        }
    }
    drop(sources);

    if let Some(overlay) = &fs_spec.overlay {
        for dir in &overlay.create_dirs {
            in_root.target(dir, Want::Dir, Links::InRoot)?;
        }
        if let Some(hide) = &overlay.hide {
            // The sandbox (bound above) holds the overlay's upper directory: the task
            // sees its files through the root, not as the overlay's raw layer.
            let target = in_root.target(hide, Want::Dir, Links::Refuse)?;
            mount(
                Some("tmpfs"),
                &target.mount_path(),
                Some("tmpfs"),
                private | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                Some("mode=000,size=4096"),
            )
            .map_err(err("hiding the overlay's upper directory at", hide))?;
        }
        if !overlay.read_only {
            // The image's root itself (not the mounts below it) becomes writable.
            writable.insert(0, PathBuf::from("/"));
        }
    }

    let proc = in_root.target(Path::new("/proc"), Want::Dir, Links::Refuse)?;
    mount(
        Some("proc"),
        &proc.mount_path(),
        Some("proc"),
        private | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(err("mounting /proc on", Path::new("/proc")))?;
    writable.push(PathBuf::from("/proc"));

    if fs_spec.rootfs.is_some() {
        let sys = in_root.target(Path::new("/sys"), Want::Dir, Links::Refuse)?;
        mount(
            Some("/sys"),
            &sys.mount_path(),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(err("binding /sys on", Path::new("/sys")))?;
    }

    if let Some(rootfs) = &fs_spec.rootfs {
        pivot_into(rootfs)?;
    }

    // Now, as the task sees it: everything read-only, then the writable exceptions.
    make_read_only("/", true)?;
    for path in &writable {
        let c = cpath(path)?;
        mount_setattr(
            &c,
            false,
            MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
            MOUNT_ATTR_RDONLY,
        )
        .map_err(ioerr("making writable", path))?;
    }
    harden_proc()?;
    Ok(())
}

/// Mounts the image's layers with a writable upper directory on the overlay's mount
/// point. Every directory is named by a descriptor (`/proc/self/fd/N`): the options
/// fit in overlayfs' one page whatever the store's path, and no path needs escaping
/// of the `:` and `,` that separate options.
fn mount_overlay(overlay: &OverlaySpec) -> Result<(), MountError> {
    // The upper and work directories live in the sandbox, which belongs to the task:
    // should a link stand where they go, the mkdir and chmod below must not follow it
    // to a host directory. So the parent is opened without following a link, and
    // everything else is made and opened relative to it.
    let parent = overlay.upper.parent().unwrap_or(&overlay.upper);
    match nix::unistd::mkdir(parent, Mode::S_IRWXU) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(err("creating", parent)(e)),
    }
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("opening (it must be a directory, not a link)", parent))?;
    set_mode(&parent_fd, Mode::S_IRWXU).map_err(err("making private", parent))?;
    let in_parent = |dir: &Path, mode: Mode| {
        let name = dir.file_name().unwrap_or_default();
        match nix::sys::stat::mkdirat(&parent_fd, name, mode) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(err("creating", dir)(e)),
        }
        let fd = nix::fcntl::openat(
            &parent_fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("opening (it must be a directory, not a link)", dir))?;
        // Whatever the umask: see the upper directory's mode below.
        set_mode(&fd, mode).map_err(err("setting the mode of", dir))?;
        Ok(fd)
    };
    // The overlay's root takes the upper directory's mode: 0755, so that a task running
    // as any user can reach its root filesystem (the parent, 0700, keeps the sandbox's
    // other users out of the upper directory itself).
    let upper = in_parent(&overlay.upper, Mode::from_bits_truncate(0o755))?;
    let work = in_parent(&overlay.work, Mode::S_IRWXU)?;
    fs::create_dir_all(&overlay.mount_point).map_err(ioerr("creating", &overlay.mount_point))?;
    let open = |path: &Path| {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("opening", path))
    };
    let fd_path = |fd: &std::os::fd::OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    // overlayfs lists the top layer first.
    let lowers = overlay
        .layers
        .iter()
        .rev()
        .map(|layer| open(layer))
        .collect::<Result<Vec<_>, _>>()?;
    let lowerdir: Vec<String> = lowers.iter().map(fd_path).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        fd_path(&upper),
        fd_path(&work)
    );
    // `volatile` (Linux 5.10+): no sync of the upper layer's filesystem, above all
    // none when the task's namespace ends and the overlay is unmounted, which would
    // flush the whole filesystem of the sandbox (the writable layer is the task's
    // scratch space, like the rest of its sandbox; a crash ends the task anyway).
    let volatile = format!("{options},volatile");
    mount(
        Some("overlay"),
        &overlay.mount_point,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(volatile.as_str()),
    )
    .or_else(|_| {
        mount(
            Some("overlay"),
            &overlay.mount_point,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
    })
    .map_err(|e| MountError::Mount {
        what: "mounting the image's layers (overlay) on",
        path: overlay.mount_point.clone(),
        source: io::Error::other(format!(
            "{e} ({} layers, options of {} bytes)",
            overlay.layers.len(),
            options.len()
        )),
    })
}

/// Gives the directory open at `fd` exactly `mode`. A sandbox made ahead has its
/// directories in their modes already: a chmod to the same mode would only update
/// their change times, a metadata write to the sandbox's disk on every launch.
fn set_mode(fd: &OwnedFd, mode: Mode) -> nix::Result<()> {
    let perms = Mode::from_bits_truncate(0o7777);
    let current = nix::sys::stat::fstat(fd)?;
    if Mode::from_bits_truncate(current.st_mode) & perms == mode {
        return Ok(());
    }
    nix::sys::stat::fchmod(fd, mode)
}

/// Makes `path` (and with `recursive` every mount below it) read-only.
fn make_read_only(path: &str, recursive: bool) -> Result<(), MountError> {
    let c = cpath(Path::new(path))?;
    match mount_setattr(&c, recursive, MOUNT_ATTR_RDONLY, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => remount_read_only_each(path),
        Err(e) => Err(ioerr("making read-only", Path::new(path))(e)),
    }
}

/// Kernels before 5.12: remount each mount point under `prefix` read-only, keeping
/// its other flags (a bind remount that dropped nosuid/nodev would be refused).
fn remount_read_only_each(prefix: &str) -> Result<(), MountError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(|e| ioerr("reading", mountinfo)(io::Error::other(e)))?;
    for info in &mounts {
        let point = unescape_mountinfo(&info.mount_point.to_string_lossy());
        if !point.starts_with(prefix) {
            continue;
        }
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (name, flag) in [
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
        ] {
            if info.mount_options.contains_key(name) {
                flags |= flag;
            }
        }
        let path = Path::new(&point);
        mount(NONE, path, NONE, flags, NONE).map_err(err("remounting read-only", path))?;
    }
    Ok(())
}

fn harden_proc() -> Result<(), MountError> {
    for name in PROC_READ_ONLY {
        let path = Path::new("/proc").join(name);
        if !path.exists() {
            continue;
        }
        mount(
            Some(&path),
            &path,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(err("binding", &path))?;
        make_read_only(&path.to_string_lossy(), true)?;
    }
    for name in PROC_MASKED {
        let path = Path::new("/proc").join(name);
        if path.exists() {
            mount(Some("/dev/null"), &path, NONE, MsFlags::MS_BIND, NONE)
                .map_err(err("masking", &path))?;
        }
    }
    Ok(())
}

/// The task's private /dev: a tmpfs holding the nodes of `devices` (the harmless
/// defaults and any passed in), a private devpts, /dev/shm and the usual symlinks.
/// Made read-only with the rest; the cgroup's device allowlist refuses every other
/// device, so a node found or created elsewhere cannot be opened.
fn setup_dev(
    in_root: &Root,
    devices: &[DeviceNode],
    sources: &[OwnedFd],
) -> Result<(), MountError> {
    let dev_path = Path::new("/dev");
    let covered = in_root.target(dev_path, Want::Dir, Links::Refuse)?;
    mount(
        Some("tmpfs"),
        &covered.mount_path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536"),
    )
    .map_err(err("mounting a tmpfs on", dev_path))?;
    drop(covered);
    // Bound from the host's nodes, not made with mknod: the task's cgroup, which
    // this process is in already, allows no mknod at all.
    for (node, source) in devices.iter().zip(sources) {
        let target = in_root.target(&node.path, Want::File, Links::Refuse)?;
        let via = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
        mount(
            Some(&via),
            &target.mount_path(),
            NONE,
            MsFlags::MS_BIND,
            NONE,
        )
        .map_err(err("binding", &node.path))?;
    }
    let dev = in_root.target(dev_path, Want::Dir, Links::Refuse)?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        nix::unistd::symlinkat(to, dev.fd(), link)
            .map_err(err("creating", &dev_path.join(link)))?;
    }
    let pts = in_root.target(Path::new("/dev/pts"), Want::Dir, Links::Refuse)?;
    mount(
        Some("devpts"),
        &pts.mount_path(),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(err("mounting devpts on", Path::new("/dev/pts")))?;
    let shm = in_root.target(Path::new("/dev/shm"), Want::Dir, Links::Refuse)?;
    mount(
        Some("shm"),
        &shm.mount_path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777"),
    )
    .map_err(err("mounting a private /dev/shm on", Path::new("/dev/shm")))?;
    Ok(())
}

/// Hides `path`: a directory behind an empty tmpfs (read-only with the rest), a
/// file behind the task's /dev/null. A path that does not exist is left alone.
fn mask(path: &Path) -> Result<(), MountError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=755,size=65536"),
        )
        .map_err(err("masking", path))
    } else {
        mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE).map_err(err("masking", path))
    }
}

/// pivot_root into `rootfs` and detach the old root: the host's tree is gone from
/// the task's view.
fn pivot_into(rootfs: &Path) -> Result<(), MountError> {
    std::env::set_current_dir(rootfs).map_err(ioerr("entering", rootfs))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| {
        let source = if e == nix::errno::Errno::EINVAL {
            io::Error::other(
                "invalid argument (is the host's / the initial ramfs? pivot_root cannot move away \
                 from it: boot with a real root filesystem, or switch_root first)",
            )
        } else {
            e.into()
        };
        MountError::Mount {
            what: "pivot_root into",
            path: rootfs.to_path_buf(),
            source,
        }
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root at", rootfs))?;
    std::env::set_current_dir("/").map_err(ioerr("entering", Path::new("/")))?;
    Ok(())
}

fn cpath(path: &Path) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Mount {
        what: "path",
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}
