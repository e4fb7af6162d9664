//! A running task's monitor, the same for a task just launched and one re-attached
//! by recovery: it waits on the shim's pidfd (no thread per task), collects the task
//! through the containerizer, reports its terminal status, then removes its run
//! directory and cgroups. When the agent stops, the monitor lets go: the task keeps
//! running under its shim.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cella_containerizer::Running;
use cella_containerizer::usage::{DENSE_SAMPLE_PERIOD, next_sample_in};
use cella_proto::v1;
use tokio::io::unix::AsyncFd;

use crate::state::{RunningSlot, Shared, lock};
use crate::tasks::TaskRunner;
use crate::tasks::status::{report, status, terminal_status};
use crate::tasks::usage::usage_to_wire;

/// Records a running task's handle and pids in its entry. Returns the handle's slot
/// and whether a kill was requested for the task (`None`: the task is not held any
/// more).
pub fn attach(shared: &Shared, id: &str, running: Running) -> (RunningSlot, Option<bool>) {
    let (pid, shim_pid, shim_start_time) =
        (running.pid, running.shim_pid(), running.shim_start_time());
    let slot = Arc::new(Mutex::new(Some(running)));
    let kill_requested = lock(&shared.tasks).get_mut(id).map(|t| {
        t.pid = pid;
        t.shim_pid = shim_pid;
        t.shim_start_time = shim_start_time;
        t.running = Some(slot.clone());
        t.kill_requested
    });
    (slot, kill_requested)
}

/// Starts the monitor of a task whose handle is in `slot`.
pub fn watch(runner: Arc<TaskRunner>, id: String, framework_id: String, slot: RunningSlot) {
    let exit_fd = match lock(&slot).as_ref() {
        Some(r) => r.exit_fd().try_clone_to_owned(),
        None => return,
    };
    tokio::spawn(async move {
        monitor(runner, id, framework_id, slot, exit_fd).await;
    });
}

/// Waits for the task to end, collects it and reports its terminal status; returns
/// early (the task keeps running) when the agent stops.
async fn monitor(
    runner: Arc<TaskRunner>,
    id: String,
    framework_id: String,
    slot: RunningSlot,
    exit_fd: std::io::Result<OwnedFd>,
) {
    let mut stop = runner.stop.clone();
    tokio::select! {
        () = wait_for_exit(&runner.shared, &id, &slot, exit_fd) => {}
        _ = stop.wait_for(|stopped| *stopped) => return,
        () = sample_first_second(&runner.shared, &slot) => {}
    }
    let shared = &runner.shared;
    let c = shared.containerizer.clone();
    let taken = lock(&slot).take();
    let Some(running) = taken else {
        return;
    };
    let task_id = running.id.clone();
    let termination = match tokio::task::spawn_blocking(move || c.collect(running)).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(task_id = %id, "collecting the task failed: {e}");
            let mut s = status(&id, &framework_id, v1::TaskState::TaskLost);
            s.reason = v1::Reason::LaunchFailed as i32;
            s.message = format!("the agent could not collect the task's exit status: {e}");
            if let Some(t) = lock(&shared.tasks).get_mut(&id) {
                t.running = None;
            }
            report(&runner.updates, s).await;
            let c = shared.containerizer.clone();
            let _ = tokio::task::spawn_blocking(move || c.destroy(&task_id)).await;
            return;
        }
    };
    let (kill_requested, info) = {
        let mut tasks = lock(&shared.tasks);
        match tasks.get_mut(&id) {
            Some(t) => {
                t.running = None;
                shared.metrics.task_series.forget(&id);
                t.usage = Some(usage_to_wire(&id, &termination.usage));
                (t.kill_requested, t.info.clone())
            }
            None => (false, v1::TaskInfo::default()),
        }
    };
    let mut s = terminal_status(&termination, kill_requested, &info);
    if s.state() == v1::TaskState::TaskKilled && shared.cleaning_up() {
        s.reason = v1::Reason::AgentRestarted as i32;
        s.message = format!(
            "killed by the agent's recovery cleanup (--recover cleanup): {}",
            s.message
        );
    }
    s.task_id = id.clone();
    s.framework_id = framework_id;
    tracing::info!(
        task_id = %id,
        framework_id = %s.framework_id,
        agent_id = %shared.agent_id().unwrap_or_default(),
        state = s.state().as_str_name(),
        "task ended: {}",
        s.message
    );
    // Only once the end is checkpointed: an agent that crashed (or stopped) before
    // finds the run directory and reports the same end again.
    if !report(&runner.updates, s).await {
        return;
    }
    let c = shared.containerizer.clone();
    let _ = tokio::task::spawn_blocking(move || c.destroy(&task_id)).await;
    shared.release_ended_images().await;
}

/// Tasks in their first second, sampled densely right now.
static DENSE_TASKS: AtomicUsize = AtomicUsize::new(0);

/// All dense sampling together takes about one sample per [`DENSE_BUDGET`]: a burst of
/// launches (1,000 tasks in a few seconds) spreads its samples out rather than
/// spending cores on them.
const DENSE_BUDGET: Duration = Duration::from_millis(1);

/// Counts a task in [`DENSE_TASKS`] while it lives.
struct DenseTask;

impl DenseTask {
    fn enter() -> Self {
        DENSE_TASKS.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for DenseTask {
    fn drop(&mut self) {
        DENSE_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Samples the task every 10 ms during its first second, so that a short task's
/// memory is seen before it exits (the usage loop comes round only every
/// `--usage-interval`); more rarely when many tasks start at once ([`DENSE_BUDGET`]).
/// Then never resolves.
async fn sample_first_second(shared: &Shared, slot: &RunningSlot) {
    let regular = shared.config.usage_interval;
    let dense = DenseTask::enter();
    loop {
        let age = match lock(slot).as_ref() {
            Some(r) => r.age(),
            None => break,
        };
        if age >= DENSE_SAMPLE_PERIOD {
            break;
        }
        let crowd = u32::try_from(DENSE_TASKS.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let pause = next_sample_in(age, regular).max(DENSE_BUDGET.saturating_mul(crowd));
        tokio::time::sleep(pause).await;
        let c = shared.containerizer.clone();
        let slot = slot.clone();
        // A few cgroup files: short enough for the blocking pool's queue.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(running) = lock(&slot).as_mut() {
                c.sample(running);
            }
        })
        .await;
    }
    drop(dense);
    std::future::pending::<()>().await;
}

/// Resolves when the task's shim has exited: its pidfd becomes readable (or, if the
/// pidfd cannot be watched, the containerizer says so when asked every 200 ms).
async fn wait_for_exit(
    shared: &Shared,
    id: &str,
    slot: &RunningSlot,
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
                tracing::warn!(task_id = %id, "waiting on the task's pidfd: {e}; polling instead");
                wait_polling(shared, slot).await;
            }
        }
        Err(e) => {
            tracing::warn!(task_id = %id, "cannot watch the task's pidfd: {e}; polling instead");
            wait_polling(shared, slot).await;
        }
    }
}

async fn wait_polling(shared: &Shared, slot: &RunningSlot) {
    loop {
        let c = shared.containerizer.clone();
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
