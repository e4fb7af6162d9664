//! Sampling one running task's usage again and again, cheaply: its cgroup files are
//! held open ([`StatFiles::held`]), and a task that has not run since the last
//! sample is not read again.
//!
//! Each sample first reads the task's CPU time counter (the kernel charges a running
//! task at least every scheduler tick). When it has not moved, no process of the
//! task ran, so the figures the task itself changes (anon memory, pids, I/O it
//! issues, CPU time) cannot have changed either, and the last sample is returned as
//! it is. What does change without the task running is the kernel's doing: page
//! cache and swap (reclaim moves a sleeping task's pages out), socket buffers (data
//! arriving for it), writeback of its dirty pages on cgroup v2, and the pressure
//! averages (which decay). Those figures of a sleeping task are therefore up to
//! [`FULL_SAMPLE_INTERVAL`] old: they are read again that often
//! ([`Figures::Asleep`]).
//!
//! The kernel's own peaks and counts that only the summary needs (memory and pids
//! peak, pids limit hits) are read in full samples only: the first, the last, and
//! every [`FULL_SAMPLE_INTERVAL`] while the task runs. In between they are carried
//! over, a peak raised to the current figure if that is higher. The first interval
//! is cut short by a random share, so tasks first sampled together (an agent's
//! recovery) do not all have their full samples in the same round.

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
    /// When every figure that can change was last read.
    full_at: Option<Instant>,
    /// How often that happens at least.
    full_interval: Duration,
}

impl TaskSampler {
    /// A sampler of `cgroup`, whose files it opens at its first sample and holds.
    pub fn new(cgroup: TaskCgroup) -> Self {
        Self {
            cgroup,
            files: StatFiles::held(),
            last: None,
            full_at: None,
            full_interval: FULL_SAMPLE_INTERVAL,
        }
    }

    /// Reads every figure that can change at least every `interval` rather than
    /// [`FULL_SAMPLE_INTERVAL`] (zero: at every sample, which is what a benchmark of
    /// those reads takes).
    pub fn with_full_interval(mut self, interval: Duration) -> Self {
        self.full_interval = interval;
        self
    }

    /// How many descriptors it holds open.
    pub fn descriptors(&self) -> usize {
        self.files.descriptors()
    }

    /// The task's figures now. `every` reads every figure whatever the task did
    /// (the last sample, for the summary).
    pub fn sample(&mut self, every: bool) -> Usage {
        let cpu = self.cgroup.cpu_counter(&mut self.files);
        let due = self
            .full_at
            .is_none_or(|at| at.elapsed() >= self.full_interval);
        let (figures, mut usage) = match self.last.take() {
            Some((last, at)) if !every => {
                let ran = cpu.is_none() || cpu != at;
                match (ran, due) {
                    (true, true) => (Figures::Every, Usage::default()),
                    (true, false) => (Figures::Running, last),
                    (false, true) => (Figures::Asleep, last),
                    (false, false) => {
                        self.last = Some((last.clone(), at));
                        return last;
                    }
                }
            }
            _ => (Figures::Every, Usage::default()),
        };
        self.cgroup
            .read_usage(&mut self.files, figures, cpu, &mut usage);
        if figures == Figures::Running || figures == Figures::Asleep {
            raise_peaks(&mut usage);
        }
        if due || figures == Figures::Every {
            let now = Instant::now();
            // After the first sample, a share of the interval is taken as passed
            // already: tasks sampled for the first time together (an agent that
            // recovered them) are read in full in different seconds, not all in one.
            let passed = if self.full_at.is_none() {
                stagger(self.full_interval)
            } else {
                Duration::ZERO
            };
            self.full_at = Some(now.checked_sub(passed).unwrap_or(now));
        }
        self.last = Some((usage.clone(), cpu));
        usage
    }
}

/// A random share of `interval` (std's per-instance random hash keys as the
/// source: no generator is needed for this).
fn stagger(interval: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    match u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX) {
        0 => Duration::ZERO,
        interval => Duration::from_nanos(random % interval),
    }
}

/// The kernel's peaks of the last full sample, carried over by a partial one,
/// raised to the current figure where that is higher.
fn raise_peaks(usage: &mut Usage) {
    let higher = |peak: Option<u64>, now: Option<u64>| match (peak, now) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (peak, _) => peak,
    };
    usage.mem_peak_bytes = higher(usage.mem_peak_bytes, usage.mem_current_bytes);
    usage.pids_peak = higher(usage.pids_peak, usage.pids_current);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_samples_raise_the_kernel_peaks() {
        let mut now = Usage {
            mem_peak_bytes: Some(100),
            mem_current_bytes: Some(150),
            pids_peak: Some(3),
            pids_current: Some(2),
            ..Default::default()
        };
        raise_peaks(&mut now);
        assert_eq!(now.mem_peak_bytes, Some(150));
        assert_eq!(now.pids_peak, Some(3));

        // No kernel peak (v2 before 5.19): none is made up.
        let mut now = Usage {
            mem_current_bytes: Some(7),
            ..Default::default()
        };
        raise_peaks(&mut now);
        assert_eq!(now.mem_peak_bytes, None);
    }
}
