//! Disk and process limits through the agent: the node's defaults apply to a task that
//! sets none, and on an XFS work directory with project quotas a task writing as fast
//! as it can is held to its limit and reported `DISK_LIMIT`. The XFS test needs
//! `mkfs.xfs` and a kernel with XFS quotas (the VM of tests/vm); it fails under
//! `CELLA_TEST_STRICT=1` without them.

mod common;
#[path = "../../containerizer/tests/common/xfs.rs"]
mod xfs;

use std::os::unix::fs::MetadataExt;

use cella_proto::v1;
use common::{Cluster, task};

const MIB: u64 = 1024 * 1024;

/// Bytes allocated in the files directly in `dir`.
fn allocated(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_sets_no_limits_gets_the_nodes_defaults() {
    let cluster = Cluster::start_with(|c| {
        c.tasks.default_disk_bytes = 5 * MIB;
        c.tasks.default_pids = 20;
    })
    .await;
    let agent_id = cluster.wait_registered().await;
    let mut s = cluster.scheduler("").await;
    // Neither disk nor pids_limit set (task() asks for no disk).
    let forks = "for i in $(seq 1 40); do sleep 5 & done; wait";
    let writes = "for i in $(seq 1 20); do dd if=/dev/zero of=./f$i bs=1048576 count=1 2>/dev/null; sleep 0.1; done; sleep 5";
    s.launch(
        &agent_id,
        vec![
            task("forks", &["sh", "-c", forks], 64 << 20),
            task("writes", &["sh", "-c", writes], 64 << 20),
        ],
    )
    .await;
    let end = s.wait_terminal("writes").await;
    assert_eq!(end.reason(), v1::Reason::DiskLimit, "{}", end.message);
    let sandbox = cella_agent::paths::sandbox_dir(&cluster.work_dir, "writes");
    assert!(!sandbox.join("f20").exists(), "the task wrote all 20 MiB");
    let end = s.wait_terminal("forks").await;
    // The shell cannot start its 40 sleeps within 20 processes.
    assert_ne!(end.state(), v1::TaskState::TaskFinished, "{}", end.message);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_quota_holds_a_fast_writer_through_the_agent() {
    let mount = match xfs::XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            xfs::cannot_run(&format!("no XFS filesystem with project quotas: {why}"));
            return;
        }
    };
    let work_dir = mount.mount_point().join("work");
    let cluster = Cluster::start_with(|c| c.work_dir = work_dir.clone()).await;
    let agent_id = cluster.wait_registered().await;
    let mut s = cluster.scheduler("").await;
    let mut info = task(
        "dd",
        &["sh", "-c", "dd if=/dev/zero of=./big bs=1048576 count=100"],
        64 << 20,
    );
    info.resources.as_mut().unwrap().disk_bytes = 10 * MIB;
    s.launch(&agent_id, vec![info]).await;
    let end = s.wait_terminal("dd").await;
    assert_eq!(end.reason(), v1::Reason::DiskLimit, "{}", end.message);
    let sandbox = cella_agent::paths::sandbox_dir(&cluster.work_dir, "dd");
    let written = allocated(&sandbox);
    assert!(
        written <= 11 * MIB,
        "{written} bytes in the sandbox, more than 1 MiB past the 10 MiB limit"
    );
    eprintln!("agent, xfs quota: {written} bytes written into a 10 MiB limit");
    cluster.stop().await;
}
