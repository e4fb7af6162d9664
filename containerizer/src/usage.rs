//! What a task used, in normalised units (nanoseconds, bytes). A figure the kernel
//! does not offer is `None` (JSON `null`), never 0.

use serde::{Deserialize, Serialize};

/// Why the containerizer or the kernel ended a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Limitation {
    /// The kernel's OOM killer killed a process of the task at its memory limit.
    MemoryLimit,
    /// The task wrote more than its disk limit under its sandbox; Cella killed it.
    DiskLimit,
    /// A fork or clone failed at the pids limit and the task then failed.
    PidsLimit,
}

impl Limitation {
    pub fn as_str(self) -> &'static str {
        match self {
            Limitation::MemoryLimit => "MEMORY_LIMIT",
            Limitation::DiskLimit => "DISK_LIMIT",
            Limitation::PidsLimit => "PIDS_LIMIT",
        }
    }
}

/// Measured statistics of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub mem_current_bytes: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_peak: Option<u64>,
    /// Times a fork failed at the pids limit.
    pub pids_limit_hits: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The largest figures seen over a task's life, for the values the kernel keeps no
/// peak of (anon, file, kernel, swap, pids, disk): the sampler folds every sample in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peaks {
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub disk_peak_bytes: Option<u64>,
}

impl Peaks {
    pub fn observe(&mut self, u: &Usage) {
        // The kernel's own peak where it keeps one, else the largest current value seen.
        self.mem_peak_bytes = max_opt(
            self.mem_peak_bytes,
            max_opt(u.mem_peak_bytes, u.mem_current_bytes),
        );
        self.mem_anon_bytes = max_opt(self.mem_anon_bytes, u.mem_anon_bytes);
        self.mem_file_bytes = max_opt(self.mem_file_bytes, u.mem_file_bytes);
        self.mem_kernel_bytes = max_opt(self.mem_kernel_bytes, u.mem_kernel_bytes);
        self.mem_swap_bytes = max_opt(self.mem_swap_bytes, u.mem_swap_bytes);
        self.pids_peak = max_opt(self.pids_peak, max_opt(u.pids_peak, u.pids_current));
        self.disk_peak_bytes = max_opt(self.disk_peak_bytes, u.disk_used_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_keep_none_distinct_from_zero() {
        let mut p = Peaks::default();
        p.observe(&Usage {
            mem_anon_bytes: Some(10),
            ..Default::default()
        });
        p.observe(&Usage {
            mem_anon_bytes: Some(4),
            mem_current_bytes: Some(7),
            ..Default::default()
        });
        assert_eq!(p.mem_anon_bytes, Some(10));
        assert_eq!(p.mem_peak_bytes, Some(7));
        assert_eq!(p.mem_swap_bytes, None);
    }
}
