//! The JSON of `GET /api/v1/tasks/{id}/usage` and of an agent's node totals.

use serde::{Deserialize, Serialize};

use super::{Pressure, Usage, by_name};
use crate::v1;

/// `GET /api/v1/tasks/{id}/usage`: a task's latest sample, its history (oldest
/// first) and its summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUsage {
    pub task_id: String,
    #[serde(with = "by_name")]
    pub state: v1::TaskState,
    pub agent_id: String,
    /// The task's CPU and memory limits, to read the figures against.
    pub resources: v1::Resources,
    /// The latest sample, `null` before the first one arrived.
    pub latest: Option<Usage>,
    /// Samples, oldest first: as fine as the master keeps them (1 s recently, coarser
    /// further back), or folded to `?resolution=`. A folded point has the newest
    /// counters and the largest levels (memory, pids, disk, pressure averages).
    pub history: Vec<Usage>,
    pub summary: Option<Summary>,
}

/// What a task consumed: from the agent's `TaskSummary` once the task ended
/// (`final: true`), else the totals and peaks of the master's history so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `true`: the agent's figures from the task's cgroup at its end.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub started_ns: u64,
    /// 0 while the task runs.
    pub ended_ns: u64,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_peak_sampled_bytes: Option<u64>,
    pub mem_file_peak_sampled_bytes: Option<u64>,
    pub mem_kernel_peak_sampled_bytes: Option<u64>,
    pub mem_swap_peak_sampled_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_peak_sampled: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub io_read_ops: Option<u64>,
    pub io_write_ops: Option<u64>,
    pub disk_peak_sampled_bytes: Option<u64>,
}

impl From<&v1::TaskSummary> for Summary {
    fn from(s: &v1::TaskSummary) -> Self {
        Self {
            is_final: true,
            started_ns: s.started_ns,
            ended_ns: s.ended_ns,
            cpu_user_ns: s.cpu_user_ns,
            cpu_system_ns: s.cpu_system_ns,
            cpu_throttled_ns: s.cpu_throttled_ns,
            mem_peak_bytes: s.mem_peak_bytes,
            mem_anon_peak_sampled_bytes: s.mem_anon_peak_sampled_bytes,
            mem_file_peak_sampled_bytes: s.mem_file_peak_sampled_bytes,
            mem_kernel_peak_sampled_bytes: s.mem_kernel_peak_sampled_bytes,
            mem_swap_peak_sampled_bytes: s.mem_swap_peak_sampled_bytes,
            oom_kills: s.oom_kills,
            pids_peak_sampled: s.pids_peak_sampled,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            io_read_ops: s.io_read_ops,
            io_write_ops: s.io_write_ops,
            disk_peak_sampled_bytes: s.disk_peak_sampled_bytes,
        }
    }
}

impl Summary {
    /// The summary so far of a running task: `peaks` holds the largest levels seen
    /// and the newest counters (the history folded into one sample).
    pub fn so_far(started_ns: u64, peaks: &v1::TaskUsage) -> Self {
        Self {
            is_final: false,
            started_ns,
            ended_ns: 0,
            cpu_user_ns: peaks.cpu_user_ns,
            cpu_system_ns: peaks.cpu_system_ns,
            cpu_throttled_ns: peaks.cpu_throttled_ns,
            mem_peak_bytes: peaks.mem_peak_bytes.or(peaks.mem_current_bytes),
            mem_anon_peak_sampled_bytes: peaks.mem_anon_bytes,
            mem_file_peak_sampled_bytes: peaks.mem_file_bytes,
            mem_kernel_peak_sampled_bytes: peaks.mem_kernel_bytes,
            mem_swap_peak_sampled_bytes: peaks.mem_swap_bytes,
            oom_kills: peaks.oom_kills,
            pids_peak_sampled: peaks.pids_current,
            io_read_bytes: peaks.io_read_bytes,
            io_write_bytes: peaks.io_write_bytes,
            io_read_ops: peaks.io_read_ops,
            io_write_ops: peaks.io_write_ops,
            disk_peak_sampled_bytes: peaks.disk_used_bytes,
        }
    }
}

/// An agent's node totals from its latest usage report ([`v1::NodeUsage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub timestamp_ns: u64,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub tasks_running: u32,
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

impl From<&v1::NodeUsage> for NodeUsage {
    fn from(n: &v1::NodeUsage) -> Self {
        Self {
            timestamp_ns: n.timestamp_ns,
            cpu_user_ns: n.cpu_user_ns,
            cpu_system_ns: n.cpu_system_ns,
            mem_total_bytes: n.mem_total_bytes,
            mem_available_bytes: n.mem_available_bytes,
            tasks_running: n.tasks_running,
            cpu_pressure: n.cpu_pressure,
            memory_pressure: n.memory_pressure,
            io_pressure: n.io_pressure,
        }
    }
}
