//! File-system calls relative to directory descriptors that never follow a symlink:
//! the unpacker reaches every entry by walking from the layer's root one component at
//! a time with `O_NOFOLLOW`, so a symlink an image planted cannot redirect a write.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Opens the directory `name` in `dir`; `ELOOP`/`ENOTDIR` when it is a symlink or not
/// a directory.
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, OsStr::from_bytes(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Removes `name` from `dir`, a whole tree if it is a directory, following no symlink.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let Some(stat) = stat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&stat) != SFlag::S_IFDIR {
        return unlinkat(dir, OsStr::from_bytes(name), UnlinkatFlags::NoRemoveDir);
    }
    let child = open_dir(dir, name)?;
    empty_dir(child.as_fd())?;
    unlinkat(dir, OsStr::from_bytes(name), UnlinkatFlags::RemoveDir)
}

/// Removes everything inside the directory `dir`.
pub fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    let names: Vec<Vec<u8>> = {
        let mut listing = Dir::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        listing
            .iter()
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_bytes().to_vec())
            .filter(|name| name != b"." && name != b"..")
            .collect()
    };
    for name in names {
        remove_at(dir, &name)?;
    }
    Ok(())
}

/// Opens `path` beneath `root` without following any symlink on the way (the final
/// component may be a symlink: it is opened itself, `O_PATH`).
pub fn open_beneath(root: BorrowedFd<'_>, path: &std::path::Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let path = if path.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        path
    };
    openat2(root, path, how)
}

/// Sets an extended attribute on an open file.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `name` is NUL-terminated, `value` is a valid buffer of the given length,
    // and `fd` is a live descriptor for the duration of the call.
    let res = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(res).map(drop)
}

/// Sets an extended attribute on `name` in `dir` without following it if it is a
/// symlink (`lsetxattr` through the directory's `/proc/self/fd` entry).
pub fn set_xattr_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    attr: &[u8],
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let attr = CString::new(attr).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and `value` is a valid buffer.
    let res = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(res).map(drop)
}

/// Reads an extended attribute of an open file (`None` when it is not set).
pub fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes and `name` is NUL-terminated.
    let res = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    match Errno::result(res) {
        Ok(n) => {
            buf.truncate(usize::try_from(n).unwrap_or(0));
            Ok(Some(buf))
        }
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Flushes the whole file system holding `fd` to disk: one call instead of an fsync
/// per unpacked file.
pub fn syncfs(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: `fd` is a live descriptor.
    let res = unsafe { libc::syncfs(fd.as_raw_fd()) };
    Errno::result(res).map(drop)
}
