//! Unpacking one layer (a tar stream, gzip, zstd or uncompressed) into a directory
//! that overlayfs can use as a lower layer.
//!
//! A layer is untrusted input. The unpacker:
//! - normalises every entry's path inside the layer and refuses one whose `..` climbs
//!   out of it (a leading `/` is rooted at the layer, as Docker does);
//! - reaches every entry by walking from the layer's root with `O_NOFOLLOW`, one
//!   component at a time, and refuses an entry whose parent is a symlink (unpacked
//!   earlier in the same layer); a symlink of a lower layer is checked per image in
//!   [`check_layers`], because one unpacked layer is shared by every image using it;
//! - creates hard links only to entries already unpacked in the same layer;
//! - refuses device nodes, except the character device 0/0 that is overlayfs's
//!   whiteout;
//! - stops a layer past `max_layer_bytes` uncompressed or `max_entries` entries;
//! - verifies the uncompressed stream against the configuration's diff id.
//!
//! Whiteouts become what overlayfs expects in a lower layer: `.wh.NAME` a character
//! device 0/0 named `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
//! directory. Ownership, modes (setuid/setgid included: tasks run with no_new_privs,
//! which makes them inert), mtimes, hard links and xattrs are kept; xattrs in the
//! `trusted.` namespace (overlayfs's own among them) and unknown `security.` ones are
//! dropped, so an image cannot forge overlay metadata.

mod check;
mod entry_path;
mod fs;
mod limits;
mod metadata;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, futimens, makedev, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, fchownat, linkat, symlinkat};
use serde::{Deserialize, Serialize};

pub use check::{LayerCheckError, check_layers};
pub use entry_path::EntryPath;
pub use fs::{empty_dir, get_xattr, open_dir, remove_at, syncfs};

use crate::digest::{Digest, HashingReader};
use crate::settings::UnpackLimits;
use limits::LimitedReader;
use metadata::{Metadata, apply_metadata, read_metadata, set_mtime_at, timespec};

/// The xattr overlayfs reads to make a directory of a lower layer opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What one layer refused or failed on; every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?} climbs out of the layer with '..'")]
    Escape { entry: String },
    #[error("entry {entry} would be written through the symlink {symlink}")]
    ThroughSymlink { entry: String, symlink: String },
    #[error("entry {entry}: the parent {parent} is not a directory")]
    NotADirectory { entry: String, parent: String },
    #[error("entry {entry} is a hard link to {target:?}, which is not a file of this layer")]
    HardLinkOutside { entry: String, target: String },
    #[error(
        "entry {entry} is a {kind} device node ({major}:{minor}); images may not carry device nodes"
    )]
    DeviceNode {
        entry: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("entry {entry} has the unsupported tar type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("the layer expands past the limit of {limit} bytes (max_layer_bytes)")]
    TooLarge { limit: u64 },
    #[error("the layer has more than {limit} entries (max_entries)")]
    TooManyEntries { limit: u64 },
    #[error(
        "the uncompressed layer has digest {actual}, but the image configuration says {expected}"
    )]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("the layer is not a valid tar stream (near entry {entry:?}): {source}")]
    Tar { entry: String, source: io::Error },
    #[error("entry {entry}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("cannot create the layer directory {path}: {source}")]
    CreateRoot { path: PathBuf, source: io::Error },
}

/// What an unpacked layer records beside its tree (`layer.json` in the store).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerSummary {
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Space the tree takes on disk (allocated blocks).
    pub disk_bytes: u64,
    pub entries: u64,
    /// Directories the layer used without listing them, as raw path bytes: if a lower
    /// layer has a symlink there, the layer meant to write through it.
    pub implicit_dirs: Vec<Vec<u8>>,
}

