//! The harness of the `cella exec` integration tests (`exec_*.rs`): real processes,
//! real cgroups, real namespaces, no mocks. The tests run as root on the host (cgroup
//! v1, hybrid mode) and, unchanged, in the VM of `tests/vm/` (cgroup v2,
//! `CELLA_IN_VM=1`, busybox as the only userland), so tasks only use commands busybox
//! has.
//!
//! Every `cella exec` runs in a fresh temporary working directory with its own
//! `--cgroup-root cella-test-<pid>-<n>` (relative: beneath this process's cgroup), so
//! tests can run in parallel (threads under `cargo test`, processes under nextest);
//! after each run the harness checks that no cgroup directory of that name and no run
//! directory of the launch is left.

// Each test binary uses the part of the harness its topic needs.
#![allow(dead_code)]

pub mod helper;

use std::fmt::{Debug, Display};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where `cella exec` keeps its run directories (`RUNTIME_DIR` in exec.rs).
pub const RUNTIME_DIR: &str = "/run/cella/exec";
pub const MIB: u64 = 1024 * 1024;

pub static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn in_vm() -> bool {
    std::env::var_os("CELLA_IN_VM").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Generous: the VM emulates its CPU in software.
pub fn run_timeout() -> Duration {
    if in_vm() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(120)
    }
}

pub fn cella_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cella"))
}

pub fn shim_bin() -> PathBuf {
    let shim = cella_bin().with_file_name("cella-shim");
    assert!(
        shim.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first",
        shim.display()
    );
    shim
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the cella exec tests need root (they create cgroups, namespaces and mounts): run them as root"
    );
}

/// Run directories a launch by the cella process `pid` may use.
pub fn run_dirs(pid: u32) -> [PathBuf; 2] {
    [
        Path::new(RUNTIME_DIR)
            .join("tasks")
            .join(format!("exec-{pid}")),
        Path::new(RUNTIME_DIR).join(format!("exec-{pid}")),
    ]
}

/// Every directory named `name` anywhere under /sys/fs/cgroup.
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
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
pub fn leftovers(cgroup: &str, pid: u32) -> Vec<String> {
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
pub fn all_cmdlines() -> Vec<(u32, String)> {
    // A process that exits meanwhile, or whose command line is not UTF-8 (none of
    // the tests' is), is left out.
    procfs::process::all_processes()
        .expect("read /proc")
        .flatten()
        .filter_map(|p| Some((u32::try_from(p.pid()).ok()?, p.cmdline().ok()?.join(" "))))
        .collect()
}

pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
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
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts `command` with its standard streams closed.
    pub fn spawn_quiet(command: &mut std::process::Command) -> Self {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Self(command.spawn().expect("start cella exec"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes (rmdir, deepest first) every cgroup directory named like a launch's
/// `--cgroup-root` when dropped, so a failing test leaves nothing on the host. It
/// only removes empty cgroups; the assertions report what cella left.
pub struct CgroupGuard(pub String);

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
pub struct Sandbox {
    dir: tempfile::TempDir,
    out: tempfile::TempDir,
}

/// The result of one `cella exec`.
pub struct Outcome {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub usage: Option<Value>,
}

impl Outcome {
    pub fn describe(&self) -> String {
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

    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "expected exit code {code}; {}",
            self.describe()
        );
        self
    }

    pub fn usage(&self) -> &Value {
        self.usage
            .as_ref()
            .unwrap_or_else(|| panic!("no usage JSON was written; {}", self.describe()))
    }

    /// A numeric usage figure; panics if it is missing or null.
    pub fn num(&self, key: &str) -> u64 {
        self.usage()
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("usage key {key} is not a number; {}", self.describe()))
    }

    pub fn limitation(&self) -> Option<&str> {
        self.usage().get("limitation").and_then(Value::as_str)
    }

    pub fn cpu_ns(&self) -> u64 {
        self.num("cpu_user_ns") + self.num("cpu_system_ns")
    }

    /// `/proc/self/status` field `name` as the task printed it (`grep` output).
    pub fn status_field(&self, name: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} line in the task's output; {}", self.describe()))
    }

    /// Asserts `ok`; the message says `what` and shows the whole run.
    #[track_caller]
    pub fn check(&self, ok: bool, what: impl Display) {
        assert!(ok, "{what}; {}", self.describe());
    }

    /// Asserts `got == want`; the message says `what` and shows the whole run.
    #[track_caller]
    pub fn check_eq<T: PartialEq + Debug>(&self, got: T, want: T, what: impl Display) {
        assert_eq!(got, want, "{what}; {}", self.describe());
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str, what: impl Display) {
        self.check(self.stdout.contains(needle), what);
    }

    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str, what: impl Display) {
        self.check(!self.stdout.contains(needle), what);
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str, what: impl Display) {
        self.check(self.stderr.contains(needle), what);
    }

    /// The lines of stderr that say something (a launch failure's reason).
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl Sandbox {
    pub fn new() -> Self {
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

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A private directory for the test's own files (usage JSON, profiles, volumes).
    pub fn out(&self) -> &Path {
        self.out.path()
    }

    /// Writes `contents` to `name` in [`Sandbox::out`] and returns its path as an
    /// argument (a seccomp profile, say).
    pub fn write_out(&self, name: &str, contents: &str) -> String {
        let path = self.out().join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// `cella exec --cgroup-root <unique> --usage-json <file> OPTS -- CMD` in the
    /// sandbox, not yet started (no `--usage-json <file>` if OPTS has its own).
    pub fn command<S: AsRef<str>>(
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
    pub fn run_with_stdin<S: AsRef<str>>(
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

    pub fn run<S: AsRef<str>>(&self, opts: &[S], cmd: &[S]) -> Outcome {
        self.run_with_stdin(opts, cmd, None)
    }

    /// Runs `sh -c script` with `opts` in a sandbox of its own, removed once the
    /// task has ended.
    pub fn run_sh(opts: &[&str], script: &str) -> Outcome {
        Sandbox::new().sh(opts, script)
    }

    pub fn sh(&self, opts: &[&str], script: &str) -> Outcome {
        self.run(opts, &["sh", "-c", script])
    }

    pub fn helper(&self, opts: &[&str], mode: &str) -> Outcome {
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
        let (mut all, cmd) = helper::helper_task(&visible, mode);
        all.extend(opts.iter().map(|s| s.to_string()));
        self.run(&all, &cmd)
    }
}

pub fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox not found: install the Debian package busybox-static")
}

/// A minimal rootfs: static busybox, a few applet links, passwd/group with `app`.
pub fn make_rootfs() -> tempfile::TempDir {
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
