//! Sampling one running task's usage again and again, cheaply: its cgroup files are
//! held open ([`StatFiles::held`]), a task that has not run since the last sample is
//! not read again, and a task that has run has its live figures read, not all.
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
//! When the counter has moved, only the figures people watch live are read
//! ([`Figures::Live`]): CPU time (the counter itself: the exact total, divided into
//! user and system in the last full sample's proportion), memory
//! (`mem_current_bytes`) and processes. Three short reads: every other figure costs
//! as much as one of them or more, and `memory.stat` as much as five (the kernel
//! sums its statistics at every read). The memory breakdown (anon, file, kernel,
//! swap) is read again as soon as the memory has moved by more than 1/128 of itself
//! (at least 1 MiB) since it was last read ([`Figures::Breakdown`]), so it stays
//! within that of the memory figure, and once more at the first sample after the task
//! stops running, so that what it holds asleep is exact: a read while it ran may
//! have been stale (cgroup v2's `memory.stat` skips its flush of the per-CPU
//! counts when another reader is flushing at that moment), and a read at rest is
//! not left to chance. Every other figure of a running task (the
//! user/system split, throttling, OOM kills, I/O, on v2 pressure; the breakdown of a
//! task whose memory stands still) is read in its full samples: every
//! [`FULL_SAMPLE_INTERVAL`] while the process's [`FullSampleBudget`] (40 running
//! tasks a second) has room, and at least every [`RUNNING_FULL_SAMPLE_BOUND`]
//! whatever it says. So up to 400 busy tasks are read in full every 10 s, 1,000
//! every 25 s, and a running task's figures other than the live ones are never
//! older than 30 s.
//!
//! The kernel's own peaks and counts that only the summary needs (memory and pids
//! peak, pids limit hits) are read in full samples only. In between they are carried
//! over, a peak raised to the current figure if that is higher. The first and the
//! last sample of a task (its summary) read every figure. The first interval is cut
//! short by a random share, so tasks first sampled together (an agent's recovery) do
//! not all have their full samples in the same round.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Figures, StatFiles, TaskCgroup};
use crate::usage::Usage;

/// How often a task's figures are read in full: a sleeping task's always (what the
/// kernel changes without it running), a running task's as [`FullSampleBudget`]
/// lets.
pub const FULL_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// How old a running task's figures other than its live ones may get when the
/// process has more running tasks than [`FullSampleBudget`] lets it read in full
/// every [`FULL_SAMPLE_INTERVAL`].
pub const RUNNING_FULL_SAMPLE_BOUND: Duration = Duration::from_secs(30);

/// How many full samples of running tasks the process takes per second at most
/// before the bound ([`RUNNING_FULL_SAMPLE_BOUND`]) forces them. A full sample of a
/// running task costs about 55 µs of CPU and a live one 7 µs (cgroup v1, 1,000
/// busy tasks, docs/benchmarks.md): 40 a second is 0.22% of a core, and keeps 1,000
/// busy tasks sampled every second within 1% of a core, each read in full every
/// 25 s; up to 400 busy tasks are read in full every 10 s.
const FULL_SAMPLES_PER_SECOND: u32 = 40;

/// The full samples of running tasks that the samplers sharing it may take per
/// period; one due beyond that waits (the task gets live samples) until a later
/// period has room or the bound has passed.
#[derive(Debug)]
pub struct FullSampleBudget {
    per_period: u32,
    period: Duration,
    /// When the current period began and how many it has taken.
    window: Mutex<(Instant, u32)>,
}

impl FullSampleBudget {
    /// At most `per_period` full samples of running tasks every `period`.
    pub fn new(per_period: u32, period: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_period,
            period,
            window: Mutex::new((Instant::now(), 0)),
        })
    }

    /// The process's budget, which every sampler shares unless given another.
    fn process() -> Arc<Self> {
        static PROCESS: LazyLock<Arc<FullSampleBudget>> = LazyLock::new(|| {
            FullSampleBudget::new(FULL_SAMPLES_PER_SECOND, Duration::from_secs(1))
        });
        PROCESS.clone()
    }

    /// Takes one full sample from the budget; `force` takes it even past the limit.
    fn take(&self, force: bool) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(window.0) >= self.period {
            *window = (now, 0);
        }
        let room = window.1 < self.per_period;
        if room || force {
            window.1 = window.1.saturating_add(1);
        }
        room || force
    }
}

