//! Launching, watching, killing and sampling tasks.
//!
//! The containerizer is synchronous, so its calls run on tokio's blocking pool;
//! launches are bounded by a semaphore (twice the agent's CPUs by default). A running
//! task costs no thread: its monitor awaits the shim's pidfd with [`AsyncFd`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cella_containerizer::task::{Resources as TaskResources, Stdio};
use cella_containerizer::units::{MilliCpus, format_bytes};
use cella_containerizer::{
    LaunchError, Limitation, NetMode, TaskConfig, TaskId, Termination, Usage, Volume,
};
use cella_proto::v1;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::agent::{Core, Task, is_terminal, lock, now_ns};
use crate::store::Write;

fn status(task_id: &str, framework_id: &str, state: v1::TaskState) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: task_id.to_string(),
        framework_id: framework_id.to_string(),
        state: state as i32,
        ..Default::default()
    }
}

async fn send(core: &Core, status: v1::TaskStatus) {
    if let Err(e) = core.send_status(status).await {
        // Without a checkpoint the update could be lost in a crash; it is still
        // tracked in memory only if the write succeeded, so say so loudly.
        tracing::error!("status update not checkpointed (it is not sent): {e}");
    }
}

/// Maps the wire's TaskInfo to the containerizer's configuration.
pub fn task_config(info: &v1::TaskInfo, sandbox: &Path) -> Result<TaskConfig, String> {
    if info.command.is_empty() || info.command[0].is_empty() {
        return Err("command: empty; give the program and its arguments".into());
    }
    let mut config = TaskConfig::new(info.command.clone(), sandbox.to_path_buf());
    for kv in &info.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(format!("env: {kv:?} is not KEY=VALUE"));
        }
    }
    config.env = info.env.clone();
    let r = info.resources.unwrap_or_default();
    if !r.cpus.is_finite() || r.cpus < 0.0 || r.cpus > 1e6 {
        return Err(format!("resources.cpus: {} is not a CPU count", r.cpus));
    }
    // Rounded up to a thousandth of a CPU; the value is finite and in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millis = (r.cpus * 1000.0).ceil() as u64;
    config.resources = TaskResources {
        cpus: (millis > 0).then_some(MilliCpus(millis)),
        memory_bytes: (r.mem_bytes > 0).then_some(r.mem_bytes),
        pids: (info.pids_limit > 0).then_some(info.pids_limit),
        disk_bytes: (r.disk_bytes > 0).then_some(r.disk_bytes),
    };
    config.net = match v1::NetMode::try_from(info.net) {
        Ok(v1::NetMode::Host) => NetMode::Host,
        Ok(v1::NetMode::None) => NetMode::None,
        Err(_) => return Err(format!("net: unknown mode {}", info.net)),
    };
    config.rootfs = (!info.rootfs.is_empty()).then(|| PathBuf::from(&info.rootfs));
    config.user = (!info.user.is_empty()).then(|| info.user.clone());
    config.hostname = (!info.hostname.is_empty()).then(|| info.hostname.clone());
    config.volumes = info
        .volumes
        .iter()
        .map(|v| Volume {
            host: PathBuf::from(&v.host_path),
            task: PathBuf::from(&v.task_path),
            read_only: v.read_only,
        })
        .collect();
    config.stdio = Stdio::Files {
        stdout: sandbox.join("stdout"),
        stderr: sandbox.join("stderr"),
    };
    config.measure_disk = true;
    Ok(config)
}

