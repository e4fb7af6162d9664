//! Starting `cella-shim` for a task: its run directory and launch spec, the events
//! FIFO, the lock the shim holds for its whole life, and the wait for its first event.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio as ProcStdio};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{Containerizer, LaunchError, Running};
use crate::events::ShimEvent;
use crate::paths::RunDir;
use crate::sealed_exe::SealedExe;
use crate::spec::ShimSpec;
use crate::task::{Stdio, TaskConfig, TaskId};
use crate::usage::{Peaks, Usage};

/// The shim's descriptor number for the run directory's locked `spec.json` (see
/// [`RunDir::spec`]).
pub const SHIM_LOCK_FD: i32 = 3;

pub(super) fn open_shim_lock(path: &std::path::Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl Containerizer {
    pub(super) fn start_shim(
        &self,
        id: &TaskId,
        spec: &ShimSpec,
        run_dir: &RunDir,
        config: &TaskConfig,
        started: Instant,
    ) -> Result<Running, LaunchError> {
        let spec_json = serde_json::to_vec(spec)
            .map_err(|e| LaunchError::setup("encoding the launch spec", e))?;
        // The spec holds the task's environment, secrets included: only root reads it.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(run_dir.spec())
            .and_then(|mut f| f.write_all(&spec_json))
            .map_err(|e| LaunchError::setup(&run_dir.spec().display().to_string(), e))?;
        let events_path = run_dir.events();
        nix::unistd::mkfifo(
            &events_path,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| LaunchError::setup(&events_path.display().to_string(), e))?;
        let mut events = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&events_path)
            .map_err(|e| LaunchError::setup(&events_path.display().to_string(), e))?;

        // The shim inherits this locked descriptor of spec.json as its fd 3 and holds
        // it until it exits: a launcher restarted at any moment can tell a live (or
        // starting) shim from one that never started or has ended, without a race.
        let lock = open_shim_lock(&run_dir.spec())
            .map_err(|e| LaunchError::setup(&run_dir.spec().display().to_string(), e))?;
        // libc's flock, not nix's Flock guard: the lock must outlive this descriptor
        // (the shim keeps it), and the guard would unlock it when dropped.
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LaunchError::setup(
                "locking spec.json",
                io::Error::last_os_error(),
            ));
        }
        let shim = self
            .shim
            .get_or_init(|| {
                SealedExe::copy_of(&self.config.shim_path)
                    .map_err(|e| format!("copying the shim into sealed memory: {e}"))
            })
            .as_ref()
            .map_err(|e| LaunchError::Setup(e.clone()))?;
        let mut launcher = self.cgroups.shim_launcher(id.as_str()).into_iter();
        // Through a launcher (systemd-run, which execs the shim in the task's scope)
        // the sealed copy's descriptor must survive the first exec: it is then the
        // launcher that execs `/proc/self/fd/N`.
        let (mut command, shim_fd) = match launcher.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(launcher).arg(shim.exec_path());
                (c, Some(shim.raw_fd()))
            }
            None => {
                let mut c = Command::new(shim.exec_path());
                c.arg0(shim.source());
                (c, None)
            }
        };
        command.arg(run_dir.path());
        let lock_fd = lock.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls dup2 and fcntl, which
        // are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if lock_fd == SHIM_LOCK_FD {
                    let flags = libc::fcntl(SHIM_LOCK_FD, libc::F_GETFD);
                    if flags < 0
                        || libc::fcntl(SHIM_LOCK_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(lock_fd, SHIM_LOCK_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = shim_fd {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if let Stdio::Files { .. } = config.stdio {
            let log = fs::File::create(run_dir.shim_log())
                .map_err(|e| LaunchError::setup(&run_dir.shim_log().display().to_string(), e))?;
            command
                .stdin(ProcStdio::null())
                .stdout(ProcStdio::null())
                .stderr(log);
        }
        let mut shim = command.spawn().map_err(|e| {
            LaunchError::setup(
                &format!("starting the shim {}", self.config.shim_path.display()),
                e,
            )
        })?;
        // The shim holds the lock now; this copy is not needed.
        drop(lock);
        let shim_pid = i32::try_from(shim.id()).map_err(|e| LaunchError::setup("shim pid", e))?;
        let shim_pidfd =
            crate::sys::pidfd_open(shim_pid).map_err(|e| LaunchError::setup("pidfd_open", e))?;

        // Wait for the shim's first event: the task exec'd, or why it did not.
        let mut line = Vec::new();
        let event = loop {
            if let Some(end) = line.iter().position(|b| *b == b'\n') {
                break String::from_utf8_lossy(&line[..end]).into_owned();
            }
            let mut fds = [
                PollFd::new(events.as_fd(), PollFlags::POLLIN),
                PollFd::new(shim_pidfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(LaunchError::setup("waiting for the shim", e)),
            }
            let mut buf = [0u8; 4096];
            match events.read(&mut buf) {
                Ok(n) if n > 0 => {
                    line.extend_from_slice(&buf[..n]);
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(LaunchError::setup("reading shim events", e)),
            }
            if let Some(status) = shim
                .try_wait()
                .map_err(|e| LaunchError::setup("waiting for the shim", e))?
            {
                let log = fs::read_to_string(run_dir.shim_log()).unwrap_or_default();
                return Err(LaunchError::Setup(format!(
                    "the shim exited ({status}) before starting the task{}{}",
                    if log.is_empty() { "" } else { ": " },
                    log.trim()
                )));
            }
        };
        // Read while the shim is our unreaped child: the pid cannot be reused yet.
        let shim_start = crate::proc_info::process_start_time(shim_pid).unwrap_or(0);
        let running = |pid| Running {
            id: id.clone(),
            pid,
            shim: Some(shim),
            shim_pid,
            shim_start,
            shim_pidfd,
            run_dir: run_dir.clone(),
            _events: Some(events),
            started,
            started_ns: cella_proto::time::now_ns()
                .saturating_sub(u64::try_from(started.elapsed().as_nanos()).unwrap_or(0)),
            costly_sampled: None,
            peaks: Peaks::default(),
            last: Usage::default(),
            limitation: None,
            exited_at: None,
        };
        match ShimEvent::decode(&event) {
            Ok(ShimEvent::Running { pid }) => {
                for isolator in &self.isolators {
                    isolator.isolate(id, pid);
                }
                Ok(running(pid))
            }
            Ok(ShimEvent::Failed { failure, message }) => {
                let mut r = running(0);
                if let Some(shim) = r.shim.as_mut() {
                    let _ = shim.wait();
                }
                Err(LaunchError::Start {
                    code: failure.exit_code(),
                    message,
                })
            }
            Ok(ShimEvent::Exited) => Err(LaunchError::Setup(format!(
                "the shim reported the task's end before its start: {event:?}"
            ))),
            Err(e) => Err(LaunchError::Setup(e.to_string())),
        }
    }
}
