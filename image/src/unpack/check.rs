//! The per-image check that no layer writes through a symlink of a lower layer.
//!
//! Each layer is unpacked on its own, so a symlink in a lower layer is never followed
//! while unpacking. But a layer that puts `a/passwd` under a directory `a` it never
//! lists, above a lower layer whose `a` is a symlink to `/etc`, means to write through
//! that symlink (the trick of CVE-2019-14271 and its kin). Tools that apply layers on
//! one tree would follow it; Cella refuses the image instead. A layer that lists `a`
//! as a directory replaces the symlink, as in Docker, and is fine.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{SFlag, fstat, major, minor};

use super::OPAQUE_XATTR;
use super::fs;

#[derive(Debug, thiserror::Error)]
pub enum LayerCheckError {
    #[error(
        "layer {layer} writes into {dir} without listing it as a directory, and a lower layer has a symlink at {symlink}: writing through a symlink of a lower layer is refused"
    )]
    ThroughLowerSymlink {
        layer: usize,
        dir: String,
        symlink: String,
    },
    #[error("cannot open the unpacked layer {path}: {source}")]
    Open { path: PathBuf, source: Errno },
    #[error("cannot inspect {entry} in the unpacked layer {path}: {source}")]
    Inspect {
        path: PathBuf,
        entry: String,
        source: Errno,
    },
}

/// What one layer holds at a path.
enum Seen {
    Absent,
    /// An ancestor is not a directory in this layer.
    Hidden,
    Whiteout,
    Symlink,
    File,
    Dir {
        opaque: bool,
    },
}

/// Checks the layers of one image, lowest first: each is the directory of an unpacked
/// layer with the directories it used without listing them.
pub fn check_layers(layers: &[(PathBuf, Vec<Vec<u8>>)]) -> Result<(), LayerCheckError> {
    let mut roots: Vec<OwnedFd> = Vec::with_capacity(layers.len());
    for (dir, _) in layers {
        let fd = nix::fcntl::open(
            dir.as_path(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|source| LayerCheckError::Open {
            path: dir.clone(),
            source,
        })?;
        roots.push(fd);
    }
    for (index, (_, implicit_dirs)) in layers.iter().enumerate().skip(1) {
        for dir in implicit_dirs {
            check_dir(&roots[..index], layers, index, dir)?;
        }
    }
    Ok(())
}

/// Walks the prefixes of `dir` through the merged view of `lower` (the layers below
/// `layer`), refusing a prefix whose topmost entry is a symlink.
fn check_dir(
    lower: &[OwnedFd],
    layers: &[(PathBuf, Vec<Vec<u8>>)],
    layer: usize,
    dir: &[u8],
) -> Result<(), LayerCheckError> {
    let components: Vec<&[u8]> = dir
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    // Layers [floor, layer) are visible at the current depth.
    let mut floor = 0;
    for depth in 1..=components.len() {
        let prefix = PathBuf::from(OsStr::from_bytes(&components[..depth].join(&b'/')));
        let mut is_dir = false;
        for j in (floor..lower.len()).rev() {
            let seen =
                lookup(lower[j].as_fd(), &prefix).map_err(|source| LayerCheckError::Inspect {
                    path: layers[j].0.clone(),
                    entry: prefix.display().to_string(),
                    source,
                })?;
            match (seen, is_dir) {
                (Seen::Absent, _) => {}
                (Seen::Symlink, false) => {
                    return Err(LayerCheckError::ThroughLowerSymlink {
                        layer,
                        dir: String::from_utf8_lossy(dir).into_owned(),
                        symlink: prefix.display().to_string(),
                    });
                }
                // Nothing (or a file) is there in the merged view: the layer's
                // directory simply replaces it.
                (Seen::Whiteout | Seen::File | Seen::Hidden, false) => return Ok(()),
                (Seen::Dir { opaque }, _) => {
                    is_dir = true;
                    if opaque {
                        floor = j;
                        break;
                    }
                }
                // Below a directory, a non-directory is hidden, and so is all under it.
                (_, true) => {
                    floor = j + 1;
                    break;
                }
            }
        }
        if !is_dir {
            return Ok(());
        }
    }
    Ok(())
}

fn lookup(root: BorrowedFd<'_>, path: &Path) -> Result<Seen, Errno> {
    let fd = match fs::open_beneath(root, path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Seen::Absent),
        Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => return Ok(Seen::Hidden),
        Err(e) => return Err(e),
    };
    let stat = fstat(fd.as_fd())?;
    Ok(match fs::file_type(&stat) {
        SFlag::S_IFLNK => Seen::Symlink,
        SFlag::S_IFDIR => {
            let dir = nix::fcntl::openat(
                fd.as_fd(),
                ".",
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            let opaque = fs::get_xattr(dir.as_fd(), OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            Seen::Dir { opaque }
        }
        SFlag::S_IFCHR if major(stat.st_rdev) == 0 && minor(stat.st_rdev) == 0 => Seen::Whiteout,
        _ => Seen::File,
    })
}
