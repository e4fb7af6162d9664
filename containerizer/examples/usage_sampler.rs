//! What sampling the usage of many running tasks costs: creates N real task cgroups
//! (limits written, as at a launch) under a base of its own, puts one process in each
//! (this program again, as a worker that sleeps until told to get busy), then takes R
//! rounds of every task's figures and reports the CPU time this process spent per
//! task and sample, side by side in one run:
//! - `TaskCgroup::stats`, every file opened by path at every sample (the old way);
//! - the floor: opening and reading one small file (`cgroup.procs`) of every task as
//!   many times as `stats` reads files, by path and through a held directory;
//! - `TaskSampler` (what the agent's usage loop uses): a full sample through held
//!   files, then, as it was before it had live figures and as it is now (with and
//!   without its budget of full samples), samples while
//!   every task sleeps, while 10% of them are busy and while all are (a busy worker
//!   wakes every 50 ms and writes to a page; the rounds are 200 ms apart so that every
//!   busy task has run between two samples, and the samplers' intervals are shortened
//!   by the same factor, so that a round costs what a sample at 1 s does);
//! - what one `pread` of each held file costs, while every task sleeps and while all
//!   are busy.
//!
//! Run as root: `cargo run --release --example usage_sampler -- [TASKS] [ROUNDS]`
//! (default 1000 tasks, 20 rounds). Everything it creates is removed at the end, also
//! after a panic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_containerizer::cgroups::{
    CgroupLimits, CgroupRoot, FULL_SAMPLE_INTERVAL, FullSampleBudget, TaskCgroup, TaskSampler,
    held_descriptors,
};
use cella_containerizer::units::MilliCpus;

/// The tasks' processes and cgroups, killed and removed on drop.
struct Tasks {
    root: CgroupRoot,
    cgroups: Vec<TaskCgroup>,
    children: Vec<Child>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for cgroup in &self.cgroups {
            let _ = cgroup.remove();
        }
        self.root.remove_base_if_empty();
    }
}

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    micros(u.user_time()) + micros(u.system_time())
}

/// How many files one `stats()` reads, 13 on either version: v2 cpu.stat,
/// memory.{current,peak,stat,swap.current,events}, pids.{current,peak,events},
/// io.stat and three pressure files; v1 cpuacct.usage{,_all}, cpu.stat,
/// memory.{usage_in_bytes,max_usage_in_bytes,stat,kmem.usage_in_bytes,oom_control},
/// pids.{current,peak,events} and two blkio files.
const FILES_PER_SAMPLE: usize = 13;

/// The process in each task: sleeps in `sigwait` (never waking, so its CPU time
/// stands still) until SIGUSR1, then wakes every 50 ms and writes to one page of a
/// 256 KiB buffer, the next one each time.
fn worker() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.thread_block().expect("block SIGUSR1");
    set.wait().expect("sigwait");
    let mut pages = vec![0u8; 256 << 10];
    let mut i = 0usize;
    loop {
        let at = i % pages.len();
        pages[at] = pages[at].wrapping_add(1);
        i = i.wrapping_add(4096);
        std::hint::black_box(&pages);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU and wall µs per task and sample of `rounds` rounds of `sample` over `n` tasks,
/// `pause` apart (the pauses are not counted in the wall time).
fn measure(n: usize, rounds: u32, pause: Duration, mut sample: impl FnMut()) -> (f64, f64) {
    let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        std::thread::sleep(pause);
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        sample();
        cpu += cpu_time() - cpu0;
        wall += wall0.elapsed();
    }
    let samples = f64::from(rounds) * n as f64;
    (
        cpu.as_secs_f64() * 1e6 / samples,
        wall.as_secs_f64() * 1e6 / samples,
    )
}

/// Every interface file a sample may read, on either cgroup version (those this
/// kernel does not offer are left out of the per-file rows).
const FILES: &[&str] = &[
    "cpuacct.usage",
    "cpuacct.usage_all",
    "cpuacct.stat",
    "cpu.stat",
    "memory.usage_in_bytes",
    "memory.current",
    "memory.max_usage_in_bytes",
    "memory.peak",
    "memory.stat",
    "memory.kmem.usage_in_bytes",
    "memory.memsw.usage_in_bytes",
    "memory.swap.current",
    "memory.oom_control",
    "memory.events",
    "pids.current",
    "pids.peak",
    "pids.events",
    "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_serviced_recursive",
    "io.stat",
    "cpu.pressure",
    "memory.pressure",
    "io.pressure",
];

