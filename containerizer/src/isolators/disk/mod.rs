//! Disk space used under the sandbox and in the private /tmp, and its limit. A task
//! that reaches its limit (`--disk`) is killed with `DISK_LIMIT`. The private /tmp is a
//! tmpfs sized to the limit, so it cannot be used to escape it.
//!
//! How exactly the limit holds depends on the sandbox's filesystem:
//! - with project quotas enforced ([`quota`], as Mesos' `disk/xfs`), the kernel
//!   refuses every write past the limit (`EDQUOT`): the sandbox never holds more, and
//!   usage is read from the quota;
//! - elsewhere the sandbox is measured by walking it (as Mesos' `disk/du`), by a
//!   thread per task that measures again sooner the closer the task is to its limit,
//!   as often as a fast writer needs to fill half of what is left but spending no
//!   more than a twentieth of its CPU time walking, unless the task is seen writing
//!   fast enough to reach its limit before the next walk (at four times the rate
//!   seen). A task writing as fast as it can overshoots by what it writes in one
//!   interval (see docs/benchmarks.md).
//!
//! One walk per task and interval: while a watcher runs, usage samples take its
//! latest figure instead of walking again; only the last sample, after the task has
//! ended, measures afresh.

mod quota;
mod walk;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use quota::{PROJECT_IDS, QuotaFs, project_of};
pub use walk::disk_usage;

use super::{Isolator, IsolatorError};
use crate::cgroups::{CgroupRoot, TaskCgroup};
use crate::spec::ShimSpec;
use crate::task::{TaskConfig, TaskId};
use crate::usage::{Limitation, Usage};

/// A writer into the page cache at full speed, bytes per second: the watcher measures
/// again before such a writer could have filled half the room left (the other half
/// is for the time it takes to be scheduled and to kill).
const FAST_WRITER: f64 = 2.0 * 1024.0 * 1024.0 * 1024.0;
/// Bounds of the interval between two walks of the sandbox.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// At most 1/20 of the watcher's CPU time is spent walking.
const WALK_SHARE: u32 = 20;
/// A writer about to reach its limit: up to 1/2 of the time is spent walking.
const URGENT_SHARE: u32 = 2;
/// How much faster than seen a writer may be by the next walk: one seen starting
/// (its first walk's interval held its start-up too) speeds up, and on a slow CPU
/// (an emulated one walks ~50× slower) a walk's share would otherwise leave it a
/// whole interval of 100 ms and more.
const SPEED_UP: f64 = 4.0;
const WATCHER_STACK: usize = 256 * 1024;
/// With a quota the kernel holds the limit; the watcher only notices it was reached.
const QUOTA_INTERVAL: Duration = Duration::from_millis(100);
/// Within this of its limit a sample walks the sandbox as well, instead of taking
/// the watcher's figure: two walkers catch a fast writer sooner than one whose thread
/// may not be scheduled in time (a loaded or emulated machine).
const SAMPLE_WALKS_TOO_WITHIN: u64 = 256 << 20;
/// The watcher's thread runs ahead of processes at nice 0 in its own cgroup's share
/// of the CPU: on a busy machine a waking watcher preempts them instead of waiting a
/// scheduling period, in which a fast writer adds tens of MiB. (Tasks are in other
/// cgroups, whose CPU shares nice does not change.)
const WATCHER_NICE: i32 = -10;

/// How one task's disk usage is measured.
#[derive(Clone)]
struct Meter {
    sandbox: PathBuf,
    /// The filesystem's project quota and the sandbox's project id.
    project: Option<(QuotaFs, u32)>,
    /// The task's pid once it runs (0 before): its private /tmp is measured through
    /// it. Shared with the watcher, which starts before the task does.
    pid: Arc<AtomicI32>,
}

impl Meter {
    /// Bytes in the sandbox and the private /tmp.
    fn measure(&self) -> Option<u64> {
        let pid = self.task_pid();
        let tmp = pid.and_then(walk::tmp_usage).unwrap_or(0);
        let sandbox = match &self.project {
            Some((fs, id)) => fs.used(*id).ok()?,
            None => disk_usage(&self.sandbox).ok()?,
        };
        Some(sandbox + tmp)
    }

    fn task_pid(&self) -> Option<i32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|pid| *pid > 0)
    }

    /// Whether `used` means the limit is reached: a quota lets usage reach the limit
    /// exactly and refuses the next write, a walk sees the limit passed.
    fn reached(&self, used: u64, limit: u64) -> bool {
        if self.project.is_some() {
            used >= limit
        } else {
            used > limit
        }
    }
}

/// The watcher's latest figure, shared with the usage samples.
type Latest = Arc<Mutex<Option<u64>>>;

