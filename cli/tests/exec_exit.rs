//! `cella exec`: exit codes, bad input and stdio (see `exec_harness` for how every
//! launch is run and checked for leftovers).

mod exec_harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use exec_harness::Sandbox;

#[test]
fn exit_code_is_passed_through() {
    let sb = Sandbox::new();
    let out = sb.sh(&[], "exit 3");
    out.assert_code(3);
    out.check(out.usage()["exit_code"] == 3, "usage exit_code must be 3");
    out.check(out.usage()["signal"].is_null(), "usage signal must be null");
    sb.sh(&[], "true").assert_code(0);
}

#[test]
fn killed_by_signal_exits_128_plus_n() {
    let sb = Sandbox::new();
    // A real page fault: the kernel's SIGSEGV kills even a namespace's init.
    let out = sb.helper(&[], "segv");
    out.assert_code(128 + 11);
    out.check(
        out.usage()["signal"] == 11,
        "usage signal must be 11 (SIGSEGV)",
    );
    out.check(
        out.usage()["exit_code"].is_null(),
        "usage exit_code must be null for a signal death",
    );
}

#[test]
fn missing_command_exits_127_with_one_line() {
    let sb = Sandbox::new();
    let out = sb.run(&[], &["cella-no-such-command-xyz"]);
    out.assert_code(127);
    let lines = out.stderr_lines();
    out.check_eq(lines.len(), 1, "expected a one-line reason on stderr");
    out.check(
        lines[0].contains("cella-no-such-command-xyz"),
        "the reason must name the command",
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
    out.stdout_lacks("should-not-run", "the file must not run");
    out.check_eq(
        out.stderr_lines().len(),
        1,
        "expected a one-line reason on stderr",
    );
}

/// Exit 2, a message naming the option, nothing created, nothing run.
#[test]
fn bad_input_exits_2_and_creates_nothing() {
    let sb = Sandbox::new();
    let bad_profile = sb.write_out("bad-seccomp.json", "{ this is not json");
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

#[test]
fn stdio_is_passed_through() {
    let sb = Sandbox::new();
    let input = b"line one\nline two\n";
    let out = sb.run_with_stdin(&[], &["sh", "-c", "cat; echo to-stderr >&2"], Some(input));
    out.assert_code(0);
    out.check_eq(
        out.stdout.as_str(),
        "line one\nline two\n",
        "stdin piped into cat must come out on stdout",
    );
    out.stderr_has("to-stderr", "stderr must be passed through");
    out.stdout_lacks("to-stderr", "stderr must stay separate from stdout");
}
