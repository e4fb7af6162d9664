//! `cella-shim`: the task's parent. A small, single-threaded, synchronous process
//! (no tokio) started by the launcher with the task's run directory as its only
//! argument. It reads `spec.json`, clones the task into new namespaces (on cgroup v2
//! straight into its cgroup; on v1 the child enters its cgroups itself, see
//! `child.rs`), lets it run, waits for it and records its exit status atomically. It
//! does not need the launcher: it runs in its own session and survives its death.
//!
//! Events for the launcher go to the `events` FIFO of the run directory as
//! [`ShimEvent`]s: `Running` once the task has exec'd, or `Failed` when it could not
//! start, then `Exited` when its status is recorded.
//!
//! Its fd 3 is the run directory's `spec.json`, `flock`ed by the launcher before the
//! shim started; the shim keeps it open (the task does not inherit it) until it
//! exits, so a launcher restarted at any moment knows whether a shim is alive or
//! starting even before `shim.pid` exists.

mod child;
mod in_root;
mod mounts;

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroups::Placement;
use crate::events::ShimEvent;
use crate::paths::RunDir;
use crate::spec::ShimSpec;
use crate::start_failure::StartFailure;
use crate::sys;
use crate::task::NetMode;

/// How the task ended, as recorded in `exit_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the task exited by itself.
    pub code: Option<i32>,
    /// The signal that killed the task.
    pub signal: Option<i32>,
    /// Set when the task never ran: (a [`StartFailure`]'s exit code, why).
    pub launch_failure: Option<(i32, String)>,
}

impl ExitStatus {
    /// Why the task never ran, if it did not.
    pub fn start_failure(&self) -> Option<StartFailure> {
        let (code, _) = self.launch_failure.as_ref()?;
        StartFailure::from_code(*code)
    }

    /// The shell convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (&self.launch_failure, self.code, self.signal) {
            (Some((code, _)), _, _) => *code,
            (None, Some(code), _) => code,
            (None, None, Some(sig)) => 128 + sig,
            (None, None, None) => StartFailure::Setup.exit_code(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error("{path}: invalid launch spec: {source}")]
    Spec {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShimError + '_ {
    move |source| ShimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> ShimError {
    move |source| ShimError::Sys { what, source }
}

/// Entry point of the `cella-shim` binary. Never returns.
pub fn main() -> ! {
    let mut args = std::env::args_os().skip(1);
    let (Some(run_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cella-shim RUN_DIR (started by cella, not by hand)");
        std::process::exit(2);
    };
    let run_dir = RunDir::from_path(PathBuf::from(run_dir));
    match run(&run_dir) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let line = format!("cella-shim: {e}\n");
            let _ = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run_dir.shim_log())
                .and_then(|mut f| f.write_all(line.as_bytes()));
            eprint!("{line}");
            std::process::exit(1);
        }
    }
}

fn run(run_dir: &RunDir) -> Result<(), ShimError> {
    let spec_path = run_dir.spec();
    let raw = fs::read(&spec_path).map_err(io_err(&spec_path))?;
    let spec: ShimSpec = serde_json::from_slice(&raw).map_err(|source| ShimError::Spec {
        path: spec_path.clone(),
        source,
    })?;

    // The shim must outlive a launcher that dies or is interrupted: a terminal's
    // Ctrl-C goes to the launcher, which kills the task through its cgroup.
    for sig in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing can run concurrently.
        unsafe { signal(sig, SigHandler::SigIgn) }
            .map_err(|e| sys_err("ignoring signals")(e.into()))?;
    }
    let _ = nix::unistd::setsid();

    // Opening without a reader fails with ENXIO: the launcher is already gone.
    let events_path = run_dir.events();
    let mut events = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&events_path)
        .ok();

    let me = nix::unistd::getpid().as_raw();
    write_atomic(&run_dir.shim_pid(), &pid_record(me))?;

    let status = match start_task(&spec, run_dir) {
        Ok((pid, failure)) => {
            let event = match &failure {
                None => ShimEvent::Running { pid },
                Some(f) => ShimEvent::Failed {
                    failure: f.failure,
                    message: f.message.clone(),
                },
            };
            send(&mut events, &event);
            release_memory();
            let mut status = wait_task(pid)?;
            status.launch_failure = failure.map(|f| (f.failure.exit_code(), f.message));
            status
        }
        Err(e) => {
            let message = e.to_string();
            send(
                &mut events,
                &ShimEvent::Failed {
                    failure: StartFailure::Setup,
                    message: message.clone(),
                },
            );
            ExitStatus {
                code: None,
                signal: None,
                launch_failure: Some((StartFailure::Setup.exit_code(), message)),
            }
        }
    };
    let json = serde_json::to_vec(&status)
        .map_err(|e| sys_err("encoding exit status")(io::Error::other(e)))?;
    write_atomic(&run_dir.exit_status(), &json)?;

    // A launcher that is gone will never clean up (cella exec killed with SIGKILL):
    // the shim does it, so nothing is left behind.
    let launcher_alive = send(&mut events, &ShimEvent::Exited);
    if !launcher_alive && spec.cleanup_if_orphaned {
        spec.cgroup.kill_and_remove();
        let _ = fs::remove_dir_all(run_dir.path());
    }
    Ok(())
}