struct Watched {
    meter: Meter,
    limit: Option<u64>,
    measure: bool,
    /// What the sandbox held at launch, if the launcher knew (see
    /// [`TaskConfig::sandbox_bytes_at_launch`]).
    at_launch: Option<u64>,
    latest: Latest,
    /// Set by the watcher thread once it has killed the task at its limit.
    hit: Arc<AtomicBool>,
    /// Dropped at cleanup, which ends the watcher thread.
    stop: Option<mpsc::Sender<()>>,
}

pub struct DiskIsolator {
    tasks: Mutex<HashMap<TaskId, Watched>>,
    cgroups: CgroupRoot,
}

impl DiskIsolator {
    /// `cgroups`: where the watcher finds a task to kill at its limit.
    pub fn new(cgroups: CgroupRoot) -> Self {
        Self {
            tasks: Mutex::default(),
            cgroups,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<TaskId, Watched>) -> R) -> R {
        f(&mut lock(&self.tasks))
    }

    fn watched(config: &TaskConfig, project: Option<(QuotaFs, u32)>) -> Watched {
        let limit = config.resources.disk_bytes;
        Watched {
            meter: Meter {
                sandbox: config.sandbox.clone(),
                project,
                pid: Arc::default(),
            },
            limit,
            measure: config.measure_disk || limit.is_some(),
            at_launch: config.sandbox_bytes_at_launch,
            latest: Arc::default(),
            hit: Arc::new(AtomicBool::new(false)),
            stop: None,
        }
    }
}

/// Gives the sandbox a project of its own limited to `limit` bytes, where its
/// filesystem enforces project quotas. Falls back to measuring (with a warning) if
/// the quota cannot be set up.
fn take_project(id: &TaskId, config: &TaskConfig, limit: u64) -> Option<(QuotaFs, u32)> {
    let fs = QuotaFs::of(&config.sandbox)?;
    let project = match fs.allocate(limit) {
        Ok(project) => project,
        Err(e) => {
            tracing::warn!(task = %id, mount = %fs.mount_point().display(),
                "no project quota for the sandbox, its size is measured instead: {e}");
            return None;
        }
    };
    if let Err(e) = quota::set_project_tree(&config.sandbox, project) {
        tracing::warn!(task = %id, sandbox = %config.sandbox.display(),
            "cannot give the sandbox project {project}, its size is measured instead: {e}");
        let _ = fs.release(project);
        return None;
    }
    Some((fs, project))
}

/// Gives back the sandbox's project: no limit, and every file it holds back in
/// project 0, so the id is free again (a link or FIFO the task left, which is never
/// opened, keeps it taken until the sandbox is removed).
fn release_project(meter: &Meter) {
    let Some((fs, project)) = &meter.project else {
        return;
    };
    if meter.sandbox.exists() {
        let _ = quota::set_project_tree(&meter.sandbox, 0);
    }
    if let Err(e) = fs.release(*project) {
        tracing::warn!(project, mount = %fs.mount_point().display(), "clearing the project quota: {e}");
    }
}

/// What one watcher thread works with.
struct Watch {
    meter: Meter,
    limit: u64,
    hit: Arc<AtomicBool>,
    latest: Latest,
    stop: mpsc::Receiver<()>,
    cgroup: TaskCgroup,
    /// Before the first walk: none when the sandbox's size at launch is unknown.
    first_wait: Duration,
}

