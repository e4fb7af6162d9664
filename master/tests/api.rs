//! The operator API's JSON round-trips through `cella_proto::api`, the types the CLI
//! reads: what the master serves decodes into them and encodes back to the very same
//! JSON (no field dropped, renamed or added on either side), and the field names are
//! the ones `docs/api.md` documents. A real master over mutual TLS, with a gRPC agent
//! session and scheduler stream.

mod common;

use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::v1::{self, agent_message};
use common::*;
use serde_json::Value;

/// The field names of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// A sample with every figure the agent measures.
fn full_sample(task_id: &str) -> v1::TaskUsage {
    v1::TaskUsage {
        task_id: task_id.into(),
        timestamp_ns: 1_700_000_000_000_000_042,
        cpu_user_ns: Some(1_000),
        cpu_system_ns: Some(2_000),
        cpu_throttled_ns: Some(3),
        mem_current_bytes: Some(40 << 20),
        mem_peak_bytes: Some(50 << 20),
        mem_anon_bytes: Some(30 << 20),
        mem_file_bytes: Some(10 << 20),
        mem_kernel_bytes: Some(1 << 20),
        oom_kills: Some(0),
        pids_current: Some(2),
        io_read_bytes: Some(4096),
        io_write_bytes: Some(8192),
        disk_used_bytes: Some(12_345),
        mem_swap_bytes: Some(0),
        cpu_nr_throttled: Some(1),
        io_read_ops: Some(3),
        io_write_ops: Some(5),
        cpu_pressure: Some(pressure(1.25)),
        memory_pressure: Some(pressure(0.5)),
        io_pressure: Some(pressure(0.0)),
    }
}

