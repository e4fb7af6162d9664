//! A disk limit on an XFS filesystem with project quotas: the sandbox gets a project
//! id of its own, a launcher restarted meanwhile finds it again from the sandbox, and
//! destroying the task gives it back. Needs root, `mkfs.xfs` and a kernel with XFS
//! quotas (the VM of tests/vm); fails under `CELLA_TEST_STRICT=1` without them.

mod common;
#[path = "common/xfs.rs"]
mod xfs;

use std::time::Duration;

use cella_containerizer::isolators::{PROJECT_IDS, QuotaFs, project_of};
use cella_containerizer::task::Stdio;
use cella_containerizer::{Containerizer, Recovered, TaskConfig, TaskId};

const MIB: u64 = 1024 * 1024;

fn containerizer(runtime: &std::path::Path, cgroup_root: &str) -> Containerizer {
    common::containerizer(runtime, cgroup_root.as_ref())
}

#[test]
fn xfs_quota_project_id_is_recovered_after_a_restart_and_released_at_the_end() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let mount = match xfs::XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            xfs::cannot_run(&format!("no XFS filesystem with project quotas: {why}"));
            return;
        }
    };
    let runtime = tempfile::tempdir().expect("tempdir");
    let cgroup_root = format!("cella-test-{}-quota", std::process::id());
    let sandbox = mount.mount_point().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    let script =
        "dd if=/dev/zero of=./four bs=1048576 count=4 2>/dev/null; touch written; exec sleep 1000";
    let mut config = TaskConfig::new(
        vec!["sh".into(), "-c".into(), script.into()],
        sandbox.clone(),
    );
    config.resources.disk_bytes = Some(10 * MIB);
    config.stdio = Stdio::Files {
        stdout: sandbox.join("stdout"),
        stderr: sandbox.join("stderr"),
    };
    let id = TaskId::new("quota-task").expect("id");

    let first = containerizer(runtime.path(), &cgroup_root);
    let running = first.launch(&id, &config).expect("launch");
    let shim = (running.shim_pid(), running.shim_start_time());
    let project = project_of(&sandbox).expect("project of the sandbox");
    assert!(PROJECT_IDS.contains(&project), "sandbox project {project}");
    // The launcher goes away as a dying agent's does.
    drop(running);
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !sandbox.join("written").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let second = containerizer(runtime.path(), &cgroup_root);
    let Recovered::Running(mut running) = second.recover(&id, &config, Some(shim)) else {
        panic!("a live task must be re-attached");
    };
    let usage = second.sample(&mut running);
    let used = usage.disk_used_bytes.expect("disk usage");
    assert!(
        (4 * MIB..5 * MIB).contains(&used),
        "usage from the quota: {used}"
    );
    let fs = QuotaFs::of(&sandbox).expect("the mount enforces project quotas");
    assert!(fs.used(project).expect("quota") >= 4 * MIB);
    second.kill(&running).expect("kill");
    let _ = second.finish(running);
    assert_eq!(
        project_of(&sandbox).expect("project"),
        0,
        "the sandbox is in project 0 again"
    );
    assert_eq!(
        fs.used(project).expect("quota"),
        0,
        "nothing is charged to the id any more"
    );
    second.cgroups().remove_base_if_empty();
}
