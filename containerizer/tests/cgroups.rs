//! The cgroup backends against the real kernel: real cgroups, real processes. Needs
//! root and a cgroup v1, hybrid or v2 host; it fails (never skips) otherwise. Each test
//! works under its own base `cella-test-<pid>-<n>` beneath this process's cgroups, so
//! tests run in parallel, and a guard removes everything even when an assertion fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cella_containerizer::Usage;
use cella_containerizer::cgroups::{CgroupLimits, CgroupRoot, TaskCgroup, TaskSampler};
use cella_containerizer::units::MilliCpus;

const MIB: u64 = 1024 * 1024;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's base cgroup, its task cgroups and child processes; dropping it kills and
/// removes them all.
struct Fixture {
    root: CgroupRoot,
    tasks: Vec<TaskCgroup>,
    children: Vec<Child>,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the cgroup tests create real cgroups: run them as root"
        );
        let name = format!(
            "cella-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let root = CgroupRoot::discover(Some(Path::new(&name))).expect("discover cgroups");
        for dir in root.base_dirs() {
            assert!(dir.ends_with(&name), "{} is not our base", dir.display());
            assert!(!dir.exists(), "discover must not create {}", dir.display());
        }
        Self {
            root,
            tasks: Vec::new(),
            children: Vec::new(),
        }
    }

    fn create(&mut self, name: &str, limits: CgroupLimits) -> TaskCgroup {
        let task = self.root.create(name, &limits).expect("create task cgroup");
        self.tasks.push(task.clone());
        task
    }

    /// Starts `sh -c script` inside `task`: the shell waits for a line on stdin until
    /// it has been placed, as the shim does before exec.
    fn spawn(&mut self, task: &TaskCgroup, script: &str) -> usize {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read x; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let placed = task.placement().attach(pid);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let go = stdin.write_all(b"\n");
        self.children.push(child);
        placed.expect("attach the child to its cgroup");
        go.expect("release the child");
        self.children.len() - 1
    }

    fn child_pid(&self, index: usize) -> i32 {
        i32::try_from(self.children[index].id()).expect("pid fits i32")
    }

    /// Waits up to `limit` for child `index` to exit; true if it did.
    fn wait_child(&mut self, index: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.children[index];
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for task in self.tasks.drain(..) {
            if let Err(e) = task.remove() {
                errors.push(e.to_string());
            }
        }
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.root.remove_base_if_empty();
        errors
    }

    /// Cleans up and checks that nothing is left behind.
    fn finish(mut self) {
        let errors = self.cleanup();
        assert!(errors.is_empty(), "cleanup failed: {errors:?}");
        for dir in self.root.base_dirs() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Polls `f` for up to `limit` until it returns `Some`.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interface file `name` in whichever of the task's directories has it.
fn file(task: &TaskCgroup, name: &str) -> PathBuf {
    task.placement()
        .dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("no {name} in {:?}", task.placement().dirs()))
}