/// Measures until the task reaches `limit`, then kills it; ends as soon as `stop` is
/// dropped (a wait is on the channel, never a plain sleep, so nothing waits for it).
fn watcher(w: &Watch) {
    let Watch {
        meter, limit, hit, ..
    } = w;
    let limit = *limit;
    run_ahead_of_tasks();
    if !w.first_wait.is_zero()
        && !matches!(
            w.stop.recv_timeout(w.first_wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    {
        return;
    }
    // The previous walk: when, and what it found.
    let mut last: Option<(Instant, u64)> = None;
    loop {
        let started = Instant::now();
        let cpu_before = thread_cpu_time();
        let used = meter.measure();
        // What the walk cost is its CPU time: a walk that waited for the CPU or for a
        // lock (the shim mounting the task's filesystem) must not stretch the wait
        // after it, in which a fast writer would pass its limit unseen.
        let cost = thread_cpu_time().saturating_sub(cpu_before);
        if used.is_some() {
            *lock(&w.latest) = used;
        }
        // A sandbox over its limit before the task runs: killed as soon as it is in
        // its cgroup (which may be before the launcher hears that it runs).
        if used.is_some_and(|used| meter.reached(used, limit))
            && (meter.task_pid().is_some() || w.cgroup.pids().is_ok_and(|p| !p.is_empty()))
        {
            // Stopped during the walk: the task is gone, and its id may be another's.
            if matches!(w.stop.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                return;
            }
            hit.store(true, Ordering::SeqCst);
            let _ = w.cgroup.kill();
            return;
        }
        let wait = if meter.project.is_some() {
            QUOTA_INTERVAL
        } else {
            let used = used.unwrap_or(0);
            // Bytes per second since the previous walk.
            #[allow(clippy::cast_precision_loss)]
            let rate = last.map_or(0.0, |(at, before)| {
                used.saturating_sub(before) as f64 / started.duration_since(at).as_secs_f64()
            });
            last = Some((started, used));
            next_walk(limit.saturating_sub(used), cost, rate)
        };
        if !matches!(
            w.stop.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
    }
}

/// Gives the calling thread, and only it, [`WATCHER_NICE`]. Without the privilege
/// (an unprivileged `cella exec`) it stays at its nice and the limit still holds,
/// only with a larger overshoot on a busy machine.
fn run_ahead_of_tasks() {
    let Ok(tid) = libc::id_t::try_from(nix::unistd::gettid().as_raw()) else {
        return;
    };
    // SAFETY: setpriority reads only its three integer arguments; with PRIO_PROCESS
    // and a thread's id it changes that thread alone.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, WATCHER_NICE) };
    if set != 0 {
        tracing::debug!(
            "the disk watcher keeps its nice: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl DiskIsolator {
    /// Starts the thread that walks the sandbox of a task with a limit and kills the
    /// task when it passes it, unless one was started for it already. A launched task's starts
    /// before the task does, so how soon it first walks does not depend on how soon
    /// the launcher hears that the task runs (tens of milliseconds on a busy machine,
    /// in which a fast writer adds tens of MiB).
    fn start_watcher(&self, id: &TaskId) {
        let start = self.with(|t| {
            let w = t.get_mut(id)?;
            let limit = w.limit?;
            if w.stop.is_some() {
                return None;
            }
            let (tx, rx) = mpsc::channel();
            w.stop = Some(tx);
            // A sandbox known at launch, far from its limit, needs no walk before a
            // fast writer could have filled the rest (a second with the default
            // 10 GiB): none on the launch path of a short task.
            let first_wait = match (w.at_launch, &w.meter.project) {
                (None, _) => Duration::ZERO,
                (Some(_), Some(_)) => QUOTA_INTERVAL,
                (Some(used), None) => {
                    // Closer to the limit the first walk is what starts measuring
                    // the task's rate: it comes at once, as without a known size.
                    let wait = next_walk(limit.saturating_sub(used), Duration::ZERO, 0.0);
                    if wait >= MAX_INTERVAL {
                        wait
                    } else {
                        Duration::ZERO
                    }
                }
            };
            if let Some(used) = w.at_launch {
                *lock(&w.latest) = Some(used);
            }
            Some(Watch {
                meter: w.meter.clone(),
                limit,
                hit: w.hit.clone(),
                latest: w.latest.clone(),
                stop: rx,
                cgroup: self.cgroups.open(id.as_str()),
                first_wait,
            })
        });
        let Some(watch) = start else {
            return;
        };
        // One per task with a limit (every agent task): a small stack, as the walk
        // keeps its state on the heap.
        let spawned = std::thread::Builder::new()
            .name(format!("disk-{id}"))
            .stack_size(WATCHER_STACK)
            .spawn(move || watcher(&watch));
        if let Err(e) = spawned {
            tracing::warn!(task = %id, "no disk watcher (the limit is checked at each usage sample): {e}");
            // The samples measure themselves.
            self.with(|t| t.get_mut(id).map(|w| w.stop = None));
        }
    }
}

/// The calling thread's CPU time (zero if the clock cannot be read: the walks'
/// share is then not bounded, only their interval).
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wait before the next walk: the time a fast writer needs to fill half `room`,
/// within the bounds, and long enough that walking (`cost` each) stays a small share.
/// A task seen writing (`rate`, bytes per second) that would reach its limit sooner
/// at [`SPEED_UP`] times that rate is walked again within half that time, as often as every other walk's time: only
/// a fast writer near its limit costs that much, and not for long.
fn next_walk(room: u64, cost: Duration, rate: f64) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let fill = Duration::from_secs_f64(room as f64 / FAST_WRITER / 2.0);
    let steady = fill
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
        .max(cost * WALK_SHARE);
    // Seconds until the limit at SPEED_UP times the rate seen (infinite when not
    // growing).
    #[allow(clippy::cast_precision_loss)]
    let reach = room as f64 / (rate * SPEED_UP);
    if reach < steady.as_secs_f64() {
        Duration::from_secs_f64(reach / 2.0)
            .max(cost * URGENT_SHARE)
            .max(MIN_INTERVAL)
    } else {
        steady
    }
}

impl Isolator for DiskIsolator {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn prepare(
        &self,
        id: &TaskId,
        config: &TaskConfig,
        spec: &mut ShimSpec,
    ) -> Result<(), IsolatorError> {
        let limit = config.resources.disk_bytes;
        spec.filesystem.tmp_size_bytes = limit;
        let project = limit.and_then(|limit| take_project(id, config, limit));
        let watched = Self::watched(config, project);
        self.with(|t| t.insert(id.clone(), watched));
        self.start_watcher(id);
        Ok(())
    }

    fn recover(&self, tasks: &[(TaskId, TaskConfig)]) -> Result<(), IsolatorError> {
        for (id, config) in tasks {
            if self.with(|t| t.contains_key(id)) {
                continue;
            }
            // The sandbox's own project id says which quota is the task's.
            let project = config.resources.disk_bytes.and_then(|_| {
                let fs = QuotaFs::of(&config.sandbox)?;
                let project = quota::project_of(&config.sandbox).ok()?;
                PROJECT_IDS.contains(&project).then_some((fs, project))
            });
            let mut watched = Self::watched(config, project);
            // The task has run meanwhile: what the sandbox held at launch says
            // nothing of it now.
            watched.at_launch = None;
            self.with(|t| t.insert(id.clone(), watched));
        }
        Ok(())
    }

    fn isolate(&self, id: &TaskId, pid: i32) {
        self.with(|t| t.get(id).map(|w| w.meter.pid.store(pid, Ordering::SeqCst)));
        // A recovered task's watcher starts here; a launched task's already runs.
        self.start_watcher(id);
    }

    /// The watcher's latest figure while it walks the sandbox (as often as the limit
    /// needs, so a sample does not walk again) and the task is far from its limit,
    /// else a measure (a quota is cheap).
    fn usage(&self, id: &TaskId, usage: &mut Usage) {
        let Some((meter, watched)) = self.with(|t| {
            let w = t.get(id).filter(|w| w.measure)?;
            let walked = w.stop.is_some() && w.meter.project.is_none();
            let watched = walked.then(|| *lock(&w.latest)).flatten().filter(|&used| {
                w.limit
                    .is_none_or(|limit| limit.saturating_sub(used) >= SAMPLE_WALKS_TOO_WITHIN)
            });
            Some((w.meter.clone(), watched))
        }) else {
            return;
        };
        usage.disk_used_bytes = watched.or_else(|| meter.measure());
    }

    /// Measured afresh: the last figure of a task that has ended.
    fn final_usage(&self, id: &TaskId, usage: &mut Usage) {
        let Some(meter) = self.with(|t| t.get(id).filter(|w| w.measure).map(|w| w.meter.clone()))
        else {
            return;
        };
        usage.disk_used_bytes = meter.measure();
    }

    /// Without project quotas and without a watcher a measure walks the sandbox.
    fn usage_is_costly(&self) -> bool {
        true
    }

    fn watch(&self, id: &TaskId, usage: &Usage) -> Option<Limitation> {
        let (limit, hit, meter) =
            self.with(|t| t.get(id).map(|w| (w.limit, w.hit.clone(), w.meter.clone())))?;
        let limit = limit?;
        let reached = hit.load(Ordering::SeqCst)
            || usage
                .disk_used_bytes
                .is_some_and(|used| meter.reached(used, limit));
        reached.then_some(Limitation::DiskLimit)
    }

    fn cleanup(&self, id: &TaskId) -> Result<(), IsolatorError> {
        // Dropping the entry drops the watcher's sender, which ends the thread.
        if let Some(watched) = self.with(|t| t.remove(id)) {
            release_project(&watched.meter);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn walks_sooner_near_the_limit_but_not_too_often() {
        let cheap = Duration::from_micros(10);
        let far = super::next_walk(1 << 30, cheap, 0.0);
        let near = super::next_walk(1 << 20, cheap, 0.0);
        assert!(near < far, "{near:?} !< {far:?}");
        assert!(near >= super::MIN_INTERVAL);
        assert_eq!(super::next_walk(1 << 40, cheap, 0.0), super::MAX_INTERVAL);
        // A walk of 100 ms is not repeated more often than every 2 s...
        let slow = Duration::from_millis(100);
        assert_eq!(super::next_walk(0, slow, 0.0), Duration::from_secs(2));
        // ...unless the task is about to reach its limit: then every 200 ms.
        assert_eq!(super::next_walk(1 << 20, slow, 1e9), slow * 2);
        // A slow writer (a log line a second) changes nothing.
        assert_eq!(
            super::next_walk(1 << 20, slow, 100.0),
            Duration::from_secs(2)
        );
    }
}
