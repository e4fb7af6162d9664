//! Launching a task: the master's Launch becomes STARTING, a containerizer launch on
//! the blocking pool (at most `launch_concurrency` at once), RUNNING and a monitor
//! ([`crate::tasks::watch`]); or an error status that says why it could not run.

use std::sync::Arc;
use std::time::Instant;

use cella_containerizer::{LaunchError, TaskId};
use cella_proto::time::now_ns;
use cella_proto::v1;

use crate::images::ImageFailure;
use crate::state::{Task, lock};
use crate::tasks::TaskRunner;
use crate::tasks::kill::kill_slot;
use crate::tasks::spec::{Launchable, SpecError, admit, admit_image, check_task, prepare_sandbox};
use crate::tasks::status::{report, report_detached, start_failure_reason, status};
use crate::tasks::watch::{attach, watch};

/// The framework a task belongs to: its id, role and owning principal.
pub struct Owner {
    pub framework_id: String,
    pub role: String,
    pub principal: String,
}

/// Handles a Launch from the master.
pub async fn launch(runner: Arc<TaskRunner>, owner: Owner, mut info: v1::TaskInfo) {
    runner.shared.config.tasks.apply_defaults(&mut info);
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
    // An image task is checked first and admitted once its image is ready: the
    // user it runs as comes from the image.
    let admitted = if info.image.is_some() {
        check_task(&info, &shared.config.tasks).map(|()| None)
    } else {
        admit(&info, &sandbox, &shared.config.tasks).map(Some)
    };
    let admitted = match admitted {
        Ok(a) => a,
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
            image_digest: String::new(),
        },
    );
    report(
        updates,
        status(&id, &framework_id, v1::TaskState::TaskStarting),
    )
    .await;

    let Launchable { config, identity } = match admitted {
        Some(launchable) => launchable,
        None => match prepare_image(&runner, &id, &framework_id, &info, &sandbox).await {
            Some(launchable) => launchable,
            None => {
                shared
                    .metrics
                    .launched("error", started.elapsed().as_secs_f64());
                shared.release_ended_images().await;
                return;
            }
        },
    };

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
            shared.release_ended_images().await;
            return;
        }
        Err(join) => {
            shared.metrics.launched("failed", elapsed);
            let mut s = status(&id, &framework_id, v1::TaskState::TaskFailed);
            s.reason = v1::Reason::LaunchFailed as i32;
            s.message = format!("the launch did not complete: {join}");
            report(updates, s).await;
            shared.release_ended_images().await;
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

/// Prepares an image task's image (pulled if needed) and admits the task with it.
/// `None` when it cannot run: its end (ERROR for a wrong task, FAILED with reason
/// IMAGE_FAILED for an image that cannot be had) is reported.
async fn prepare_image(
    runner: &TaskRunner,
    id: &str,
    framework_id: &str,
    info: &v1::TaskInfo,
    sandbox: &std::path::Path,
) -> Option<Launchable> {
    let shared = &runner.shared;
    let image = info.image.as_ref()?;
    let prepared_at = Instant::now();
    let outcome = match shared.images.prepare(id, image, info).await {
        Ok(task_image) => {
            tracing::info!(
                task = %id,
                image = %task_image.image.reference,
                digest = %task_image.image.digest,
                layers = task_image.image.layers.len(),
                seconds = prepared_at.elapsed().as_secs_f64(),
                "image ready"
            );
            if let Some(task) = lock(&shared.tasks).get_mut(id) {
                task.image_digest = task_image.image.digest.to_string();
            }
            admit_image(info, sandbox, &shared.config.tasks, &task_image).map_err(|e| {
                (
                    v1::TaskState::TaskError,
                    v1::Reason::InvalidTask,
                    e.to_string(),
                )
            })
        }
        Err(ImageFailure::Invalid(message)) => {
            Err((v1::TaskState::TaskError, v1::Reason::InvalidTask, message))
        }
        Err(ImageFailure::Failed(message)) => {
            Err((v1::TaskState::TaskFailed, v1::Reason::ImageFailed, message))
        }
    };
    match outcome {
        Ok(launchable) => Some(launchable),
        Err((state, reason, message)) => {
            tracing::info!(task = %id, "image task not launched: {message}");
            let mut s = status(id, framework_id, state);
            s.reason = reason as i32;
            s.message = message;
            report(&runner.updates, s).await;
            None
        }
    }
}
