//! Names and properties of task states and reasons, shared by the master, the agent
//! and the CLI (the API and people see `RUNNING`, not `TASK_RUNNING`). Every mapping
//! between a state or reason and its name goes through [`TaskState::name`],
//! [`TaskState::from_name`], [`Reason::name`] and [`Reason::from_name`].

use crate::v1::{Reason, TaskState};

impl TaskState {
    /// Every state, `Unspecified` first, in the protocol's order.
    pub fn all() -> impl Iterator<Item = Self> {
        // The protocol's values are contiguous from 0.
        (0..).map_while(|n| Self::try_from(n).ok())
    }

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

    /// The state [`TaskState::name`] calls `name` (`RUNNING`…); `None` for any other
    /// string (names are upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|s| s.name() == name)
    }
}

impl Reason {
    /// Every reason, `Unspecified` first, in the protocol's order.
    pub fn all() -> impl Iterator<Item = Self> {
        // The protocol's values are contiguous from 0.
        (0..).map_while(|n| Self::try_from(n).ok())
    }

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
            Reason::ImageFailed => "IMAGE_FAILED",
        }
    }

    /// The reason [`Reason::name`] calls `name` (`""` is [`Reason::Unspecified`]);
    /// `None` for any other string.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|r| r.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        let all: Vec<TaskState> = TaskState::all().collect();
        assert_eq!(all.len(), 9, "every state of cella.proto");
        assert_eq!(all[0], TaskState::Unspecified);
        assert_eq!(all[8], TaskState::TaskError);
        for state in all {
            assert_eq!(TaskState::from_name(state.name()), Some(state));
        }
        assert_eq!(
            TaskState::from_name("RUNNING"),
            Some(TaskState::TaskRunning)
        );
        assert_eq!(TaskState::from_name("ERROR"), Some(TaskState::TaskError));
        for unknown in ["", "running", "TASK_RUNNING", "DONE"] {
            assert_eq!(TaskState::from_name(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn reason_names_round_trip() {
        let all: Vec<Reason> = Reason::all().collect();
        assert_eq!(all.len(), 15, "every reason of cella.proto");
        for reason in all {
            assert_eq!(Reason::from_name(reason.name()), Some(reason));
        }
        assert_eq!(Reason::from_name(""), Some(Reason::Unspecified));
        assert_eq!(
            Reason::from_name("FRAMEWORK_REMOVED"),
            Some(Reason::FrameworkRemoved)
        );
        assert_eq!(Reason::from_name("REASON_MEMORY_LIMIT"), None);
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<&str> = TaskState::all()
            .filter(|s| s.is_terminal())
            .map(TaskState::name)
            .collect();
        assert_eq!(terminal, ["FINISHED", "FAILED", "KILLED", "LOST", "ERROR"]);
    }
}
