//! Real checks of seccomp and capabilities: each check runs in a child process (this
//! test binary run again with `CELLA_SECURITY_CHILD` set, filtered to the same test),
//! which installs the filter / applies the mask and then tries syscalls. The parent
//! only asserts that the child succeeded and shows its output.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cella_containerizer::{capabilities, seccomp};

const CHILD_ENV: &str = "CELLA_SECURITY_CHILD";
const PROFILE_ENV: &str = "CELLA_SECURITY_PROFILE";

/// In the parent: runs test `name` in a child and asserts it passed. In the child:
/// returns true, and the caller runs the checks.
fn in_child(name: &str, extra_env: &[(&str, &Path)]) -> bool {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawning the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{stdout}");
    false
}

/// Runs `command` and asserts that it succeeds (its output in the message); returns
/// its standard output.
fn stdout_of_success(command: &mut Command) -> String {
    let out = command.output().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// [`in_child`] for a test that needs root: true in the child when it runs as root.
fn in_child_as_root(name: &str) -> bool {
    in_child(name, &[]) && running_as_root()
}

/// Whether the test may go on: true as root. Otherwise it cannot run; under
/// `CELLA_TEST_STRICT=1` (scripts/test.sh) that fails it, else it says so and skips.
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CELLA_TEST_STRICT").is_none_or(|v| v != "1"),
        "this test needs root (CELLA_TEST_STRICT=1: a test that cannot run fails instead of skipping)"
    );
    println!("not root: skipped");
    false
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn no_new_privs() {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "no_new_privs: {}", std::io::Error::last_os_error());
}

/// A raw syscall returning (rc, errno).
fn sys(rc: libc::c_long) -> (libc::c_long, i32) {
    (rc, if rc < 0 { errno() } else { 0 })
}

