//! How a task's outcome is worded for people and programs: the status of a task
//! that ended, and the reason of a command that never started.

use cella_containerizer::units::format_bytes;
use cella_containerizer::{Limitation, StartFailure, Termination};
use cella_proto::v1;

use crate::status_updates::StatusUpdateManager;

/// A status of `task_id` in `state`; the rest (reason, message...) is filled in by
/// the caller.
pub fn status(task_id: &str, framework_id: &str, state: v1::TaskState) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: task_id.to_string(),
        framework_id: framework_id.to_string(),
        state: state as i32,
        ..Default::default()
    }
}

/// Sends `status` through the status update manager (recorded against its task).
/// Returns whether it was checkpointed.
pub async fn report(updates: &StatusUpdateManager, status: v1::TaskStatus) -> bool {
    match updates.send(status).await {
        Ok(()) => true,
        Err(e) => {
            // Without a checkpoint the update could be lost in a crash; it is tracked
            // in memory only if the write succeeded, so say so loudly.
            tracing::error!("status update not checkpointed (it is not sent): {e}");
            false
        }
    }
}

/// Like [`report`], for an update about a launch refused before the task was
/// recorded (its id was taken by another task, or the agent is cleaning up).
pub async fn report_detached(updates: &StatusUpdateManager, status: v1::TaskStatus) {
    if let Err(e) = updates.send_detached(status).await {
        tracing::error!("status update not checkpointed (it is not sent): {e}");
    }
}

/// The reason of a command that never started, from the exit code that says why
/// ([`StartFailure`]: 125 setup, 126 not executable, 127 not found). One mapping for
/// a launch that fails at once and for a failure the shim recorded.
pub fn start_failure_reason(code: i32) -> v1::Reason {
    match StartFailure::from_code(code) {
        Some(StartFailure::NotFound) => v1::Reason::CommandNotFound,
        Some(StartFailure::NotExecutable) => v1::Reason::CommandNotExecutable,
        Some(StartFailure::Setup) | None => v1::Reason::LaunchFailed,
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
        // Cluster tasks run under the default profile, which never kills: a filter
        // the command installed did.
        (None, Some(libc::SIGSYS)) => cella_containerizer::seccomp::sigsys_explanation(None),
        (None, Some(s)) => format!("killed by {}", signal_name(s)),
        (None, None) => "ended without an exit status".to_string(),
    };
    let resources = info.resources.unwrap_or_default();
    let (state, reason, message) = if let Some((code, why)) = &t.status.launch_failure {
        (
            v1::TaskState::TaskFailed,
            start_failure_reason(*code),
            why.clone(),
        )
    } else if kill_requested && code != Some(0) {
        (
            v1::TaskState::TaskKilled,
            v1::Reason::KilledByRequest,
            format!("killed on request ({how})"),
        )
    } else if let Some(limitation) = t.limitation {
        // A limit the task reached failed it; the message names the limit and its fix.
        let (reason, message) = match limitation {
            Limitation::MemoryLimit => (
                v1::Reason::MemoryLimit,
                format!(
                    "memory limit of {} reached: the kernel killed the task ({how}); give it more memory (e.g. cella run --mem)",
                    format_bytes(resources.mem_bytes)
                ),
            ),
            Limitation::DiskLimit => (
                v1::Reason::DiskLimit,
                format!(
                    "disk limit of {} reached: the task wrote more than that in its sandbox and Cella killed it; give it more disk (e.g. cella run --disk)",
                    format_bytes(resources.disk_bytes)
                ),
            ),
            Limitation::PidsLimit => (
                v1::Reason::PidsLimit,
                format!(
                    "process limit of {} reached: a fork failed and the task then {how}; raise the task's pids limit",
                    info.pids_limit
                ),
            ),
        };
        (v1::TaskState::TaskFailed, reason, message)
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
        summary: Some(Box::new(crate::tasks::usage::summary_to_wire(t))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_containerizer::Usage;
    use cella_containerizer::shim::ExitStatus;
    use cella_containerizer::usage::Peaks;
    use std::time::Duration;

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
            started_ns: 1,
            ended_ns: 1_000_000_001,
        }
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
        // Every terminal status carries the task's summary, times included.
        let summary = s.summary.expect("summary");
        assert_eq!((summary.started_ns, summary.ended_ns), (1, 1_000_000_001));
        assert_eq!(summary.cpu_user_ns, None, "no sample, no figure");
        let s = terminal_status(&term(None, Some(libc::SIGSYS), None), false, &info);
        assert!(
            s.message.starts_with("killed by seccomp (SIGSYS): ") && s.message.contains("syscall="),
            "{}",
            s.message
        );
        assert_eq!(s.signal, Some(libc::SIGSYS));
    }

    #[test]
    fn start_failures() {
        assert_eq!(start_failure_reason(127), v1::Reason::CommandNotFound);
        assert_eq!(start_failure_reason(126), v1::Reason::CommandNotExecutable);
        assert_eq!(start_failure_reason(125), v1::Reason::LaunchFailed);
        assert_eq!(start_failure_reason(1), v1::Reason::LaunchFailed);
        let mut t = term(None, None, None);
        t.status.launch_failure = Some((127, "sh: nope: not found".into()));
        let s = terminal_status(&t, false, &v1::TaskInfo::default());
        assert_eq!(
            (s.state(), s.reason(), s.exit_code),
            (
                v1::TaskState::TaskFailed,
                v1::Reason::CommandNotFound,
                Some(127)
            )
        );
        assert_eq!(s.message, "sh: nope: not found");
    }
}
