//! The sandboxes of `cella exec --image` tasks: each holds the task's writable layer
//! (the overlay's upper and work directories) and lives in the image store's
//! `sandboxes/` directory (private to root like the rest of the store):
//!
//! ```text
//! <store>/sandboxes/ready/<name>     empty sandboxes made ahead: .rootfs/{upper,work};
//!                                    <name> ends in `+<bytes>`, their size when made
//! <store>/sandboxes/<lease>.<name>   the sandbox of the task holding the lease <lease>
//! <store>/sandboxes/new-<name>       one being made
//! <store>/sandboxes/lock             held by the process tidying
//! ```
//!
//! Creating and removing a writable layer's directories are metadata updates that a
//! busy disk makes wait for milliseconds each. None of them is on the path from the
//! launch to the task's exit code: a launch renames a sandbox made ahead to its
//! lease's name (it makes an empty one only when none is ready), and once the task has
//! ended and its lease is released, a detached process (see [`tidy_later`]) removes
//! every sandbox whose lease is gone (also those of a `cella exec` killed with -9,
//! once its task has ended) and makes the next ones. The sandbox is the task's
//! sandbox as before: `--disk` counts and limits the writable layer in it. A sandbox
//! made ahead carries its size in its name, measured when it was made: nothing but
//! this store's tidying process writes in it before a task takes it, so the launch
//! need not walk it for `--disk`'s baseline.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use cella_containerizer::task::IMAGE_UPPER_IN_SANDBOX;
use cella_image::ImageStore;

/// Empty sandboxes kept ready: enough for a few launches in quick succession.
const READY: usize = 2;

fn pool_dir(store: &ImageStore) -> PathBuf {
    store.paths().root().join("sandboxes")
}

/// A task's sandbox and, when known without walking it, the bytes it holds.
pub struct Taken {
    pub dir: PathBuf,
    /// Its size as measured when it was made ahead (see [`make_ready`]).
    pub bytes: Option<u64>,
}

/// A sandbox for the task holding `lease`: one made ahead if there is, else a new
/// empty one (the shim then makes the overlay's directories in it).
pub fn take(store: &ImageStore, lease: &str) -> io::Result<Taken> {
    let pool = pool_dir(store);
    let ready = pool.join("ready");
    if let Ok(entries) = std::fs::read_dir(&ready) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let taken = pool.join(format!("{lease}.{name}"));
            // Another launch may take the same one first: then the next.
            if std::fs::rename(entry.path(), &taken).is_ok() {
                return Ok(Taken {
                    dir: taken,
                    bytes: size_in_name(&name),
                });
            }
        }
    }
    std::fs::create_dir_all(&pool)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{lease}."))
        .tempdir_in(&pool)?
        .keep();
    Ok(Taken { dir, bytes: None })
}

/// The size a ready sandbox's name ends with (`<random>+<bytes>`); none for a name
/// without one.
fn size_in_name(name: &str) -> Option<u64> {
    name.rsplit_once('+')?.1.parse().ok()
}

/// Tidies the store's sandboxes in a detached process: a fork of this one when it
/// has a single thread left, else a new `cella images tidy-sandboxes`; tidies here
/// (and waits) when neither can be started.
pub fn tidy_later(store: &ImageStore) {
    // A fork tidies without starting the program again (exec, loading, parsing the
    // command line, opening the store: CPU time that would compete with the next
    // launch). Only without other threads: the fork has just this one, and any lock
    // another thread held would stay locked in it for good.
    if single_threaded() {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null");
        match null.and_then(|null| fork_detached(&null)) {
            Ok(true) => {
                // Nothing of this process stays open in the fork (a lock file's
                // descriptor would keep its lock held until the tidying is done).
                // SAFETY: closes descriptors only; none is used by the code below.
                unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
                let code = i32::from(tidy(store).is_err());
                // SAFETY: ends the fork without running the parent's destructors or
                // flushing its buffers a second time.
                unsafe { libc::_exit(code) }
            }
            Ok(false) => return,
            Err(e) => tracing::debug!(error = %e, "forking to tidy the sandboxes"),
        }
    }
    let started = std::env::current_exe().and_then(|exe| {
        let root = store.paths().root().as_os_str();
        spawn_detached(
            &exe,
            &[
                exe.as_os_str(),
                "images".as_ref(),
                "--image-store".as_ref(),
                root,
                "tidy-sandboxes".as_ref(),
            ],
        )
    });
    if let Err(e) = started {
        tracing::debug!(error = %e, "tidying the sandboxes in this process");
        if let Err(e) = tidy(store) {
            eprintln!("cella: removing the task's sandbox: {e}");
        }
    }
}