#[test]
fn default_profile_denies_dangerous_syscalls_and_allows_normal_ones() {
    if !in_child(
        "default_profile_denies_dangerous_syscalls_and_allows_normal_ones",
        &[],
    ) {
        return;
    }
    no_new_privs();
    seccomp::install(&seccomp::default_program()).expect("install");

    // Denied: EPERM.
    let src = c"none";
    let target = c"/tmp";
    let fstype = c"tmpfs";
    // SAFETY: valid NUL-terminated strings, null data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!((rc, errno()), (-1, libc::EPERM), "mount");
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
    assert_eq!((rc, errno()), (-1, libc::EPERM), "unshare");
    // SAFETY: umount2 with a valid string; denied before the kernel looks at it.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    assert_eq!((rc, errno()), (-1, libc::EPERM), "umount2");
    // SAFETY: keyctl/bpf/kexec with harmless arguments; all denied by the filter.
    unsafe {
        assert_eq!(
            sys(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)).1,
            libc::EPERM,
            "keyctl"
        );
        assert_eq!(
            sys(libc::syscall(libc::SYS_bpf, 0, 0, 0)).1,
            libc::EPERM,
            "bpf"
        );
        assert_eq!(
            sys(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)).1,
            libc::EPERM,
            "kexec_load"
        );
        assert_eq!(
            sys(libc::syscall(libc::SYS_setns, -1, 0)).1,
            libc::EPERM,
            "setns"
        );
    }

    // clone3: ENOSYS so that libc falls back to clone.
    // SAFETY: clone3 is refused by the filter before the kernel reads the (null) args.
    let r = sys(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) });
    assert_eq!(r, (-1, libc::ENOSYS), "clone3");

    // clone with a namespace flag: EPERM (argument condition).
    let flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
    // SAFETY: fork-like clone (no CLONE_VM, null stack); if it ever succeeded, the
    // child exits at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: leaving the unexpected child without running any Rust code.
        unsafe { libc::_exit(0) };
    }
    assert_eq!((rc, errno()), (-1, libc::EPERM), "clone(CLONE_NEWUSER)");

    // personality: query and PER_LINUX allowed, other personas denied.
    // SAFETY: personality takes an integer.
    unsafe {
        assert!(libc::personality(0xffff_ffff) >= 0, "personality query");
        assert_eq!(libc::personality(0), 0, "personality(PER_LINUX)");
        assert_eq!(
            (libc::personality(0x0006), errno()),
            (-1, libc::EPERM),
            "PER_BSD"
        );
    }

    // AF_VSOCK denied, other sockets fine.
    // SAFETY: socket takes integers; the descriptor is closed.
    unsafe {
        assert_eq!(
            (libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0), errno()),
            (-1, libc::EPERM)
        );
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(
            fd >= 0,
            "AF_INET socket: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }

    // Normal syscalls work.
    // SAFETY: getpid has no preconditions.
    assert!(unsafe { libc::getpid() } > 0);
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("open/read");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // Threads (glibc tries clone3, then clone) and processes (posix_spawn).
    let t = std::thread::spawn(|| 6 * 7).join().expect("thread");
    assert_eq!(t, 42);
    let st = Command::new("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .expect("spawn");
    assert_eq!(st.code(), Some(3));
    // Ordinary programs run normally under the profile.
    let stdout = stdout_of_success(Command::new("/bin/sh").args([
        "-c",
        "set -e; d=$(mktemp -d); cd \"$d\"; ls / >/dev/null; date >/dev/null; \
         echo hi > f; cat f; mkdir sub; rmdir sub; rm f; cd /; rmdir \"$d\"; \
         sleep 0.01 & wait; grep Seccomp: /proc/self/status",
    ]));
    assert!(stdout.starts_with("hi\nSeccomp:\t2"), "{stdout}");
    println!("default profile: denied and allowed syscalls behave");
}

#[test]
fn sys_admin_opens_namespace_syscalls() {
    if !in_child_as_root("sys_admin_opens_namespace_syscalls") {
        return;
    }
    let mask = capabilities::default_mask() | (1 << 21); // CAP_SYS_ADMIN
    let program = seccomp::default_program_for(mask).expect("compile");
    no_new_privs();
    seccomp::install(&program).expect("install");
    // SAFETY: unshare takes flags only; the new UTS namespace is this child's alone.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
    assert_eq!(
        rc,
        0,
        "unshare with CAP_SYS_ADMIN: {}",
        std::io::Error::last_os_error()
    );
    // clone3 is allowed too (no ENOSYS), proven by glibc creating a thread either way.
    assert_eq!(std::thread::spawn(|| 1).join().expect("thread"), 1);
}

const MKDIR_PROFILE: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
        {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
         "args": [{"index": 0, "value": 7, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ"}]}
    ]
}"#;

#[test]
fn custom_profile_denies_mkdir_with_eacces() {
    const NAME: &str = "custom_profile_denies_mkdir_with_eacces";
    if std::env::var(CHILD_ENV).as_deref() != Ok(NAME) {
        let dir = tempfile::tempdir().expect("tempdir");
        in_child(NAME, &[(PROFILE_ENV, &dir.path().join("no-mkdir.json"))]);
        return;
    }
    // Child: the parent's temp dir is where the profile lives.
    let path = std::env::var_os(PROFILE_ENV).expect("profile path");
    let path = Path::new(&path);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(MKDIR_PROFILE.as_bytes()))
        .expect("write profile");
    let program = seccomp::load_profile(path).expect("compile custom profile");
    let target = path.with_file_name("new-dir");

    no_new_privs();
    seccomp::install(&program).expect("install");
    let err = std::fs::create_dir(&target).expect_err("mkdir must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert!(!target.exists());
    // Other file operations still work.
    std::fs::write(path.with_file_name("file"), b"ok").expect("write");
    assert_eq!(
        std::fs::read(path.with_file_name("file")).expect("read"),
        b"ok"
    );

    // Argument conditions: EQ and MASKED_EQ.
    // SAFETY: getpriority/umask take integers.
    unsafe {
        assert_eq!(
            sys(libc::syscall(libc::SYS_getpriority, 2, 0)),
            (-1, libc::EINVAL),
            "PRIO_USER"
        );
        assert!(
            libc::syscall(libc::SYS_getpriority, 0, 0) >= 0,
            "PRIO_PROCESS"
        );
        assert!(libc::syscall(libc::SYS_umask, 0o022) >= 0, "umask 022");
        assert_eq!(
            sys(libc::syscall(libc::SYS_umask, 0o077)),
            (-1, libc::EPERM),
            "umask 077"
        );
    }
}

/// Why loading a profile `name` that holds `text` fails (printed for the test's log).
fn profile_error(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    let msg = seccomp::load_profile(&path).expect_err(name).to_string();
    println!("{msg}");
    msg
}

#[test]
fn malformed_profiles_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\",\n  \"syscalls\": [\n    {\"names\": [\"read\"],}\n  ]\n}\n")
        .expect("write");
    let err = seccomp::load_profile(&bad).expect_err("malformed");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, seccomp::SeccompError::Profile { .. }));
    assert!(
        msg.contains("bad.json") && msg.contains("line 4 column"),
        "{msg}"
    );

    for (name, text, says) in [
        (
            "type.json",
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "EPERM"}"#,
            ["type.json", "invalid type"],
        ),
        (
            "action.json",
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            ["syscalls[1].action", "SCMP_ACT_NOTIFY"],
        ),
    ] {
        let msg = profile_error(dir.path(), name, text);
        assert!(says.iter().all(|s| msg.contains(s)), "{msg}");
    }

    let missing = dir.path().join("missing.json");
    let msg = seccomp::load_profile(&missing)
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("missing.json"), "{msg}");
}

