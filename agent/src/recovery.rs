//! Recovery: what the agent does at start with the checkpoint a previous agent left
//! (see the crate documentation for the guarantees).
//!
//! [`recover`] re-attaches to every live task (watched again like a launched one),
//! reports the real end of tasks that ended meanwhile and LOST (AGENT_RESTARTED) for
//! those whose outcome cannot be known, removes the leftovers (cgroups, run
//! directories) of every task that is not running, and hands the unacknowledged
//! updates to the status update manager, which re-sends them after registration.
//! After a reboot ([`boot_id`] differs from the checkpoint's) no old pid is trusted.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use cella_containerizer::{Containerizer, Recovered, Running, TaskId};
use cella_proto::v1;
use futures::StreamExt;

use crate::paths;
use crate::state::{Task, lock};
use crate::store::{Checkpoint, StoreError, Write};
use crate::tasks::TaskRunner;
use crate::tasks::kill::kill_slot;
use crate::tasks::spec::task_config;
use crate::tasks::status::terminal_status;
use crate::tasks::watch::{attach, watch};

/// This boot's id (`/proc/sys/kernel/random/boot_id`): it changes with every boot.
pub fn boot_id() -> Option<String> {
    procfs::sys::kernel::random::boot_id()
        .ok()
        .filter(|s| !s.is_empty())
}

/// What recovery decided for one task of the checkpoint.
enum Outcome {
    Running(Box<Running>),
    Ended(v1::TaskStatus),
    Lost(String),
}

