//! The launcher side of the containerizer: runs the isolator pipeline, starts
//! `cella-shim`, samples usage, enforces limits and cleans up.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::cgroups::{CgroupError, CgroupRoot, Placement};
use crate::isolators::COSTLY_USAGE_INTERVAL;
use crate::isolators::{
    CapabilitiesIsolator, CgroupsIsolator, DiskIsolator, FilesystemIsolator, Isolator,
    IsolatorError, NamespacesIsolator, PosixIsolator, SeccompIsolator,
};
use crate::paths::RunDir;
use crate::sealed_exe::SealedExe;
use crate::shim::ExitStatus;
use crate::spec::{FilesystemSpec, ShimSpec};
use crate::start_failure::StartFailure;
use crate::task::{NetMode, TaskConfig, TaskId};
use crate::usage::{Limitation, Peaks, Usage};

mod start;

pub use start::SHIM_LOCK_FD;
use start::open_shim_lock;

/// How the containerizer is set up on this machine.
#[derive(Debug, Clone)]
pub struct ContainerizerConfig {
    /// The `cella-shim` binary.
    pub shim_path: PathBuf,
    /// Run directories go to `<runtime_dir>/tasks/<id>`.
    pub runtime_dir: PathBuf,
    /// `--cgroup-root`: see [`CgroupRoot::discover`].
    pub cgroup_root: Option<PathBuf>,
    /// The shim cleans up after a task whose launcher died (`cella exec`); the agent
    /// recovers its tasks instead.
    pub cleanup_if_orphaned: bool,
    /// Host paths of the launcher's own state that a task without a rootfs must not
    /// see (the agent's work directory with every sandbox and its checkpoint, its TLS
    /// directory, ACL and credentials). The run directories, the shim and the host's
    /// secrets ([`crate::isolators::HOST_SECRETS`]) are always hidden.
    pub hidden: Vec<PathBuf>,
    /// Under systemd with cgroup v2 only (and no `cgroup_root`): each task in a
    /// transient scope of this slice (see [`CgroupRoot::discover_in_slice`]).
    pub systemd_slice: Option<String>,
}

impl ContainerizerConfig {
    /// The shim next to the running executable, or `$CELLA_SHIM`.
    pub fn default_shim_path() -> PathBuf {
        if let Some(path) = std::env::var_os("CELLA_SHIM") {
            return PathBuf::from(path);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("cella-shim")))
            .unwrap_or_else(|| PathBuf::from("cella-shim"))
    }
}

/// Why a launch did not produce a running task.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The task's configuration is wrong; nothing was created.
    #[error("{0}")]
    Invalid(IsolatorError),
    /// The machine could not set the task up ([`StartFailure::Setup`], exit code 125).
    #[error("{0}")]
    Setup(String),
    /// The task was set up but its command could not run: `code` is a
    /// [`StartFailure`]'s exit code, 126 (not executable) or 127 (not found), or 125
    /// for a failure inside the new namespaces (see [`LaunchError::start_failure`]).
    #[error("{message}")]
    Start { code: i32, message: String },
}

impl LaunchError {
    fn setup(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Setup(format!("{what}: {e}"))
    }

    /// Why the task never started, for a `Start` error.
    pub fn start_failure(&self) -> Option<StartFailure> {
        match self {
            Self::Start { code, .. } => StartFailure::from_code(*code),
            _ => None,
        }
    }
}

/// A task that is running (or has just ended and is not yet collected).
pub struct Running {
    pub id: TaskId,
    /// The task's pid in the launcher's pid namespace.
    pub pid: i32,
    /// The shim as our child (None after a recovery: it is no longer our child).
    shim: Option<Child>,
    shim_pid: i32,
    /// The shim's start time (clock ticks since boot, as in `shim.pid`).
    shim_start: u64,
    shim_pidfd: OwnedFd,
    run_dir: RunDir,
    /// Kept open so the shim knows its launcher is alive (see `cleanup_if_orphaned`).
    _events: Option<fs::File>,
    started: Instant,
    /// When the launch was asked for (ns since the epoch).
    started_ns: u64,
    /// When the costly figures (disk) were last measured.
    costly_sampled: Option<Instant>,
    peaks: Peaks,
    last: Usage,
    limitation: Option<Limitation>,
    exited_at: Option<Instant>,
}

