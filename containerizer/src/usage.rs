//! What a task used, in normalised units (nanoseconds, bytes). A figure the kernel
//! does not offer is `None` (JSON `null`), never 0. The figures themselves
//! ([`Usage`], [`Pressure`]) are defined once in [`cella_proto::usage`], shared with
//! the wire and the master's API; here is what only the containerizer needs.

use std::time::Duration;

pub use cella_proto::usage::{Pressure, Usage};
use serde::{Deserialize, Serialize};

/// A task is sampled every [`DENSE_SAMPLE_INTERVAL`] during its first
/// [`DENSE_SAMPLE_PERIOD`], so that a short task's memory is seen before it exits.
pub const DENSE_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
pub const DENSE_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// How long to wait for the next sample of a task launched `age` ago, which is
/// sampled every `regular` once its first second is over.
pub fn next_sample_in(age: Duration, regular: Duration) -> Duration {
    if age < DENSE_SAMPLE_PERIOD {
        DENSE_SAMPLE_INTERVAL.min(regular)
    } else {
        regular
    }
}

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
