//! Opening files a task may have planted. A task controls everything in its sandbox:
//! it can replace its `stdout` with a FIFO (an `open` for reading would block), a
//! symbolic link to `/etc/shadow` (following it would serve the host's file), or, where
//! the device cgroup allows it, a device node (merely opening one runs its driver).
//! Every file Cella opens in a sandbox goes through here: it is first resolved to an
//! `O_PATH` descriptor (which opens nothing) without following any link, its type is
//! checked on that descriptor, and only a regular file or a directory is then reopened
//! for reading through `/proc/self/fd`, which names the very inode checked.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a sandbox file turned out to be, when it is not what the caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    SymbolicLink,
    Fifo,
    Socket,
    Device,
    Directory,
    /// Not a directory where one was expected.
    NotDirectory,
}

impl Refused {
    /// "is a FIFO", for messages naming the file first.
    pub fn describe(self) -> &'static str {
        match self {
            Refused::SymbolicLink => "is a symbolic link (links in a sandbox are never followed)",
            Refused::Fifo => "is a FIFO (named pipe), not a regular file: it is never opened",
            Refused::Socket => "is a socket, not a regular file: it is never opened",
            Refused::Device => "is a device node, not a regular file: it is never opened",
            Refused::Directory => "is a directory, not a regular file",
            Refused::NotDirectory => "is not a directory",
        }
    }
}

/// Why a sandbox file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// It exists but is of a kind Cella does not open.
    Refused(Refused),
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(r) => f.write_str(r.describe()),
            OpenError::Io(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// The kind a file's type stands for, `None` for a regular file or a directory.
fn refusal(meta: &std::fs::Metadata) -> Option<Refused> {
    let t = meta.file_type();
    if t.is_symlink() {
        Some(Refused::SymbolicLink)
    } else if t.is_fifo() {
        Some(Refused::Fifo)
    } else if t.is_socket() {
        Some(Refused::Socket)
    } else if t.is_block_device() || t.is_char_device() {
        Some(Refused::Device)
    } else {
        None
    }
}

/// `O_PATH` descriptor of `rel` beneath the directory `dir`, no link followed on the
/// way or at the end (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); `rel` may be `.`.
fn path_beneath(dir: &File, rel: &Path) -> io::Result<File> {
    open_beneath(dir, rel, libc::O_PATH)
}

/// Opens the directory `rel` beneath the directory `dir` for listing, in one call and
/// with the same resolution as [`path_beneath`]: `O_DIRECTORY` makes the kernel
/// refuse anything but a directory before opening it. `Ok(None)` when it is not a
/// directory (a link included) or has vanished.
pub fn open_dir_beneath(dir: &File, rel: &Path) -> io::Result<Option<File>> {
    match open_beneath(dir, rel, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(file) => Ok(Some(file)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::EXDEV | libc::ENOTDIR)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn open_beneath(dir: &File, rel: &Path, flags: libc::c_int) -> io::Result<File> {
    let name = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is a plain struct of integers, for which all zeroes is valid
    // (and what the kernel expects of fields and padding we do not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags | libc::O_NOFOLLOW | libc::O_CLOEXEC).unwrap_or(0);
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is an open directory descriptor for the whole call, `name` is a
    // NUL-terminated string, and `how` is a valid `open_how` whose size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Reopens the inode behind an `O_PATH` descriptor for reading, without blocking.
fn reopen(path_fd: &File) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", path_fd.as_raw_fd()))
}

/// Opens `rel` beneath the directory `dir` for reading, only if it is a regular file
/// reached without any symbolic link. A link to `/etc/shadow` is refused (as
/// `ELOOP`/`EXDEV` from the kernel or [`Refused::SymbolicLink`]); a FIFO, socket or
/// device node is refused before anything opens it.
pub fn open_regular_beneath(dir: &Path, rel: &Path) -> Result<File, OpenError> {
    let dir = File::open(dir)?;
    let path_fd = path_beneath(&dir, rel).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => OpenError::Refused(Refused::SymbolicLink),
        _ => OpenError::Io(e),
    })?;
    let meta = path_fd.metadata()?;
    if let Some(r) = refusal(&meta) {
        return Err(OpenError::Refused(r));
    }
    if meta.is_dir() {
        return Err(OpenError::Refused(Refused::Directory));
    }
    Ok(reopen(&path_fd)?)
}

/// Opens the entry `name` of the open directory `parent` when it is a regular file or
/// a directory (for `ioctl`s and walks), never following a link: `Ok(None)` for every
/// other kind and for an entry that vanished.
pub fn open_entry(parent: &File, name: &std::ffi::OsStr) -> io::Result<Option<File>> {
    let path_fd = match path_beneath(parent, Path::new(name)) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::EXDEV)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = path_fd.metadata()?;
    if refusal(&meta).is_some() {
        return Ok(None);
    }
    reopen(&path_fd).map(Some)
}

/// Opens the directory `path` itself (given by the launcher, so links on the way are
/// the operator's), refusing it if the last component is not a directory.
pub fn open_dir(path: &Path) -> Result<File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OpenError::Refused(Refused::SymbolicLink),
            Some(libc::ENOTDIR) => OpenError::Refused(Refused::NotDirectory),
            _ => OpenError::Io(e),
        })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_fifos_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        assert!(open_regular_beneath(d, Path::new("file")).is_ok());
        for (name, want) in [
            ("link", Refused::SymbolicLink),
            ("fifo", Refused::Fifo),
            ("sub", Refused::Directory),
        ] {
            match open_regular_beneath(d, Path::new(name)) {
                Err(OpenError::Refused(r)) => assert_eq!(r, want, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let parent = File::open(d).unwrap();
        for name in ["fifo", "link", "file"] {
            assert!(
                open_dir_beneath(&parent, name.as_ref()).unwrap().is_none(),
                "{name}"
            );
        }
        assert!(open_dir_beneath(&parent, "sub".as_ref()).unwrap().is_some());
        assert!(open_entry(&parent, "fifo".as_ref()).unwrap().is_none());
        assert!(open_entry(&parent, "link".as_ref()).unwrap().is_none());
        assert!(open_entry(&parent, "sub".as_ref()).unwrap().is_some());
    }
}
