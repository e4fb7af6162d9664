//! Integration tests of `cella exec`: real processes, real cgroups, real namespaces,
//! no mocks. They run as root on the host (cgroup v1, hybrid mode) and, unchanged, in
//! the VM of `tests/vm/` (cgroup v2, `CELLA_IN_VM=1`, busybox as the only userland).
//! Tasks therefore only use commands busybox has.
//!
//! Every `cella exec` runs in a fresh temporary working directory with its own
//! `--cgroup-root cella-test-<pid>-<n>` (relative: beneath this process's cgroup), so
//! tests can run in parallel (threads under `cargo test`, processes under nextest);
//! after each run the test checks that no cgroup directory of that name and no run
//! directory of the launch is left.
//!
//! Where a test needs exact ground truth (CPU time, a known anonymous allocation, a
//! real segfault), the task is this test binary itself: it is re-executed with the
//! filter `helper_entry` and `CELLA_TEST_HELPER=<mode>` in the task's environment
//! (the VM copies the test binaries, nothing else of ours).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Environment variable that turns a run of this test binary into a task helper.
const HELPER_ENV: &str = "CELLA_TEST_HELPER";
/// Where `cella exec` keeps its run directories (`RUNTIME_DIR` in exec.rs).
const RUNTIME_DIR: &str = "/run/cella/exec";
/// Docker's default capability set as /proc/<pid>/status shows it.
const DOCKER_CAPS: &str = "00000000a80425fb";
const CAP_SYS_ADMIN_BIT: u32 = 21;
/// Every key `--usage-json` must have, and no other.
const USAGE_KEYS: [&str; 19] = [
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
    "disk_peak_bytes",
    "exit_code",
    "signal",
    "limitation",
    "cgroup_version",
];
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------
// The task helper (this binary re-executed inside a task)
// ---------------------------------------------------------------------------------

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
/// (a real segmentation fault). Results go to stdout as `helper: key=value` lines.
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
        other => panic!("unknown helper mode {other}"),
    }
    println!("helper: cpu_ns={}", process_cpu_ns());
    println!("helper: acc={acc}");
    0
}

/// Options and command that run this binary (at `exe`) as the task with helper `mode`.
fn helper_task(exe: &Path, mode: &str) -> (Vec<String>, Vec<String>) {
    (
        vec!["--env".into(), format!("{HELPER_ENV}={mode}")],
        vec![
            exe.to_string_lossy().into_owned(),
            "helper_entry".into(),
            "--exact".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
            "-q".into(),
        ],
    )
}

/// The value of `helper: key=value` in a helper's output.
fn helper_value(out: &Outcome, key: &str) -> u64 {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("helper: "))
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the helper printed no {key}=…; {}", out.describe()))
}

// ---------------------------------------------------------------------------------
// Running cella
// ---------------------------------------------------------------------------------

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn in_vm() -> bool {
    std::env::var_os("CELLA_IN_VM").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Generous: the VM emulates its CPU in software.
fn run_timeout() -> Duration {
    if in_vm() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(120)
    }
}

fn cella_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cella"))
}

fn shim_bin() -> PathBuf {
    let shim = cella_bin().with_file_name("cella-shim");
    assert!(
        shim.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first",
        shim.display()
    );
    shim
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cella exec tests need root (they create cgroups, namespaces and mounts): run them as root"
    );
}

/// Run directories a launch by the cella process `pid` may use.
fn run_dirs(pid: u32) -> [PathBuf; 2] {
    [
        Path::new(RUNTIME_DIR)
            .join("tasks")
            .join(format!("exec-{pid}")),
        Path::new(RUNTIME_DIR).join(format!("exec-{pid}")),
    ]
}

/// Every directory named `name` anywhere under /sys/fs/cgroup.
fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == name {
                found.push(entry.path());
            }
            stack.push(entry.path());
        }
    }
    found
}

/// What was left behind by the launch of cella process `pid` with cgroup root
/// `cgroup`: cgroup directories of that name (with any subdirectories) and run dirs.
fn leftovers(cgroup: &str, pid: u32) -> Vec<String> {
    let mut left = Vec::new();
    for dir in cgroup_dirs_named(cgroup) {
        let children: Vec<String> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        left.push(if children.is_empty() {
            format!("cgroup directory {} (no subdirectories)", dir.display())
        } else {
            format!(
                "cgroup directory {} with subdirectories {children:?}",
                dir.display()
            )
        });
    }
    for dir in run_dirs(pid) {
        if dir.exists() {
            left.push(format!("run directory {}", dir.display()));
        }
    }
    left
}

/// Command lines (NULs as spaces) of every process on the host, by pid.
fn all_cmdlines() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(raw) = fs::read(entry.path().join("cmdline")) {
            let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
            out.push((pid, text.trim_end().to_string()));
        }
    }
    out
}

fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes (rmdir, deepest first) every cgroup directory named like a launch's
/// `--cgroup-root` when dropped, so a failing test leaves nothing on the host. It
/// only removes empty cgroups; the assertions report what cella left.
struct CgroupGuard(String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for top in cgroup_dirs_named(&self.0) {
            let mut dirs = vec![top.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(entries) = fs::read_dir(&dirs[i]) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            dirs.push(e.path());
                        }
                    }
                }
                i += 1;
            }
            for dir in dirs.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// A fresh working directory for the task, plus a private directory for the test's