impl Running {
    /// A descriptor that becomes readable when the task has ended (its shim exited).
    pub fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shim_pidfd.as_fd()
    }

    /// The shim's pid (with the start time in `shim.pid` of the run directory).
    pub fn shim_pid(&self) -> i32 {
        self.shim_pid
    }

    /// The shim's start time (clock ticks since boot; 0 if it could not be read):
    /// with the pid, what a launcher checkpoints to know the shim again.
    pub fn shim_start_time(&self) -> u64 {
        self.shim_start
    }

    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// The largest figures seen so far.
    pub fn peaks(&self) -> &Peaks {
        &self.peaks
    }

    /// How long ago the task was launched (or re-attached by recovery).
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The limit that ended (or is ending) the task, if any.
    pub fn limitation(&self) -> Option<Limitation> {
        self.limitation
    }
}

/// What [`Containerizer::recover`] found.
pub enum Recovered {
    /// The shim is alive: the task runs (or is ending) and is watched again.
    Running(Running),
    /// The task ended while the launcher was away; its exit status was recorded.
    /// Everything it left (cgroups, run directory) has been removed.
    Ended(Termination),
    /// Its outcome cannot be known (why); whatever was left has been removed.
    Unknown(String),
}

/// How a task ended, with what it used.
#[derive(Debug, Clone)]
pub struct Termination {
    pub status: ExitStatus,
    pub limitation: Option<Limitation>,
    /// The last sample (cumulative figures such as CPU time are final).
    pub usage: Usage,
    pub peaks: Peaks,
    /// From the launch request to the task's end.
    pub wall: Duration,
    /// When the task was launched and when it ended (ns since the epoch); 0 when
    /// unknown.
    pub started_ns: u64,
    pub ended_ns: u64,
}

/// The isolation pipeline of one machine.
pub struct Containerizer {
    config: ContainerizerConfig,
    cgroups: CgroupRoot,
    isolators: Vec<Box<dyn Isolator>>,
    /// The sealed copy of the shim every launch runs, made at the first launch.
    shim: OnceLock<Result<SealedExe, String>>,
}

