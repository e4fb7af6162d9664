//! Files a task plants in its sandbox (FIFOs, links to host secrets) against the
//! agent's files API and its usage sampling, end to end: a master and an agent in this
//! process, real TLS, a real isolated task. Needs root and `cella-shim`
//! (`cargo build --workspace --bins`). Its own binary so that the cgroup v2 VM runs it
//! without the timing-sensitive protocol tests of `cluster.rs`.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use cella_proto::v1;
use common::restart::wait_until;
use common::{Cluster, task};

/// A task replaces its stdout with a FIFO and its stderr with a link to /etc/shadow,
/// and leaves a FIFO in its sandbox: the agent's files API refuses each, saying what
/// it is, without blocking; usage sampling (which walks the sandbox) goes on and the
/// task ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_fifos_and_links_are_never_opened() {
    let (cluster, agent_id, mut s) = Cluster::with_scheduler().await;
    let script = "rm -f stdout stderr && mkfifo stdout pipe && ln -s /etc/shadow stderr \
                  && touch planted && sleep 3";
    s.launch(
        &agent_id,
        vec![task("plant", &["sh", "-c", script], 64 << 20)],
    )
    .await;
    let sandbox = cella_agent::paths::sandbox_dir(&cluster.work_dir, "plant");
    wait_until("the task to plant its files", async || {
        sandbox.join("planted").exists()
    })
    .await;
    let tls = cluster.agent_tls();
    let base = format!("https://{}", cluster.agent().http_addr());
    for (name, why) in [
        ("stdout", "is a FIFO"),
        ("stderr", "symbolic link"),
        ("pipe", "is a FIFO"),
    ] {
        let url = format!("{base}/api/v1/tasks/plant/files/{name}");
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            cella_proto::tls::https_request(Method::GET, &url, None, &tls),
        )
        .await
        .unwrap_or_else(|_| panic!("reading {name} blocked"))
        .unwrap();
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {body}");
        assert!(body.contains(why), "{name}: {body}");
        assert!(!body.contains("root:"), "{name} served /etc/shadow: {body}");
    }
    let end = s.wait_terminal("plant").await;
    assert_eq!(end.state(), v1::TaskState::TaskFinished, "{}", end.message);
    cluster.stop().await;
}
