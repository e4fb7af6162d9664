//! What a task used, in normalised units (nanoseconds, bytes): the one set of figures
//! the containerizer measures, the agent sends as [`v1::TaskUsage`] and the master's
//! operator API serves ([`crate::api::Usage`] adds when the sample was taken). A
//! figure the kernel does not offer is `None` (JSON `null`), never 0.

use serde::{Deserialize, Serialize};

use crate::v1;

/// Pressure stall information of one resource, as the kernel's `*.pressure` files
/// give it: the share of wall time (percent) in which some (or all) runnable tasks
/// waited for the resource, over 10, 60 and 300 s, and the total stall time in
/// microseconds. The `full_*` figures are `None` where the kernel writes no `full`
/// line (cpu before Linux 5.13). The wire's message, used as it is.
pub use crate::v1::Pressure;

/// Measured figures of one task, in the order the operator API's JSON lists them.
/// A figure missing from the JSON (written before it was measured) reads as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub mem_current_bytes: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_current: Option<u64>,
    /// The kernel's peak of `pids_current` (`pids.peak`). Read on the node for the
    /// task's summary and not sent to the master: absent from the API's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_peak: Option<u64>,
    /// Times a fork failed at the pids limit (`pids.events`). Read on the node to
    /// tell why a task failed and not sent to the master: absent from the API's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit_hits: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub io_read_ops: Option<u64>,
    pub io_write_ops: Option<u64>,
    /// Pressure stall figures (cgroup v2 only: `cpu.pressure`, `memory.pressure`,
    /// `io.pressure`); `None` where the kernel keeps none for the task.
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

impl Usage {
    /// The wire form of these figures: a sample of task `task_id` taken at
    /// `timestamp_ns` (`pids_peak` and `pids_limit_hits` stay on the node).
    pub fn to_wire(&self, task_id: &str, timestamp_ns: u64) -> v1::TaskUsage {
        v1::TaskUsage {
            task_id: task_id.to_string(),
            timestamp_ns,
            cpu_user_ns: self.cpu_user_ns,
            cpu_system_ns: self.cpu_system_ns,
            cpu_throttled_ns: self.cpu_throttled_ns,
            mem_current_bytes: self.mem_current_bytes,
            mem_peak_bytes: self.mem_peak_bytes,
            mem_anon_bytes: self.mem_anon_bytes,
            mem_file_bytes: self.mem_file_bytes,
            mem_kernel_bytes: self.mem_kernel_bytes,
            oom_kills: self.oom_kills,
            pids_current: self.pids_current,
            io_read_bytes: self.io_read_bytes,
            io_write_bytes: self.io_write_bytes,
            disk_used_bytes: self.disk_used_bytes,
            mem_swap_bytes: self.mem_swap_bytes,
            cpu_nr_throttled: self.cpu_nr_throttled,
            io_read_ops: self.io_read_ops,
            io_write_ops: self.io_write_ops,
            cpu_pressure: self.cpu_pressure,
            memory_pressure: self.memory_pressure,
            io_pressure: self.io_pressure,
        }
    }
}

/// The figures of a sample from the wire (its task id and timestamp aside).
impl From<&v1::TaskUsage> for Usage {
    fn from(u: &v1::TaskUsage) -> Self {
        Self {
            cpu_user_ns: u.cpu_user_ns,
            cpu_system_ns: u.cpu_system_ns,
            mem_current_bytes: u.mem_current_bytes,
            mem_peak_bytes: u.mem_peak_bytes,
            mem_anon_bytes: u.mem_anon_bytes,
            mem_file_bytes: u.mem_file_bytes,
            disk_used_bytes: u.disk_used_bytes,
            cpu_throttled_ns: u.cpu_throttled_ns,
            mem_kernel_bytes: u.mem_kernel_bytes,
            oom_kills: u.oom_kills,
            pids_current: u.pids_current,
            pids_peak: None,
            pids_limit_hits: None,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            mem_swap_bytes: u.mem_swap_bytes,
            cpu_nr_throttled: u.cpu_nr_throttled,
            io_read_ops: u.io_read_ops,
            io_write_ops: u.io_write_ops,
            cpu_pressure: u.cpu_pressure,
            memory_pressure: u.memory_pressure,
            io_pressure: u.io_pressure,
        }
    }
}

/// One line of a pressure file.
#[derive(Default)]
struct PressureLine {
    avg10: f64,
    avg60: f64,
    avg300: f64,
    total_us: u64,
}

impl Pressure {
    /// Parses a pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and
    /// the same for `full`); `None` without a `some` line.
    pub fn parse(text: &str) -> Option<Pressure> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let kind = fields.next();
            let mut l = PressureLine::default();
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                match key {
                    "avg10" => l.avg10 = value.parse().ok()?,
                    "avg60" => l.avg60 = value.parse().ok()?,
                    "avg300" => l.avg300 = value.parse().ok()?,
                    "total" => l.total_us = value.parse().ok()?,
                    _ => {}
                }
            }
            match kind {
                Some("some") => some = Some(l),
                Some("full") => full = Some(l),
                _ => {}
            }
        }
        let some = some?;
        Some(Pressure {
            some_avg10: some.avg10,
            some_avg60: some.avg60,
            some_avg300: some.avg300,
            some_total_us: some.total_us,
            full_avg10: full.as_ref().map(|f| f.avg10),
            full_avg60: full.as_ref().map(|f| f.avg60),
            full_avg300: full.as_ref().map(|f| f.avg300),
            full_total_us: full.as_ref().map(|f| f.total_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files() {
        let p = Pressure::parse(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n\
             full avg10=0.10 avg60=0.00 avg300=0.00 total=678\n",
        )
        .expect("pressure");
        assert_eq!((p.some_avg10, p.some_total_us), (1.5, 12345));
        assert_eq!((p.full_avg10, p.full_total_us), (Some(0.1), Some(678)));
        let cpu_before_5_13 = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n");
        assert_eq!(cpu_before_5_13.map(|p| p.full_total_us), Some(None));
        assert_eq!(Pressure::parse(""), None);
    }

    #[test]
    fn figures_survive_the_wire() {
        let usage = Usage {
            cpu_user_ns: Some(1),
            mem_swap_bytes: Some(0),
            io_write_ops: Some(u64::MAX),
            memory_pressure: Some(Pressure {
                some_avg10: 2.5,
                full_total_us: Some(3),
                ..Pressure::default()
            }),
            ..Usage::default()
        };
        let wire = usage.to_wire("t1", 42);
        assert_eq!((wire.task_id.as_str(), wire.timestamp_ns), ("t1", 42));
        assert_eq!(Usage::from(&wire), usage);
        // What stays on the node is dropped on the way, and absent from the JSON.
        let node_only = Usage {
            pids_peak: Some(4),
            pids_limit_hits: Some(1),
            ..usage.clone()
        };
        assert_eq!(Usage::from(&node_only.to_wire("t1", 42)), usage);
        let json = serde_json::to_value(&usage).expect("json");
        assert!(json.get("pids_peak").is_none() && json.get("pids_limit_hits").is_none());
        let back: Usage = serde_json::from_value(json).expect("usage");
        assert_eq!(back, usage);
    }
}
