//! How exact the usage figures are: real tasks on real cgroups (whichever version
//! the machine runs), each figure compared with a ground truth measured apart from
//! the cgroups: the task's own scheduler runtime (/proc/PID/schedstat), the bytes it
//! was told to allocate or write.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cella_containerizer::task::Resources;
use cella_containerizer::units::MilliCpus;
use cella_containerizer::usage::next_sample_in;
use cella_containerizer::{Containerizer, Limitation, Termination};

const MIB: u64 = 1 << 20;

/// A containerizer in a workspace of its own, whose tasks and cgroup root are removed
/// on drop (also when an assertion failed).
struct Bench {
    ws: common::Workspace,
    containerizer: Containerizer,
}

impl Bench {
    fn new() -> Self {
        let ws = common::Workspace::new("a");
        let containerizer = ws.containerizer();
        Self { ws, containerizer }
    }

    fn sandbox(&self, name: &str) -> PathBuf {
        self.ws.dir.path().join(name)
    }

    /// Runs `script` as task `name`, sampled as `cella exec` samples (every 10 ms in
    /// the first second, then every 100 ms), and collects it.
    fn run(&self, name: &str, script: &str, resources: Resources) -> Termination {
        let (id, mut config) = self.ws.sh_task(name, script);
        config.resources = resources;
        config.measure_disk = true;
        let c = &self.containerizer;
        let mut running = c.launch(&id, &config).expect("launch");
        loop {
            let next = next_sample_in(running.age(), Duration::from_millis(100));
            if c.wait(&mut running, next) {
                break;
            }
            c.sample(&mut running);
        }
        c.finish(running)
    }

    /// [`Bench::run`], for a task that must exit 0.
    fn run_ok(&self, name: &str, script: &str, resources: Resources) -> Termination {
        let end = self.run(name, script, resources);
        assert_eq!(end.status.code, Some(0), "{:?}", end.status);
        end
    }

    fn read_u64(&self, name: &str, file: &str) -> u64 {
        let path = self.sandbox(name).join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
    }
}

/// [`Bench::run_ok`] without limits, in a bench of its own.
fn run_unlimited_ok(name: &str, script: &str) -> Termination {
    Bench::new().run_ok(name, script, Resources::default())
}

fn within(what: &str, measured: Option<u64>, truth: u64, tolerance: f64) {
    let m = measured.unwrap_or_else(|| panic!("{what}: no figure"));
    let error = (m as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= tolerance,
        "{what}: reported {m}, truth {truth}: off by {:.2}% (allowed {:.1}%)",
        error * 100.0,
        tolerance * 100.0
    );
}

/// A shell that burns CPU until its own scheduler runtime reaches `ns`, then writes
/// that runtime to `cpu_ns`: the kernel's per-thread count, which includes the
/// task's setup before `execve` (the same thread), and no other process runs.
fn burn_script(ns: u64) -> String {
    format!(
        "while :; do read run wait slices < /proc/$$/schedstat; \
         [ \"$run\" -ge {ns} ] && break; done; echo \"$run\" > cpu_ns"
    )
}

/// The ground truth of the CPU tests: without it they cannot run, which is a failure.
fn need_schedstat() {
    assert!(
        Path::new("/proc/self/schedstat").exists(),
        "/proc/PID/schedstat is missing: the kernel lacks CONFIG_SCHED_INFO"
    );
}

#[test]
fn cpu_time_matches_the_task_s_own_runtime() {
    need_schedstat();
    let b = Bench::new();
    let end = b.run_ok("cpu", &burn_script(800_000_000), Resources::default());
    let truth = b.read_u64("cpu", "cpu_ns");
    let u = &end.usage;
    let total = u.cpu_user_ns.zip(u.cpu_system_ns).map(|(a, b)| a + b);
    within("cpu user+system", total, truth, 0.02);
    assert_eq!(
        u.cpu_nr_throttled,
        Some(0),
        "no limit, no throttling: {u:?}"
    );
    assert_eq!(u.cpu_throttled_ns, Some(0), "{u:?}");
}

#[test]
fn throttling_is_reported_when_the_cpu_limit_is_below_the_demand() {
    need_schedstat();
    let b = Bench::new();
    let limited = Resources {
        cpus: Some(MilliCpus(200)),
        ..Default::default()
    };
    let end = b.run_ok("throttled", &burn_script(200_000_000), limited);
    let u = &end.usage;
    assert!(u.cpu_nr_throttled.is_some_and(|n| n > 0), "{u:?}");
    assert!(u.cpu_throttled_ns.is_some_and(|n| n > 0), "{u:?}");

    // A limit above the demand (one busy thread, two CPUs allowed): never throttled.
    let ample = Resources {
        cpus: Some(MilliCpus(2000)),
        ..Default::default()
    };
    let end = b.run("ample", &burn_script(200_000_000), ample);
    let u = &end.usage;
    assert_eq!(u.cpu_nr_throttled, Some(0), "{u:?}");
    assert_eq!(u.cpu_throttled_ns, Some(0), "{u:?}");
}

