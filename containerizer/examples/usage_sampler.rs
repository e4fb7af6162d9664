//! What sampling the usage of many running tasks costs: creates N real task cgroups
//! (limits written, as at a launch) under a base of its own, puts one process in each
//! (this program again, as a worker that sleeps until told to get busy), then takes R
//! rounds of every task's figures and reports the CPU time this process spent per
//! task and sample, side by side in one run:
//! - `TaskCgroup::stats`, every file opened by path at every sample (the old way);
//! - the floor: opening and reading one small file (`cgroup.procs`) of every task as
//!   many times as `stats` reads files, by path and through a held directory;
//! - `TaskSampler` (what the agent's usage loop now uses): the memory read of sleeping
//!   tasks it does every 10 s, a full sample through held files, then samples while
//!   every task sleeps, while 10% of them are busy and while all are (a busy worker
//!   wakes every 50 ms and writes to a page; the rounds are 200 ms apart so that every
//!   busy task has run between two samples).
//!
//! Run as root: `cargo run --release --example usage_sampler -- [TASKS] [ROUNDS]`
//! (default 1000 tasks, 20 rounds). Everything it creates is removed at the end, also
//! after a panic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_containerizer::cgroups::{
    CgroupLimits, CgroupRoot, FULL_SAMPLE_INTERVAL, TaskCgroup, TaskSampler, held_descriptors,
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

/// Slab memory of the machine (kB), for the kernel's share of held files.
fn slab_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
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

    // A sleeping task's memory figures, read again every FULL_SAMPLE_INTERVAL.
    let mut refreshing: Vec<TaskSampler> = tasks
        .cgroups
        .iter()
        .map(|c| TaskSampler::new(c.clone()).with_full_interval(Duration::ZERO))
        .collect();
    for sampler in &mut refreshing {
        std::hint::black_box(sampler.sample(true));
    }
    let refresh = row(
        "TaskSampler, all tasks asleep, their memory read again",
        measure(n, rounds, Duration::ZERO, || {
            for sampler in &mut refreshing {
                std::hint::black_box(sampler.sample(false));
            }
        }),
    );
    drop(refreshing);

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
    let mut sample_all = |every: bool| {
        for sampler in &mut samplers {
            std::hint::black_box(sampler.sample(every));
        }
    };
    let full = row(
        "TaskSampler, every figure through held files",
        measure(n, rounds, Duration::ZERO, || sample_all(true)),
    );
    let pause = Duration::from_millis(200);
    let idle = row(
        "TaskSampler, all tasks asleep",
        measure(n, rounds, Duration::ZERO, || sample_all(false)),
    );
    let wake = |share: usize| {
        for child in tasks.children.iter().step_by(share) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
        }
    };
    wake(10);
    let mix = row(
        "TaskSampler, 10% of the tasks busy",
        measure(n, rounds, pause, || sample_all(false)),
    );
    wake(1);
    let busy = row(
        "TaskSampler, all tasks busy",
        measure(n, rounds, pause, || sample_all(false)),
    );
    // At a 1 s interval one sample in FULL_SAMPLE_INTERVAL / 1 s reads more: a
    // sleeping task's memory, a busy task's every figure.
    let k = FULL_SAMPLE_INTERVAL.as_secs_f64();
    for (what, steady, every_kth) in [
        ("asleep", idle, refresh),
        ("10% busy", mix, 0.9 * refresh + 0.1 * full),
        ("busy", busy, full),
    ] {
        let mean = (steady * (k - 1.0) + every_kth) / k;
        println!(
            "at 1 s, one sample in {k:.0} reading more, {what}: {mean:.1} µs per task per \
             sample, {:.2}% of one core for {n} tasks",
            mean * n as f64 / 1e6 * 100.0
        );
    }
}