impl Containerizer {
    pub fn new(config: ContainerizerConfig) -> Result<Self, CgroupError> {
        let cgroups = CgroupRoot::discover_in_slice(
            config.cgroup_root.as_deref(),
            config.systemd_slice.as_deref(),
        )?;
        // prepare runs in this order, cleanup in reverse. Only the disk (a project
        // quota) and cgroups isolators create anything in prepare, so they go last.
        let mut hidden = config.hidden.clone();
        hidden.push(config.runtime_dir.clone());
        hidden.push(config.shim_path.clone());
        let isolators: Vec<Box<dyn Isolator>> = vec![
            Box::new(FilesystemIsolator::new(hidden)),
            Box::new(NamespacesIsolator),
            Box::new(PosixIsolator),
            Box::new(CapabilitiesIsolator),
            Box::new(SeccompIsolator::new()),
            Box::new(DiskIsolator::new(cgroups.clone())),
            Box::new(CgroupsIsolator::new(cgroups.clone())),
        ];
        Ok(Self {
            config,
            cgroups,
            isolators,
            shim: OnceLock::new(),
        })
    }

    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    /// Starts `config` as task `id`. Returns once the task has exec'd its command.
    pub fn launch(&self, id: &TaskId, config: &TaskConfig) -> Result<Running, LaunchError> {
        let started = Instant::now();
        if config.command.is_empty() {
            return Err(LaunchError::Invalid(IsolatorError::invalid(
                "command",
                "no command given",
            )));
        }
        let run_dir = RunDir::new(&self.config.runtime_dir, id.as_str());
        // The run directory is the task's claim on its id: made before anything else,
        // so a second launch of an id that is still running (or not yet cleaned up)
        // is refused here, having touched nothing of the first task.
        claim_run_dir(&run_dir, id)?;
        let mut spec = ShimSpec {
            task_id: id.to_string(),
            run_dir: run_dir.path().to_path_buf(),
            args: config.command.clone(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            hostname: None,
            net: NetMode::Host,
            filesystem: FilesystemSpec {
                rootfs: None,
                overlay: None,
                binds: Vec::new(),
                tmp_size_bytes: None,
                devices: Vec::new(),
                masked: Vec::new(),
            },
            identity: None,
            rlimits: Vec::new(),
            capabilities: 0,
            seccomp: None,
            cgroup: Placement::V1 {
                procs_files: Vec::new(),
            },
            stdio: config.stdio.clone(),
            cleanup_if_orphaned: self.config.cleanup_if_orphaned,
        };
        let mut prepared = 0;
        for isolator in &self.isolators {
            if let Err(e) = isolator.prepare(id, config, &mut spec) {
                self.cleanup_isolators(id, prepared);
                let _ = fs::remove_dir_all(run_dir.path());
                return Err(match e {
                    IsolatorError::Invalid { .. } => LaunchError::Invalid(e),
                    IsolatorError::Failed { .. } => LaunchError::Setup(e.to_string()),
                });
            }
            prepared += 1;
        }
        match self.start_shim(id, &spec, &run_dir, config, started) {
            Ok(running) => Ok(running),
            Err(e) => {
                self.cleanup_isolators(id, prepared);
                let _ = fs::remove_dir_all(run_dir.path());
                self.cgroups.remove_base_if_empty();
                Err(e)
            }
        }
    }

    fn cleanup_isolators(&self, id: &TaskId, prepared: usize) {
        for isolator in self.isolators[..prepared].iter().rev() {
            if let Err(e) = isolator.cleanup(id) {
                tracing::warn!(task = %id, isolator = isolator.name(), "cleanup failed: {e}");
            }
        }
    }

    /// Takes a usage sample, folds it into the peaks, and enforces limits: a task
    /// over a limit that the kernel does not enforce itself (disk) is killed. The
    /// costly figures (the sandbox's disk) are measured at most every
    /// [`COSTLY_USAGE_INTERVAL`] and carried over in between, so the counters can be
    /// sampled densely.
    pub fn sample(&self, running: &mut Running) -> Usage {
        self.sample_with(running, false)
    }

    /// `last`: the task has ended, every figure is measured afresh.
    fn sample_with(&self, running: &mut Running, last: bool) -> Usage {
        let costly_due = last
            || running
                .costly_sampled
                .is_none_or(|at| at.elapsed() >= COSTLY_USAGE_INTERVAL);
        let mut usage = Usage::default();
        for isolator in &self.isolators {
            if last {
                isolator.final_usage(&running.id, &mut usage);
            } else if costly_due || !isolator.usage_is_costly() {
                isolator.usage(&running.id, &mut usage);
            }
        }
        if costly_due {
            running.costly_sampled = Some(Instant::now());
        } else {
            usage.disk_used_bytes = running.last.disk_used_bytes;
        }
        running.peaks.observe(&usage);
        if running.limitation.is_none() {
            running.limitation = self
                .isolators
                .iter()
                .find_map(|i| i.watch(&running.id, &usage));
            if running.limitation == Some(Limitation::DiskLimit) {
                let _ = self.kill(running);
            }
        }
        running.last = usage.clone();
        usage
    }

    /// Waits up to `timeout` for the task to end; true when it has.
    pub fn wait(&self, running: &mut Running, timeout: Duration) -> bool {
        if running.exited_at.is_some() {
            return true;
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(running.shim_pidfd.as_fd(), PollFlags::POLLIN)];
        let ready = matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0);
        if ready {
            running.exited_at = Some(Instant::now());
        }
        ready
    }

    /// Asks the task to stop: SIGTERM to every process in its cgroups. The task's
    /// first process is PID 1 of its pid namespace, which the kernel shields from
    /// every signal it has no handler for: if it neither catches nor ignores SIGTERM,
    /// SIGTERM would have ended it outside a container, so nothing is sent and the
    /// answer is `false` (the caller kills it at once). `true`: SIGTERM was sent.
    pub fn terminate(&self, running: &Running) -> Result<bool, CgroupError> {
        let Ok(status) = procfs::process::Process::new(running.pid).and_then(|p| p.status()) else {
            // Gone already (or unreadable): nothing to ask.
            return Ok(false);
        };
        let sigterm = 1u64 << (libc::SIGTERM - 1);
        if (status.sigcgt | status.sigign) & sigterm == 0 {
            return Ok(false);
        }
        for pid in self.cgroups.open(running.id.as_str()).pids()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        Ok(true)
    }

    /// Kills every process of the task (through its cgroups, so daemonized ones too).
    pub fn kill(&self, running: &Running) -> Result<(), CgroupError> {
        self.cgroups.open(running.id.as_str()).kill()
    }

    /// Waits for the task to end, collects its status and final usage, and removes
    /// everything the launch created.
    pub fn finish(&self, running: Running) -> Termination {
        let id = running.id.clone();
        let termination = self.collect(running);
        self.destroy(&id);
        termination
    }

