//! `cella exec`: the processes of a task end with it, and a task outlives a launcher
//! killed with SIGKILL and is cleaned up after.

mod exec_harness;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use exec_harness::{
    CgroupGuard, KillOnDrop, Sandbox, all_cmdlines, cgroup_dirs_named, in_vm, leftovers,
    poll_until, run_dirs,
};

#[test]
fn daemonized_children_die_with_the_task() {
    let marker = format!("98765{}", std::process::id());
    // The task waits until the daemon runs `sleep MARKER` (up to 10 s), then lists
    // every process it can see.
    let script = format!(
        "(setsid sleep {marker} > /dev/null 2>&1 &); \
         up() {{ for p in /proc/[0-9]*; do \
           case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in \"sleep {marker} \") return 0;; esac; \
         done; return 1; }}; \
         i=0; until up || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done; \
         for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done; exit 0"
    );
    let out = Sandbox::run_sh(&[], &script);
    out.assert_code(0);
    let needle = format!("sleep {marker}");
    out.stdout_has(&needle, format!("the daemonized `{needle}` did not start"));
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

/// Whether the task of `run_dir` runs its command: the shim writes the task's pid to
/// `task.pid` after the clone, and that pid's command line starts with `command` once
/// the task has exec'd.
fn task_running(run_dir: &Path, command: &str) -> bool {
    let Some(pid) = fs::read_to_string(run_dir.join("task.pid"))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
    else {
        return false;
    };
    all_cmdlines()
        .iter()
        .any(|(p, cmdline)| *p == pid && cmdline.starts_with(command))
}

#[test]
fn task_survives_launcher_crash_and_is_cleaned_up() {
    let sb = Sandbox::new();
    let (mut command, args, cgroup, _) =
        sb.command(&[], &["sh", "-c", "sleep 2; echo done > ./marker"]);
    let _cgroup_guard = CgroupGuard(cgroup.clone());
    let log = fs::File::create(sb.out().join("cella.log")).expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let mut child = KillOnDrop(command.spawn().expect("start cella"));
    let pid = child.0.id();
    let run_dir = run_dirs(pid)[0].clone();
    let slow = if in_vm() { 6 } else { 1 };
    let log_text = || fs::read_to_string(sb.out().join("cella.log")).unwrap_or_default();
    let started = poll_until(Duration::from_secs(30), || {
        run_dir.exists()
            && !cgroup_dirs_named(&cgroup).is_empty()
            && task_running(&run_dir, "sh -c sleep 2")
    });
    assert!(
        started,
        "cella {} did not create {} and its cgroups and start the task; log: {}",
        args.join(" "),
        run_dir.display(),
        log_text()
    );
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