/// own files (usage JSON, profiles, volumes), both removed on drop.
struct Sandbox {
    dir: tempfile::TempDir,
    out: tempfile::TempDir,
}

/// The result of one `cella exec`.
struct Outcome {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
    usage: Option<Value>,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "\n  cella {}\n  exit code: {}\n  stdout: {:?}\n  stderr: {:?}\n  usage: {}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr,
            self.usage
                .as_ref()
                .map_or_else(|| "none".into(), Value::to_string)
        )
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "expected exit code {code}; {}",
            self.describe()
        );
        self
    }

    fn usage(&self) -> &Value {
        self.usage
            .as_ref()
            .unwrap_or_else(|| panic!("no usage JSON was written; {}", self.describe()))
    }

    /// A numeric usage figure; panics if it is missing or null.
    fn num(&self, key: &str) -> u64 {
        self.usage()
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("usage key {key} is not a number; {}", self.describe()))
    }

    fn limitation(&self) -> Option<&str> {
        self.usage().get("limitation").and_then(Value::as_str)
    }

    fn cpu_ns(&self) -> u64 {
        self.num("cpu_user_ns") + self.num("cpu_system_ns")
    }

    /// `/proc/self/status` field `name` as the task printed it (`grep` output).
    fn status_field(&self, name: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} line in the task's output; {}", self.describe()))
    }
}

impl Sandbox {
    fn new() -> Self {
        require_root();
        let _ = shim_bin();
        let dir = tempfile::Builder::new()
            .prefix("cella-exec-test-")
            .tempdir()
            .expect("create a temporary working directory");
        // Readable by every user, so tasks running as another user can use it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod working directory");
        let out = tempfile::Builder::new()
            .prefix("cella-exec-out-")
            .tempdir()
            .expect("create a temporary directory");
        Self { dir, out }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `cella exec --cgroup-root <unique> --usage-json <file> OPTS -- CMD` in the
    /// sandbox, not yet started (no `--usage-json <file>` if OPTS has its own).
    fn command<S: AsRef<str>>(
        &self,
        opts: &[S],
        cmd: &[S],
    ) -> (Command, Vec<String>, String, PathBuf) {
        let n = RUN_COUNTER.fetch_add(1, Ordering::SeqCst);
        let cgroup = format!("cella-test-{}-{n}", std::process::id());
        let usage_path = self.out.path().join(format!("usage-{n}.json"));
        let mut args: Vec<String> = vec!["exec".into(), "--cgroup-root".into(), cgroup.clone()];
        if !opts.iter().any(|o| o.as_ref().starts_with("--usage-json")) {
            args.push("--usage-json".into());
            args.push(usage_path.to_string_lossy().into_owned());
        }
        args.extend(opts.iter().map(|s| s.as_ref().to_string()));
        args.push("--".into());
        args.extend(cmd.iter().map(|s| s.as_ref().to_string()));
        let mut command = Command::new(cella_bin());
        command
            .args(&args)
            .current_dir(self.path())
            .env("CELLA_SHIM", shim_bin());
        (command, args, cgroup, usage_path)
    }

    /// Runs cella to completion with `stdin` piped in, and asserts that it left no
    /// cgroup and no run directory behind.
    fn run_with_stdin<S: AsRef<str>>(
        &self,
        opts: &[S],
        cmd: &[S],
        stdin: Option<&[u8]>,
    ) -> Outcome {
        let (mut command, args, cgroup, usage_path) = self.command(opts, cmd);
        let _cgroup_guard = CgroupGuard(cgroup.clone());
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", cella_bin().display())),
        );
        let pid = child.0.id();
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
        for (is_out, pipe) in [
            (
                true,
                child
                    .0
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
            (
                false,
                child
                    .0
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
        ] {
            let tx = tx.clone();
            let mut pipe = pipe.expect("piped");
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send((is_out, buf));
            });
        }
        drop(tx);
        if let Some(input) = stdin {
            let mut pipe = child.0.stdin.take().expect("piped stdin");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let deadline = Instant::now() + run_timeout();
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("wait for cella") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cella {} did not finish within {:?}",
                args.join(" "),
                run_timeout()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (is_out, buf) = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
                panic!(
                    "cella {} exited but its stdout/stderr stayed open for 20 s: a shim or task process kept them",
                    args.join(" ")
                )
            });
            if is_out { stdout = buf } else { stderr = buf }
        }
        let code = status.code().unwrap_or_else(|| {
            panic!(
                "cella itself was killed: {status:?}; cella {}",
                args.join(" ")
            )
        });
        let usage = fs::read(&usage_path).ok().map(|raw| {
            serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!(
                    "--usage-json wrote invalid JSON ({e}): {:?}",
                    String::from_utf8_lossy(&raw)
                )
            })
        });
        let outcome = Outcome {
            args,
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            usage,
        };
        let left = leftovers(&cgroup, pid);
        assert!(
            left.is_empty(),
            "cella left these behind after it exited: {left:?}; {}",
            outcome.describe()
        );
        outcome
    }

    fn run<S: AsRef<str>>(&self, opts: &[S], cmd: &[S]) -> Outcome {
        self.run_with_stdin(opts, cmd, None)
    }

    /// Runs `sh -c script` with `opts`.
    fn sh(&self, opts: &[&str], script: &str) -> Outcome {
        self.run(opts, &["sh", "-c", script])
    }

    fn helper(&self, opts: &[&str], mode: &str) -> Outcome {
        // The test binary may live under /tmp (a checkout there), which the task's
        // private /tmp hides: it runs from a link (or copy) in the working directory,
        // which the task sees.
        let exe = std::env::current_exe().expect("path of the test binary");
        let visible = self.dir.path().join("test-helper");
        if !visible.exists() {
            std::fs::hard_link(&exe, &visible)
                .or_else(|_| std::fs::copy(&exe, &visible).map(drop))
                .expect("placing the test binary in the working directory");
        }
        let (mut all, cmd) = helper_task(&visible, mode);
        all.extend(opts.iter().map(|s| s.to_string()));
        self.run(&all, &cmd)
    }
}

