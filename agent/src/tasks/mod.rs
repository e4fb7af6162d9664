//! The task side: what the agent does with tasks, one file per step.
//!
//! | module | what |
//! |---|---|
//! | [`spec`] | a `TaskInfo` from the master → the containerizer's `TaskConfig`; the sandbox |
//! | [`launch`] | Launch: validate, STARTING, launch (bounded), RUNNING, watch |
//! | [`watch`] | a running task's monitor: waits on the shim's pidfd, collects, reports the end |
//! | [`kill`] | Kill (checkpointed before it is delivered), kill everything, detach on stop |
//! | [`status`] | how an outcome is worded: terminal statuses, start failures → reasons |
//! | [`usage`] | samples every running task each `--usage-interval`; `Usage` → `TaskUsage` |
//! | [`gc`] | removes the sandboxes of ended tasks after `--gc-delay` or when the disk is full |
//!
//! The containerizer is synchronous, so its calls run on tokio's blocking pool;
//! launches are bounded by a semaphore (twice the agent's CPUs by default). A running
//! task costs no thread: its monitor awaits the shim's pidfd.
//!
//! Every status goes out through the status update manager
//! ([`crate::status_updates`]); the master's Launch and Kill arrive as commands from
//! the connection ([`crate::connection::MasterCommand`]), dispatched by
//! [`crate::agent`].

pub mod gc;
pub mod kill;
pub mod launch;
pub mod spec;
pub mod status;
pub mod usage;
pub mod watch;

use std::sync::Arc;

use tokio::sync::{Semaphore, watch as signal};

use crate::state::Shared;
use crate::status_updates::StatusUpdateManager;

/// What the task side works with.
pub struct TaskRunner {
    pub shared: Arc<Shared>,
    pub updates: Arc<StatusUpdateManager>,
    /// Bounds the blocking launches that run at once.
    pub launch_permits: Semaphore,
    /// Set when the agent stops: monitors let go of their tasks, which keep running
    /// under their shims for the next agent to re-attach to.
    pub stop: signal::Receiver<bool>,
}

impl TaskRunner {
    pub fn new(
        shared: Arc<Shared>,
        updates: Arc<StatusUpdateManager>,
        launch_concurrency: usize,
        stop: signal::Receiver<bool>,
    ) -> TaskRunner {
        TaskRunner {
            shared,
            updates,
            launch_permits: Semaphore::new(launch_concurrency),
            stop,
        }
    }
}
