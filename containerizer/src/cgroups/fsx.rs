//! File helpers shared by both backends; every error names its path.
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CgroupError;

pub fn io(path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One write(2) of `value`: cgroup files take a whole value per write. No
/// O_CREAT: kernfs answers EACCES rather than ENOENT to a create.
pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| io(path, e))
}

/// Like [`write`], but a file this kernel does not offer is fine (`Ok(false)`).
pub fn write_optional(path: &Path, value: &str) -> Result<bool, CgroupError> {
    match write(path, value) {
        Ok(()) => Ok(true),
        Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn is_kind(e: &CgroupError, kind: ErrorKind) -> bool {
    matches!(e, CgroupError::Io { source, .. } if source.kind() == kind)
}

pub fn is_errno(e: &CgroupError, errno: i32) -> bool {
    matches!(e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(errno))
}

pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat keyed file (`key value` per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

pub fn keyed_file(path: &Path, key: &str) -> Option<u64> {
    keyed(&read(path)?, key)
}

/// Pids listed in a `cgroup.procs` file; a cgroup that does not exist has none.
pub fn pids(procs: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(procs, e)),
    }
}

/// SIGKILLs every pid; returns how many were not already in `killed`.
pub fn sigkill_new(pids: &[i32], killed: &mut Vec<i32>) -> usize {
    let mut new = 0;
    for &pid in pids {
        if pid <= 0 || killed.contains(&pid) {
            continue;
        }
        // ESRCH: it exited meanwhile, which is what we want anyway.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        killed.push(pid);
        new += 1;
    }
    new
}

/// SIGKILLs the pids `list` names, pass after pass, until a pass finds no process it
/// has not signalled yet (or `limit` passes). Both backends' fallback when the kernel
/// has no `cgroup.kill`.
pub fn sigkill_until_quiet(
    limit: Duration,
    killed: &mut Vec<i32>,
    mut list: impl FnMut() -> Result<Vec<i32>, CgroupError>,
) -> Result<(), CgroupError> {
    let mut failed = None;
    wait_until(limit, || match list() {
        Ok(pids) => sigkill_new(&pids, killed) == 0,
        Err(e) => {
            failed = Some(e);
            true
        }
    });
    failed.map_or(Ok(()), Err)
}

/// Polls `done` every 1-5 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// mkdir; `Ok(true)` if this call created it, `Ok(false)` if it existed.
pub fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

/// Makes `dir`, a child of `base`, and `base` first when it is missing; `made_base`
/// gets the directories that made (outermost first) and sets them up. A missing base
/// is made, set up and given `dir` under [`lock_base`], which
/// [`remove_base_if_empty`] takes too: no launcher removes it half set up, nor
/// between its making and `dir`'s. False when `dir` exists already.
pub fn mkdir_in(
    base: &Path,
    dir: &Path,
    mut made_base: impl FnMut(Vec<PathBuf>) -> Result<(), CgroupError>,
) -> Result<bool, CgroupError> {
    for _ in 0..BASE_RACE_ATTEMPTS {
        match mkdir(dir) {
            Err(e) if is_kind(&e, ErrorKind::NotFound) => {
                let _lock = lock_base(base);
                match made_base(mkdir_all(base)?) {
                    // Removed while it was being set up (a remover that could not
                    // take the lock): once more.
                    Err(e) if is_kind(&e, ErrorKind::NotFound) || !base.exists() => {}
                    Err(e) => return Err(e),
                    Ok(()) => match mkdir(dir) {
                        Err(e) if is_kind(&e, ErrorKind::NotFound) => {}
                        other => return other,
                    },
                }
            }
            other => return other,
        }
    }
    mkdir(dir)
}

/// Removes `base` if it is empty (its last task is gone), under [`lock_base`].
/// Busy or missing is not an error. A base that still holds a task's directory is
/// left at once, without the lock: a task (which can see the directory above the
/// base and `flock` it) never delays the removal while it runs.
pub fn remove_base_if_empty(base: &Path) {
    let holds_a_task = std::fs::read_dir(base)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false);
    if holds_a_task {
        return;
    }
    let _lock = lock_base(base);
    let _ = std::fs::remove_dir(base);
}

/// An exclusive `flock` on the directory above `base` (a lock, not a write: nothing
/// in the cgroup changes), shared by every launcher that makes or removes that base;
/// each holds it for microseconds. Anyone who can read that directory can take it,
/// so it is only tried for [`LOCK_WAIT`]: past that, or if it cannot be had at all,
/// the caller goes on without it and [`mkdir_in`] still makes a vanished base again.
fn lock_base(base: &Path) -> Option<Flock<std::fs::File>> {
    let mut parent = Some(std::fs::File::open(base.parent()?).ok()?);
    let mut lock = None;
    wait_until(LOCK_WAIT, || {
        let Some(file) = parent.take() else {
            return true;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                lock = Some(held);
                true
            }
            Err((file, nix::errno::Errno::EAGAIN)) => {
                parent = Some(file);
                false
            }
            Err(_) => true,
        }
    });
    lock
}

/// How long [`lock_base`] tries for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// How often [`mkdir_in`] makes a base that another launcher removed meanwhile.
const BASE_RACE_ATTEMPTS: usize = 4;

/// Creates `path` and any missing parents; returns the ones created, outermost first.
pub fn mkdir_all(path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => return Ok(vec![path.to_path_buf()]),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Vec::new()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e)),
    }
    let parent = path
        .parent()
        .ok_or_else(|| io(path, ErrorKind::NotFound.into()))?;
    let mut created = mkdir_all(parent)?;
    match mkdir(path) {
        Ok(true) => created.push(path.to_path_buf()),
        Ok(false) => {}
        Err(e) => {
            rmdirs_quietly(&created);
            return Err(e);
        }
    }
    Ok(created)
}

/// Best-effort removal of directories created by a failed call, innermost first.
pub fn rmdirs_quietly(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// rmdir that treats a missing cgroup as removed and retries EBUSY for ~1 s: a
/// killed task's exit is not accounted the instant its pids vanish.
pub fn rmdir(path: &Path) -> Result<(), CgroupError> {
    let mut result = Ok(());
    wait_until(Duration::from_secs(1), || match std::fs::remove_dir(path) {
        Ok(()) => {
            result = Ok(());
            true
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            result = Ok(());
            true
        }
        Err(e) => {
            let retry = e.raw_os_error() == Some(libc::EBUSY);
            result = Err(io(path, e));
            !retry
        }
    });
    result
}

/// A task name must be one path component: it becomes a directory in every hierarchy.
pub fn check_name(base: &Path, name: &str) -> Result<PathBuf, CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io(
            &base.join(name),
            std::io::Error::new(
                ErrorKind::InvalidInput,
                "a task cgroup name must be a single path component",
            ),
        ));
    }
    Ok(base.join(name))
}

/// Names of the directories beneath `base`; a base that does not exist has none.
pub fn list_dir(base: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(base, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(base, e))?;
        if entry
            .file_type()
            .map_err(|e| io(&entry.path(), e))?
            .is_dir()
        {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn names_are_single_components() {
        let base = Path::new("/sys/fs/cgroup/memory/cella");
        assert!(super::check_name(base, "task-1").is_ok());
        for bad in ["", ".", "..", "a/b", "/abs"] {
            assert!(super::check_name(base, bad).is_err(), "{bad:?}");
        }
    }
}
