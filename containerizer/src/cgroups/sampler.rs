//! Sampling one running task's usage again and again, cheaply: its cgroup files are
//! held open ([`StatFiles::held`]), and a task that has not run since the last
//! sample is not read again.
//!
//! Each sample first reads the task's CPU time counter. When it has not moved, no
//! process of the task ran, so the figures the task itself changes (anon memory,
//! pids, I/O it issues, CPU time) cannot have changed either, and the last sample is
//! returned as it is. What does change without the task running is the kernel's
//! doing: page cache and swap (reclaim moves a sleeping task's pages out), socket
//! buffers (data arriving for it), writeback of its dirty pages on cgroup v2, and the
//! pressure averages (which decay). Those figures of a sleeping task are therefore
//! up to [`FULL_SAMPLE_INTERVAL`] old: every figure is read again at least that
//! often, and always at the first and the last sample.
//!
//! The kernel's own peaks and counts that only the summary needs (memory and pids
//! peak, pids limit hits) are read in those full samples only; in between a running
//! task's peaks are carried over, raised to the current figure if that is higher.

use std::time::{Duration, Instant};

use super::{Figures, StatFiles, TaskCgroup};
use crate::usage::Usage;

/// How old the figures of a task that does not run may get: every figure is read
/// again at least this often.
pub const FULL_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// One task's usage sampler (see the module's comment). Dropping it closes the
/// task's cgroup files: drop it before the cgroup is removed.
#[derive(Debug)]
pub struct TaskSampler {
    cgroup: TaskCgroup,
    files: StatFiles,
    /// The last sample and the CPU counter it was taken at.
    last: Option<(Usage, Option<u64>)>,
    /// When every figure was last read.
    full_at: Option<Instant>,
}

impl TaskSampler {
    /// A sampler of `cgroup`, whose files it opens at its first sample and holds.
    pub fn new(cgroup: TaskCgroup) -> Self {
        Self {
            cgroup,
            files: StatFiles::held(),
            last: None,
            full_at: None,
        }
    }

    /// How many descriptors it holds open.
    pub fn descriptors(&self) -> usize {
        self.files.descriptors()
    }

    /// The task's figures now. `every` reads every figure whatever the task did
    /// (the last sample, for the summary).
    pub fn sample(&mut self, every: bool) -> Usage {
        let cpu = self.cgroup.cpu_counter(&mut self.files);
        let full = every
            || self
                .full_at
                .is_none_or(|at| at.elapsed() >= FULL_SAMPLE_INTERVAL);
        let last = match &self.last {
            Some((usage, at)) if !full => {
                if cpu.is_some() && cpu == *at {
                    return usage.clone();
                }
                Some(usage)
            }
            _ => None,
        };
        let figures = if full {
            Figures::Every
        } else {
            Figures::Running
        };
        let mut usage = self.cgroup.read_usage(&mut self.files, figures, cpu);
        if let Some(last) = last {
            carry_peaks(&mut usage, last);
        }
        if full {
            self.full_at = Some(Instant::now());
        }
        self.last = Some((usage.clone(), cpu));
        usage
    }
}

/// Gives a [`Figures::Running`] sample the kernel's peaks and counts of the last
/// full one, a peak raised to the current figure where that is higher.
fn carry_peaks(usage: &mut Usage, last: &Usage) {
    let higher = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, _) => a,
    };
    usage.mem_peak_bytes = higher(last.mem_peak_bytes, usage.mem_current_bytes);
    usage.pids_peak = higher(last.pids_peak, usage.pids_current);
    usage.pids_limit_hits = last.pids_limit_hits;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_samples_keep_the_kernel_peaks() {
        let last = Usage {
            mem_peak_bytes: Some(100),
            pids_peak: Some(3),
            pids_limit_hits: Some(1),
            ..Default::default()
        };
        let mut now = Usage {
            mem_current_bytes: Some(150),
            pids_current: Some(2),
            ..Default::default()
        };
        carry_peaks(&mut now, &last);
        assert_eq!(now.mem_peak_bytes, Some(150));
        assert_eq!(now.pids_peak, Some(3));
        assert_eq!(now.pids_limit_hits, Some(1));

        // No kernel peak (v2 before 5.19): none is made up.
        let mut now = Usage {
            mem_current_bytes: Some(7),
            ..Default::default()
        };
        carry_peaks(&mut now, &Usage::default());
        assert_eq!(now.mem_peak_bytes, None);
    }
}