fn read(task: &TaskCgroup, name: &str) -> String {
    let path = file(task, name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn has(task: &TaskCgroup, name: &str) -> bool {
    task.placement()
        .dirs()
        .iter()
        .any(|d| d.join(name).exists())
}

fn alive(pid: i32) -> bool {
    // A zombie has released its cgroup and memory already: it counts as dead.
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .and_then(|stat| stat.state())
        .is_ok_and(|state| state != procfs::process::ProcState::Zombie)
}

/// Limits on CPU (in millicpus), memory and pids.
fn every_limit(millicpus: u64, memory_bytes: u64, pids: u64) -> CgroupLimits {
    CgroupLimits {
        cpus: Some(MilliCpus(millicpus)),
        memory_bytes: Some(memory_bytes),
        pids: Some(pids),
    }
}

#[test]
fn limits_are_written_and_updated() {
    let mut fx = Fixture::new();
    let limits = every_limit(500, 64 * MIB, 10);
    let task = fx.create("limits", limits);
    assert_eq!(fx.root.list().expect("list"), vec!["limits".to_string()]);
    assert!(
        fx.root.create("limits", &limits).is_err(),
        "a second create of the same name must fail"
    );
    assert_eq!(task.pids().expect("pids"), Vec::<i32>::new());

    if fx.root.version() == 1 {
        assert_eq!(read(&task, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&task, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&task, "cpu.shares"), "512");
        assert_eq!(read(&task, "memory.limit_in_bytes"), (64 * MIB).to_string());
        if has(&task, "memory.memsw.limit_in_bytes") {
            assert_eq!(
                read(&task, "memory.memsw.limit_in_bytes"),
                (64 * MIB).to_string()
            );
        }
        assert_eq!(read(&task, "pids.max"), "10");
    } else {
        assert_eq!(read(&task, "cpu.max"), "50000 100000");
        assert_eq!(read(&task, "cpu.weight"), "20");
        assert_eq!(read(&task, "memory.max"), (64 * MIB).to_string());
        if has(&task, "memory.swap.max") {
            assert_eq!(read(&task, "memory.swap.max"), "0");
        }
        assert_eq!(read(&task, "memory.oom.group"), "1");
        assert_eq!(read(&task, "pids.max"), "10");
    }

    // Raising memory exercises the memsw ordering on v1; pids back to unlimited.
    let raised = CgroupLimits {
        cpus: Some(MilliCpus(2000)),
        memory_bytes: Some(128 * MIB),
        pids: None,
    };
    task.update(&raised).expect("raise limits");
    let (quota, memory) = if fx.root.version() == 1 {
        assert_eq!(read(&task, "cpu.shares"), "2048");
        (
            read(&task, "cpu.cfs_quota_us"),
            read(&task, "memory.limit_in_bytes"),
        )
    } else {
        assert_eq!(read(&task, "cpu.weight"), "79");
        (read(&task, "cpu.max"), read(&task, "memory.max"))
    };
    assert!(quota.starts_with("200000"), "{quota}");
    assert_eq!(memory, (128 * MIB).to_string());
    assert_eq!(read(&task, "pids.max"), "max");

    let lowered = CgroupLimits {
        cpus: None,
        memory_bytes: Some(32 * MIB),
        pids: Some(3),
    };
    task.update(&lowered).expect("lower limits");
    let memory_file = if fx.root.version() == 1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    assert_eq!(read(&task, memory_file), (32 * MIB).to_string());
    assert_eq!(read(&task, "pids.max"), "3");
    if fx.root.version() == 1 {
        assert_eq!(read(&task, "cpu.cfs_quota_us"), "-1");
    } else {
        assert_eq!(read(&task, "cpu.max"), "max 100000");
    }
    fx.finish();
}

#[test]
fn failed_create_leaves_nothing_behind() {
    let fx = Fixture::new();
    // pids.max refuses a value this large, after the directories were made.
    let bad = CgroupLimits {
        pids: Some(u64::MAX),
        ..CgroupLimits::default()
    };
    assert!(fx.root.create("bad", &bad).is_err());
    for dir in fx.root.base_dirs() {
        assert!(!dir.exists(), "{} survived a failed create", dir.display());
    }
    fx.finish();
}

#[test]
fn stats_of_sleeping_and_busy_processes() {
    let mut fx = Fixture::new();
    let limits = every_limit(1000, 256 * MIB, 20);
    let sleeper = fx.create("sleeper", limits);
    let index = fx.spawn(&sleeper, "exec sleep 1000");
    let pid = fx.child_pid(index);
    assert_eq!(sleeper.pids().expect("pids"), vec![pid]);
    let stats = sleeper.stats();
    assert_eq!(stats.pids_current, Some(1), "{stats:?}");
    assert!(stats.mem_current_bytes.is_some(), "{stats:?}");
    assert!(
        stats.mem_anon_bytes.is_some() && stats.mem_file_bytes.is_some(),
        "{stats:?}"
    );
    assert!(
        stats.mem_peak_bytes.is_some() || fx.root.version() == 2,
        "{stats:?}"
    );
    assert!(
        stats.cpu_user_ns.is_some() && stats.cpu_system_ns.is_some(),
        "{stats:?}"
    );
    assert!(
        stats.cpu_nr_throttled.is_some() && stats.cpu_throttled_ns.is_some(),
        "{stats:?}"
    );
    assert!(
        stats.pids_limit_hits.is_some() || !has(&sleeper, "pids.events"),
        "{stats:?}"
    );

    let busy = fx.create("busy", limits);
    fx.spawn(&busy, "while :; do :; done");
    let used = eventually(Duration::from_secs(10), || {
        busy.stats().cpu_user_ns.filter(|&ns| ns > 0)
    });
    assert!(
        used.is_some(),
        "no user CPU time after a busy loop: {:?}",
        busy.stats()
    );

    // A cgroup that does not exist has no figures at all, rather than zeros.
    assert_eq!(fx.root.open("never-created").stats(), Usage::default());
    fx.finish();
}

/// The sampler's held files give current figures at every read, a sleeping task's
/// sample is the last one again (its memory read again now and then), and they do
/// not keep the cgroup from going.
#[test]
fn held_files_follow_the_task_and_let_its_cgroup_go() {
    let mut fx = Fixture::new();
    let task = fx.create("held", every_limit(1000, 256 * MIB, 20));
    let child = fx.spawn(&task, "exec sleep 1000");
    let mut sampler = TaskSampler::new(task.clone());
    // The shell has been released: wait until it is the sleep, which never wakes
    // (before the shell has run at all its figures stand still too, at zero).
    let pid = fx.child_pid(child);
    let is_sleep = || {
        procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .is_ok_and(|stat| stat.comm == "sleep")
    };
    assert!(
        eventually(Duration::from_secs(10), || is_sleep().then_some(())).is_some(),
        "the task did not exec sleep"
    );
    let first = eventually(Duration::from_secs(10), || {
        let a = sampler.sample(true);
        let b = sampler.sample(true);
        (a == b).then_some(a)
    })
    .expect("a sleeping task's figures stand still");
    assert_eq!(first.pids_current, Some(1), "{first:?}");
    assert!(first.cpu_user_ns.is_some() && first.mem_current_bytes.is_some());
    assert!(sampler.descriptors() >= 8, "{sampler:?}");
    assert_eq!(
        sampler.sample(false),
        first,
        "asleep: the last sample again"
    );
    // The refresh of a sleeping task's memory keeps every other figure.
    let mut refreshing = TaskSampler::new(task.clone()).with_full_interval(Duration::ZERO);
    refreshing.sample(true);
    let refreshed = refreshing.sample(false);
    assert_eq!(
        (
            refreshed.cpu_user_ns,
            refreshed.pids_current,
            refreshed.pids_limit_hits
        ),
        (first.cpu_user_ns, first.pids_current, first.pids_limit_hits)
    );
    assert!(refreshed.mem_current_bytes.is_some() && refreshed.mem_anon_bytes.is_some());
    drop(refreshing);

    fx.spawn(&task, "while :; do :; done");
    let busy = eventually(Duration::from_secs(10), || {
        let u = sampler.sample(false);
        (u.pids_current == Some(2) && u.cpu_user_ns > first.cpu_user_ns).then_some(u)
    });
    assert!(
        busy.is_some(),
        "re-read held files show no new process or CPU time: {:?}",
        sampler.sample(false)
    );
    let busy = busy.expect("busy");
    assert_eq!(
        busy.mem_peak_bytes.is_some(),
        first.mem_peak_bytes.is_some(),
        "{busy:?}"
    );

    task.remove()
        .expect("remove while the sampler holds its files");
    for dir in task.placement().dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    assert_eq!(sampler.sample(true), Usage::default(), "a removed cgroup");
    drop(sampler);
    fx.finish();
}

/// A busy task's live figures (CPU time, memory, processes) are fresh at every
/// sample; its memory breakdown, read again in full samples and when its memory moved
/// by more than the slack (1 MiB here), shows a write of less than that within the
/// full sample interval (plus the kernel's own delay in flushing its statistics).
#[test]
fn a_busy_task_s_live_figures_move_every_sample_and_the_costly_ones_follow() {
    const BOUND: Duration = Duration::from_secs(2);
    // The kernel flushes its memory statistics at least every 2 s by itself, and
    // earlier only after enough changes: memory.stat may lag that much.
    const KERNEL_FLUSH: Duration = Duration::from_millis(2500);
    let mut fx = Fixture::new();
    let task = fx.create("live", every_limit(1000, 256 * MIB, 20));
    let dir = tempfile::tempdir().expect("temp dir");
    let (go, written) = (dir.path().join("go"), dir.path().join("written"));
    // Spins, writes 768 KiB of page cache (less than the slack) when told, spins on.
    fx.spawn(
        &task,
        &format!(
            "while [ ! -e {go} ]; do :; done; head -c 786432 /dev/zero > {file}; \
             touch {written}; while :; do :; done",
            go = go.display(),
            file = dir.path().join("file").display(),
            written = written.display(),
        ),
    );
    let mut sampler = TaskSampler::new(task.clone()).with_full_interval(BOUND);
    let first = sampler.sample(true);
    let cpu = |u: &Usage| u.cpu_user_ns.unwrap_or(0) + u.cpu_system_ns.unwrap_or(0);
    let mut last = first.clone();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let now = sampler.sample(false);
        assert!(cpu(&now) > cpu(&last), "CPU time stood still: {now:?}");
        assert_eq!(now.pids_current, Some(1), "{now:?}");
        last = now;
    }

    std::fs::write(&go, "").expect("tell the task");
    assert!(
        eventually(Duration::from_secs(10), || written.exists().then_some(())).is_some(),
        "the task wrote no file"
    );
    let moved = Instant::now();
    let now = sampler.sample(false);
    assert!(cpu(&now) > cpu(&last), "{now:?}");
    assert!(
        now.mem_current_bytes >= first.mem_current_bytes.map(|m| m + 700 * 1024),
        "the memory figure missed the page cache at once: {now:?}, first {first:?}"
    );
    let want = first.mem_file_bytes.map(|f| f + 700 * 1024);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sampler.sample(false);
        if now.mem_file_bytes >= want {
            break;
        }
        assert!(
            moved.elapsed() < BOUND + KERNEL_FLUSH,
            "the page cache is not in the breakdown {:?} after it was written: {now:?}",
            moved.elapsed()
        );
    }
    fx.finish();
}