    /// Waits for the task to end and collects its status and final usage, leaving
    /// its run directory and cgroups in place: a launcher that records the outcome
    /// first and then calls [`Containerizer::destroy`] can crash in between, and
    /// [`Containerizer::recover`] still finds the same outcome.
    pub fn collect(&self, mut running: Running) -> Termination {
        while !self.wait(&mut running, Duration::from_secs(1)) {}
        if let Some(shim) = running.shim.as_mut() {
            let _ = shim.wait();
        }
        let wall = running.exited_at.unwrap_or_else(Instant::now) - running.started;
        let ended_ns = running
            .started_ns
            .saturating_add(u64::try_from(wall.as_nanos()).unwrap_or(0));
        // The last sample, before the cgroups go: the CPU, I/O and OOM counters are
        // final and the kernel's memory peak is kept.
        let usage = self.sample_with(&mut running, true);
        let status = fs::read(running.run_dir.exit_status())
            .ok()
            .and_then(|raw| serde_json::from_slice::<ExitStatus>(&raw).ok())
            .unwrap_or_else(|| ExitStatus {
                code: None,
                signal: None,
                launch_failure: Some((
                    StartFailure::Setup.exit_code(),
                    "the shim ended without recording the task's exit status".into(),
                )),
            });
        let failed = status.code != Some(0);
        let limitation = running.limitation.filter(|_| failed).or_else(|| {
            let pids_hit = running.last.pids_limit_hits.is_some_and(|n| n > 0);
            (failed && pids_hit).then_some(Limitation::PidsLimit)
        });
        Termination {
            status,
            limitation,
            usage,
            peaks: running.peaks.clone(),
            wall,
            started_ns: running.started_ns,
            ended_ns,
        }
    }

