//! `cella exec --usage-json`: the figures against ground truth the task measures
//! itself, and the JSON's exact shape.

mod exec_harness;

use std::collections::BTreeSet;

use exec_harness::helper::helper_value;
use exec_harness::{MIB, Outcome, Sandbox, in_vm};
use serde_json::Value;

/// Every key `--usage-json` must have, and no other.
const USAGE_KEYS: [&str; 23] = [
    "wall_ns",
    "cpu_user_ns",
    "cpu_system_ns",
    "cpu_throttled_ns",
    "cpu_nr_throttled",
    "mem_peak_bytes",
    "mem_anon_bytes",
    "mem_file_bytes",
    "mem_kernel_bytes",
    "mem_swap_bytes",
    "oom_kills",
    "pids_peak",
    "io_read_bytes",
    "io_write_bytes",
    "io_read_ops",
    "io_write_ops",
    "disk_peak_bytes",
    "started_ns",
    "ended_ns",
    "exit_code",
    "signal",
    "limitation",
    "cgroup_version",
];

fn within(actual: f64, expected: f64, rel: f64, abs: f64) -> bool {
    (actual - expected).abs() <= expected * rel + abs
}

#[test]
fn usage_cpu_time_matches_the_task_own_clock() {
    let sb = Sandbox::new();
    let out = sb.helper(&[], "burn-cpu:1500");
    out.assert_code(0);
    let truth = helper_value(&out, "cpu_ns") as f64;
    let measured = out.cpu_ns() as f64;
    eprintln!(
        "cpu: cgroup {:.4} s, task clock {:.4} s",
        measured / 1e9,
        truth / 1e9
    );
    out.check(
        within(measured, truth, 0.02, 10e6),
        format!(
            "cpu_user_ns+cpu_system_ns = {:.4} s, the task's own CLOCK_PROCESS_CPUTIME_ID = \
             {:.4} s: not within 2% + 10 ms",
            measured / 1e9,
            truth / 1e9,
        ),
    );
}

#[test]
fn usage_anon_memory_matches_a_known_allocation() {
    let sb = Sandbox::new();
    // The helper holds its 64 MiB for a second: long enough for usage sampling (every
    // 100 ms) to see it.
    let out = sb.helper(&[], "alloc:64:1000");
    out.assert_code(0);
    let rss_anon = helper_value(&out, "rss_anon_bytes") as f64;
    let anon = out.num("mem_anon_bytes") as f64;
    eprintln!("anon: cgroup {anon} B, task RssAnon {rss_anon} B");
    assert!(
        rss_anon >= (64 * MIB) as f64,
        "the helper's RssAnon {rss_anon} is below its 64 MiB allocation"
    );
    out.check(
        within(anon, rss_anon, 0.02, 0.0),
        format!(
            "mem_anon_bytes = {:.2} MiB, the task's RssAnon holding 64 MiB = {:.2} MiB: \
             not within 2%",
            anon / MIB as f64,
            rss_anon / MIB as f64,
        ),
    );
}

#[test]
fn usage_page_cache_is_kept_out_of_anon() {
    let sb = Sandbox::new();
    // The final pause keeps the task alive for usage sampling (every 100 ms) to see
    // the page cache it filled.
    let out = sb.sh(
        &[],
        "dd if=/dev/zero of=./big bs=1048576 count=64 2>/dev/null && cat ./big > /dev/null && sleep 0.5",
    );
    out.assert_code(0);
    let file = out.num("mem_file_bytes");
    let anon = out.num("mem_anon_bytes");
    out.check(
        file >= 50 * MIB,
        format!("mem_file_bytes = {file}: a 64 MB file written and read must show as page cache"),
    );
    out.check(
        anon < 16 * MIB,
        format!("mem_anon_bytes = {anon}: page cache must not count as anon"),
    );
}

/// The keys, types and fixed values of one run's usage JSON.
fn check_usage_json(usage: &Value, origin: &str, out: &Outcome) {
    let want_version = if in_vm() { 2 } else { 1 };
    let obj = usage
        .as_object()
        .unwrap_or_else(|| panic!("{origin}: usage is not an object; {}", out.describe()));
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = USAGE_KEYS.into_iter().collect();
    out.check_eq(keys, want, format!("{origin}: usage keys"));
    for (k, v) in obj {
        let ok = match k.as_str() {
            "limitation" => v.is_null() || v.is_string(),
            _ => v.is_null() || v.is_number(),
        };
        out.check(ok, format!("{origin}: {k} = {v} must be a number or null"));
    }
    out.check(
        obj["cgroup_version"] == want_version,
        format!("{origin}: cgroup_version must be {want_version}"),
    );
    out.check(obj["exit_code"] == 0, format!("{origin}: exit_code"));
    out.check(obj["limitation"].is_null(), format!("{origin}: limitation"));
    out.check(
        obj["wall_ns"].as_u64().is_some_and(|n| n > 0),
        format!("{origin}: wall_ns"),
    );
}

#[test]
fn usage_json_has_exactly_the_documented_keys() {
    let sb = Sandbox::new();
    let out = sb.sh(&[], "echo hello");
    out.assert_code(0);
    check_usage_json(out.usage(), "--usage-json FILE", &out);
    // `-`: the JSON goes to stdout (the harness then passes no FILE).
    let out = sb.sh(&["--usage-json", "-"], "true");
    out.assert_code(0);
    let stdout_json: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--usage-json - did not print JSON on stdout ({e}); {}",
            out.describe()
        )
    });
    check_usage_json(&stdout_json, "--usage-json -", &out);
}