/// Writes one event; false when nobody reads the FIFO any more.
fn send(events: &mut Option<fs::File>, event: &ShimEvent) -> bool {
    match events {
        Some(f) => f.write_all(event.encode().as_bytes()).is_ok(),
        None => false,
    }
}

/// Clones the task and lets it run. Returns its pid and, when it never reached
/// exec, why (the child reports through a close-on-exec pipe: EOF means exec'd).
fn start_task(
    spec: &ShimSpec,
    run_dir: &RunDir,
) -> Result<(i32, Option<child::Failure>), ShimError> {
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
    let stdio = match child::open_stdio(&spec.stdio) {
        Ok(files) => files,
        Err(failure) => {
            return Err(sys_err("the task's stdio")(io::Error::other(
                failure.message,
            )));
        }
    };

    let mut flags =
        (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;
    if spec.net == NetMode::None {
        flags |= libc::CLONE_NEWNET as u64;
    }
    if let Placement::Scope {
        dir,
        limits,
        devices,
    } = &spec.cgroup
    {
        crate::cgroups::enter_scope(dir, limits, devices)
            .map_err(|e| sys_err("the task's cgroup in its scope")(io::Error::other(e)))?;
    }
    let cgroup_dir: Option<OwnedFd> = match &spec.cgroup {
        Placement::V2 { dir } | Placement::Scope { dir, .. } => Some(
            fs::File::open(dir)
                .map(OwnedFd::from)
                .map_err(io_err(dir))?,
        ),
        Placement::V1 { .. } => None,
    };
    let forked = sys::fork_with_flags(flags, cgroup_dir.as_ref().map(AsRawFd::as_raw_fd))
        .map_err(sys_err("clone3 (new namespaces)"))?;
    let pid = match forked {
        sys::Forked::Child => {
            drop(err_r);
            child::run(spec, stdio.as_ref(), err_w)
        }
        sys::Forked::Parent(pid) => pid,
    };
    drop(err_w);
    drop(cgroup_dir);
    drop(stdio);
    // The child enters its v1 cgroups itself before anything else (see child.rs).
    let start = crate::proc_info::process_start_time(pid).unwrap_or(0);
    write_atomic(&run_dir.task_pid(), format!("{pid} {start}\n").as_bytes())?;

    let mut report = Vec::new();
    let mut err_r = fs::File::from(err_r);
    let _ = err_r.read_to_end(&mut report);
    Ok((pid, child::Failure::from_report(&report)))
}

fn wait_task(pid: i32) -> Result<ExitStatus, ShimError> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(ExitStatus {
                    code: Some(code),
                    signal: None,
                    launch_failure: None,
                });
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(ExitStatus {
                    code: None,
                    signal: Some(sig as i32),
                    launch_failure: None,
                });
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sys_err("waiting for the task")(e.into())),
        }
    }
}

/// The shim now only waits, possibly for days, once per running task: give back
/// what start-up touched. The pages of the read-only file mappings (the shim's code,
/// libc) leave its page tables; they stay in the page cache and fault back in if the
/// shim runs that code again. Then freed heap, including what reading smaps took,
/// goes back to the kernel.
fn release_memory() {
    use procfs::process::{MMPermissions, MMapPath, Process};
    if let Ok(maps) = Process::myself().and_then(|me| me.smaps()) {
        for map in &maps {
            let read_only_private_file = matches!(map.pathname, MMapPath::Path(_))
                && map.perms.contains(MMPermissions::PRIVATE)
                && !map.perms.contains(MMPermissions::WRITE);
            // Relocated (RELRO) pages are private copies: dropping them would lose the
            // relocations. Only mappings with no anonymous page are released.
            let untouched = map.extension.map.get("Anonymous") == Some(&0);
            let (Ok(start), Ok(end)) = (
                usize::try_from(map.address.0),
                usize::try_from(map.address.1),
            ) else {
                continue;
            };
            if read_only_private_file && untouched {
                // SAFETY: the range is a whole read-only private file mapping of this
                // process without modified pages (from /proc/self/smaps); MADV_DONTNEED
                // unmaps clean pages, which the kernel maps again from the file on the
                // next access.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
    }
    // SAFETY: malloc_trim only releases free heap memory; nothing else runs.
    unsafe { libc::malloc_trim(0) };
}

fn pid_record(pid: i32) -> Vec<u8> {
    format!(
        "{pid} {}\n",
        crate::proc_info::process_start_time(pid).unwrap_or(0)
    )
    .into_bytes()
}

/// Writes `path` so that readers see the old content or the new, never a part:
/// temp file, then rename. No fsync: the run directory describes processes that do
/// not survive a power loss either (it is on a tmpfs by design), and an fsync on a
/// busy disk cost milliseconds per launch (measured).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ShimError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}
