//! The task helper: this test binary re-executed inside a task, for the tests that
//! need exact ground truth (CPU time, a known anonymous allocation, a real segfault).
//! It is run with the filter `exec_harness::helper::helper_entry` and
//! `CELLA_TEST_HELPER=<mode>` in the task's environment (the VM copies the test
//! binaries, nothing else of ours).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{MIB, Outcome};

/// Environment variable that turns a run of this test binary into a task helper.
const HELPER_ENV: &str = "CELLA_TEST_HELPER";
/// The helper's full test name, as libtest filters it.
const HELPER_TEST: &str = "exec_harness::helper::helper_entry";

/// Not a test: the entry point of the task helper. Without `CELLA_TEST_HELPER` it
/// returns at once; with it, it runs the helper mode and exits the process.
#[test]
fn helper_entry() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let code = run_helper(&mode);
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A little CPU work the optimiser cannot remove.
fn spin(rounds: u64, acc: &mut u64) {
    for i in 0..rounds {
        *acc = std::hint::black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
}

fn status_field_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Modes: `burn-cpu:MS` (burn MS ms of CPU time), `spin-wall:MS` (busy loop for MS ms
/// of wall time), `alloc:MIB:HOLD_MS` (allocate and touch MIB MiB, hold them), `segv`
/// (a real segmentation fault), `raw-socket` (open an ICMP raw socket, print the
/// errno, 0 for success), `sockets` (open a socket of each family in [`SOCKETS`],
/// print `socket_<family>_errno`). Results go to stdout as `helper: key=value` lines.
fn run_helper(mode: &str) -> i32 {
    let parts: Vec<&str> = mode.split(':').collect();
    let num = |i: usize| -> u64 {
        parts
            .get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad helper mode {mode}"))
    };
    let mut acc = 1u64;
    match parts[0] {
        "burn-cpu" => {
            let target = num(1) * 1_000_000;
            while process_cpu_ns() < target {
                spin(10_000, &mut acc);
            }
        }
        "spin-wall" => {
            let start = Instant::now();
            let wall = Duration::from_millis(num(1));
            while start.elapsed() < wall {
                spin(10_000, &mut acc);
            }
            println!("helper: wall_ns={}", start.elapsed().as_nanos());
        }
        "alloc" => {
            let bytes = usize::try_from(num(1) * MIB).unwrap_or(usize::MAX);
            // vec![1; n] writes every byte: every page is touched.
            let block = std::hint::black_box(vec![1u8; bytes]);
            println!(
                "helper: rss_anon_bytes={}",
                status_field_kib("RssAnon:") * 1024
            );
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(num(2)));
            acc = u64::from(std::hint::black_box(&block)[bytes / 2]);
        }
        "segv" => {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads a valid rlimit struct; no core dump for the fault below.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
            let _ = std::io::stdout().flush();
            // SAFETY: deliberately not safe: address 16 is never mapped
            // (vm.mmap_min_addr), the write faults and the kernel kills the process
            // with SIGSEGV, which is the point of this helper.
            unsafe { std::ptr::without_provenance_mut::<u8>(16).write_volatile(1) };
        }
        "raw-socket" => {
            let errno = socket_errno(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            println!("helper: raw_socket_errno={errno}");
        }
        "sockets" => {
            for (name, family, kind) in SOCKETS {
                let errno = socket_errno(family, kind, 0);
                println!("helper: socket_{name}_errno={errno}");
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
    println!("helper: cpu_ns={}", process_cpu_ns());
    println!("helper: acc={acc}");
    0
}

/// The address families the `sockets` mode tries: (name, family, socket type).
pub const SOCKETS: [(&str, i32, i32); 5] = [
    ("unix", libc::AF_UNIX, libc::SOCK_STREAM),
    ("inet", libc::AF_INET, libc::SOCK_STREAM),
    ("netlink", libc::AF_NETLINK, libc::SOCK_RAW),
    ("alg", libc::AF_ALG, libc::SOCK_SEQPACKET),
    ("vsock", libc::AF_VSOCK, libc::SOCK_STREAM),
];

/// Opens and closes a socket; the errno of the failure, 0 for success.
fn socket_errno(family: i32, kind: i32, protocol: i32) -> i32 {
    // SAFETY: socket takes integer arguments only; the descriptor, if any, is closed
    // below.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    }
    // SAFETY: fd is the descriptor socket just returned, closed once.
    unsafe { libc::close(fd) };
    0
}

/// Options and command that run this binary (at `exe`) as the task with helper `mode`.
pub fn helper_task(exe: &Path, mode: &str) -> (Vec<String>, Vec<String>) {
    (
        vec!["--env".into(), format!("{HELPER_ENV}={mode}")],
        vec![
            exe.to_string_lossy().into_owned(),
            HELPER_TEST.into(),
            "--exact".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
            "-q".into(),
        ],
    )
}

/// The value of `helper: key=value` in a helper's output.
pub fn helper_value(out: &Outcome, key: &str) -> u64 {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("helper: "))
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the helper printed no {key}=…; {}", out.describe()))
}