/// Unpacks the layer blob at `blob` into `dest` (created here; the caller removes it
/// on error) and checks it against `diff_id`.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    diff_id: &Digest,
    limits: &UnpackLimits,
) -> Result<LayerSummary, UnpackError> {
    let io_err = |op, source| UnpackError::Io {
        entry: "/".to_owned(),
        op,
        source,
    };
    let file = File::open(blob).map_err(|e| io_err("open the downloaded layer", e))?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let magic = buffered
        .fill_buf()
        .map_err(|e| io_err("read the downloaded layer", e))?;
    let decoder: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::Decoder::with_buffer(buffered).map_err(|e| io_err("start zstd decoding", e))?,
        )
    } else {
        Box::new(buffered)
    };
    let exceeded = Rc::new(Cell::new(false));
    let limited = LimitedReader::new(decoder, limits.max_layer_bytes, exceeded.clone());
    let mut archive = tar::Archive::new(HashingReader::new(limited));

    std::fs::create_dir(dest).map_err(|source| UnpackError::CreateRoot {
        path: dest.to_owned(),
        source,
    })?;
    let root: OwnedFd = File::open(dest)
        .map_err(|source| UnpackError::CreateRoot {
            path: dest.to_owned(),
            source,
        })?
        .into();
    let mut unpacker = Unpacker {
        root,
        cache: None,
        dirs: Vec::new(),
        implicit_dirs: Vec::new(),
        disk_bytes: 0,
        buf: vec![0; 1 << 20],
    };
    let mut entries = 0u64;
    let mut last = String::new();
    let tar_error = |last: &str, source: io::Error| {
        if exceeded.get() {
            UnpackError::TooLarge {
                limit: limits.max_layer_bytes,
            }
        } else {
            UnpackError::Tar {
                entry: last.to_owned(),
                source,
            }
        }
    };
    for entry in archive.entries().map_err(|e| tar_error("", e))? {
        let mut entry = entry.map_err(|e| tar_error(&last, e))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        unpacker.unpack_entry(&mut entry).map_err(|e| {
            if exceeded.get() {
                UnpackError::TooLarge {
                    limit: limits.max_layer_bytes,
                }
            } else {
                e
            }
        })?;
    }
    unpacker.finish()?;
    let (actual, tar_bytes) = archive
        .into_inner()
        .finish()
        .map_err(|e| tar_error(&last, e))?;
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    fs::syncfs(unpacker.root.as_fd()).map_err(|e| io_err("syncfs", e.into()))?;
    Ok(LayerSummary {
        diff_id: actual,
        tar_bytes,
        disk_bytes: unpacker.disk_bytes,
        entries,
        implicit_dirs: unpacker
            .implicit_dirs
            .iter()
            .map(|p| p.as_path().into_os_string().into_encoded_bytes())
            .collect(),
    })
}

struct Unpacker {
    root: OwnedFd,
    /// The last parent directory opened, by its components: entries come grouped by
    /// directory, so most entries reuse it.
    cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    /// Directories and their mtimes, applied at the end (creating children changes them).
    dirs: Vec<(EntryPath, i64)>,
    implicit_dirs: Vec<EntryPath>,
    disk_bytes: u64,
    buf: Vec<u8>,
}