fn pressure(avg10: f64) -> v1::Pressure {
    v1::Pressure {
        some_avg10: avg10,
        some_total_us: 1_000,
        full_avg10: Some(avg10 / 2.0),
        full_total_us: Some(500),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_json_round_trips_through_the_cli_types() {
    let m = TlsMaster::start().await;
    let (url, client) = (m.url.clone(), m.client.clone());

    // A framework with two tasks on one agent: one runs and reports its usage, the
    // other fails with exit code 3.
    let f = m.framework_on_agent("agent-api", &["t-run", "t-end"]).await;
    let fw = f.fw.clone();
    let sample = full_sample("t-run");
    f.send(agent_message::Message::Usage(agent_message::UsageReport {
        tasks: vec![sample.clone()],
        ..Default::default()
    }));
    let mut end = status_update("agent-api", &fw, "t-end", v1::TaskState::TaskFailed, "u1");
    if let Some(s) = end.status.as_mut() {
        s.reason = v1::Reason::CommandExited as i32;
        s.exit_code = Some(3);
        s.message = "exited with code 3".into();
    }
    f.send(agent_message::Message::StatusUpdate(end));

    // The update follows the usage on the same stream: once it shows, both did.
    let deadline = Instant::now() + WAIT;
    let (state, raw_state) = loop {
        let (state, raw) = get_typed::<api::State>(&url, &client, "/api/v1/state").await;
        if state
            .tasks
            .iter()
            .any(|t| t.id == "t-end" && t.state == v1::TaskState::TaskFailed)
        {
            break (state, raw);
        }
        assert!(Instant::now() < deadline, "t-end never FAILED: {raw}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The wire's field names (docs/api.md).
    assert_eq!(
        keys(&raw_state),
        ["agents", "frameworks", "tasks", "version"]
    );
    assert_eq!(
        keys(&raw_state["agents"][0]),
        [
            "allocated",
            "attributes",
            "hostname",
            "http_endpoint",
            "id",
            "node",
            "node_usage",
            "state",
            "tasks",
            "total",
            "used"
        ]
    );
    assert_eq!(
        keys(&raw_state["agents"][0]["used"]),
        ["cpu_system_ns", "cpu_user_ns", "disk_bytes", "mem_bytes"]
    );
    assert_eq!(
        keys(&raw_state["agents"][0]["total"]),
        ["cpus", "disk_bytes", "mem_bytes"]
    );
    assert_eq!(
        keys(&raw_state["frameworks"][0]),
        [
            "connected",
            "id",
            "name",
            "principal",
            "role",
            "suppressed",
            "tasks"
        ]
    );
    assert_eq!(
        keys(&raw_state["tasks"][0]),
        [
            "agent_endpoint",
            "agent_id",
            "command",
            "exit_code",
            "framework_id",
            "id",
            "image_digest",
            "message",
            "name",
            "reason",
            "resources",
            "secrets",
            "signal",
            "state",
            "updated_ns",
            "usage"
        ]
    );

    // What the typed views say.
    assert_eq!(state.version, env!("CARGO_PKG_VERSION"));
    let [agent] = state.agents.as_slice() else {
        panic!("one agent: {raw_state}");
    };
    assert_eq!(
        (agent.id.as_str(), agent.state, agent.tasks),
        ("agent-api", api::AgentState::Connected, 1)
    );
    assert_eq!(raw_state["agents"][0]["state"], "CONNECTED");
    assert_eq!(agent.total.cpus, 4.0);
    assert_eq!(
        (agent.allocated.cpus, agent.allocated.mem_bytes),
        (0.5, 64 << 20),
        "only t-run holds resources"
    );
    assert_eq!(
        agent.used,
        api::Used {
            cpu_user_ns: 1_000,
            cpu_system_ns: 2_000,
            mem_bytes: 40 << 20,
            disk_bytes: 12_345,
        }
    );
    let [framework] = state.frameworks.as_slice() else {
        panic!("one framework: {raw_state}");
    };
    assert_eq!(
        (framework.id.as_str(), framework.connected, framework.tasks),
        (fw.as_str(), true, 1)
    );
    let ids: Vec<&str> = state.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t-end", "t-run"], "sorted by id");
    let (ended, running) = (&state.tasks[0], &state.tasks[1]);
    assert_eq!(
        (ended.state, ended.reason, ended.exit_code),
        (
            v1::TaskState::TaskFailed,
            v1::Reason::CommandExited,
            Some(3)
        )
    );
    assert_eq!(raw_state["tasks"][0]["state"], "FAILED");
    assert_eq!(raw_state["tasks"][0]["reason"], "COMMAND_EXITED");
    assert_eq!(running.state, v1::TaskState::TaskRunning);
    assert_eq!(raw_state["tasks"][1]["reason"], "");
    // Every figure of the agent's sample, none null.
    assert_eq!(running.usage, Some(api::Usage::from(&sample)));
    let usage = raw_state["tasks"][1]["usage"].as_object().unwrap();
    assert_eq!(usage.len(), 21, "{usage:?}");
    assert!(usage.values().all(|v| !v.is_null()), "{usage:?}");

    // The other endpoints serve the same views.
    let (agents, _) = get_typed::<Vec<api::Agent>>(&url, &client, "/api/v1/agents").await;
    assert_eq!(agents, state.agents);
    let (frameworks, _) =
        get_typed::<Vec<api::Framework>>(&url, &client, "/api/v1/frameworks").await;
    assert_eq!(frameworks, state.frameworks);
    let (tasks, _) = get_typed::<Vec<api::Task>>(&url, &client, "/api/v1/tasks").await;
    assert_eq!(tasks, state.tasks);
    let (one, _) = get_typed::<api::Task>(&url, &client, "/api/v1/tasks/t-run").await;
    assert_eq!(&one, running);
    let (filtered, _) =
        get_typed::<Vec<api::Task>>(&url, &client, "/api/v1/tasks?state=running").await;
    assert_eq!(
        filtered,
        std::slice::from_ref(running),
        "?state= takes any case"
    );
    let (filtered, _) = get_typed::<Vec<api::Task>>(
        &url,
        &client,
        &format!("/api/v1/tasks?state=FAILED&framework={fw}"),
    )
    .await;
    assert_eq!(filtered, std::slice::from_ref(ended));
    // A name that is no state is refused (400), naming the states.
    let (status, e) = get_error(&url, &client, "/api/v1/tasks?state=PAUSED").await;
    assert_eq!(status, axum::http::StatusCode::BAD_REQUEST);
    assert!(e.error.contains("RUNNING"), "{e:?}");

    // Errors are {"error": "..."}.
    let (status, error) = get_error(&url, &client, "/api/v1/tasks/no-such-task").await;
    assert_eq!(status.as_u16(), 404);
    assert!(error.error.contains("unknown task"), "{error:?}");

    drop(f);
    m.master.stop().await;
}