/// By how much a running task's memory (`mem_current_bytes`) must have moved since
/// its breakdown was last read for the breakdown to be read again: 1/128 of it, and
/// at least this (the kernel charges memory to a cgroup in batches of 64 pages per
/// CPU, so smaller moves say little).
const BREAKDOWN_SLACK_BYTES: u64 = 1 << 20;

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
    /// How often that happens while the task sleeps, and at most while it runs.
    full_interval: Duration,
    /// How often that happens at least while it runs, whatever the budget says.
    running_bound: Duration,
    budget: Arc<FullSampleBudget>,
    /// Whether a running task has its live figures read rather than all.
    live: bool,
    /// The task's memory when its breakdown was last read.
    breakdown_of: Option<u64>,
    /// Whether the breakdown was last read with the task at rest (it had not run
    /// since the sample before), rather than while it ran.
    breakdown_at_rest: bool,
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
            running_bound: RUNNING_FULL_SAMPLE_BOUND,
            budget: FullSampleBudget::process(),
            live: true,
            breakdown_of: None,
            breakdown_at_rest: false,
        }
    }

    /// Reads every figure that can change every `interval` rather than
    /// [`FULL_SAMPLE_INTERVAL`] (zero: at every sample, which is what a benchmark of
    /// those reads takes), and a running task's at least every three times that
    /// rather than [`RUNNING_FULL_SAMPLE_BOUND`].
    pub fn with_full_interval(mut self, interval: Duration) -> Self {
        self.full_interval = interval;
        self.running_bound = interval.saturating_mul(3);
        self
    }

    /// Takes the full samples of running tasks from `budget` rather than from the
    /// process's.
    pub fn with_budget(mut self, budget: Arc<FullSampleBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Whether a task that ran has only its live figures read (the default) or all
    /// but the kernel's peaks, as before this sampler had live figures (a benchmark
    /// compares the two).
    pub fn with_live_figures(mut self, live: bool) -> Self {
        self.live = live;
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
        let (figures, mut usage, ran) = match self.last.take() {
            Some((last, at)) if !every => {
                let ran = cpu.is_none() || cpu != at;
                let due = full_sample_due(
                    ran,
                    self.full_at.map(|at| at.elapsed()),
                    self.full_interval,
                    self.running_bound,
                    &self.budget,
                );
                match (ran, due) {
                    (true, true) => (Figures::Every, Usage::default(), true),
                    (true, false) if self.live => (Figures::Live, last, true),
                    (true, false) => (Figures::Running, last, true),
                    (false, true) => (Figures::Asleep, last, false),
                    (false, false) => {
                        let mut last = last;
                        // The task has stopped running since its breakdown was last
                        // read: read it once now, so that what the task holds while it
                        // sleeps, often its peak, is in its figures and its summary.
                        if !self.breakdown_at_rest {
                            self.cgroup.read_usage(
                                &mut self.files,
                                Figures::Breakdown,
                                cpu,
                                &mut last,
                            );
                            self.breakdown_of = last.mem_current_bytes;
                            self.breakdown_at_rest = true;
                        }
                        self.last = Some((last.clone(), at));
                        return last;
                    }
                }
            }
            _ => (Figures::Every, Usage::default(), false),
        };
        self.cgroup
            .read_usage(&mut self.files, figures, cpu, &mut usage);
        let breakdown = match figures {
            Figures::Live if moved(usage.mem_current_bytes, self.breakdown_of) => {
                self.cgroup
                    .read_usage(&mut self.files, Figures::Breakdown, cpu, &mut usage);
                true
            }
            Figures::Live => false,
            _ => true,
        };
        if breakdown {
            self.breakdown_of = usage.mem_current_bytes;
        }
        // At rest: asleep since the sample before; or the first sample or the last,
        // where that is not known (had the task been running, its CPU counter moves
        // before the next sample, which then counts as a run).
        self.breakdown_at_rest = !ran;
        if figures != Figures::Every {
            raise_peaks(&mut usage);
        }
        if figures == Figures::Every || figures == Figures::Asleep {
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

/// Whether a task's next sample reads every figure, `since` its last full one
/// (`None`: it had none): a sleeping task's every `interval`; a running task's every
/// `interval` as `budget` lets, and whatever it says once `bound` has passed.
fn full_sample_due(
    ran: bool,
    since: Option<Duration>,
    interval: Duration,
    bound: Duration,
    budget: &FullSampleBudget,
) -> bool {
    since.is_none_or(|since| since >= interval && (!ran || budget.take(since >= bound)))
}

/// Whether memory at `now` has moved far enough from `then` (when the breakdown was
/// last read) that the breakdown no longer describes it ([`BREAKDOWN_SLACK_BYTES`]).
fn moved(now: Option<u64>, then: Option<u64>) -> bool {
    match (now, then) {
        (Some(now), Some(then)) => {
            let slack = (now.max(then) / 128).max(BREAKDOWN_SLACK_BYTES);
            now.abs_diff(then) > slack
        }
        (Some(_), None) => true,
        (None, _) => false,
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
    fn the_breakdown_follows_moves_of_memory_beyond_the_slack() {
        const MIB: u64 = 1 << 20;
        assert!(
            !moved(Some(10 * MIB), Some(10 * MIB + MIB / 2)),
            "below 1 MiB"
        );
        assert!(moved(Some(10 * MIB), Some(12 * MIB)));
        // 1/128 of 1 GiB is 8 MiB.
        assert!(!moved(Some(1024 * MIB), Some(1030 * MIB)));
        assert!(moved(Some(1024 * MIB), Some(1040 * MIB)));
        assert!(moved(Some(MIB), None), "never read");
        assert!(!moved(None, Some(MIB)), "no memory figure");
    }

    #[test]
    fn a_running_task_is_read_in_full_at_least_every_bound_whatever_the_budget() {
        let ms = Duration::from_millis;
        let (interval, bound) = (FULL_SAMPLE_INTERVAL, RUNNING_FULL_SAMPLE_BOUND);
        // A budget with no room in this test's lifetime.
        let spent = FullSampleBudget::new(0, Duration::from_secs(3600));
        let due = |ran, since| full_sample_due(ran, since, interval, bound, &spent);
        assert!(due(true, None), "the first sample");
        assert!(!due(true, Some(interval)), "no room, within the bound");
        assert!(!due(true, Some(bound - ms(1))), "no room, within the bound");
        assert!(due(true, Some(bound)), "the bound has passed");
        assert!(due(true, Some(bound * 4)), "the bound has passed");
        // A sleeping task is read in full every interval, whatever the budget.
        assert!(!due(false, Some(interval - ms(1))));
        assert!(due(false, Some(interval)));

        // With room for one: a running task is read in full once the interval has
        // passed, and that takes the room.
        let one = FullSampleBudget::new(1, Duration::from_secs(3600));
        let due = |since| full_sample_due(true, Some(since), interval, bound, &one);
        assert!(!due(interval - ms(1)));
        assert!(due(interval));
        assert!(!due(interval), "the room is taken");
        assert!(due(bound));
    }

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
