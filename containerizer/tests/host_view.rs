//! What a task without a rootfs reaches of the host, as a launcher with files for
//! stdout and stderr (the agent) starts it. Real shim, real cgroups; the directories
//! live under the target directory, not /tmp, so the task's private /tmp cannot be
//! what hides them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cella_containerizer::task::Stdio;
use cella_containerizer::{Containerizer, ContainerizerConfig, TaskConfig, TaskId};

fn shim() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (cgroups, namespaces)"
    );
    common::shim_path()
}

/// Runs `sh -c script` in `sandbox` with `hidden`: its exit code, stdout, stderr.
fn run(
    name: &str,
    sandbox: &Path,
    hidden: Vec<PathBuf>,
    script: String,
) -> (Option<i32>, String, String) {
    let runtime = tempfile::tempdir().expect("runtime dir");
    let mut config = TaskConfig::new(
        vec!["sh".into(), "-c".into(), script],
        sandbox.to_path_buf(),
    );
    config.stdio = Stdio::Files {
        stdout: sandbox.join("stdout"),
        stderr: sandbox.join("stderr"),
    };
    let c = Containerizer::new(ContainerizerConfig {
        shim_path: shim(),
        runtime_dir: runtime.path().join("run"),
        cgroup_root: Some(PathBuf::from(format!(
            "cella-test-{}-{name}",
            std::process::id()
        ))),
        cleanup_if_orphaned: false,
        hidden,
        systemd_slice: None,
    })
    .expect("containerizer");
    let id = TaskId::new(name).expect("id");
    let mut running = c.launch(&id, &config).expect("launch");
    let ended = c.wait(&mut running, Duration::from_secs(60));
    let end = c.finish(running);
    c.destroy(&id);
    c.cgroups().remove_base_if_empty();
    assert!(ended, "the task must end");
    let stdout = std::fs::read_to_string(sandbox.join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(sandbox.join("stderr")).unwrap_or_default();
    (end.status.code, stdout, stderr)
}

#[test]
fn stdin_reaches_nothing_of_the_hosts_tree() {
    let sandbox = tempfile::tempdir().expect("sandbox");
    // Mode 666 is /dev/null's own: nothing changes on the host even if it worked.
    let script =
        "if err=$(chmod 666 /proc/self/fd/0 2>&1); then echo chmod-ok; else echo \"$err\"; fi";
    let (code, stdout, stderr) = run("stdin", sandbox.path(), Vec::new(), script.to_string());
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(
        stdout.contains("Read-only file system"),
        "chmod through fd 0 must fail with EROFS (the task's own /dev/null): {stdout}"
    );
}

#[test]
fn the_launchers_state_is_masked_and_the_sandbox_bound_back() {
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("target tmp dir");
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("state dir");
    let tls = state.path().join("tls");
    let work = state.path().join("work");
    let mine = work.join("sandboxes/mine");
    let other = work.join("sandboxes/other");
    for dir in [&tls, &mine, &other] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(tls.join("agent-key.pem"), "PRIVATE KEY").expect("key");
    std::fs::write(other.join("stdout"), "another task's output").expect("other");
    let script = format!(
        "cat {tls}/agent-key.pem; ls -A {work}/sandboxes; ls -A {tls} | wc -l; \
         echo own > ./written",
        tls = tls.display(),
        work = work.display()
    );
    let (code, stdout, stderr) = run("hidden", &mine, vec![work.clone(), tls.clone()], script);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(
        !stdout.contains("PRIVATE KEY"),
        "the key was read: {stdout}"
    );
    assert!(
        !stdout.contains("other"),
        "another sandbox is visible: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "0"),
        "the TLS directory must look empty: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("written")).unwrap_or_default(),
        "own\n",
        "the task's own sandbox must stay writable"
    );
}