fn prepare_sandbox(sandbox: &Path) -> Result<(), String> {
    std::fs::create_dir_all(sandbox)
        .map_err(|e| format!("creating the sandbox {}: {e}", sandbox.display()))?;
    for name in ["stdout", "stderr"] {
        let path = sandbox.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Takes a recovered task's handle: records its pids and returns its slot (for
/// [`watch`]).
pub fn adopt(core: &Arc<Core>, id: &str, running: Running) -> Arc<Mutex<Option<Running>>> {
    let (pid, shim_pid, shim_start_time) =
        (running.pid, running.shim_pid(), running.shim_start_time());
    let slot = Arc::new(Mutex::new(Some(running)));
    if let Some(t) = lock(&core.tasks).get_mut(id) {
        t.pid = pid;
        t.shim_pid = shim_pid;
        t.shim_start_time = shim_start_time;
        t.running = Some(slot.clone());
    }
    slot
}

/// Watches a task (recovered) with the same monitor as a launched one.
pub fn watch(core: Arc<Core>, id: String, framework_id: String, slot: Arc<Mutex<Option<Running>>>) {
    let exit_fd = match lock(&slot).as_ref() {
        Some(r) => r.exit_fd().try_clone_to_owned(),
        None => return,
    };
    tokio::spawn(async move {
        monitor(core, id, framework_id, slot, exit_fd).await;
    });
}

/// Handles a Launch from the master.
pub async fn launch(core: Arc<Core>, framework_id: String, info: v1::TaskInfo) {
    let started = Instant::now();
    let id = info.task_id.clone();
    if core.cleaning_up.load(std::sync::atomic::Ordering::SeqCst) {
        let mut s = status(&id, &framework_id, v1::TaskState::TaskLost);
        s.reason = v1::Reason::AgentRestarted as i32;
        s.message =
            "the agent is cleaning up (--recover cleanup) and stops: launch the task elsewhere"
                .into();
        if let Err(e) = core.send_status_detached(s).await {
            tracing::error!("status update not checkpointed (it is not sent): {e}");
        }
        return;
    }
    let task_id = match TaskId::new(id.clone()) {
        Ok(t) => t,
        Err(e) => {
            core.metrics
                .launched("error", started.elapsed().as_secs_f64());
            let mut s = status(&id, &framework_id, v1::TaskState::TaskError);
            s.reason = v1::Reason::InvalidTask as i32;
            s.message = e.to_string();
            send(&core, s).await;
            return;
        }
    };
    let sandbox = core.sandbox_dir(&id);
    let duplicate = lock(&core.tasks).contains_key(&id);
    if duplicate {
        core.metrics
            .launched("error", started.elapsed().as_secs_f64());
        let mut s = status(&id, &framework_id, v1::TaskState::TaskError);
        s.reason = v1::Reason::InvalidTask as i32;
        s.message =
            format!("task id {id:?} is already used on this agent: task ids must be unique");
        // Sent for the id, not recorded against the existing task.
        if let Err(e) = core.send_status_detached(s).await {
            tracing::error!("status update not checkpointed (it is not sent): {e}");
        }
        return;
    }
    let config = match task_config(&info, &sandbox) {
        Ok(c) => c,
        Err(message) => {
            core.metrics
                .launched("error", started.elapsed().as_secs_f64());
            let mut s = status(&id, &framework_id, v1::TaskState::TaskError);
            s.reason = v1::Reason::InvalidTask as i32;
            s.message = message;
            send(&core, s).await;
            return;
        }
    };
    lock(&core.tasks).insert(
        id.clone(),
        Task {
            framework_id: framework_id.clone(),
            info: info.clone(),
            state: v1::TaskState::TaskStarting,
            sandbox: sandbox.clone(),
            pid: 0,
            shim_pid: 0,
            shim_start_time: 0,
            launched_ns: now_ns(),
            ended_ns: 0,
            kill_requested: false,
            running: None,
            usage: None,
        },
    );
    send(
        &core,
        status(&id, &framework_id, v1::TaskState::TaskStarting),
    )
    .await;

    let permit = core.launch_permits.acquire().await;
    let c = core.containerizer.clone();
    let sandbox_for_launch = sandbox.clone();
    let launched = tokio::task::spawn_blocking(move || {
        prepare_sandbox(&sandbox_for_launch).map_err(LaunchError::Setup)?;
        c.launch(&task_id, &config)
    })
    .await;
    drop(permit);
    let elapsed = started.elapsed().as_secs_f64();
    let running = match launched {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            let (state, reason, outcome) = match &e {
                LaunchError::Invalid(_) => {
                    (v1::TaskState::TaskError, v1::Reason::InvalidTask, "error")
                }
                LaunchError::Start { code: 127, .. } => (
                    v1::TaskState::TaskFailed,
                    v1::Reason::CommandNotFound,
                    "failed",
                ),
                LaunchError::Start { code: 126, .. } => (
                    v1::TaskState::TaskFailed,
                    v1::Reason::CommandNotExecutable,
                    "failed",
                ),
                _ => (
                    v1::TaskState::TaskFailed,
                    v1::Reason::LaunchFailed,
                    "failed",
                ),
            };
            core.metrics.launched(outcome, elapsed);
            tracing::info!(task = %id, "launch failed: {e}");
            let mut s = status(&id, &framework_id, state);
            s.reason = reason as i32;
            s.message = e.to_string();
            if let LaunchError::Start { code, .. } = &e {
                s.exit_code = Some(*code);
            }
            send(&core, s).await;
            return;
        }
        Err(join) => {
            core.metrics.launched("failed", elapsed);
            let mut s = status(&id, &framework_id, v1::TaskState::TaskFailed);
            s.reason = v1::Reason::LaunchFailed as i32;
            s.message = format!("the launch did not complete: {join}");
            send(&core, s).await;
            return;
        }
    };
    core.metrics.launched("running", elapsed);
    let exit_fd = running.exit_fd().try_clone_to_owned();
    let pid = running.pid;
    let shim_pid = running.shim_pid();
    let shim_start_time = running.shim_start_time();
    let slot = Arc::new(Mutex::new(Some(running)));
    let kill_now = {
        let mut tasks = lock(&core.tasks);
        match tasks.get_mut(&id) {
            Some(t) => {
                t.pid = pid;
                t.shim_pid = shim_pid;
                t.shim_start_time = shim_start_time;
                t.running = Some(slot.clone());
                t.kill_requested
            }
            None => true,
        }
    };
    send(
        &core,
        status(&id, &framework_id, v1::TaskState::TaskRunning),
    )
    .await;
    if kill_now {
        kill_slot(&core, &slot).await;
    }
    let monitor_core = core.clone();
    tokio::spawn(async move {
        monitor(monitor_core, id, framework_id, slot, exit_fd).await;
    });
}

pub async fn kill_slot(core: &Arc<Core>, slot: &Arc<Mutex<Option<Running>>>) {
    let c = core.containerizer.clone();
    let slot = slot.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(running) = lock(&slot).as_ref()
            && let Err(e) = c.kill(running)
        {
            tracing::warn!(task = %running.id, "kill failed: {e}");
        }
    })
    .await;
}

