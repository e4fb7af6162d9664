//! `cella exec`: capabilities, no_new_privs, seccomp, `--user`, and the descriptors
//! a task inherits.

mod exec_harness;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use exec_harness::Sandbox;

/// The default capability set as /proc/<pid>/status shows it: Docker's without
/// CAP_NET_RAW.
const DEFAULT_CAPS: &str = "00000000a80405fb";
const CAP_SYS_ADMIN_BIT: u32 = 21;
const STATUS_SCRIPT: &str =
    "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id -u";

fn hex_caps(mask: u64) -> String {
    format!("{mask:016x}")
}

#[test]
fn default_capabilities_no_new_privs_and_seccomp() {
    let out = Sandbox::run_sh(&[], STATUS_SCRIPT);
    out.assert_code(0);
    out.check_eq(
        out.status_field("CapEff").as_str(),
        DEFAULT_CAPS,
        "CapEff must be the default set",
    );
    out.check_eq(
        out.status_field("CapBnd").as_str(),
        DEFAULT_CAPS,
        "CapBnd must be the default set",
    );
    out.check_eq(out.status_field("NoNewPrivs").as_str(), "1", "no_new_privs");
    out.check_eq(
        out.status_field("Seccomp").as_str(),
        "2",
        "a seccomp filter must be loaded",
    );
}

#[test]
fn cap_drop_all_and_cap_add() {
    let sb = Sandbox::new();
    let out = sb.sh(&["--cap-drop", "ALL"], STATUS_SCRIPT);
    out.assert_code(0);
    out.check_eq(out.status_field("CapEff"), hex_caps(0), "--cap-drop ALL");
    let out = sb.sh(&["--cap-add", "SYS_ADMIN"], STATUS_SCRIPT);
    out.assert_code(0);
    let want =
        hex_caps(u64::from_str_radix(DEFAULT_CAPS, 16).unwrap_or(0) | (1 << CAP_SYS_ADMIN_BIT));
    out.check_eq(
        out.status_field("CapEff"),
        want,
        "--cap-add SYS_ADMIN must add bit 21",
    );
}

#[test]
fn seccomp_denies_with_eperm_and_unconfined_lifts_it() {
    let sb = Sandbox::new();
    // unshare(CLONE_NEWUSER) needs no capability: only the seccomp profile refuses it.
    let out = sb.sh(&[], "unshare -U true; echo rc=$?");
    out.stdout_has("rc=1", "unshare must fail under the default profile");
    out.stderr_has(
        "Operation not permitted",
        "the denied syscall must fail with EPERM",
    );
    let out = sb.sh(
        &["--seccomp", "unconfined"],
        &format!("{STATUS_SCRIPT}; unshare -U true && echo unshare-ok"),
    );
    out.assert_code(0);
    out.check_eq(
        out.status_field("Seccomp").as_str(),
        "0",
        "--seccomp unconfined: no filter",
    );
    out.stdout_has("unshare-ok", "unconfined: the same syscall must succeed");
}

#[test]
fn custom_seccomp_profile_denies_mkdir() {
    let sb = Sandbox::new();
    let json = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 }
        ]
    }"#;
    let profile = sb.write_out("no-mkdir.json", json);
    let out = sb.sh(
        &["--seccomp", &profile],
        "touch ./file && echo touch-ok; mkdir ./dir && echo mkdir-ok; true",
    );
    out.assert_code(0);
    out.stdout_has("touch-ok", "the profile allows everything else");
    out.stdout_lacks("mkdir-ok", "mkdir must be denied");
    out.stderr_has(
        "Permission denied",
        "mkdir must fail with EACCES (errnoRet 13)",
    );
    assert!(!sb.path().join("dir").exists(), "the directory was created");
}

/// A profile that kills (here: every call, and mkdir only) ends the command with
/// SIGSYS, and cella says so and how to find the call, instead of a bare 159.
#[test]
fn a_profile_that_kills_is_named_with_a_hint() {
    let sb = Sandbox::new();
    for (name, json) in [
        ("deny-all.json", r#"{ "defaultAction": "SCMP_ACT_KILL" }"#),
        (
            "kill-mkdir.json",
            r#"{ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                { "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS" } ] }"#,
        ),
    ] {
        let profile = sb.write_out(name, json);
        let out = sb.run(&["--seccomp", &profile], &["mkdir", "./dir"]);
        out.assert_code(128 + libc::SIGSYS);
        out.stderr_has(
            &format!("killed by seccomp (SIGSYS): the seccomp profile {profile} denies"),
            "stderr must name seccomp and the profile",
        );
        out.stderr_has("syscall=", "stderr must say how to find the system call");
    }
}

/// A profile that refuses every call with an errno lets `execve` through but not the
/// loader's first calls: the command dies of SIGSEGV before its own code runs, and
/// cella says that the profile stopped it, naming the calls.
#[test]
fn a_profile_that_denies_start_up_is_named() {
    let sb = Sandbox::new();
    let profile = sb.write_out(
        "deny-all-errno.json",
        r#"{ "defaultAction": "SCMP_ACT_ERRNO" }"#,
    );
    let out = sb.run(&["--seccomp", &profile], &["true"]);
    out.check(
        out.code == 128 + libc::SIGSEGV,
        "the loader dies of SIGSEGV under a deny-all profile",
    );
    out.stderr_has(
        &format!("the seccomp profile {profile} denies brk, mmap"),
        "stderr must name the profile and the start-up calls it denies",
    );
    out.stderr_has(
        "stopped the command before it could start",
        "stderr must say the profile stopped the command",
    );
}

#[test]
fn user_option_drops_root_and_capabilities() {
    for user in ["65534", "nobody"] {
        let out = Sandbox::run_sh(&["--user", user], STATUS_SCRIPT);
        out.assert_code(0);
        out.check(
            out.stdout.lines().any(|l| l == "65534"),
            format!("--user {user}: id -u must print 65534"),
        );
        out.check_eq(
            out.status_field("CapEff"),
            hex_caps(0),
            format!("--user {user}: no effective capabilities"),
        );
    }
}

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
    out.check_eq(
        fds,
        want,
        format!("only fds 0, 1, 2 may reach the task (test fd {raw} leaked?)"),
    );
    drop(leaked);
}