/// Reads a hex capability line (`CapEff:` …) of this thread.
fn cap_line(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing"));
    u64::from_str_radix(line.trim(), 16).expect("hex")
}

#[test]
fn capabilities_are_applied_exactly() {
    if !in_child_as_root("capabilities_are_applied_exactly") {
        return;
    }
    let mask = capabilities::resolve(&[], &["NET_RAW".into()]).expect("resolve");
    assert_eq!(mask, capabilities::default_mask() & !(1 << 13));
    capabilities::apply(mask).expect("apply");
    // Capabilities are per thread: read this thread's view.
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapBnd:"] {
        assert_eq!(
            cap_line(&status, key),
            mask,
            "{key} is {:?}, wanted {:?}",
            capabilities::names(cap_line(&status, key)),
            capabilities::names(mask)
        );
    }
    assert_eq!(cap_line(&status, "CapAmb:"), 0);
    println!("caps: {}", capabilities::names(mask).join(","));
    // Without CAP_NET_RAW, raw sockets are refused.
    // SAFETY: socket takes integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert_eq!(
        (fd, errno()),
        (-1, libc::EPERM),
        "raw socket without CAP_NET_RAW"
    );
}

#[test]
fn runtime_compile_time_of_the_default_profile() {
    let mask = capabilities::default_mask();
    let start = Instant::now();
    let mut len = 0;
    let rounds = 20u32;
    for _ in 0..rounds {
        len = seccomp::compile_profile(seccomp::DEFAULT_PROFILE_JSON, mask)
            .expect("compile")
            .len();
    }
    let each = start.elapsed() / rounds;
    println!(
        "compiling the default profile at run time: {each:?} per compile ({len} instructions); \
         the build-time program is loaded for free"
    );
    assert_eq!(len, seccomp::default_program().len());
}

/// Splits a packed instruction (`code<<48 | jt<<40 | jf<<32 | k`) into a `sock_filter`.
fn unpack(ins: u64) -> libc::sock_filter {
    let b = ins.to_be_bytes();
    libc::sock_filter {
        code: u16::from_be_bytes([b[0], b[1]]),
        jt: b[2],
        jf: b[3],
        k: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    }
}

