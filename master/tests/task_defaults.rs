//! The cluster's default limits: a task that names no disk or no process limit gets
//! the master's `--default-task-disk` / `--default-task-pids`, is sent to its agent
//! with them, and its disk is taken from the offers like any other.

mod common;

use cella_master::master::{self, TaskDefaults};
use cella_proto::v1::{self, call};
use common::*;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_limits_gets_the_cluster_defaults_and_its_disk_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let m = master::try_spawn(master::MasterConfig {
        task_defaults: TaskDefaults {
            disk_bytes: 3 * GIB,
            pids_limit: 100,
        },
        ..config(dir.path())
    })
    .unwrap();
    let mut s = subscribe(&m, "", "alice").await.unwrap();
    let mut a = register_agent(&m, "agent-d", vec![]).await;
    let offers = s.next_offers().await;
    let offered = offers[0].resources.unwrap().disk_bytes;
    assert_eq!(offered, 10 * GIB, "{offers:?}");

    let defaulted = task_info("t-default");
    let mut explicit = task_info("t-explicit");
    explicit.pids_limit = 7;
    explicit.resources.as_mut().unwrap().disk_bytes = 2 * GIB;
    s.call(
        &m,
        call::Call::Accept(call::Accept {
            offer_ids: vec![offers[0].offer_id.clone()],
            tasks: vec![defaulted, explicit],
            refuse_seconds: None,
        }),
    );
    let first = a.next_launch().await;
    let second = a.next_launch().await;
    let limits = |t: &v1::TaskInfo| {
        (
            t.task_id.clone(),
            t.resources.unwrap().disk_bytes,
            t.pids_limit,
        )
    };
    assert_eq!(limits(&first), ("t-default".into(), 3 * GIB, 100));
    assert_eq!(limits(&second), ("t-explicit".into(), 2 * GIB, 7));

    // The defaulted disk is allocated: what is offered next is what both tasks left.
    let next = s.next_offers().await;
    assert_eq!(next[0].resources.unwrap().disk_bytes, 5 * GIB, "{next:?}");

    // A task that names no disk does not fit where less than the default is left.
    let mut big = task_info("t-big");
    big.resources.as_mut().unwrap().disk_bytes = 4 * GIB;
    s.call(
        &m,
        call::Call::Accept(call::Accept {
            offer_ids: vec![next[0].offer_id.clone()],
            tasks: vec![big, task_info("t-no-room")],
            refuse_seconds: None,
        }),
    );
    assert_eq!(a.next_launch().await.task_id, "t-big");
    let refused = s.update_for("t-no-room").await;
    assert_eq!(refused.state(), v1::TaskState::TaskError, "{refused:?}");
    assert!(
        refused.message.contains("of disk") && refused.message.contains("--default-task-disk"),
        "{}",
        refused.message
    );
    m.stop().await;
}
