//! Names and properties of task states and reasons, shared by the master, the agent
//! and the CLI (the API and people see `RUNNING`, not `TASK_RUNNING`).

use crate::v1::{Reason, TaskState};

impl TaskState {
    /// Whether a task in this state has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::TaskFinished
                | TaskState::TaskFailed
                | TaskState::TaskKilled
                | TaskState::TaskLost
                | TaskState::TaskError
        )
    }

    /// The name people and the API use: `RUNNING`, `FAILED`…
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Unspecified => "UNSPECIFIED",
            TaskState::TaskStaging => "STAGING",
            TaskState::TaskStarting => "STARTING",
            TaskState::TaskRunning => "RUNNING",
            TaskState::TaskFinished => "FINISHED",
            TaskState::TaskFailed => "FAILED",
            TaskState::TaskKilled => "KILLED",
            TaskState::TaskLost => "LOST",
            TaskState::TaskError => "ERROR",
        }
    }
}

impl Reason {
    /// The name people and the API use (`MEMORY_LIMIT`…); empty when unspecified.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "",
            Reason::CommandExited => "COMMAND_EXITED",
            Reason::MemoryLimit => "MEMORY_LIMIT",
            Reason::DiskLimit => "DISK_LIMIT",
            Reason::PidsLimit => "PIDS_LIMIT",
            Reason::CommandNotFound => "COMMAND_NOT_FOUND",
            Reason::CommandNotExecutable => "COMMAND_NOT_EXECUTABLE",
            Reason::KilledByRequest => "KILLED_BY_REQUEST",
            Reason::AgentLost => "AGENT_LOST",
            Reason::InvalidTask => "INVALID_TASK",
            Reason::LaunchFailed => "LAUNCH_FAILED",
            Reason::AgentRestarted => "AGENT_RESTARTED",
            Reason::Reconciliation => "RECONCILIATION",
            Reason::FrameworkRemoved => "FRAMEWORK_REMOVED",
        }
    }
}
