//! Mount targets inside the task's root, resolved without ever leaving it.
//!
//! Before pivot_root the shim still sees the host's tree, so a path such as
//! `<rootfs>/proc` that a crafted rootfs made a symlink to `/` would lead a mount, a
//! `mkdir` or a file creation onto the host. Every target is therefore opened with
//! openat2 relative to a descriptor of the root, as runc does since CVE-2025-52565:
//! the kernel resolves symlinks as if the root were `/` (`RESOLVE_IN_ROOT`), or
//! refuses any symlink (`RESOLVE_NO_SYMLINKS`) for the system directories, which
//! must be real directories. What is missing is created through the parent's
//! descriptor, and the mount goes onto `/proc/self/fd/N`: the object that was
//! checked, not a path that could be swapped in between.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, mkdirat};

use super::mounts::MountError;

/// What a mount target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Dir,
    File,
}

/// How symlinks on the way are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Followed, but never out of the root (volumes, the sandbox).
    InRoot,
    /// Refused (/proc, /dev, /sys, /tmp: a link there is an attack).
    Refuse,
}

/// The root every target is resolved in.
pub struct Root {
    fd: OwnedFd,
    /// The root's path, for messages.
    path: PathBuf,
    stat: FileStat,
}

/// An opened target: mount onto [`Target::mount_path`] while it is alive.
pub struct Target {
    fd: OwnedFd,
}

impl Target {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn mount_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

fn refused(path: &Path, why: String) -> MountError {
    MountError::Refused {
        path: path.to_path_buf(),
        why,
    }
}

fn sys(what: &'static str, path: &Path, e: Errno) -> MountError {
    MountError::Mount {
        what,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

fn kind_name(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        _ => "something unknown",
    }
}

impl Root {
    /// Opens `path` (already a mount of its own) as the root to resolve in.
    pub fn open(path: &Path) -> Result<Self, MountError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys("opening the root", path, e))?;
        let stat = fstat(&fd).map_err(|e| sys("stat", path, e))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            stat,
        })
    }

    /// Opens `path` (as the task will see it) inside the root, creating it and its
    /// missing parents as directories (the last one as `want`), and checks that it
    /// is what a mount of `want` needs. Never the root itself.
    pub fn target(&self, path: &Path, want: Want, links: Links) -> Result<Target, MountError> {
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => rel.push(name),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(refused(path, "must be absolute, without '..'".into()));
                }
            }
        }
        let fd = self.open_or_create(path, &rel, want, links)?;
        let stat = fstat(&fd).map_err(|e| sys("stat", path, e))?;
        if stat.st_dev == self.stat.st_dev && stat.st_ino == self.stat.st_ino {
            return Err(refused(
                path,
                format!(
                    "resolves to the root of {} itself (a symbolic link to / in the root \
                     filesystem?); mount targets must be paths below it",
                    self.path.display()
                ),
            ));
        }
        let is_dir = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        let is_file = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
        let ok = match want {
            Want::Dir => is_dir,
            Want::File => is_file,
        };
        if !ok {
            return Err(refused(
                path,
                format!(
                    "is {} in {}, but {} is needed here",
                    kind_name(stat.st_mode),
                    self.path.display(),
                    if want == Want::Dir {
                        "a directory"
                    } else {
                        "a regular file"
                    }
                ),
            ));
        }
        Ok(Target { fd })
    }

    fn how(links: Links) -> OpenHow {
        let resolve = match links {
            Links::InRoot => ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            Links::Refuse => ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS,
        };
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(resolve)
    }

    fn open_or_create(
        &self,
        path: &Path,
        rel: &Path,
        want: Want,
        links: Links,
    ) -> Result<OwnedFd, MountError> {
        let at = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match openat2(self.fd.as_fd(), at, Self::how(links)) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(Errno::ELOOP) => {
                return Err(refused(
                    path,
                    format!(
                        "goes through a symbolic link in {}; Cella mounts here only on a real \
                         directory: replace the link with a directory",
                        self.path.display()
                    ),
                ));
            }
            Err(Errno::EXDEV) => {
                return Err(refused(
                    path,
                    format!("leads out of {}", self.path.display()),
                ));
            }
            Err(e) => return Err(sys("opening", path, e)),
        }
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(sys("opening", path, Errno::ENOENT));
        };
        let parent_fd = self.open_or_create(path, parent, Want::Dir, links)?;
        create(&parent_fd, name, want).map_err(|e| match e {
            Errno::EEXIST => refused(
                path,
                format!(
                    "is a symbolic link to nothing in {}; remove it or make it a directory",
                    self.path.display()
                ),
            ),
            e => sys("creating", path, e),
        })?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(parent_fd.as_fd(), name, how).map_err(|e| sys("opening", path, e))
    }
}

fn create(parent: &OwnedFd, name: &OsStr, want: Want) -> Result<(), Errno> {
    match want {
        Want::Dir => mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)),
        Want::File => nix::fcntl::openat(
            parent.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn targets_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root_path.join("etc")).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        symlink("/", root_path.join("proc")).expect("symlink");
        symlink(&outside, root_path.join("data")).expect("symlink");
        symlink("/etc", root_path.join("conf")).expect("symlink");
        symlink("/nowhere", root_path.join("dangling")).expect("symlink");
        std::fs::write(root_path.join("file"), b"").expect("file");
        let root = Root::open(&root_path).expect("root");

        // Each target refused, and what the error names.
        let refused = |path: &str, links: Links, names: &str| {
            let e = root
                .target(Path::new(path), Want::Dir, links)
                .err()
                .unwrap_or_else(|| panic!("{path} ({links:?}) is refused"));
            assert!(e.to_string().contains(names), "{path}: {e}");
        };
        // A symlinked /proc; a target that is the root.
        refused("/proc", Links::Refuse, "symbolic link");
        refused("/proc", Links::InRoot, "root of");

        // A link to a host path resolves inside the root: nothing is made outside.
        refused("/data/sub", Links::InRoot, "symbolic link to nothing");
        assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);
        root.target(Path::new("/conf/sub"), Want::Dir, Links::InRoot)
            .expect("/conf is the root's /etc");
        assert!(root_path.join("etc/sub").is_dir());

        refused("/dangling", Links::Refuse, "symbolic link");
        // A file is not a directory.
        refused("/file", Links::InRoot, "regular file");
        refused("/a/../b", Links::InRoot, "..");
    }
}