#[test]
fn kill_reaches_daemonized_processes() {
    let mut fx = Fixture::new();
    let task = fx.create("daemon", CgroupLimits::default());
    let shell = fx.spawn(&task, "sleep 1000 & exit 0");
    let status = fx
        .wait_child(shell, Duration::from_secs(10))
        .expect("the shell exits");
    assert!(status.success());
    let orphans = eventually(Duration::from_secs(5), || {
        let pids = task.pids().expect("pids");
        (pids.len() == 1).then_some(pids)
    })
    .expect("the daemonized sleep stays in the cgroup");
    let orphan = orphans[0];
    assert!(alive(orphan));

    task.kill().expect("kill");
    assert_eq!(task.pids().expect("pids"), Vec::<i32>::new());
    assert!(
        eventually(Duration::from_secs(5), || (!alive(orphan)).then_some(())).is_some(),
        "{orphan} survived"
    );

    task.remove().expect("remove");
    task.remove().expect("remove is idempotent");
    for dir in task.placement().dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    let never = fx.root.open("never-created");
    never
        .remove()
        .expect("removing a never-created cgroup is fine");
    never
        .kill()
        .expect("killing a never-created cgroup is fine");
    assert_eq!(never.pids().expect("pids"), Vec::<i32>::new());
    fx.finish();
}

