//! Killing tasks: the master's Kill (checkpointed before it is delivered, so that an
//! agent restarted in between kills the task again), killing every task when the
//! agent stops with `--kill-tasks-on-exit` or cleans up, and letting go of the tasks
//! (without killing) when it stops otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::v1;

use crate::state::{RunningSlot, Shared, lock};
use crate::store::Write;
use crate::tasks::TaskRunner;
use crate::tasks::status::{report, status};

/// Kills the task whose handle is in `slot` (through its cgroup, so processes that
/// left the task's process tree die too). Its monitor reports the end.
pub async fn kill_slot(shared: &Shared, slot: &RunningSlot) {
    let c = shared.containerizer.clone();
    let slot = slot.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(running) = lock(&slot).as_ref()
            && let Err(e) = c.kill(running)
        {
            tracing::warn!(task_id = %running.id, "kill failed: {e}");
        }
    })
    .await;
}

/// Stops the task whose handle is in `slot` as `docker stop` does: SIGTERM to its
/// processes, then, if it has not ended within `grace`, SIGKILL to all of them
/// ([`kill_slot`]). Without a grace period, or when SIGTERM cannot stop the task's
/// first process (see [`Containerizer::terminate`]), SIGKILL at once.
///
/// [`Containerizer::terminate`]: cella_containerizer::Containerizer::terminate
pub async fn stop_slot(shared: &Shared, slot: &RunningSlot, grace: Duration) {
    if !grace.is_zero() {
        let c = shared.containerizer.clone();
        let signalled = slot.clone();
        let terminated = tokio::task::spawn_blocking(move || {
            lock(&signalled)
                .as_ref()
                .is_some_and(|running| match c.terminate(running) {
                    Ok(delivered) => delivered,
                    Err(e) => {
                        tracing::warn!(task = %running.id, "SIGTERM failed: {e}");
                        false
                    }
                })
        })
        .await
        .unwrap_or(false);
        if terminated {
            // The monitor takes the handle out of the slot once the task has ended.
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && lock(slot).is_some() {
                tokio::time::sleep(GRACE_POLL.min(deadline - Instant::now())).await;
            }
        }
    }
    kill_slot(shared, slot).await;
}

/// How often the end of a task that got SIGTERM is looked for.
const GRACE_POLL: Duration = Duration::from_millis(50);

/// Handles a Kill from the master: SIGTERM, and SIGKILL after `grace`.
pub async fn kill(runner: Arc<TaskRunner>, framework_id: String, task_id: String, grace: Duration) {
    enum Found {
        Ended,
        Unknown,
        Live(Option<RunningSlot>),
    }
    let shared = &runner.shared;
    let (found, durable) = {
        let mut tasks = lock(&shared.tasks);
        match tasks.get_mut(&task_id) {
            Some(t) if t.state.is_terminal() => (Found::Ended, None),
            Some(t) => {
                let first = !t.kill_requested;
                t.kill_requested = true;
                // Durable before the kill is delivered: an agent restarted in between
                // kills the task again and reports it KILLED. Queued under the lock so
                // that no older copy of the record lands after it.
                let durable = first.then(|| {
                    shared
                        .store
                        .submit(vec![Write::PutTask(task_id.clone(), Box::new(t.record()))])
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
        tracing::error!(task_id = %task_id, "kill request not checkpointed (killing anyway): {e}");
    }
    match found {
        Found::Ended => tracing::debug!(task_id = %task_id, "kill of a task that already ended"),
        Found::Unknown => {
            // Like Mesos: the agent does not know the task, so it is lost here.
            let mut s = status(&task_id, &framework_id, v1::TaskState::TaskLost);
            s.reason = v1::Reason::KilledByRequest as i32;
            s.message =
                "kill requested for a task this agent does not know: it is not running here".into();
            report(&runner.updates, s).await;
        }
        Found::Live(Some(slot)) => stop_slot(shared, &slot, grace).await,
        Found::Live(None) => {}
    }
}

/// Kills every task and waits (up to `timeout`) until each has reported its end.
pub async fn kill_all(runner: &Arc<TaskRunner>, timeout: Duration) {
    let ids: Vec<(String, String)> = lock(&runner.shared.tasks)
        .iter()
        .filter(|(_, t)| !t.state.is_terminal())
        .map(|(id, t)| (id.clone(), t.framework_id.clone()))
        .collect();
    if ids.is_empty() {
        return;
    }
    tracing::info!(tasks = ids.len(), "killing every task");
    let mut joins = Vec::new();
    for (id, fw) in ids {
        joins.push(tokio::spawn(kill(runner.clone(), fw, id, Duration::ZERO)));
    }
    for j in joins {
        let _ = j.await;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !runner.shared.any_unfinished() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("some tasks did not report their end in time");
}

/// Drops the containerizer handles without killing: the tasks keep running under
/// their shims (nothing in a `Running` kills on drop).
pub fn detach_all(shared: &Shared) {
    let mut tasks = lock(&shared.tasks);
    for t in tasks.values_mut() {
        if let Some(slot) = t.running.take() {
            lock(&slot).take();
        }
    }
}