fn hex_caps(mask: u64) -> String {
    format!("{mask:016x}")
}

fn within(actual: f64, expected: f64, rel: f64, abs: f64) -> bool {
    (actual - expected).abs() <= expected * rel + abs
}

// ---------------------------------------------------------------------------------
// Exit codes and bad input
// ---------------------------------------------------------------------------------

#[test]
fn exit_code_is_passed_through() {
    let sb = Sandbox::new();
    let out = sb.sh(&[], "exit 3");
    out.assert_code(3);
    assert_eq!(
        out.usage()["exit_code"],
        3,
        "usage exit_code; {}",
        out.describe()
    );
    assert!(
        out.usage()["signal"].is_null(),
        "usage signal must be null; {}",
        out.describe()
    );
    sb.sh(&[], "true").assert_code(0);
}

#[test]
fn killed_by_signal_exits_128_plus_n() {
    let sb = Sandbox::new();
    // A real page fault: the kernel's SIGSEGV kills even a namespace's init.
    let out = sb.helper(&[], "segv");
    out.assert_code(128 + 11);
    assert_eq!(
        out.usage()["signal"],
        11,
        "usage signal must be 11 (SIGSEGV); {}",
        out.describe()
    );
    assert!(
        out.usage()["exit_code"].is_null(),
        "usage exit_code must be null for a signal death; {}",
        out.describe()
    );
}

#[test]
fn missing_command_exits_127_with_one_line() {
    let sb = Sandbox::new();
    let out = sb.run(&[], &["cella-no-such-command-xyz"]);
    out.assert_code(127);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line reason on stderr; {}",
        out.describe()
    );
    assert!(
        lines[0].contains("cella-no-such-command-xyz"),
        "the reason must name the command; {}",
        out.describe()
    );
}

#[test]
fn non_executable_file_exits_126() {
    let sb = Sandbox::new();
    let script = sb.path().join("not-executable");
    fs::write(&script, "#!/bin/sh\necho should-not-run\n").expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = sb.run(&[], &["./not-executable"]);
    out.assert_code(126);
    assert!(
        !out.stdout.contains("should-not-run"),
        "the file must not run; {}",
        out.describe()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line reason on stderr; {}",
        out.describe()
    );
}

