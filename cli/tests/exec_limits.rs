//! `cella exec`: memory, CPU, process and disk limits, enforced and reported.

mod exec_harness;

use exec_harness::helper::helper_value;
use exec_harness::{MIB, Sandbox, in_vm};

#[test]
fn memory_limit_kills_and_is_reported() {
    // tail keeps the (newline-free) 100 MB line in memory.
    let out = Sandbox::run_sh(&["--mem", "32MiB"], "head -c 100000000 /dev/zero | tail");
    out.assert_code(137);
    out.stderr_has(
        "memory limit",
        "stderr must say the memory limit was reached",
    );
    out.check_eq(out.limitation(), Some("MEMORY_LIMIT"), "limitation");
    out.check(out.num("oom_kills") >= 1, "oom_kills must be >= 1");
    let peak = out.num("mem_peak_bytes");
    out.check(
        peak <= 32 * MIB + MIB,
        format!("peak memory {peak} above the 32 MiB limit"),
    );
}

#[test]
fn cpu_limit_holds_a_busy_loop_to_half_a_cpu() {
    let sb = Sandbox::new();
    let out = sb.helper(&["--cpus", "0.5"], "spin-wall:2000");
    out.assert_code(0);
    let wall = helper_value(&out, "wall_ns") as f64;
    let cpu = out.cpu_ns() as f64;
    let expected = wall * 0.5;
    // In the VM (software-emulated CPU, late timer interrupts) the kernel's CFS
    // bandwidth control itself overshoots: a plain cgroup with cpu.max "50000 100000"
    // and no Cella involved gave this busy loop 57% of a CPU there on an idle host
    // (62-65% under cella) and up to 82% when the host's cores were oversubscribed.
    // There the test shows that the limit acts (the loop stays well below a whole CPU
    // and is throttled); on real hardware it holds to ±15%.
    let (low, high) = if in_vm() { (0.85, 1.8) } else { (0.85, 1.15) };
    eprintln!(
        "--cpus 0.5: cpu {:.4} s over a {:.4} s busy loop",
        cpu / 1e9,
        wall / 1e9
    );
    // The lower bound shows the limit is not stricter than asked: a loop held back by
    // its quota is throttled in most 100 ms periods. On a machine whose cores are busy
    // with other work the loop gets less than its quota without being throttled, and
    // only the upper bound says anything.
    let periods = wall / 100e6;
    let starved_by_others = (out.num("cpu_nr_throttled") as f64) < periods / 2.0;
    out.check(
        cpu <= expected * high && (cpu >= expected * low || starved_by_others),
        format!(
            "--cpus 0.5: cpu_user_ns+cpu_system_ns = {:.3} s for a {:.3} s busy loop, \
             expected {:.3} s (allowed {low}x..{high}x; throttled in {} of ~{periods:.0} periods)",
            cpu / 1e9,
            wall / 1e9,
            expected / 1e9,
            out.num("cpu_nr_throttled"),
        ),
    );
    // A busy loop that reached its quota was throttled, and the figures say so.
    let reached_quota = cpu >= expected * low;
    out.check(
        !reached_quota || out.num("cpu_throttled_ns") > 0,
        "cpu_throttled_ns must be > 0",
    );
    out.check(
        !reached_quota || out.num("cpu_nr_throttled") > 0,
        "cpu_nr_throttled must be > 0",
    );
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let out = Sandbox::run_sh(
        &["--pids", "10"],
        "for i in $(seq 1 30); do sleep 30 & done; wait",
    );
    out.check(
        out.code != 0,
        "30 background processes under --pids 10: some forks must fail",
    );
    out.check_eq(
        out.limitation(),
        Some("PIDS_LIMIT"),
        "a task that failed at its process limit",
    );
    out.stderr_has(
        "process limit",
        "stderr must say the process limit was reached",
    );
    out.check(
        out.num("pids_peak") <= 10,
        "pids_peak above the limit of 10",
    );
    // It failed fast: it did not wait for 30 sleeps.
    out.check(
        out.num("wall_ns") < 25_000_000_000,
        "the task should have failed at once",
    );
}

#[test]
fn disk_limit_kills_and_is_reported() {
    let sb = Sandbox::new();
    // The pause paces the writes (1 MiB each 0.2 s) so that usage sampling, every
    // 100 ms, sees the sandbox pass 5 MiB long before all 20 files are written.
    let script = "for i in $(seq 1 20); do dd if=/dev/zero of=./f$i bs=1048576 count=1 2>/dev/null; sleep 0.2; done";
    let out = sb.sh(&["--disk", "5MiB"], script);
    out.assert_code(137);
    out.check_eq(out.limitation(), Some("DISK_LIMIT"), "limitation");
    out.stderr_has("disk limit", "stderr must say the disk limit was reached");
    out.check(
        !sb.path().join("f20").exists(),
        "the task wrote all 20 MB despite --disk 5MiB",
    );
    out.check(
        out.num("disk_peak_bytes") > 5 * MIB,
        "disk_peak_bytes must show the excess",
    );
}

#[test]
fn disk_limit_counts_only_what_the_task_adds() {
    let sb = Sandbox::new();
    // 8 MiB already in the working directory, more than the limit: not the task's.
    std::fs::write(sb.path().join("existing"), vec![1u8; 8 << 20]).unwrap();
    let script = "dd if=/dev/zero of=./new bs=1048576 count=2 2>/dev/null; sleep 0.5";
    let out = sb.sh(&["--disk", "5MiB"], script);
    out.assert_code(0);
    out.check_eq(out.limitation(), None, "limitation");
    let peak = out.num("disk_peak_bytes");
    out.check(
        (2 * MIB..4 * MIB).contains(&peak),
        format!(
            "disk_peak_bytes {peak} must count the 2 MiB written, not the 8 MiB that were there"
        ),
    );
}