    /// Re-attaches to task `id` after a restart of the launcher (the agent), from its
    /// run directory: a live shim is identified by pid **and** start time, so a pid
    /// reused by an unrelated process is never taken for it. `config` is the task's
    /// configuration as it was launched (isolators rebuild their state from it).
    ///
    /// `checkpointed_shim` is the shim's (pid, start time) as the launcher recorded
    /// them, if it did: a run directory that names another shim is not the task's.
    ///
    /// A task that ended (or whose outcome cannot be known) keeps its leftovers: the
    /// caller records the outcome, then calls [`Containerizer::destroy`], so that a
    /// crash in between recovers the same outcome again.
    pub fn recover(
        &self,
        id: &TaskId,
        config: &TaskConfig,
        checkpointed_shim: Option<(i32, u64)>,
    ) -> Recovered {
        let run_dir = RunDir::new(&self.config.runtime_dir, id.as_str());
        let record = |path: PathBuf| -> Option<(i32, u64)> {
            let text = fs::read_to_string(path).ok()?;
            let mut fields = text.split_whitespace();
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        };
        let mut shim = record(run_dir.shim_pid());
        if shim.is_none() && shim_lock_held(&run_dir.spec()) {
            // The previous launcher stopped just after starting the shim, which has
            // not written its pid yet: wait for it (it is starting, not gone).
            let deadline = Instant::now() + SHIM_START_WAIT;
            while shim.is_none() && Instant::now() < deadline && shim_lock_held(&run_dir.spec()) {
                std::thread::sleep(Duration::from_millis(5));
                shim = record(run_dir.shim_pid());
            }
        }
        if let (Some(expected), Some(found)) = (checkpointed_shim, shim)
            && expected != found
        {
            return Recovered::Unknown(format!(
                "its run directory names shim (pid, start time) {found:?}, the checkpoint \
                 {expected:?}: it is not the task's own"
            ));
        }
        let alive = shim.filter(|(pid, start)| {
            crate::proc_info::process_start_time(*pid) == Some(*start)
                && !crate::proc_info::process_is_zombie(*pid)
        });
        if let Some((shim_pid, shim_start)) = alive {
            let task_pid = record(run_dir.task_pid()).map_or(0, |(pid, _)| pid);
            if let Ok(shim_pidfd) = crate::sys::pidfd_open(shim_pid) {
                for isolator in &self.isolators {
                    if let Err(e) = isolator.recover(&[(id.clone(), config.clone())]) {
                        tracing::warn!(task = %id, isolator = isolator.name(), "recover: {e}");
                    }
                    isolator.isolate(id, task_pid);
                }
                // Reopened so the shim's last event finds a reader (it tells the shim
                // its launcher is alive again).
                let events = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(run_dir.events())
                    .ok();
                return Recovered::Running(Running {
                    id: id.clone(),
                    pid: task_pid,
                    shim: None,
                    shim_pid,
                    shim_start,
                    shim_pidfd,
                    run_dir,
                    _events: events,
                    started: Instant::now(),
                    started_ns: crate::proc_info::boot_ticks_to_epoch_ns(shim_start).unwrap_or(0),
                    costly_sampled: None,
                    peaks: Peaks::default(),
                    last: Usage::default(),
                    limitation: None,
                    exited_at: None,
                });
            }
        }
        // The shim is gone: its exit status says how the task ended, if it got that far.
        let status = fs::read(run_dir.exit_status())
            .ok()
            .and_then(|raw| serde_json::from_slice::<ExitStatus>(&raw).ok());
        let why = match (&status, shim) {
            (Some(_), _) => String::new(),
            (None, Some(_)) => "its shim ended without recording an exit status".to_string(),
            (None, None) => {
                "its run directory is missing or incomplete (was the machine rebooted, \
                             or the runtime directory removed?)"
                    .to_string()
            }
        };
        // The isolators learn of the task too, so that destroy releases what it held
        // (a disk quota's project id).
        for isolator in &self.isolators {
            if let Err(e) = isolator.recover(&[(id.clone(), config.clone())]) {
                tracing::warn!(task = %id, isolator = isolator.name(), "recover: {e}");
            }
        }
        // What the cgroups still know (CPU time, OOM kills) is collected before they go.
        let mut usage = Usage::default();
        for isolator in &self.isolators {
            isolator.final_usage(id, &mut usage);
        }
        let mut peaks = Peaks::default();
        peaks.observe(&usage);
        match status {
            Some(status) => {
                let failed = status.code != Some(0);
                let limitation = if failed && usage.oom_kills.is_some_and(|n| n > 0) {
                    Some(Limitation::MemoryLimit)
                } else if failed && usage.pids_limit_hits.is_some_and(|n| n > 0) {
                    Some(Limitation::PidsLimit)
                } else {
                    None
                };
                let started_ns = shim
                    .and_then(|(_, ticks)| crate::proc_info::boot_ticks_to_epoch_ns(ticks))
                    .unwrap_or(0);
                // The shim wrote the exit status right after the task ended.
                let ended_ns = fs::metadata(run_dir.exit_status())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
                Recovered::Ended(Termination {
                    status,
                    limitation,
                    usage,
                    peaks,
                    wall: Duration::from_nanos(ended_ns.saturating_sub(started_ns)),
                    started_ns,
                    ended_ns,
                })
            }
            None => Recovered::Unknown(why),
        }
    }

    /// Removes everything of task `id`: kills what is left, cleans up every
    /// isolator and the run directory. Idempotent.
    pub fn destroy(&self, id: &TaskId) {
        self.cleanup_isolators(id, self.isolators.len());
        let _ = fs::remove_dir_all(RunDir::new(&self.config.runtime_dir, id.as_str()).path());
        self.cgroups.remove_base_if_empty();
    }
}

/// Makes task `id`'s run directory (and the runtime directory above it). An existing
/// one belongs to a task of that id that runs or has not been destroyed yet.
fn claim_run_dir(run_dir: &RunDir, id: &TaskId) -> Result<(), LaunchError> {
    let dir = run_dir.path();
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| LaunchError::setup(&parent.display().to_string(), e))?;
    }
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(LaunchError::Invalid(IsolatorError::invalid(
                "task id",
                format!(
                    "a task {id} is still running or being cleaned up here ({} exists); \
                     use another id or wait for it to end",
                    dir.display()
                ),
            )))
        }
        Err(e) => Err(LaunchError::setup(&dir.display().to_string(), e)),
    }
}

/// How long recovery waits for a starting shim (its lock taken) to record its pid.
const SHIM_START_WAIT: Duration = Duration::from_secs(5);

/// Whether some process (a live or starting shim) holds the lock on the run
/// directory's `spec.json`. A missing file means no shim was ever started with it.
fn shim_lock_held(path: &std::path::Path) -> bool {
    let Ok(file) = open_shim_lock(path) else {
        return false;
    };
    // The guard releases the shared lock this probe may take.
    matches!(
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}