/// Exit 2, a message naming the option, nothing created, nothing run.
/// `--mem -5M` and `--cpus -1` (negative values as separate arguments) currently fail
/// here: PRODUCT BUG (clap takes "-5M"/"-1" for options, the message does not name
/// --mem/--cpus); see the report.
#[test]
fn bad_input_exits_2_and_creates_nothing() {
    let sb = Sandbox::new();
    let bad_profile = sb.out.path().join("bad-seccomp.json");
    fs::write(&bad_profile, "{ this is not json").expect("write profile");
    let bad_profile = bad_profile.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--no-such-option"], "--no-such-option"),
        (vec!["--mem", "0"], "--mem"),
        (vec!["--mem", "-5M"], "--mem"),
        (vec!["--mem=-5M"], "--mem"),
        (vec!["--mem", "abc"], "--mem"),
        (vec!["--cpus", "0"], "--cpus"),
        (vec!["--cpus", "-1"], "--cpus"),
        (vec!["--cpus=-1"], "--cpus"),
        (vec!["--rootfs", "/nonexistent-cella-rootfs"], "--rootfs"),
        (vec!["--seccomp", bad_profile.as_str()], "--seccomp"),
        (vec!["--cap-add", "NOPE"], "--cap-add"),
        (vec!["--user", "cella-no-such-user"], "--user"),
    ];
    let mut failures = Vec::new();
    for (opts, option) in cases {
        let out = sb.sh(&opts, "touch ./ran");
        if out.code != 2 {
            failures.push(format!(
                "{opts:?}: exit code {} instead of 2; {}",
                out.code,
                out.describe()
            ));
        }
        if !out.stderr.contains(option) {
            failures.push(format!(
                "{opts:?}: the message does not name {option}; {}",
                out.describe()
            ));
        }
        if sb.path().join("ran").exists() {
            failures.push(format!("{opts:?}: the command ran"));
            let _ = fs::remove_file(sb.path().join("ran"));
        }
        if out.usage.is_some() {
            failures.push(format!("{opts:?}: a usage file was written"));
        }
    }
    assert!(
        failures.is_empty(),
        "bad input was not rejected as it should be:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Stdio
// ---------------------------------------------------------------------------------

#[test]
fn stdio_is_passed_through() {
    let sb = Sandbox::new();
    let input = b"line one\nline two\n";
    let out = sb.run_with_stdin(&[], &["sh", "-c", "cat; echo to-stderr >&2"], Some(input));
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        "line one\nline two\n",
        "stdin piped into cat must come out on stdout; {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("to-stderr"),
        "stderr must be passed through; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("to-stderr"),
        "stderr must stay separate from stdout; {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------

#[test]
fn memory_limit_kills_and_is_reported() {
    let sb = Sandbox::new();
    // tail keeps the (newline-free) 100 MB line in memory.
    let out = sb.sh(&["--mem", "32MiB"], "head -c 100000000 /dev/zero | tail");
    out.assert_code(137);
    assert!(
        out.stderr.contains("memory limit"),
        "stderr must say the memory limit was reached; {}",
        out.describe()
    );
    assert_eq!(
        out.limitation(),
        Some("MEMORY_LIMIT"),
        "limitation; {}",
        out.describe()
    );
    assert!(
        out.num("oom_kills") >= 1,
        "oom_kills must be >= 1; {}",
        out.describe()
    );
    let peak = out.num("mem_peak_bytes");
    assert!(
        peak <= 32 * MIB + MIB,
        "peak memory {peak} above the 32 MiB limit; {}",
        out.describe()
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
    // and no Cella involved gave this busy loop 57% of a CPU there (62-65% under
    // cella). On real hardware it holds to ±15%.
    let (low, high) = if in_vm() { (0.85, 1.35) } else { (0.85, 1.15) };
    eprintln!(
        "--cpus 0.5: cpu {:.4} s over a {:.4} s busy loop",
        cpu / 1e9,
        wall / 1e9
    );
    assert!(
        cpu >= expected * low && cpu <= expected * high,
        "--cpus 0.5: cpu_user_ns+cpu_system_ns = {:.3} s for a {:.3} s busy loop, expected {:.3} s \
         (allowed {low}x..{high}x); {}",
        cpu / 1e9,
        wall / 1e9,
        expected / 1e9,
        out.describe()
    );
    assert!(
        out.num("cpu_throttled_ns") > 0,
        "cpu_throttled_ns must be > 0; {}",
        out.describe()
    );
    assert!(
        out.num("cpu_nr_throttled") > 0,
        "cpu_nr_throttled must be > 0; {}",
        out.describe()
    );
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let sb = Sandbox::new();
    let out = sb.sh(
        &["--pids", "10"],
        "for i in $(seq 1 30); do sleep 30 & done; wait",
    );
    assert_ne!(
        out.code,
        0,
        "30 background processes under --pids 10: some forks must fail; {}",
        out.describe()
    );
    assert_eq!(
        out.limitation(),
        Some("PIDS_LIMIT"),
        "a task that failed at its process limit; {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("process limit"),
        "stderr must say the process limit was reached; {}",
        out.describe()
    );
    assert!(
        out.num("pids_peak") <= 10,
        "pids_peak above the limit of 10; {}",
        out.describe()
    );
    // It failed fast: it did not wait for 30 sleeps.
    assert!(
        out.num("wall_ns") < 25_000_000_000,
        "the task should have failed at once; {}",
        out.describe()
    );
}

#[test]
fn disk_limit_kills_and_is_reported() {
    let sb = Sandbox::new();
    let script = "for i in $(seq 1 20); do dd if=/dev/zero of=./f$i bs=1048576 count=1 2>/dev/null; sleep 0.2; done";
    let out = sb.sh(&["--disk", "5MiB"], script);
    out.assert_code(137);
    assert_eq!(
        out.limitation(),
        Some("DISK_LIMIT"),
        "limitation; {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("disk limit"),
        "stderr must say the disk limit was reached; {}",
        out.describe()
    );
    assert!(
        !sb.path().join("f20").exists(),
        "the task wrote all 20 MB despite --disk 5MiB; {}",
        out.describe()
    );
    assert!(
        out.num("disk_peak_bytes") > 5 * MIB,
        "disk_peak_bytes must show the excess; {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------

fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap_or_else(|e| panic!("readlink /proc/self/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn task_is_pid_1_with_own_namespaces() {
    let sb = Sandbox::new();
    let out = sb.sh(
        &[],
        "echo pid=$$; for n in pid mnt ipc uts net; do echo $n=$(readlink /proc/self/ns/$n); done",
    );
    out.assert_code(0);
    assert!(
        out.stdout.lines().any(|l| l == "pid=1"),
        "the task must be pid 1 in its namespace; {}",
        out.describe()
    );
    for kind in ["pid", "mnt", "ipc", "uts"] {
        let host = host_ns(kind);
        let line = format!("{kind}={host}");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{kind}={kind}:["))),
            "the task printed no {kind} namespace; {}",
            out.describe()
        );
        assert!(
            !out.stdout.contains(&line),
            "the task shares the host's {kind} namespace {host}; {}",
            out.describe()
        );
    }
    let net = format!("net={}", host_ns("net"));
    assert!(
        out.stdout.contains(&net),
        "--net host (the default) must share the host's network namespace; {}",
        out.describe()
    );
}

#[test]
fn hostname_is_private() {
    let sb = Sandbox::new();
    let before = fs::read_to_string("/proc/sys/kernel/hostname").expect("read hostname");
    let out = sb.sh(&["--hostname", "h1"], "hostname");
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        "h1",
        "hostname inside the task; {}",
        out.describe()
    );
    let after = fs::read_to_string("/proc/sys/kernel/hostname").expect("read hostname");
    assert_eq!(before, after, "the host's hostname changed");
}

#[test]
fn net_none_has_only_loopback_and_it_is_up() {
    let sb = Sandbox::new();
    let out = sb.sh(
        &["--net", "none"],
        "cat /proc/net/dev; echo ---; ip link show lo; echo ns=$(readlink /proc/self/ns/net)",
    );
    out.assert_code(0);
    let (dev, rest) = out.stdout.split_once("---").expect("separator");
    let ifaces: Vec<&str> = dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(
        ifaces,
        ["lo"],
        "--net none: only lo may exist; {}",
        out.describe()
    );
    let flags = rest
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(f, _)| f)
        .unwrap_or("");
    assert!(
        flags.split(',').any(|f| f == "UP"),
        "lo must be UP; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains(&host_ns("net")),
        "--net none must have its own network namespace; {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------

#[test]
fn host_tree_is_read_only() {
    let sb = Sandbox::new();
    let tag = format!(
        "cella-probe-{}-{}",
        std::process::id(),
        RUN_COUNTER.load(Ordering::SeqCst)
    );
    for dir in ["/etc", "/usr", "/"] {
        let target = Path::new(dir).join(&tag);
        let out = sb.sh(&[], &format!("echo x > {}", target.display()));
        assert_ne!(
            out.code,
            0,
            "writing {} must fail; {}",
            target.display(),
            out.describe()
        );
        assert!(
            !target.exists(),
            "the task created {} on the host",
            target.display()
        );
    }
}

#[test]
fn workdir_and_private_tmp_are_writable() {
    let sb = Sandbox::new();
    let tag = format!(
        "cella-tmp-probe-{}-{}",
        std::process::id(),
        RUN_COUNTER.load(Ordering::SeqCst)
    );
    let script = format!("echo wd > ./in-workdir && echo tmp > /tmp/{tag} && cat /tmp/{tag}");
    let out = sb.sh(&[], &script);
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        "tmp",
        "/tmp must be writable; {}",
        out.describe()
    );
    assert_eq!(
        fs::read_to_string(sb.path().join("in-workdir"))
            .ok()
            .as_deref(),
        Some("wd\n"),
        "a file written in the working directory must be on the host; {}",
        out.describe()
    );
    assert!(
        !Path::new("/tmp").join(&tag).exists(),
        "/tmp must be private: /tmp/{tag} appeared on the host"
    );
}

#[test]
fn volumes_ro_and_rw() {
    let sb = Sandbox::new();
    let ro_host = sb.out.path().join("ro");
    let rw_host = sb.out.path().join("rw");
    fs::create_dir(&ro_host).expect("mkdir");
    fs::create_dir(&rw_host).expect("mkdir");
    fs::write(ro_host.join("data"), "ro-content\n").expect("write");
    // Without --rootfs the task path must exist: mount points inside the working dir.
    fs::create_dir(sb.path().join("vro")).expect("mkdir");
    fs::create_dir(sb.path().join("vrw")).expect("mkdir");
    let ro = format!(
        "{}:{}:ro",
        ro_host.display(),
        sb.path().join("vro").display()
    );
    let rw = format!(
        "{}:{}:rw",
        rw_host.display(),
        sb.path().join("vrw").display()
    );
    let script = "cat ./vro/data; if echo x > ./vro/new; then echo ro-written; fi; echo rw-data > ./vrw/new && echo rw-ok";
    let out = sb.sh(&["--volume", &ro, "--volume", &rw], script);
    out.assert_code(0);
    assert!(
        out.stdout.contains("ro-content"),
        "the :ro volume must be readable; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("ro-written"),
        "the :ro volume must not be writable; {}",
        out.describe()
    );
    assert!(
        !ro_host.join("new").exists(),
        "a file appeared in the :ro volume's host directory"
    );
    assert!(
        out.stdout.contains("rw-ok"),
        "the :rw volume must be writable; {}",
        out.describe()
    );
    assert_eq!(
        fs::read_to_string(rw_host.join("new")).ok().as_deref(),
        Some("rw-data\n"),
        "the :rw write must reach the host"
    );
}

#[test]
fn root_task_cannot_use_devices_or_mount() {
    let sb = Sandbox::new();
    // mknod may be refused, or succeed on a nodev mount where opening fails.
    let script = "mknod ./blk b 7 0 2>/dev/null; if head -c 1 ./blk > /dev/null 2>&1; then echo DEVICE-OPENED; fi; \
                  mkdir ./m && if mount -t tmpfs none ./m; then echo MOUNTED; fi; echo end";
    let out = sb.sh(&[], script);
    out.assert_code(0);
    assert!(
        out.stdout.contains("end"),
        "the script did not finish; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("DEVICE-OPENED"),
        "a root task opened a block device it created; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("MOUNTED"),
        "a root task mounted a tmpfs (it must lack CAP_SYS_ADMIN); {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------
// Security
// ---------------------------------------------------------------------------------

const STATUS_SCRIPT: &str =
    "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id -u";

#[test]
fn default_capabilities_no_new_privs_and_seccomp() {
    let sb = Sandbox::new();
    let out = sb.sh(&[], STATUS_SCRIPT);
    out.assert_code(0);
    assert_eq!(
        out.status_field("CapEff"),
        DOCKER_CAPS,
        "CapEff must be Docker's default set; {}",
        out.describe()
    );
    assert_eq!(
        out.status_field("CapBnd"),
        DOCKER_CAPS,
        "CapBnd must be Docker's default set; {}",
        out.describe()
    );
    assert_eq!(
        out.status_field("NoNewPrivs"),
        "1",
        "no_new_privs; {}",
        out.describe()
    );
    assert_eq!(
        out.status_field("Seccomp"),
        "2",
        "a seccomp filter must be loaded; {}",
        out.describe()
    );
}

#[test]
fn cap_drop_all_and_cap_add() {
    let sb = Sandbox::new();
    let out = sb.sh(&["--cap-drop", "ALL"], STATUS_SCRIPT);
    out.assert_code(0);
    assert_eq!(
        out.status_field("CapEff"),
        hex_caps(0),
        "--cap-drop ALL; {}",
        out.describe()
    );
    let out = sb.sh(&["--cap-add", "SYS_ADMIN"], STATUS_SCRIPT);
    out.assert_code(0);
    let want =
        hex_caps(u64::from_str_radix(DOCKER_CAPS, 16).unwrap_or(0) | (1 << CAP_SYS_ADMIN_BIT));
    assert_eq!(
        out.status_field("CapEff"),
        want,
        "--cap-add SYS_ADMIN must add bit 21; {}",
        out.describe()
    );
}

#[test]
fn seccomp_denies_with_eperm_and_unconfined_lifts_it() {
    let sb = Sandbox::new();
    // unshare(CLONE_NEWUSER) needs no capability: only the seccomp profile refuses it.
    let out = sb.sh(&[], "unshare -U true; echo rc=$?");
    assert!(
        out.stdout.contains("rc=1"),
        "unshare must fail under the default profile; {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Operation not permitted"),
        "the denied syscall must fail with EPERM; {}",
        out.describe()
    );
    let out = sb.sh(
        &["--seccomp", "unconfined"],
        &format!("{STATUS_SCRIPT}; unshare -U true && echo unshare-ok"),
    );
    out.assert_code(0);
    assert_eq!(
        out.status_field("Seccomp"),
        "0",
        "--seccomp unconfined: no filter; {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("unshare-ok"),
        "unconfined: the same syscall must succeed; {}",
        out.describe()
    );
}

#[test]
fn custom_seccomp_profile_denies_mkdir() {
    let sb = Sandbox::new();
    let profile = sb.out.path().join("no-mkdir.json");
    let json = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 }
        ]
    }"#;
    fs::write(&profile, json).expect("write profile");
    let profile = profile.to_string_lossy().into_owned();
    let out = sb.sh(
        &["--seccomp", &profile],
        "touch ./file && echo touch-ok; mkdir ./dir && echo mkdir-ok; true",
    );
    out.assert_code(0);
    assert!(
        out.stdout.contains("touch-ok"),
        "the profile allows everything else; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("mkdir-ok"),
        "mkdir must be denied; {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Permission denied"),
        "mkdir must fail with EACCES (errnoRet 13); {}",
        out.describe()
    );
    assert!(!sb.path().join("dir").exists(), "the directory was created");
}

#[test]
fn user_option_drops_root_and_capabilities() {
    let sb = Sandbox::new();
    for user in ["65534", "nobody"] {
        let out = sb.sh(&["--user", user], STATUS_SCRIPT);
        out.assert_code(0);
        assert!(
            out.stdout.lines().any(|l| l == "65534"),
            "--user {user}: id -u must print 65534; {}",
            out.describe()
        );
        assert_eq!(
            out.status_field("CapEff"),
            hex_caps(0),
            "--user {user}: no effective capabilities; {}",
            out.describe()
        );
    }
}

// ---------------------------------------------------------------------------------
// Processes and descriptors
// ---------------------------------------------------------------------------------

#[test]
fn no_fd_leaks_into_the_task() {
    let sb = Sandbox::new();
    // An fd >= 50 without FD_CLOEXEC, inherited by cella (and the shim).
    let file = fs::File::open("/proc/self/status").expect("open a file");
    let raw = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_DUPFD(50)).expect("F_DUPFD");
    // SAFETY: F_DUPFD returned a new descriptor that nothing else owns.
    let leaked = unsafe { OwnedFd::from_raw_fd(raw) };
    let flags = nix::fcntl::fcntl(leaked.as_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
    assert_eq!(
        flags & libc::FD_CLOEXEC,
        0,
        "the test fd must be inheritable"
    );
    let out = sb.run(&[], &["ls", "-l", "/proc/self/fd"]);
    out.assert_code(0);
    let fds: BTreeSet<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !target.trim_end().ends_with("/fd")) // ls's own directory fd
        .filter_map(|(left, _)| left.split_whitespace().last().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = ["0", "1", "2"].into_iter().map(String::from).collect();
    assert_eq!(
        fds,
        want,
        "only fds 0, 1, 2 may reach the task (test fd {raw} leaked?); {}",
        out.describe()
    );
    drop(leaked);
}

#[test]
fn daemonized_children_die_with_the_task() {
    let sb = Sandbox::new();
    let marker = format!("98765{}", std::process::id());
    let script = format!(
        "(setsid sleep {marker} > /dev/null 2>&1 &); sleep 0.5; \
         for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done; exit 0"
    );
    let out = sb.sh(&[], &script);
    out.assert_code(0);
    let needle = format!("sleep {marker}");
    assert!(
        out.stdout.contains(&needle),
        "the daemonized `{needle}` did not start; {}",
        out.describe()
    );
    let gone = poll_until(Duration::from_secs(5), || {
        !all_cmdlines().iter().any(|(_, c)| c == &needle)
    });
    assert!(
        gone,
        "`{needle}` outlived its task: {:?}",
        all_cmdlines()
            .iter()
            .filter(|(_, c)| c == &needle)
            .collect::<Vec<_>>()
    );
}

#[test]
fn task_survives_launcher_crash_and_is_cleaned_up() {
    let sb = Sandbox::new();
    let (mut command, args, cgroup, _) =
        sb.command(&[], &["sh", "-c", "sleep 2; echo done > ./marker"]);
    let _cgroup_guard = CgroupGuard(cgroup.clone());
    let log = fs::File::create(sb.out.path().join("cella.log")).expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let mut child = KillOnDrop(command.spawn().expect("start cella"));
    let pid = child.0.id();
    let run_dir = run_dirs(pid)[0].clone();
    let slow = if in_vm() { 6 } else { 1 };
    let started = poll_until(Duration::from_secs(30), || {
        run_dir.exists() && !cgroup_dirs_named(&cgroup).is_empty()
    });
    let log_text = || fs::read_to_string(sb.out.path().join("cella.log")).unwrap_or_default();
    assert!(
        started,
        "cella {} did not create {} and its cgroups; log: {}",
        args.join(" "),
        run_dir.display(),
        log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sb.path().join("marker").exists(),
        "the task finished too early to test a crash"
    );
    child.0.kill().expect("kill -9 cella");
    let _ = child.0.wait();

    let marker = sb.path().join("marker");
    let finished = poll_until(Duration::from_secs(15 * slow), || marker.exists());
    assert!(
        finished,
        "the task did not finish after its launcher was killed; log: {}",
        log_text()
    );
    let run_dir_text = run_dir.to_string_lossy().into_owned();
    let shims = || -> Vec<(u32, String)> {
        all_cmdlines()
            .into_iter()
            .filter(|(_, c)| c.contains("cella-shim") && c.contains(&run_dir_text))
            .collect()
    };
    let clean = poll_until(Duration::from_secs(5 * slow), || {
        leftovers(&cgroup, pid).is_empty() && shims().is_empty()
    });
    assert!(
        clean,
        "after the task ended without its launcher, left behind: {:?}, shim processes: {:?}; log: {}",
        leftovers(&cgroup, pid),
        shims(),
        log_text()
    );
}

// ---------------------------------------------------------------------------------
// Usage accuracy against ground truth
// ---------------------------------------------------------------------------------

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
    assert!(
        within(measured, truth, 0.02, 10e6),
        "cpu_user_ns+cpu_system_ns = {:.4} s, the task's own CLOCK_PROCESS_CPUTIME_ID = {:.4} s: not within 2% + 10 ms; {}",
        measured / 1e9,
        truth / 1e9,
        out.describe()
    );
}

#[test]
fn usage_anon_memory_matches_a_known_allocation() {
    let sb = Sandbox::new();
    let out = sb.helper(&[], "alloc:64:1000");
    out.assert_code(0);
    let rss_anon = helper_value(&out, "rss_anon_bytes") as f64;
    let anon = out.num("mem_anon_bytes") as f64;
    eprintln!("anon: cgroup {anon} B, task RssAnon {rss_anon} B");
    assert!(
        rss_anon >= (64 * MIB) as f64,
        "the helper's RssAnon {rss_anon} is below its 64 MiB allocation"
    );
    assert!(
        within(anon, rss_anon, 0.02, 0.0),
        "mem_anon_bytes = {:.2} MiB, the task's RssAnon holding 64 MiB = {:.2} MiB: not within 2%; {}",
        anon / MIB as f64,
        rss_anon / MIB as f64,
        out.describe()
    );
}

#[test]
fn usage_page_cache_is_kept_out_of_anon() {
    let sb = Sandbox::new();
    let out = sb.sh(&[], "dd if=/dev/zero of=./big bs=1048576 count=64 2>/dev/null && cat ./big > /dev/null && sleep 0.5");
    out.assert_code(0);
    let file = out.num("mem_file_bytes");
    let anon = out.num("mem_anon_bytes");
    assert!(
        file >= 50 * MIB,
        "mem_file_bytes = {file}: a 64 MB file written and read must show as page cache; {}",
        out.describe()
    );
    assert!(
        anon < 16 * MIB,
        "mem_anon_bytes = {anon}: page cache must not count as anon; {}",
        out.describe()
    );
}

#[test]
fn usage_json_has_exactly_the_documented_keys() {
    let sb = Sandbox::new();
    let want_version = if in_vm() { 2 } else { 1 };
    let check = |usage: &Value, origin: &str, out: &Outcome| {
        let obj = usage
            .as_object()
            .unwrap_or_else(|| panic!("{origin}: usage is not an object; {}", out.describe()));
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = USAGE_KEYS.into_iter().collect();
        assert_eq!(keys, want, "{origin}: usage keys; {}", out.describe());
        for (k, v) in obj {
            let ok = match k.as_str() {
                "limitation" => v.is_null() || v.is_string(),
                _ => v.is_null() || v.is_number(),
            };
            assert!(
                ok,
                "{origin}: {k} = {v} must be a number or null; {}",
                out.describe()
            );
        }
        assert_eq!(
            obj["cgroup_version"],
            want_version,
            "{origin}: cgroup_version; {}",
            out.describe()
        );
        assert_eq!(
            obj["exit_code"],
            0,
            "{origin}: exit_code; {}",
            out.describe()
        );
        assert!(
            obj["limitation"].is_null(),
            "{origin}: limitation; {}",
            out.describe()
        );
        assert!(
            obj["wall_ns"].as_u64().is_some_and(|n| n > 0),
            "{origin}: wall_ns; {}",
            out.describe()
        );
    };
    let out = sb.sh(&[], "echo hello");
    out.assert_code(0);
    check(out.usage(), "--usage-json FILE", &out);
    // `-`: the JSON goes to stdout (the harness then passes no FILE).
    let out = sb.sh(&["--usage-json", "-"], "true");
    out.assert_code(0);
    let stdout_json: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--usage-json - did not print JSON on stdout ({e}); {}",
            out.describe()
        )
    });
    check(&stdout_json, "--usage-json -", &out);
}