#[test]
fn remove_kills_what_is_left() {
    let mut fx = Fixture::new();
    let task = fx.create("leftover", CgroupLimits::default());
    fx.spawn(&task, "sleep 1000 & sleep 1000 & wait");
    assert!(
        eventually(Duration::from_secs(5), || (task.pids().ok()?.len() == 3)
            .then_some(()))
        .is_some()
    );
    task.remove().expect("remove a populated cgroup");
    for dir in task.placement().dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    fx.finish();
}

#[test]
fn memory_limit_is_enforced() {
    let mut fx = Fixture::new();
    let task = fx.create(
        "oom",
        CgroupLimits {
            memory_bytes: Some(32 * MIB),
            ..CgroupLimits::default()
        },
    );
    // tail keeps the whole (newline-free) input in memory: ~100 MB against 32 MiB.
    let index = fx.spawn(&task, "head -c 100000000 /dev/zero | tail");
    let status = fx
        .wait_child(index, Duration::from_secs(60))
        .expect("the allocation ends");
    assert!(!status.success(), "allocating past the limit succeeded");
    let kills = eventually(Duration::from_secs(5), || {
        task.stats().oom_kills.filter(|&n| n >= 1)
    });
    assert!(kills.is_some(), "no OOM kill counted: {:?}", task.stats());
    let peak = task.stats().mem_peak_bytes;
    assert!(
        peak.is_none_or(|p| p <= 32 * MIB),
        "peak {peak:?} above the limit"
    );
    fx.finish();
}