/// CPU µs per task of one `pread` from offset 0 of each file of [`FILES`] held open,
/// `rounds` rounds `pause` apart.
fn per_file(cgroups: &[TaskCgroup], rounds: u32, pause: Duration) -> Vec<(&'static str, f64)> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1 << 16];
    let mut costs = Vec::new();
    for &name in FILES {
        let files: Vec<std::fs::File> = cgroups
            .iter()
            .filter_map(|c| {
                let dirs = c.placement().dirs();
                dirs.iter()
                    .find_map(|d| std::fs::File::open(d.join(name)).ok())
            })
            .collect();
        if files.len() != cgroups.len() {
            continue;
        }
        let (cpu, _) = measure(cgroups.len(), rounds, pause, || {
            for file in &files {
                std::hint::black_box(file.read_at(&mut buffer, 0).ok());
            }
        });
        costs.push((name, cpu));
    }
    costs
}

/// Slab memory of the machine (kB), for the kernel's share of held files.
fn slab_kb() -> u64 {
    use procfs::Current;
    procfs::Meminfo::current().map_or(0, |m| m.slab >> 10)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--worker") {
        worker();
    }
    let n: usize = first.map_or(1000, |a| a.parse().expect("TASKS"));
    let rounds: u32 = args.next().map_or(20, |a| a.parse().expect("ROUNDS"));
    assert!(nix::unistd::geteuid().is_root(), "run as root (cgroups)");

    let base = PathBuf::from(format!("cella-bench-{}", std::process::id()));
    let root = CgroupRoot::discover(Some(&base)).expect("cgroups");
    let mut tasks = Tasks {
        root: root.clone(),
        cgroups: Vec::with_capacity(n),
        children: Vec::with_capacity(n),
    };
    let limits = CgroupLimits {
        cpus: Some(MilliCpus(500)),
        memory_bytes: Some(64 << 20),
        pids: Some(64),
    };
    let me = std::env::current_exe().expect("own path");
    for i in 0..n {
        let cgroup = root.create(&format!("t{i}"), &limits).expect("create");
        let child = Command::new(&me)
            .arg("--worker")
            .stdin(Stdio::null())
            .spawn()
            .expect("worker");
        tasks.children.push(child);
        let pid = i32::try_from(tasks.children[i].id()).expect("pid");
        cgroup.placement().attach(pid).expect("attach");
        tasks.cgroups.push(cgroup);
    }
    println!("{n} tasks, cgroup v{}, {rounds} rounds", root.version());
    let row = |what: &str, (cpu, wall): (f64, f64)| {
        println!(
            "{what}: {cpu:.1} µs CPU per task per sample ({wall:.1} µs wall); \
             {:.2}% of one core for {n} tasks every second",
            cpu * n as f64 / 1e6 * 100.0
        );
        cpu
    };

    // One round first: the kernel's dentries and our buffers warm up.
    for cgroup in &tasks.cgroups {
        std::hint::black_box(cgroup.stats());
    }
    let every = measure(n, rounds, Duration::ZERO, || {
        for cgroup in &tasks.cgroups {
            std::hint::black_box(cgroup.stats());
        }
    });
    let by_path = row("stats(), every file by path", every);

    let files = FILES_PER_SAMPLE;
    let floor_files: Vec<PathBuf> = tasks
        .cgroups
        .iter()
        .filter_map(|c| c.placement().procs_files().into_iter().next())
        .collect();
    let floor = row(
        &format!("floor ({files} reads of a one-line file by path)"),
        measure(n, rounds, Duration::ZERO, || {
            for file in &floor_files {
                for _ in 0..files {
                    std::hint::black_box(std::fs::read(file).ok());
                }
            }
        }),
    );
    println!("stats() / floor = {:.2}", by_path / floor);

    // The same reads relative to a directory descriptor held open: no path walk.
    let dirs: Vec<std::fs::File> = floor_files
        .iter()
        .filter_map(|f| f.parent().and_then(|d| std::fs::File::open(d).ok()))
        .collect();
    let mut buffer = [0u8; 4096];
    row(
        "floor through held directory descriptors",
        measure(n, rounds, Duration::ZERO, || {
            for dir in &dirs {
                for _ in 0..files {
                    if let Ok(fd) = nix::fcntl::openat(
                        dir,
                        "cgroup.procs",
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    ) {
                        std::hint::black_box(nix::unistd::read(&fd, &mut buffer).ok());
                    }
                }
            }
        }),
    );
    drop(dirs);

    // Each file alone, held open and read from offset 0, while every task sleeps.
    let asleep_files = per_file(&tasks.cgroups, rounds, Duration::ZERO);

    let slab0 = slab_kb();
    let mut samplers: Vec<TaskSampler> = tasks
        .cgroups
        .iter()
        .cloned()
        .map(TaskSampler::new)
        .collect();
    for sampler in &mut samplers {
        std::hint::black_box(sampler.sample(true));
    }
    let held = held_descriptors();
    println!(
        "TaskSampler holds {held} descriptors ({:.1} per task); slab memory {:+} kB \
         ({:.1} KiB per task, the whole machine's, so approximate)",
        held as f64 / n as f64,
        i64::try_from(slab_kb()).unwrap_or(0) - i64::try_from(slab0).unwrap_or(0),
        (slab_kb() as f64 - slab0 as f64) / n as f64
    );
    row(
        "TaskSampler, every figure through held files",
        measure(n, rounds, Duration::ZERO, || {
            for sampler in &mut samplers {
                std::hint::black_box(sampler.sample(true));
            }
        }),
    );
    drop(samplers);

    // The sampler before it had live figures and now, one after the other in each
    // state. A round stands for a sample at --usage-interval 1s: rounds are PAUSE
    // apart (so that every busy task has run between two), and the samplers'
    // intervals are shortened by the same factor, so that one round in ten reads
    // every figure, as one sample in ten does at 1 s.
    const PAUSE: Duration = Duration::from_millis(200);
    const PER_SECOND: u32 = 5;
    // How a task's sampler is set up: as it was before it had live figures, as it is
    // now, and as it would be with a running task's every figure read less often.
    // As it was before it had live figures, as it is now (a running task's every
    // figure read as the budget lets, up to 40 tasks a second), and without the
    // budget (every 10 s).
    let ways = [
        ("before (every figure of a task that ran)", false, u32::MAX),
        (
            "now (live figures, full samples as the budget lets)",
            true,
            40,
        ),
        (
            "live figures, no budget (full samples every 10 s)",
            true,
            u32::MAX,
        ),
    ];
    let compare = |what: &str| {
        let mut before = 0.0;
        for (i, (how, live, per_period)) in ways.iter().enumerate() {
            // One budget for all the tasks, as the agent's process has.
            let budget = FullSampleBudget::new(*per_period, PAUSE);
            let mut samplers: Vec<TaskSampler> = tasks
                .cgroups
                .iter()
                .map(|c| {
                    TaskSampler::new(c.clone())
                        .with_full_interval(FULL_SAMPLE_INTERVAL / PER_SECOND)
                        .with_live_figures(*live)
                        .with_budget(budget.clone())
                })
                .collect();
            for sampler in &mut samplers {
                std::hint::black_box(sampler.sample(true));
            }
            let cost = row(
                &format!("TaskSampler {how}, {what}"),
                measure(n, rounds, PAUSE, || {
                    for sampler in &mut samplers {
                        std::hint::black_box(sampler.sample(false));
                    }
                }),
            );
            if i == 0 {
                before = cost;
            } else {
                println!("  {:.2}× before", cost / before);
            }
        }
    };
    let wake = |share: usize| {
        for child in tasks.children.iter().step_by(share) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
        }
    };
    compare("all tasks asleep");
    wake(10);
    compare("10% of the tasks busy");
    wake(1);
    compare("all tasks busy");

    let busy_files = per_file(&tasks.cgroups, rounds, Duration::from_millis(50));
    println!("one pread of a held file, CPU µs per task (all asleep / all busy):");
    for (name, asleep) in asleep_files {
        let busy = busy_files
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, c)| *c);
        println!("  {name}: {asleep:.1} / {busy:.1}");
    }
}