// ---------------------------------------------------------------------------------
// --rootfs
// ---------------------------------------------------------------------------------

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox not found: install the Debian package busybox-static")
}

/// A minimal rootfs: static busybox, a few applet links, passwd/group with `app`.
fn make_rootfs() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("cella-rootfs-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    for dir in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        fs::create_dir(root.path().join(dir)).expect("mkdir");
    }
    fs::copy(busybox(), root.path().join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "ls", "id", "hostname", "mount", "touch", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet))
            .expect("symlink");
    }
    fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\napp:x:1234:1234:app:/:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(root.path().join("etc/group"), "root:x:0:\napp:x:1234:\n").expect("group");
    root
}

#[test]
fn rootfs_is_the_whole_view_and_read_only() {
    let sb = Sandbox::new();
    let root = make_rootfs();
    let root_arg = root.path().to_string_lossy().into_owned();
    let script = "ls /; echo ---; if [ -e /work ] || [ -e /usr ]; then echo HOST-VIS\"\"IBLE; fi; \
                  echo cmdline=$(tr '\\0' ' ' < /proc/1/cmdline); \
                  echo probe > /dev/null && echo devnull-ok; \
                  if touch /rootfs-probe 2>/dev/null; then echo ROOT-WRIT\"\"ABLE; fi; id -u";
    let out = sb.run(&["--rootfs", root_arg.as_str()], &["/bin/sh", "-c", script]);
    out.assert_code(0);
    assert!(
        !out.stdout.contains("HOST-VISIBLE"),
        "the host's tree is visible inside --rootfs; {}",
        out.describe()
    );
    assert!(
        out.stdout.lines().any(|l| l == "bin"),
        "ls / must list the rootfs; {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("cmdline=/bin/sh -c"),
        "/proc must be the task's own; {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("devnull-ok"),
        "/dev/null must work; {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("ROOT-WRITABLE"),
        "the rootfs must be read-only; {}",
        out.describe()
    );
    assert!(
        !root.path().join("rootfs-probe").exists(),
        "the task wrote into the rootfs"
    );
    assert!(
        out.stdout.lines().any(|l| l == "0"),
        "default user is root; {}",
        out.describe()
    );

    let out = sb.run(
        &["--rootfs", root_arg.as_str(), "--user", "app"],
        &["/bin/sh", "-c", "id -u"],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        "1234",
        "--user app must come from the rootfs's /etc/passwd; {}",
        out.describe()
    );
}