/// Nanoseconds the kernel takes to load `program` (`prctl(PR_SET_SECCOMP)` alone, timed
/// in a forked child that exits right after).
fn load_time_ns(program: &[u64]) -> u64 {
    let mut filter: Vec<libc::sock_filter> = program.iter().map(|i| unpack(*i)).collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("length"),
        filter: filter.as_mut_ptr(),
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only makes raw syscalls (prctl, clock_gettime, write, _exit),
    // which are async-signal-safe, and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; `prog` points into `filter`, alive in the child's copy.
        unsafe {
            let mut t0 = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut t1 = t0;
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t0);
            let rc = libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            );
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t1);
            let ns: i64 = if rc == 0 {
                (t1.tv_sec - t0.tv_sec) * 1_000_000_000 + (t1.tv_nsec - t0.tv_nsec)
            } else {
                -1
            };
            let bytes = ns.to_le_bytes();
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    let mut bytes = [0u8; 8];
    // SAFETY: reading into a local buffer; closing our own descriptors; reaping our child.
    unsafe {
        libc::close(fds[1]);
        let n = libc::read(fds[0], bytes.as_mut_ptr().cast(), bytes.len());
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(n, 8, "the child reported nothing");
    }
    let ns = i64::from_le_bytes(bytes);
    u64::try_from(ns).expect("prctl(PR_SET_SECCOMP) failed in the child")
}

#[test]
fn kernel_load_time_of_the_default_program() {
    let program = seccomp::default_program();
    let mut times: Vec<u64> = (0..50).map(|_| load_time_ns(&program)).collect();
    times.sort_unstable();
    println!(
        "default program: {} instructions; kernel load time (prctl, 50 forked children): \
         median {:.1} µs, min {:.1} µs, max {:.1} µs",
        program.len(),
        times[25] as f64 / 1000.0,
        times[0] as f64 / 1000.0,
        times[49] as f64 / 1000.0,
    );
}

#[test]
fn default_program_runs_a_busybox_pipeline() {
    if !in_child("default_program_runs_a_busybox_pipeline", &[]) {
        return;
    }
    let program = seccomp::default_program();
    println!("default program: {} instructions", program.len());
    no_new_privs();
    seccomp::install(&program).expect("install");

    // x32 numbers (bit 30) get the default action, EPERM, even for allowed syscalls.
    // SAFETY: an x32 getpid, refused by the filter before the kernel looks at it.
    let r = sys(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) });
    assert_eq!(r, (-1, libc::EPERM), "x32 getpid");

    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let script = match busybox {
        Some(bb) => format!(
            "set -e; bb={bb}; \
             $bb seq 1 5000 | $bb grep 7 | $bb sort -rn | $bb head -n 3 | $bb tr '\\n' ' '; \
             echo; \
             d=$($bb mktemp -d); echo cella > \"$d/f\"; $bb sha256sum < \"$d/f\" | $bb cut -c1-12; \
             $bb rm -r \"$d\"; \
             ($bb sleep 0.01; echo sub) & wait; \
             $bb grep Seccomp: /proc/self/status"
        ),
        None => "set -e; seq 1 5000 | grep 7 | sort -rn | head -n 3 | tr '\\n' ' '; echo; \
                 d=$(mktemp -d); echo cella > \"$d/f\"; sha256sum < \"$d/f\" | cut -c1-12; \
                 rm -r \"$d\"; (sleep 0.01; echo sub) & wait; grep Seccomp: /proc/self/status"
            .to_owned(),
    };
    let shell = busybox.map_or_else(|| vec!["/bin/sh"], |bb| vec![bb, "sh"]);
    let stdout = stdout_of_success(
        Command::new(shell[0])
            .args(&shell[1..])
            .args(["-c", &script]),
    );
    // sha256("cella\n") starts with these 12 hex digits.
    let digest = {
        let out = Command::new("sh")
            .args(["-c", "echo cella | sha256sum | cut -c1-12"])
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        stdout,
        format!("4997 4987 4979 \n{digest}\nsub\nSeccomp:\t2\n"),
        "pipeline output"
    );
    println!("busybox pipeline under the default program: {stdout}");
}