impl Unpacker {
    fn unpack_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let path = EntryPath::parse(&raw).ok_or_else(|| UnpackError::Escape {
            entry: display.clone(),
        })?;
        let meta = read_metadata(entry, &display)?;
        let Some((parents, name)) = path.split_last() else {
            // The layer's root itself ("./"): only its metadata applies.
            if kind.is_dir() {
                let root = self.root.try_clone().map_err(|e| io(&path, "dup", e))?;
                apply_metadata(root.as_fd(), &meta, &path)?;
                self.dirs.push((path, meta.mtime));
            }
            return Ok(());
        };
        let parents = parents.to_vec();
        let name = name.to_vec();

        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let parent = self.parent(&path, &parents)?;
            if hidden == b".wh..opq" {
                return fs::set_xattr(parent.as_fd(), OPAQUE_XATTR.as_bytes(), b"y")
                    .map_err(|e| io(&path, "set the opaque xattr", e.into()));
            }
            if hidden.starts_with(b".wh.") {
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs.
                return Ok(());
            }
            return self.whiteout(&parent, hidden, &path);
        }

        let parent = self.parent(&path, &parents)?;
        match kind {
            tar::EntryType::Directory => self.directory(&parent, &name, &path, meta),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.replace(&parent, &name, &path)?;
                self.regular(&parent, &name, &path, &meta, entry)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.replace(&parent, &name, &path)?;
                symlinkat(bytes_path(&target), parent.as_fd(), bytes_path(&name))
                    .map_err(|e| io(&path, "create the symlink", e.into()))?;
                fchownat(
                    parent.as_fd(),
                    bytes_path(&name),
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io(&path, "chown the symlink", e.into()))?;
                self.set_xattrs_nofollow(&parent, &name, &meta, &path)?;
                set_mtime_at(&parent, &name, meta.mtime, &path)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hard_link(&parent, &name, &path, &target)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    return self.whiteout(&parent, &name, &path);
                }
                Err(UnpackError::DeviceNode {
                    entry: path.to_string(),
                    kind: if kind == tar::EntryType::Char {
                        "character"
                    } else {
                        "block"
                    },
                    major,
                    minor,
                })
            }
            tar::EntryType::Fifo => {
                self.replace(&parent, &name, &path)?;
                mknodat(
                    parent.as_fd(),
                    bytes_path(&name),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(meta.mode),
                    0,
                )
                .map_err(|e| io(&path, "create the fifo", e.into()))?;
                let fifo = openat(
                    parent.as_fd(),
                    bytes_path(&name),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(&path, "open the fifo", e.into()))?;
                fchownat(
                    fifo.as_fd(),
                    "",
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_EMPTY_PATH,
                )
                .map_err(|e| io(&path, "chown the fifo", e.into()))?;
                set_mtime_at(&parent, &name, meta.mtime, &path)
            }
            other => Err(UnpackError::UnsupportedEntry {
                entry: path.to_string(),
                kind: format!("{other:?}"),
            }),
        }
    }

    /// Opens (creating missing directories) the parent of `path` without following
    /// symlinks.
    fn parent(
        &mut self,
        path: &EntryPath,
        parents: &[Vec<u8>],
    ) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some((cached, fd)) = &self.cache
            && cached.as_slice() == parents
        {
            return Ok(fd.clone());
        }
        let mut current: OwnedFd = self.root.try_clone().map_err(|e| io(path, "dup", e))?;
        for (depth, component) in parents.iter().enumerate() {
            let so_far =
                || EntryPath::parse(&parents[..=depth].join(&b'/')).unwrap_or_else(|| path.clone());
            current = match fs::open_dir(current.as_fd(), component) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(
                        current.as_fd(),
                        bytes_path(component),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(|e| io(path, "create a parent directory", e.into()))?;
                    self.implicit_dirs.push(so_far());
                    fs::open_dir(current.as_fd(), component)
                        .map_err(|e| io(path, "open a parent directory", e.into()))?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let stat = fs::stat_at(current.as_fd(), component)
                        .map_err(|e| io(path, "stat a parent", e.into()))?;
                    let is_link = stat.is_some_and(|s| fs::file_type(&s) == SFlag::S_IFLNK);
                    return Err(if is_link {
                        UnpackError::ThroughSymlink {
                            entry: path.to_string(),
                            symlink: so_far().to_string(),
                        }
                    } else {
                        UnpackError::NotADirectory {
                            entry: path.to_string(),
                            parent: so_far().to_string(),
                        }
                    });
                }
                Err(e) => return Err(io(path, "open a parent directory", e.into())),
            };
        }
        let fd = Rc::new(current);
        self.cache = Some((parents.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Removes what `name` holds so a new entry can take its place (tar semantics:
    /// the later entry wins).
    fn replace(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        path: &EntryPath,
    ) -> Result<(), UnpackError> {
        if fs::stat_at(parent.as_fd(), name)
            .map_err(|e| io(path, "stat", e.into()))?
            .is_some()
        {
            fs::remove_at(parent.as_fd(), name).map_err(|e| io(path, "replace", e.into()))?;
            // A cached directory may have been inside what was removed.
            self.cache = None;
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &OwnedFd,
        hidden: &[u8],
        path: &EntryPath,
    ) -> Result<(), UnpackError> {
        if hidden.is_empty() || hidden.contains(&b'/') || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Escape {
                entry: path.to_string(),
            });
        }
        self.replace(parent, hidden, path)?;
        mknodat(
            parent.as_fd(),
            bytes_path(hidden),
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .map_err(|e| io(path, "create the whiteout device", e.into()))
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        path: &EntryPath,
        meta: Metadata,
    ) -> Result<(), UnpackError> {
        let existing = fs::stat_at(parent.as_fd(), name).map_err(|e| io(path, "stat", e.into()))?;
        match existing {
            Some(stat) if fs::file_type(&stat) == SFlag::S_IFDIR => {}
            Some(_) => {
                self.replace(parent, name, path)?;
                mkdirat(
                    parent.as_fd(),
                    bytes_path(name),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(|e| io(path, "create the directory", e.into()))?;
            }
            None => mkdirat(
                parent.as_fd(),
                bytes_path(name),
                Mode::from_bits_truncate(0o700),
            )
            .map_err(|e| io(path, "create the directory", e.into()))?,
        }
        let dir = fs::open_dir(parent.as_fd(), name)
            .map_err(|e| io(path, "open the directory", e.into()))?;
        apply_metadata(dir.as_fd(), &meta, path)?;
        self.disk_bytes += 4096;
        self.dirs.push((path.clone(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        path: &EntryPath,
        meta: &Metadata,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let fd = openat(
            parent.as_fd(),
            bytes_path(name),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io(path, "create the file", e.into()))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(path, "read the file's data from the layer", e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| io(path, "write the file", e))?;
        }
        apply_metadata(file.as_fd(), meta, path)?;
        futimens(file.as_fd(), &timespec(meta.mtime), &timespec(meta.mtime))
            .map_err(|e| io(path, "set the mtime", e.into()))?;
        let stat = fstat(file.as_fd()).map_err(|e| io(path, "stat", e.into()))?;
        self.disk_bytes += u64::try_from(stat.st_blocks).unwrap_or(0) * 512;
        Ok(())
    }

    fn hard_link(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        path: &EntryPath,
        raw_target: &[u8],
    ) -> Result<(), UnpackError> {
        let outside = || UnpackError::HardLinkOutside {
            entry: path.to_string(),
            target: String::from_utf8_lossy(raw_target).into_owned(),
        };
        let target = EntryPath::parse(raw_target).ok_or_else(outside)?;
        let (target_parents, target_name) = target.split_last().ok_or_else(outside)?;
        if target == *path {
            return Ok(());
        }
        // Walk to the target without creating anything and without following symlinks:
        // it must be an entry of this layer.
        let mut dir = self.root.try_clone().map_err(|e| io(path, "dup", e))?;
        for component in target_parents {
            dir = fs::open_dir(dir.as_fd(), component).map_err(|_| outside())?;
        }
        match fs::stat_at(dir.as_fd(), target_name) {
            Ok(Some(stat)) if fs::file_type(&stat) != SFlag::S_IFDIR => {}
            _ => return Err(outside()),
        }
        self.replace(parent, name, path)?;
        linkat(
            dir.as_fd(),
            bytes_path(target_name),
            parent.as_fd(),
            bytes_path(name),
            AtFlags::empty(),
        )
        .map_err(|e| io(path, "create the hard link", e.into()))
    }

    fn set_xattrs_nofollow(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        meta: &Metadata,
        path: &EntryPath,
    ) -> Result<(), UnpackError> {
        for (key, value) in &meta.xattrs {
            // Only trusted.* and security.* xattrs exist on symlinks; user.* cannot.
            if key.starts_with(b"user.") {
                continue;
            }
            fs::set_xattr_nofollow(parent.as_fd(), name, key, value)
                .map_err(|e| io(path, "set an xattr", e.into()))?;
        }
        Ok(())
    }

    /// Sets the directories' mtimes, deepest first, now that nothing is added to them.
    fn finish(&mut self) -> Result<(), UnpackError> {
        self.cache = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().len()));
        'dirs: for (path, mtime) in dirs {
            // Walked again without following symlinks; a directory a later entry of
            // the layer replaced is no longer there to date.
            let mut dir = self.root.try_clone().map_err(|e| io(&path, "dup", e))?;
            for component in path.components() {
                match fs::open_dir(dir.as_fd(), component) {
                    Ok(fd) => dir = fd,
                    Err(_) => continue 'dirs,
                }
            }
            futimens(dir.as_fd(), &timespec(mtime), &timespec(mtime))
                .map_err(|e| io(&path, "set the directory's mtime", e.into()))?;
        }
        Ok(())
    }
}

pub(crate) fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

pub(crate) fn io(path: &EntryPath, op: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        entry: path.to_string(),
        op,
        source,
    }
}