use cella_containerizer::Running;

/// Waits for the task to end, collects it and reports its terminal status.
async fn monitor(
    core: Arc<Core>,
    id: String,
    framework_id: String,
    slot: Arc<Mutex<Option<Running>>>,
    exit_fd: std::io::Result<OwnedFd>,
) {
    let registered = exit_fd.and_then(|fd| {
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the descriptor stays open and
        // refers to the same pidfd for the AsyncFd's whole life.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    });
    match registered {
        Ok(fd) => {
            if let Err(e) = fd.readable().await {
                tracing::warn!(task = %id, "waiting on the task's pidfd: {e}; polling instead");
                wait_polling(&core, &slot).await;
            }
        }
        Err(e) => {
            tracing::warn!(task = %id, "cannot watch the task's pidfd: {e}; polling instead");
            wait_polling(&core, &slot).await;
        }
    }
    let c = core.containerizer.clone();
    let taken = lock(&slot).take();
    let Some(running) = taken else {
        return;
    };
    let task_id = running.id.clone();
    let termination = match tokio::task::spawn_blocking(move || c.collect(running)).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(task = %id, "collecting the task failed: {e}");
            let mut s = status(&id, &framework_id, v1::TaskState::TaskLost);
            s.reason = v1::Reason::LaunchFailed as i32;
            s.message = format!("the agent could not collect the task's exit status: {e}");
            if let Some(t) = lock(&core.tasks).get_mut(&id) {
                t.running = None;
            }
            send(&core, s).await;
            let c = core.containerizer.clone();
            let _ = tokio::task::spawn_blocking(move || c.destroy(&task_id)).await;
            return;
        }
    };
    let (kill_requested, info) = {
        let mut tasks = lock(&core.tasks);
        match tasks.get_mut(&id) {
            Some(t) => {
                t.running = None;
                t.usage = Some(usage_to_wire(&id, &termination.usage));
                (t.kill_requested, t.info.clone())
            }
            None => (false, v1::TaskInfo::default()),
        }
    };
    let mut s = terminal_status(&termination, kill_requested, &info);
    if s.state() == v1::TaskState::TaskKilled
        && core.cleaning_up.load(std::sync::atomic::Ordering::SeqCst)
    {
        s.reason = v1::Reason::AgentRestarted as i32;
        s.message = format!(
            "killed by the agent's recovery cleanup (--recover cleanup): {}",
            s.message
        );
    }
    s.task_id = id.clone();
    s.framework_id = framework_id;
    tracing::info!(task = %id, state = s.state().as_str_name(), "{}", s.message);
    send(&core, s).await;
    // Only now that the end is checkpointed: an agent that crashed before this
    // finds the run directory and reports the same end again.
    let c = core.containerizer.clone();
    let _ = tokio::task::spawn_blocking(move || c.destroy(&task_id)).await;
}