/// Takes over what a previous agent left in the checkpoint: re-attaches to every
/// live task (monitored again like a launched one), reports the real end of tasks
/// that ended meanwhile and LOST (AGENT_RESTARTED) for those whose outcome cannot be
/// known. After a reboot no old pid is trusted: every unfinished task is LOST and its
/// leftovers are removed. Unacknowledged updates are kept and re-sent after
/// registration. Fails only when the checkpoint cannot be written.
pub async fn recover(runner: &Arc<TaskRunner>, checkpoint: Checkpoint) -> Result<(), StoreError> {
    let shared = &runner.shared;
    let updates = &runner.updates;
    let Checkpoint {
        agent_id,
        boot_id: checkpoint_boot,
        access_policy: _,
        tasks,
        updates: unacknowledged,
        errors,
    } = checkpoint;
    for e in &errors {
        tracing::error!(checkpoint = %shared.store.path().display(), "not recovered: {e}");
        shared.metrics.recovery_errors.inc();
    }
    *lock(&shared.agent_id) = agent_id;
    let now_boot = boot_id();
    let rebooted = matches!((&checkpoint_boot, &now_boot), (Some(old), Some(new)) if old != new);
    if rebooted {
        tracing::warn!(
            "the machine rebooted since the checkpoint was written: the tasks of the previous boot are reported LOST"
        );
    }
    runner.updates.restore(unacknowledged);
    let mut unfinished = Vec::new();
    {
        let mut map = lock(&shared.tasks);
        for (id, record) in tasks {
            let task = Task::from_record(record);
            if !task.state.is_terminal() {
                let shim = (task.shim_pid != 0 && task.shim_start_time != 0)
                    .then_some((task.shim_pid, task.shim_start_time));
                unfinished.push(Unfinished {
                    id: id.clone(),
                    info: task.info.clone(),
                    sandbox: task.sandbox.clone(),
                    kill_requested: task.kill_requested,
                    shim,
                });
            }
            map.insert(id, task);
        }
    }
    let n = unfinished.len();
    let results: Vec<(String, Outcome)> = futures::stream::iter(unfinished)
        .map(|task| {
            let c = shared.containerizer.clone();
            let user = shared.config.tasks.user_of(&task.info).to_string();
            async move {
                let key = task.id.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || recover_one(&c, &task, &user, rebooted))
                        .await
                        .unwrap_or_else(|e| Outcome::Lost(format!("recovery failed: {e}")));
                (key, outcome)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut reattached = 0usize;
    // Tasks whose end was recorded now: their leftovers go after that (below).
    let mut ended = Vec::new();
    for (id, outcome) in results {
        let (framework_id, was_running) = match lock(&shared.tasks).get(&id) {
            Some(t) => (
                t.framework_id.clone(),
                t.state == v1::TaskState::TaskRunning,
            ),
            None => continue,
        };
        match outcome {
            Outcome::Running(running) => {
                reattached += 1;
                tracing::info!(task_id = %id, shim = running.shim_pid(), "re-attached to the running task");
                let (slot, kill_requested) = attach(shared, &id, *running);
                if !was_running {
                    // It was launched but RUNNING was never generated.
                    updates
                        .send(v1::TaskStatus {
                            task_id: id.clone(),
                            framework_id: framework_id.clone(),
                            state: v1::TaskState::TaskRunning as i32,
                            ..Default::default()
                        })
                        .await?;
                }
                if kill_requested == Some(true) {
                    // The kill was requested before the restart and may not have
                    // been delivered: deliver it (again).
                    tracing::info!(task_id = %id, "killing the task: its kill was requested before the restart");
                    kill_slot(shared, &slot).await;
                }
                watch(runner.clone(), id, framework_id, slot);
            }
            Outcome::Ended(mut s) => {
                s.task_id = id.clone();
                s.framework_id = framework_id;
                tracing::info!(task_id = %id, state = s.state().as_str_name(), "the task ended while the agent was away: {}", s.message);
                updates.send(s).await?;
                ended.push(id);
            }
            Outcome::Lost(why) => {
                tracing::warn!(task_id = %id, "reported LOST: {why}");
                updates
                    .send(v1::TaskStatus {
                        task_id: id.clone(),
                        framework_id,
                        state: v1::TaskState::TaskLost as i32,
                        reason: v1::Reason::AgentRestarted as i32,
                        message: why,
                        ..Default::default()
                    })
                    .await?;
                ended.push(id);
            }
        }
    }
    if n > 0 {
        tracing::info!(tasks = n, reattached, "recovery done");
    }
    // Leftovers of the tasks that ended, and of any task no record owns (a task
    // forgotten, a checkpoint moved aside): removed.
    let owned: HashSet<String> = lock(&shared.tasks)
        .iter()
        .filter(|(_, t)| t.running.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let c = shared.containerizer.clone();
    let run_dirs = paths::run_dirs(&shared.config.runtime_dir);
    let _ = tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = c.cgroups().list().unwrap_or_default();
        names.extend(ended);
        if let Ok(entries) = std::fs::read_dir(&run_dirs) {
            names.extend(entries.flatten().filter_map(|e| e.file_name().into_string().ok()));
        }
        names.sort();
        names.dedup();
        for name in names {
            if owned.contains(&name) {
                continue;
            }
            if let Ok(id) = TaskId::new(name.clone()) {
                tracing::info!(task_id = %name, "removing the leftovers of a task that is not running");
                c.destroy(&id);
            }
        }
    })
    .await;
    if let Some(b) = now_boot {
        shared.store.write(vec![Write::BootId(b)]).await?;
    }
    Ok(())
}

/// What recovery needs of a checkpointed task that had not ended.
struct Unfinished {
    id: String,
    info: v1::TaskInfo,
    sandbox: PathBuf,
    kill_requested: bool,
    /// The shim's (pid, start time), once the launch had recorded them.
    shim: Option<(i32, u64)>,
}

/// Recovers one unfinished task, which runs as `user` (blocking: the containerizer is
/// synchronous). What was admitted then is not judged again by today's allowlist.
fn recover_one(c: &Containerizer, task: &Unfinished, user: &str, rebooted: bool) -> Outcome {
    let Unfinished {
        id,
        info,
        sandbox,
        kill_requested,
        shim,
    } = task;
    let kill_requested = *kill_requested;
    let Ok(task_id) = TaskId::new(id.to_string()) else {
        return Outcome::Lost(format!("the checkpoint holds an invalid task id {id:?}"));
    };
    if rebooted {
        c.destroy(&task_id);
        return Outcome::Lost("the machine rebooted".into());
    }
    if let Err(e) = cella_proto::validate::task(info) {
        c.destroy(&task_id);
        return Outcome::Lost(format!(
            "its checkpointed configuration is unusable ({e}); its leftovers were removed"
        ));
    }
    let config = task_config(info, sandbox, user);
    match c.recover(&task_id, &config, *shim) {
        Recovered::Running(r) => Outcome::Running(Box::new(r)),
        Recovered::Ended(t) => Outcome::Ended(terminal_status(&t, kill_requested, info)),
        Recovered::Unknown(why) => Outcome::Lost(format!(
            "the agent restarted and cannot know how the task ended: {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_read() {
        assert!(boot_id().is_some());
    }
}