#[test]
fn pids_limit_is_enforced() {
    let mut fx = Fixture::new();
    let task = fx.create(
        "forks",
        CgroupLimits {
            pids: Some(5),
            ..CgroupLimits::default()
        },
    );
    fx.spawn(
        &task,
        "i=0; while [ $i -lt 20 ]; do sleep 1000 & i=$((i+1)); done; wait",
    );
    let offered = has(&task, "pids.events");
    let hit = eventually(Duration::from_secs(20), || {
        let stats = task.stats();
        if offered {
            stats.pids_limit_hits.filter(|&n| n >= 1)
        } else {
            stats.pids_current.filter(|&n| n == 5)
        }
    });
    assert!(
        hit.is_some(),
        "fork limit never reached: {:?}",
        task.stats()
    );
    let current = task.stats().pids_current.expect("pids.current");
    assert!(current <= 5, "{current} processes under pids.max 5");
    assert!(task.pids().expect("pids").len() <= 5);
    fx.finish();
}

/// Launchers at once, each with its own view of the same base (as concurrent `cella
/// exec`s are): one removes the base when its last task is gone while another is
/// making its task there. Every creation must still succeed.
#[test]
fn concurrent_launchers_share_a_base_that_comes_and_goes() {
    let f = Fixture::new();
    let base = f.root.base_dirs()[0]
        .file_name()
        .expect("base name")
        .to_owned();
    let failures: Vec<String> = std::thread::scope(|s| {
        let launchers: Vec<_> = (0..3)
            .map(|n| {
                let base = base.clone();
                s.spawn(move || {
                    let root = CgroupRoot::discover(Some(Path::new(&base))).expect("discover");
                    let mut failures = Vec::new();
                    for i in 0..150 {
                        match root.create(&format!("l{n}-{i}"), &CgroupLimits::default()) {
                            Ok(task) => {
                                if let Err(e) = task.remove() {
                                    failures.push(format!("remove l{n}-{i}: {e}"));
                                }
                            }
                            Err(e) => failures.push(format!("create l{n}-{i}: {e}")),
                        }
                        root.remove_base_if_empty();
                    }
                    failures
                })
            })
            .collect();
        launchers
            .into_iter()
            .flat_map(|l| l.join().expect("launcher thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    f.finish();
}

/// Whoever can read the directory above the base can `flock` it, a task included:
/// holding that lock delays making and removing the base by about a second at the
/// most, and never hangs a launcher.
#[test]
fn a_lock_held_above_the_base_never_hangs_a_launcher() {
    let f = Fixture::new();
    let base = f.root.base_dirs()[0].clone();
    let above = std::fs::File::open(base.parent().expect("base's parent")).expect("open");
    let _held = nix::fcntl::Flock::lock(above, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let started = Instant::now();
    let task = f
        .root
        .create("under-a-held-lock", &CgroupLimits::default())
        .expect("create while the lock is held");
    task.remove().expect("remove");
    f.root.remove_base_if_empty();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "a task made and removed, and its base, took {took:?} while the lock was held"
    );
    assert!(
        !base.exists(),
        "the base was left behind: {}",
        base.display()
    );
    f.finish();
}