async fn wait_polling(core: &Arc<Core>, slot: &Arc<Mutex<Option<Running>>>) {
    loop {
        let c = core.containerizer.clone();
        let slot = slot.clone();
        let done = tokio::task::spawn_blocking(move || match lock(&slot).as_mut() {
            Some(r) => c.wait(r, Duration::from_millis(0)),
            None => true,
        })
        .await
        .unwrap_or(true);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| format!("signal {signal} ({})", s.as_str()))
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// The terminal status of a task that ran, for people and programs.
pub fn terminal_status(
    t: &Termination,
    kill_requested: bool,
    info: &v1::TaskInfo,
) -> v1::TaskStatus {
    let code = t.status.code;
    let signal = t.status.signal;
    let how = match (code, signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by {}", signal_name(s)),
        (None, None) => "ended without an exit status".to_string(),
    };
    let resources = info.resources.unwrap_or_default();
    let (state, reason, message) = if let Some((code, why)) = &t.status.launch_failure {
        let reason = match code {
            127 => v1::Reason::CommandNotFound,
            126 => v1::Reason::CommandNotExecutable,
            _ => v1::Reason::LaunchFailed,
        };
        (v1::TaskState::TaskFailed, reason, why.clone())
    } else if kill_requested && code != Some(0) {
        (
            v1::TaskState::TaskKilled,
            v1::Reason::KilledByRequest,
            format!("killed on request ({how})"),
        )
    } else if let Some(limitation) = t.limitation {
        match limitation {
            Limitation::MemoryLimit => (
                v1::TaskState::TaskFailed,
                v1::Reason::MemoryLimit,
                format!(
                    "memory limit of {} reached: the kernel killed the task ({how}); give it more memory (e.g. cella run --mem)",
                    format_bytes(resources.mem_bytes)
                ),
            ),
            Limitation::DiskLimit => (
                v1::TaskState::TaskFailed,
                v1::Reason::DiskLimit,
                format!(
                    "disk limit of {} reached: the task wrote more than that in its sandbox and Cella killed it; give it more disk (e.g. cella run --disk)",
                    format_bytes(resources.disk_bytes)
                ),
            ),
            Limitation::PidsLimit => (
                v1::TaskState::TaskFailed,
                v1::Reason::PidsLimit,
                format!(
                    "process limit of {} reached: a fork failed and the task then {how}; raise the task's pids limit",
                    info.pids_limit
                ),
            ),
        }
    } else if code == Some(0) {
        (
            v1::TaskState::TaskFinished,
            v1::Reason::CommandExited,
            how.clone(),
        )
    } else {
        (
            v1::TaskState::TaskFailed,
            v1::Reason::CommandExited,
            how.clone(),
        )
    };
    v1::TaskStatus {
        state: state as i32,
        reason: reason as i32,
        message,
        exit_code: code.or_else(|| t.status.launch_failure.as_ref().map(|(c, _)| *c)),
        signal,
        ..Default::default()
    }
}

/// Handles a Kill from the master.
pub async fn kill(core: Arc<Core>, framework_id: String, task_id: String) {
    enum Found {
        Ended,
        Unknown,
        Live(Option<Arc<Mutex<Option<Running>>>>),
    }
    let (found, durable) = {
        let mut tasks = lock(&core.tasks);
        match tasks.get_mut(&task_id) {
            Some(t) if is_terminal(t.state) => (Found::Ended, None),
            Some(t) => {
                let first = !t.kill_requested;
                t.kill_requested = true;
                // Durable before the kill is delivered: an agent restarted in between
                // kills the task again and reports it KILLED. Queued under the lock so
                // that no older copy of the record lands after it.
                let durable = first.then(|| {
                    core.store
                        .submit(vec![Write::PutTask(task_id.clone(), t.record())])
                });
                // Still launching (no handle yet): killed as soon as the launch returns.
                (Found::Live(t.running.clone()), durable)
            }
            None => (Found::Unknown, None),
        }
    };
    if let Some(durable) = durable
        && let Err(e) = durable.await
    {
        tracing::error!(task = %task_id, "kill request not checkpointed (killing anyway): {e}");
    }
    match found {
        Found::Ended => tracing::debug!(task = %task_id, "kill of a task that already ended"),
        Found::Unknown => {
            // Like Mesos: the agent does not know the task, so it is lost here.
            let mut s = status(&task_id, &framework_id, v1::TaskState::TaskLost);
            s.reason = v1::Reason::KilledByRequest as i32;
            s.message =
                "kill requested for a task this agent does not know: it is not running here".into();
            send(&core, s).await;
        }
        Found::Live(Some(slot)) => kill_slot(&core, &slot).await,
        Found::Live(None) => {}
    }
}

/// Kills every task and waits (up to `timeout`) until each has reported its end.
pub async fn kill_all(core: &Arc<Core>, timeout: Duration) {
    let ids: Vec<(String, String)> = lock(&core.tasks)
        .iter()
        .filter(|(_, t)| !is_terminal(t.state))
        .map(|(id, t)| (id.clone(), t.framework_id.clone()))
        .collect();
    if ids.is_empty() {
        return;
    }
    tracing::info!(tasks = ids.len(), "killing every task");
    let mut joins = Vec::new();
    for (id, fw) in ids {
        joins.push(tokio::spawn(kill(core.clone(), fw, id)));
    }
    for j in joins {
        let _ = j.await;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let live = lock(&core.tasks).values().any(|t| !is_terminal(t.state));
        if !live {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("some tasks did not report their end in time");
}

/// Drops the containerizer handles without killing: the tasks keep running under
/// their shims (nothing in a `Running` kills on drop).
pub fn detach_all(core: &Arc<Core>) {
    let mut tasks = lock(&core.tasks);
    for t in tasks.values_mut() {
        if let Some(slot) = t.running.take() {
            lock(&slot).take();
        }
    }
}

pub fn usage_to_wire(task_id: &str, u: &Usage) -> v1::TaskUsage {
    v1::TaskUsage {
        task_id: task_id.to_string(),
        timestamp_ns: now_ns(),
        cpu_user_ns: u.cpu_user_ns,
        cpu_system_ns: u.cpu_system_ns,
        cpu_throttled_ns: u.cpu_throttled_ns,
        mem_current_bytes: u.mem_current_bytes,
        mem_peak_bytes: u.mem_peak_bytes,
        mem_anon_bytes: u.mem_anon_bytes,
        mem_file_bytes: u.mem_file_bytes,
        mem_kernel_bytes: u.mem_kernel_bytes,
        oom_kills: u.oom_kills,
        pids_current: u.pids_current,
        io_read_bytes: u.io_read_bytes,
        io_write_bytes: u.io_write_bytes,
        disk_used_bytes: u.disk_used_bytes,
    }
}

/// Samples every running task each `--usage-interval` (which also enforces disk
/// limits) and sends one UsageReport to the master.
pub async fn usage_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(core.config.usage_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        core.update_task_gauges();
        let slots: Vec<(String, Arc<Mutex<Option<Running>>>)> = lock(&core.tasks)
            .iter()
            .filter_map(|(id, t)| t.running.clone().map(|s| (id.clone(), s)))
            .collect();
        if slots.is_empty() {
            continue;
        }
        let c = core.containerizer.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(slots.len());
            for (id, slot) in slots {
                if let Some(running) = lock(&slot).as_mut() {
                    let usage = c.sample(running);
                    out.push(usage_to_wire(&id, &usage));
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        {
            let mut tasks = lock(&core.tasks);
            for u in &samples {
                if let Some(t) = tasks.get_mut(&u.task_id) {
                    t.usage = Some(u.clone());
                }
            }
        }
        if let Some(conn) = lock(&core.updates).conn() {
            let _ = conn.send(v1::AgentMessage {
                message: Some(v1::agent_message::Message::Usage(
                    v1::agent_message::UsageReport { tasks: samples },
                )),
            });
        }
    }
}

/// The share of the work directory's filesystem above which sandboxes are removed
/// before their `--gc-delay`.
pub const GC_DISK_THRESHOLD: f64 = 0.9;

/// How often the garbage collector looks at how full the work directory's
/// filesystem is (one statvfs).
pub const GC_DISK_CHECK: Duration = Duration::from_secs(2);

/// Garbage-collects the sandboxes of ended tasks: a sweep (every
/// `min(--gc-delay, 60 s)`) removes `<work-dir>/sandboxes/<id>` of every task that is
/// not running any more and ended more than `--gc-delay` ago. The filesystem's fill is
/// checked more often (every [`GC_DISK_CHECK`]): when it is more than 90% full, a sweep
/// runs at once and ended tasks' sandboxes go earlier, oldest first, until it is not.
/// A task's end is its checkpointed end time, or for a task already forgotten (its
/// last update acknowledged) the last modification of its sandbox.
pub async fn gc_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let period = core
        .config
        .gc_delay
        .min(Duration::from_secs(60))
        .max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(period.min(GC_DISK_CHECK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sandboxes = core.config.work_dir.join("sandboxes");
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let disk_full = disk_used_share(&sandboxes).is_some_and(|s| s > GC_DISK_THRESHOLD);
        if !disk_full && last_sweep.elapsed() < period {
            continue;
        }
        last_sweep = Instant::now();
        let c = core.clone();
        let _ = tokio::task::spawn_blocking(move || gc_sweep(&c)).await;
    }
}

fn modified_ns(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The used share of the filesystem holding `dir`.
fn disk_used_share(dir: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::cast_precision_loss, clippy::useless_conversion)]
    let (total, avail) = (
        u64::from(st.blocks()) as f64,
        u64::from(st.blocks_available()) as f64,
    );
    (total > 0.0).then(|| 1.0 - avail / total)
}

/// One garbage-collection sweep; returns the ids whose sandboxes were removed.
pub fn gc_sweep(core: &Core) -> Vec<String> {
    let root = core.config.work_dir.join("sandboxes");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let delay_ns = u64::try_from(core.config.gc_delay.as_nanos()).unwrap_or(u64::MAX);
    let now = now_ns();
    // (end, id) of every ended task's sandbox.
    let mut ended: Vec<(u64, String)> = Vec::new();
    for e in entries.flatten() {
        let Ok(id) = e.file_name().into_string() else {
            continue;
        };
        let path = e.path();
        let end = match lock(&core.tasks).get(&id) {
            Some(t) if !is_terminal(t.state) => continue,
            Some(t) if t.ended_ns > 0 => t.ended_ns,
            _ => ["stdout", "stderr"]
                .iter()
                .map(|n| modified_ns(&path.join(n)))
                .chain([modified_ns(&path)])
                .max()
                .unwrap_or(0),
        };
        ended.push((end, id));
    }
    ended.sort();
    let remove = |id: &str| -> bool {
        if lock(&core.tasks)
            .get(id)
            .is_some_and(|t| !is_terminal(t.state))
        {
            return false;
        }
        match std::fs::remove_dir_all(root.join(id)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task = id, "removing the sandbox failed: {e}");
                false
            }
        }
    };
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (end, id) in ended {
        if now.saturating_sub(end) >= delay_ns {
            if remove(&id) {
                tracing::info!(task = %id, "sandbox removed (--gc-delay passed)");
                removed.push(id);
            }
        } else {
            kept.push(id);
        }
    }
    // Oldest first while the disk is too full.
    for id in kept {
        if disk_used_share(&root).is_none_or(|s| s <= GC_DISK_THRESHOLD) {
            break;
        }
        if remove(&id) {
            tracing::warn!(task = %id, "sandbox removed early: the work directory's filesystem is more than 90% full");
            removed.push(id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_containerizer::shim::ExitStatus;
    use cella_containerizer::usage::Peaks;

    fn term(code: Option<i32>, signal: Option<i32>, limitation: Option<Limitation>) -> Termination {
        Termination {
            status: ExitStatus {
                code,
                signal,
                launch_failure: None,
            },
            limitation,
            usage: Usage::default(),
            peaks: Peaks::default(),
            wall: Duration::from_secs(1),
        }
    }

    #[test]
    fn mapping_of_task_info() {
        let info = v1::TaskInfo {
            task_id: "t".into(),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            resources: Some(v1::Resources {
                cpus: 0.0005,
                mem_bytes: 64 << 20,
                disk_bytes: 0,
            }),
            pids_limit: 0,
            net: v1::NetMode::None as i32,
            user: "nobody".into(),
            ..Default::default()
        };
        let c = task_config(&info, Path::new("/sb")).unwrap();
        assert_eq!(c.resources.cpus, Some(MilliCpus(1)));
        assert_eq!(c.resources.memory_bytes, Some(64 << 20));
        assert_eq!(c.resources.pids, None);
        assert_eq!(c.resources.disk_bytes, None);
        assert_eq!(c.net, NetMode::None);
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.sandbox, PathBuf::from("/sb"));
        assert!(
            matches!(c.stdio, Stdio::Files { ref stdout, .. } if stdout == Path::new("/sb/stdout"))
        );
        let bad = v1::TaskInfo {
            env: vec!["NOPE".into()],
            ..info.clone()
        };
        assert!(task_config(&bad, Path::new("/sb")).is_err());
        let bad = v1::TaskInfo {
            command: vec![],
            ..info
        };
        assert!(task_config(&bad, Path::new("/sb")).is_err());
    }

    #[test]
    fn terminal_statuses() {
        let info = v1::TaskInfo {
            resources: Some(v1::Resources {
                cpus: 1.0,
                mem_bytes: 64 << 20,
                disk_bytes: 1 << 20,
            }),
            ..Default::default()
        };
        let s = terminal_status(&term(Some(0), None, None), false, &info);
        assert_eq!(s.state(), v1::TaskState::TaskFinished);
        let s = terminal_status(&term(Some(3), None, None), false, &info);
        assert_eq!(s.state(), v1::TaskState::TaskFailed);
        assert_eq!(s.reason(), v1::Reason::CommandExited);
        assert_eq!(s.message, "exited with code 3");
        assert_eq!(s.exit_code, Some(3));
        let s = terminal_status(&term(None, Some(9), None), true, &info);
        assert_eq!(s.state(), v1::TaskState::TaskKilled);
        assert_eq!(s.reason(), v1::Reason::KilledByRequest);
        assert_eq!(s.signal, Some(9));
        let s = terminal_status(
            &term(None, Some(9), Some(Limitation::MemoryLimit)),
            false,
            &info,
        );
        assert_eq!(s.reason(), v1::Reason::MemoryLimit);
        assert!(
            s.message
                .starts_with("memory limit of 64 MiB reached: the kernel killed the task"),
            "{}",
            s.message
        );
        let s = terminal_status(&term(None, Some(15), None), false, &info);
        assert_eq!(s.message, "killed by signal 15 (SIGTERM)");
    }
}
