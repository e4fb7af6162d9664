//! Launching a task: the master's Launch becomes STARTING, a containerizer launch on
//! the blocking pool (at most `launch_concurrency` at once), RUNNING and a monitor
//! ([`crate::tasks::watch`]); or an error status that says why it could not run.

use std::sync::Arc;
use std::time::Instant;

use cella_containerizer::{LaunchError, TaskId};
use cella_proto::time::now_ns;
use cella_proto::v1;

use crate::state::{Task, lock};
use crate::tasks::TaskRunner;
use crate::tasks::kill::kill_slot;
use crate::tasks::spec::{Launchable, SpecError, admit, prepare_sandbox};
use crate::tasks::status::{report, report_detached, start_failure_reason, status};
use crate::tasks::watch::{attach, watch};

/// The framework a task belongs to: its id, role and owning principal.
pub struct Owner {
    pub framework_id: String,
    pub role: String,
    pub principal: String,
}

/// Handles a Launch from the master.
pub async fn launch(runner: Arc<TaskRunner>, owner: Owner, info: v1::TaskInfo) {
    let Owner {
        framework_id,
        role,
        principal,
    } = owner;
    let shared = &runner.shared;
    let updates = &runner.updates;
    let started = Instant::now();
    let id = info.task_id.clone();
    if shared.cleaning_up() {
        let mut s = status(&id, &framework_id, v1::TaskState::TaskLost);
        s.reason = v1::Reason::AgentRestarted as i32;
        s.message =
            "the agent is cleaning up (--recover cleanup) and stops: launch the task elsewhere"
                .into();
        report_detached(updates, s).await;
        return;
    }
    // An invalid task is refused with ERROR (INVALID_TASK) and `message`.
    let refuse = async |message: String, detached: bool| {
        shared
            .metrics
            .launched("error", started.elapsed().as_secs_f64());
        let mut s = status(&id, &framework_id, v1::TaskState::TaskError);
        s.reason = v1::Reason::InvalidTask as i32;
        s.message = message;
        if detached {
            report_detached(updates, s).await;
        } else {
            report(updates, s).await;
        }
    };
    let task_id = match TaskId::new(id.clone()) {
        Ok(t) => t,
        Err(e) => return refuse(e.to_string(), false).await,
    };
    let sandbox = shared.sandbox_dir(&id);
    let duplicate = lock(&shared.tasks).contains_key(&id);
    if duplicate {
        // Sent for the id, not recorded against the existing task.
        let message =
            format!("task id {id:?} is already used on this agent: task ids must be unique");
        return refuse(message, true).await;
    }
    let Launchable { config, identity } = match admit(&info, &sandbox, &shared.config.tasks) {
        Ok(l) => l,
        Err(e) => {
            if let SpecError::Refused(refusal) = &e {
                shared.metrics.launch_refused(refusal.reason());
                tracing::warn!(task_id = %id, framework_id = %framework_id, "launch refused: {refusal}");
            }
            return refuse(e.to_string(), false).await;
        }
    };
    lock(&shared.tasks).insert(
        id.clone(),
        Task {
            framework_id: framework_id.clone(),
            role,
            principal,
            // Checkpointed and reported to the master: without the secrets' values.
            info: cella_proto::secrets::redacted(&info),
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
    report(
        updates,
        status(&id, &framework_id, v1::TaskState::TaskStarting),
    )
    .await;

    let permit = runner.launch_permits.acquire().await;
    let c = shared.containerizer.clone();
    let launched = tokio::task::spawn_blocking(move || {
        prepare_sandbox(&sandbox, &identity).map_err(LaunchError::Setup)?;
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
                LaunchError::Start { code, .. } => (
                    v1::TaskState::TaskFailed,
                    start_failure_reason(*code),
                    "failed",
                ),
                _ => (
                    v1::TaskState::TaskFailed,
                    v1::Reason::LaunchFailed,
                    "failed",
                ),
            };
            shared.metrics.launched(outcome, elapsed);
            tracing::info!(task_id = %id, framework_id = %framework_id, "launch failed: {e}");
            let mut s = status(&id, &framework_id, state);
            s.reason = reason as i32;
            s.message = e.to_string();
            if let LaunchError::Start { code, .. } = &e {
                s.exit_code = Some(*code);
            }
            report(updates, s).await;
            return;
        }
        Err(join) => {
            shared.metrics.launched("failed", elapsed);
            let mut s = status(&id, &framework_id, v1::TaskState::TaskFailed);
            s.reason = v1::Reason::LaunchFailed as i32;
            s.message = format!("the launch did not complete: {join}");
            report(updates, s).await;
            return;
        }
    };
    shared.metrics.launched("running", elapsed);
    tracing::info!(
        task_id = %id,
        framework_id = %framework_id,
        agent_id = %shared.agent_id().unwrap_or_default(),
        pid = running.pid,
        "task running (launched in {elapsed:.3} s)"
    );
    // A task forgotten meanwhile is killed as well: nothing would report its end.
    let (slot, kill_requested) = attach(shared, &id, running);
    let kill_now = kill_requested.unwrap_or(true);
    report(
        updates,
        status(&id, &framework_id, v1::TaskState::TaskRunning),
    )
    .await;
    if kill_now {
        kill_slot(shared, &slot).await;
    }
    watch(runner.clone(), id, framework_id, slot);
}
