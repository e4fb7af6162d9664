//! A launcher's own state (`ContainerizerConfig::hidden`: for the agent its work
//! directory with every sandbox, its TLS directory…) is invisible to a task without a
//! rootfs, while the task's own sandbox beneath it stays writable. Real shim, real
//! cgroups; the directories live under the target directory, not /tmp, so the task's
//! private /tmp cannot be what hides them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cella_containerizer::task::Stdio;
use cella_containerizer::{Containerizer, ContainerizerConfig, TaskConfig, TaskId};

#[test]
fn the_launchers_state_is_masked_and_the_sandbox_bound_back() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups, namespaces)"
    );
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/hidden_state-… → target/debug/cella-shim
    let shim = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("cella-shim");
    assert!(
        shim.exists(),
        "{} is missing: build the bins",
        shim.display()
    );
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
    let mut config = TaskConfig::new(vec!["sh".into(), "-c".into(), script], mine.clone());
    config.stdio = Stdio::Files {
        stdout: mine.join("stdout"),
        stderr: mine.join("stderr"),
    };
    let c = Containerizer::new(ContainerizerConfig {
        shim_path: shim,
        runtime_dir: state.path().join("run"),
        cgroup_root: Some(PathBuf::from(format!(
            "cella-test-{}-hidden",
            std::process::id()
        ))),
        cleanup_if_orphaned: false,
        hidden: vec![work.clone(), tls.clone()],
    })
    .expect("containerizer");
    let id = TaskId::new("hidden").expect("id");
    let mut running = c.launch(&id, &config).expect("launch");
    assert!(
        c.wait(&mut running, Duration::from_secs(60)),
        "the task ends"
    );
    let end = c.finish(running);
    c.destroy(&id);
    c.cgroups().remove_base_if_empty();
    let stdout = std::fs::read_to_string(mine.join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(mine.join("stderr")).unwrap_or_default();
    assert_eq!(end.status.code, Some(0), "{stdout} {stderr}");
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