/// Runs `program` with `argv` in a process of its own group, its standard streams on
/// /dev/null, and returns at once: unlike `std::process::Command`, which waits until
/// the child has executed the program (a wait of milliseconds on a busy machine,
/// right before this process reports the task's exit). Not waited for: init reaps it.
fn spawn_detached(program: &Path, argv: &[&std::ffi::OsStr]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_string = |s: &std::ffi::OsStr| {
        std::ffi::CString::new(s.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let program = c_string(program.as_os_str())?;
    let argv = argv
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<Vec<_>>>()?;
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    if fork_detached(&null)? {
        // SAFETY: between the fork and the exec the child calls only async-signal-safe
        // functions (execv, _exit) on what was prepared before the fork, so no lock
        // that another thread held at the fork is waited for; `pointers` ends with a
        // null and points into `argv`, alive until the exec or the exit.
        unsafe {
            libc::execv(program.as_ptr(), pointers.as_ptr());
            libc::_exit(127)
        }
    }
    Ok(())
}

/// Forks a process of its own group, at the lowest priority, with its standard
/// streams on `null`; `true` in the child. Not waited for: init reaps it.
fn fork_detached(null: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the child calls only async-signal-safe functions (setpgid, setpriority,
    // dup2) here, on a descriptor opened before the fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: as above.
            unsafe {
                // Out of the terminal's process group: a Ctrl-C there does not stop it.
                libc::setpgid(0, 0);
                // Nothing waits for it: the next launches, which may start while it
                // runs, go first (a launch that finds no sandbox ready makes one).
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                for fd in 0..=2 {
                    libc::dup2(null.as_raw_fd(), fd);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Whether this process runs one thread (`/proc/self/stat`, field 20).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat").is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(17))
            == Some("1")
    })
}

/// Removes the sandboxes whose lease is gone and makes empty ones until [`READY`]
/// are ready. One process at a time: another one tidying already is left to it.
pub fn tidy(store: &ImageStore) -> io::Result<()> {
    let pool = pool_dir(store);
    let ready = pool.join("ready");
    std::fs::create_dir_all(&ready)?;
    let lock = std::fs::File::create(pool.join("lock"))?;
    let _lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(()),
        Err((_, e)) => return Err(e.into()),
    };
    // Listed before the leases are read: a sandbox listed was taken after its lease
    // was written, so a task still running has its lease in what is read next.
    let names: Vec<String> = std::fs::read_dir(&pool)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let leases: HashSet<String> = store
        .leases()
        .map_err(io::Error::other)?
        .into_iter()
        .map(|l| l.name)
        .collect();
    for name in names {
        // A sandbox begun by a tidying process that did not finish (only the holder
        // of the lock makes them).
        let stale = name.starts_with("new-");
        let ended = name
            .rsplit_once('.')
            .is_some_and(|(lease, _)| !leases.contains(lease));
        if stale || ended {
            remove(&pool.join(&name))?;
        }
    }
    let have = std::fs::read_dir(&ready)?.count();
    for _ in have..READY {
        make_ready(&pool, &ready)?;
    }
    Ok(())
}

/// An empty sandbox with the overlay's directories, as the shim makes them, named
/// with its size (what `--disk`'s walk finds in it: its directories' own blocks).
fn make_ready(pool: &Path, ready: &Path) -> io::Result<()> {
    let new = tempfile::Builder::new()
        .prefix("new-")
        .tempdir_in(pool)?
        .keep();
    let upper_root = new.join(IMAGE_UPPER_IN_SANDBOX);
    let mut dir = std::fs::DirBuilder::new();
    dir.mode(0o700).create(&upper_root)?;
    dir.mode(0o755).create(upper_root.join("upper"))?;
    dir.mode(0o700).create(upper_root.join("work"))?;
    let name = new
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("new-"))
        .unwrap_or_default();
    let bytes = cella_containerizer::isolators::disk_usage(&new)?;
    std::fs::rename(&new, ready.join(format!("{name}+{bytes}")))
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ready_sandbox_names_its_size() {
        assert_eq!(super::size_in_name("Ab3xYz+16384"), Some(16384));
        assert_eq!(super::size_in_name("Ab3xYz+0"), Some(0));
        // Made by a build that did not record it: walked at launch as before.
        assert_eq!(super::size_in_name("Ab3xYz"), None);
        assert_eq!(super::size_in_name("Ab3xYz+"), None);
    }
}