#[test]
fn anonymous_memory_matches_what_the_task_touched() {
    // dd's one buffer of bs bytes, filled from /dev/zero again and again (~1 s).
    let end = run_unlimited_ok(
        "anon",
        "dd if=/dev/zero of=/dev/null bs=200M count=15 2>/dev/null",
    );
    within("anon peak", end.peaks.mem_anon_bytes, 200 * MIB, 0.02);
}

#[test]
fn a_short_task_s_written_file_is_page_cache_not_anon() {
    // Written, read back and removed within a fraction of a second: only the dense
    // sampling of the first second sees it (the file is gone at the end).
    let end = run_unlimited_ok(
        "cache",
        "dd if=/dev/zero of=big bs=1M count=200 2>/dev/null && cat big > /dev/null && rm big",
    );
    let p = &end.peaks;
    assert!(
        p.mem_file_bytes.is_some_and(|f| f >= 150 * MIB),
        "page cache peak {:?}: {p:?}",
        p.mem_file_bytes
    );
    assert!(
        p.mem_anon_bytes.is_some_and(|a| a < 20 * MIB),
        "anon peak {:?}: {p:?}",
        p.mem_anon_bytes
    );
}

#[test]
fn an_oom_kill_is_reported() {
    let b = Bench::new();
    let small = Resources {
        memory_bytes: Some(32 * MIB),
        ..Default::default()
    };
    let end = b.run(
        "oom",
        "exec dd if=/dev/zero of=/dev/null bs=128M count=1",
        small,
    );
    assert_eq!(end.status.signal, Some(9), "{:?}", end.status);
    assert!(
        end.usage.oom_kills.is_some_and(|n| n >= 1),
        "{:?}",
        end.usage
    );
    assert_eq!(end.limitation, Some(Limitation::MemoryLimit));
}

#[test]
fn disk_use_matches_what_the_task_wrote() {
    let end = run_unlimited_ok("disk", "dd if=/dev/zero of=data bs=1M count=64 2>/dev/null");
    within("disk peak", end.peaks.disk_peak_bytes, 64 * MIB, 0.01);
}

/// Direct I/O reaches the block device from the task's own context, so both cgroup
/// versions attribute it to the task; a sandbox on a tmpfs reaches no device at all.
#[test]
fn direct_io_is_attributed_to_the_task() {
    let b = Bench::new();
    let on_tmpfs = nix::sys::statfs::statfs(b.ws.dir.path())
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if on_tmpfs {
        let end = b.run(
            "io",
            "dd if=/dev/zero of=data bs=1M count=16 2>/dev/null && cat data > /dev/null",
            Resources::default(),
        );
        assert_eq!(end.usage.io_write_bytes, Some(0), "{:?}", end.usage);
        return;
    }
    let end = b.run_ok(
        "io",
        "dd if=/dev/zero of=data bs=1M count=16 oflag=direct 2>/dev/null && \
         dd if=data of=/dev/null bs=1M iflag=direct 2>/dev/null",
        Resources::default(),
    );
    let u = &end.usage;
    within("io written", u.io_write_bytes, 16 * MIB, 0.05);
    // Reads may add the programs' own pages when they were not cached yet.
    let read = u.io_read_bytes.expect("io read");
    assert!(
        (16 * MIB..=24 * MIB).contains(&read),
        "io read {read}: {u:?}"
    );
    assert!(u.io_write_ops.is_some_and(|n| n >= 16), "{u:?}");
    assert!(u.io_read_ops.is_some_and(|n| n >= 16), "{u:?}");
}

/// Pressure figures exist exactly where the kernel keeps them per cgroup (v2).
#[test]
fn pressure_is_reported_on_cgroup_v2_only() {
    let b = Bench::new();
    let end = b.run("psi", "true", Resources::default());
    let u = &end.usage;
    if b.containerizer.cgroups().version() == 1 {
        assert!(u.cpu_pressure.is_none() && u.io_pressure.is_none(), "{u:?}");
    } else if Path::new("/proc/pressure/cpu").exists() {
        assert!(u.cpu_pressure.is_some(), "{u:?}");
        assert!(u.memory_pressure.is_some(), "{u:?}");
        assert!(u.io_pressure.is_some(), "{u:?}");
    } else {
        panic!("the kernel has no PSI (/proc/pressure): pressure cannot be checked");
    }
}
