//! End to end on loopback: a master and an agent in this process, real TLS, real
//! isolated tasks, and a minimal scheduler. Needs root and `cella-shim`
//! (`cargo build --workspace --bins`).

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use cella_agent::Agent;
use cella_agent::store::Store;
use cella_proto::v1;
use common::restart::wait_until;
use common::{Cluster, Master, WAIT, task};

/// `method url` with `tls`; the request itself must succeed, whatever the answer.
async fn request(
    method: Method,
    url: String,
    tls: &rustls::ClientConfig,
) -> cella_proto::tls::HttpResponse {
    cella_proto::tls::https_request(method, &url, None, tls)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_logs_and_confined_file_reads() {
    let (cluster, agent_id, mut s) = Cluster::with_scheduler().await;

    s.launch(
        &agent_id,
        vec![task("hi-3", &["sh", "-c", "echo hi; exit 3"], 64 << 20)],
    )
    .await;
    let end = s.wait_terminal("hi-3").await;
    assert_eq!(
        s.states("hi-3"),
        vec![
            v1::TaskState::TaskStarting,
            v1::TaskState::TaskRunning,
            v1::TaskState::TaskFailed
        ]
    );
    assert_eq!(end.reason(), v1::Reason::CommandExited);
    assert_eq!(end.exit_code, Some(3));
    assert_eq!(end.message, "exited with code 3");
    assert_eq!(end.agent_id, agent_id);
    assert!(!end.uuid.is_empty());

    let sandbox = cella_agent::paths::sandbox_dir(&cluster.work_dir, "hi-3");
    assert_eq!(
        std::fs::read_to_string(cella_agent::paths::sandbox_stdout(&sandbox)).unwrap(),
        "hi\n"
    );

    // The files endpoint: the chunk, and confinement.
    let tls = cluster.agent_tls();
    let base = format!("https://{}", cluster.agent().http_addr());
    let get = |path: String| {
        let tls = tls.clone();
        let url = format!("{base}{path}");
        async move { request(Method::GET, url, &tls).await }
    };
    let r = get("/api/v1/tasks/hi-3/files/stdout".into()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let chunk: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(chunk["data"], "hi\n");
    assert_eq!(chunk["eof"], true);
    assert_eq!(chunk["next_offset"], 3);
    let r = get("/api/v1/tasks/hi-3/files/stdout?offset=1&length=1".into()).await;
    let chunk: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(chunk["data"], "i");

    std::os::unix::fs::symlink("/etc/hostname", sandbox.join("escape")).unwrap();
    let r = get("/api/v1/tasks/hi-3/files/escape".into()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    for bad in ["../x", "..%2Fx", "a/../../x", "%2Fetc%2Fhostname"] {
        let r = get(format!("/api/v1/tasks/hi-3/files/{bad}")).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{bad}: {} {:?}",
            r.status,
            r.body
        );
        assert_ne!(r.status, StatusCode::OK);
    }

    // Authentication: /health is open, the rest needs a client certificate.
    let anon = cella_proto::tls::client_config_anonymous_for(
        &cluster.layout.ca_cert,
        cella_proto::tls::ExpectedServer::Agent,
    )
    .unwrap();
    let r = request(Method::GET, format!("{base}/health"), &anon).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = request(
        Method::GET,
        format!("{base}/api/v1/tasks/hi-3/files/stdout"),
        &anon,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // GET / says what this is and where the API and docs are, to anyone.
    let r = request(Method::GET, format!("{base}/"), &anon).await;
    assert_eq!(r.status, StatusCode::OK);
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(index["service"], "cella-agent", "{index}");
    let (api, docs) = (index["api"].to_string(), index["docs"].to_string());
    assert!(api.contains("\"GET /api/v1/containers\""), "{index}");
    assert!(docs.contains("api.md"), "{index}");
    // A wrong method: 405 naming the methods the path takes.
    let r = request(Method::POST, format!("{base}/api/v1/containers"), &tls).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let error: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        error["error"], "POST is not allowed on /api/v1/containers; use GET, HEAD",
        "{error}"
    );
    let r = get("/metrics".into()).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("cella_agent_launch_duration_seconds"),
        "{text}"
    );
    assert!(
        text.contains("cella_agent_status_updates_pending"),
        "{text}"
    );

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kill_and_command_not_found() {
    let (cluster, agent_id, mut s) = Cluster::with_scheduler().await;

    s.launch(
        &agent_id,
        vec![
            // `tail` keeps a newline-free stream in memory: 100 MB against 32 MiB.
            task(
                "hog",
                &["sh", "-c", "head -c 100000000 /dev/zero | tail > /dev/null"],
                32 << 20,
            ),
            task("sleeper", &["sleep", "100"], 16 << 20),
            task("nope", &["/no/such/program"], 16 << 20),
        ],
    )
    .await;

    let end = s.wait_terminal("hog").await;
    common::assert_killed_at_32_mib(&end);

    let end = s.wait_terminal("nope").await;
    assert_eq!(end.state(), v1::TaskState::TaskFailed, "{end:?}");
    assert_eq!(end.reason(), v1::Reason::CommandNotFound, "{end:?}");
    assert_eq!(end.exit_code, Some(127));

    s.wait_for("sleeper", WAIT, |st| {
        st.state() == v1::TaskState::TaskRunning
    })
    .await;
    // The containers endpoint lists it with usage after a sample.
    let url = format!("https://{}/api/v1/containers", cluster.agent().http_addr());
    let tls = cluster.agent_tls();
    let sleeper = async || -> Option<serde_json::Value> {
        let list: serde_json::Value = cella_proto::tls::https_get_json(&url, &tls).await.ok()?;
        list.as_array()?
            .iter()
            .find(|c| c["task_id"] == "sleeper")
            .cloned()
    };
    wait_until("a usage sample of the sleeper", async || {
        sleeper()
            .await
            .is_some_and(|c| c["usage"]["mem_current_bytes"].is_u64())
    })
    .await;
    let entry = sleeper().await.expect("sleeper listed");
    assert_eq!(entry["state"], "RUNNING");
    assert!(entry["usage"]["mem_current_bytes"].is_u64(), "{entry}");

    s.kill("sleeper");
    let end = s.wait_terminal("sleeper").await;
    assert_eq!(end.state(), v1::TaskState::TaskKilled, "{end:?}");
    assert_eq!(end.reason(), v1::Reason::KilledByRequest);
    assert_eq!(end.signal, Some(9), "{end:?}");

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_updates_are_resent_in_order_across_a_master_restart() {
    let (mut cluster, agent_id, mut s) = Cluster::with_scheduler().await;
    s.auto_ack = false;

    s.launch(
        &agent_id,
        vec![task("slow-ack", &["sleep", "100"], 16 << 20)],
    )
    .await;
    let starting = s
        .wait_for("slow-ack", WAIT, |st| {
            st.state() == v1::TaskState::TaskStarting
        })
        .await;
    // Not acknowledged: re-sent (same uuid) after ~1 s; RUNNING waits behind it.
    s.drain_for(Duration::from_millis(1600)).await;
    let seen = s.updates["slow-ack"].clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|u| u.uuid == starting.uuid),
        "only STARTING until it is acknowledged: {seen:?}"
    );

    // The master goes away and comes back on the same port (a new, empty master).
    let framework_id = s.framework_id.clone();
    drop(s);
    let master = cluster.master.take().unwrap();
    let addr = master.addr;
    master.stop().await;
    let master = Master::start(&cluster.layout, addr).await;
    cluster.master = Some(master);

    // The agent re-registers under its id, with the task; the scheduler comes back.
    let mut s = cluster.scheduler(&framework_id).await;
    assert_eq!(s.framework_id, framework_id);
    s.auto_ack = false;
    let again = s
        .wait_for("slow-ack", WAIT, |st| st.uuid == starting.uuid)
        .await;
    assert_eq!(again.state(), v1::TaskState::TaskStarting);
    assert_eq!(
        cluster.agent().agent_id().as_deref(),
        Some(agent_id.as_str())
    );
    s.ack(&again);
    let running = s
        .wait_for("slow-ack", WAIT, |st| {
            st.state() == v1::TaskState::TaskRunning
        })
        .await;
    s.ack(&running);
    s.auto_ack = true;

    // Duplicate acknowledgements are harmless.
    s.ack(&running);
    s.ack(&again);

    s.kill("slow-ack");
    let end = s.wait_terminal("slow-ack").await;
    assert_eq!(end.state(), v1::TaskState::TaskKilled, "{end:?}");
    let order: Vec<v1::TaskState> = s.states("slow-ack");
    let first_running = order
        .iter()
        .position(|st| *st == v1::TaskState::TaskRunning)
        .unwrap();
    assert!(
        order[..first_running]
            .iter()
            .all(|st| *st == v1::TaskState::TaskStarting),
        "{order:?}"
    );
    cluster.stop().await;
}

/// The agent id, the tasks and the unacknowledged updates are in the checkpoint
/// when the agent stops; an agent started again on it registers under the same id,
/// re-attaches to the task and sends the updates that were not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_survives_a_restart_of_the_agent() {
    let (mut cluster, agent_id, mut s) = Cluster::with_scheduler().await;
    s.auto_ack = false;
    s.launch(&agent_id, vec![task("kept", &["sleep", "100"], 16 << 20)])
        .await;
    let starting = s
        .wait_for("kept", WAIT, |st| st.state() == v1::TaskState::TaskStarting)
        .await;
    // RUNNING is generated (and waits behind the unacknowledged STARTING).
    wait_until("the task to run", async || {
        cluster.agent().running_tasks() == 1 && cluster.agent().pending_updates() == 2
    })
    .await;
    let agent = cluster.agent.take().unwrap();
    agent.shutdown(false).await.unwrap();

    let (store, owner, checkpoint) = Store::open(&cluster.work_dir).unwrap();
    assert_eq!(checkpoint.agent_id.as_deref(), Some(agent_id.as_str()));
    assert!(checkpoint.boot_id.is_some());
    let tasks: Vec<(&str, v1::TaskState)> = checkpoint
        .tasks
        .iter()
        .map(|(id, r)| (id.as_str(), r.state()))
        .collect();
    assert_eq!(tasks, vec![("kept", v1::TaskState::TaskRunning)]);
    let updates: Vec<v1::TaskState> = checkpoint.updates.iter().map(|(_, u)| u.state()).collect();
    assert_eq!(
        updates,
        vec![v1::TaskState::TaskStarting, v1::TaskState::TaskRunning]
    );
    assert_eq!(checkpoint.updates[0].1.uuid, starting.uuid);
    drop(store);
    owner.close();

    cluster.agent = Some(
        Agent::start(cluster.config.clone())
            .await
            .expect("restarts"),
    );
    assert_eq!(
        cluster.agent().agent_id().as_deref(),
        Some(agent_id.as_str())
    );
    assert_eq!(cluster.agent().running_tasks(), 1, "re-attached");
    // RUNNING goes out only once the re-sent STARTING is acknowledged.
    s.auto_ack = true;
    let running = s
        .wait_for("kept", WAIT, |st| st.state() == v1::TaskState::TaskRunning)
        .await;
    assert_eq!(running.agent_id, agent_id);
    s.kill("kept");
    let end = s.wait_terminal("kept").await;
    assert_eq!(end.state(), v1::TaskState::TaskKilled, "{end:?}");
    cluster.stop().await;
}
