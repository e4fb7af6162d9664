//! What sampling the usage of many running tasks costs: creates N real task cgroups
//! (limits written, as at a launch) under a base of its own, puts one sleeping process
//! in each, then takes R rounds of every task's figures (`TaskCgroup::stats`, what the
//! agent's usage loop reads per task) and reports the CPU time this process spent per
//! task and sample. Side by side, the floor: opening and reading one small file
//! (`pids.current`) of every task as many times as the sampler reads files.
//!
//! Run as root: `cargo run --release --example usage_sampler -- [TASKS] [ROUNDS]`
//! (default 1000 tasks, 20 rounds). Everything it creates is removed at the end, also
//! after a panic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_containerizer::cgroups::{CgroupLimits, CgroupRoot, TaskCgroup};
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

/// How many files one `stats()` reads: v2 cpu.stat, memory.{current,peak,stat,
/// swap.current,events}, pids.{current,peak,events}, io.stat and three pressure
/// files; v1 cpuacct.usage{,_user,_sys}, cpu.stat, memory.{usage_in_bytes,
/// max_usage_in_bytes,stat,kmem.usage_in_bytes,oom_control}, pids.{current,peak,
/// events} and two blkio files.
fn files_per_sample(version: u8) -> usize {
    if version == 2 { 13 } else { 14 }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1000, |a| a.parse().expect("TASKS"));
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
    for i in 0..n {
        let cgroup = root.create(&format!("t{i}"), &limits).expect("create");
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep");
        tasks.children.push(child);
        let pid = i32::try_from(tasks.children[i].id()).expect("pid");
        cgroup.placement().attach(pid).expect("attach");
        tasks.cgroups.push(cgroup);
    }
    println!("{n} tasks, cgroup v{}, {rounds} rounds", root.version());

    // One round first: the kernel's dentries and our buffers warm up.
    for cgroup in &tasks.cgroups {
        std::hint::black_box(cgroup.stats());
    }
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    for _ in 0..rounds {
        for cgroup in &tasks.cgroups {
            std::hint::black_box(cgroup.stats());
        }
    }
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    let samples = f64::from(rounds) * n as f64;
    let per_task_us = cpu.as_secs_f64() * 1e6 / samples;
    println!(
        "sampler: {per_task_us:.1} µs CPU per task per sample ({:.1} µs wall); \
         {:.2}% of one core for {n} tasks every second",
        wall.as_secs_f64() * 1e6 / samples,
        per_task_us * n as f64 / 1e6 * 100.0
    );

    let files = files_per_sample(root.version());
    let floor_files: Vec<PathBuf> = tasks
        .cgroups
        .iter()
        .filter_map(|c| c.placement().procs_files().into_iter().next())
        .collect();
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    for _ in 0..rounds {
        for file in &floor_files {
            for _ in 0..files {
                std::hint::black_box(std::fs::read(file).ok());
            }
        }
    }
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    let floor_us = cpu.as_secs_f64() * 1e6 / samples;
    println!(
        "floor ({files} reads of a one-line file): {floor_us:.1} µs CPU per task per sample \
         ({:.1} µs wall); sampler / floor = {:.2}",
        wall.as_secs_f64() * 1e6 / samples,
        per_task_us / floor_us
    );

    // The same reads relative to a directory descriptor held open: no path walk.
    let dirs: Vec<std::fs::File> = floor_files
        .iter()
        .filter_map(|f| f.parent().and_then(|d| std::fs::File::open(d).ok()))
        .collect();
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut buffer = [0u8; 4096];
    for _ in 0..rounds {
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
    }
    let cpu = cpu_time() - cpu0;
    println!(
        "floor through held directory descriptors: {:.1} µs CPU per task per sample ({:.1} µs wall)",
        cpu.as_secs_f64() * 1e6 / samples,
        wall0.elapsed().as_secs_f64() * 1e6 / samples
    );
}
