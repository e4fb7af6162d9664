//! `GET /api/v1/tasks/{id}/usage` against a real master over mutual TLS, fed by a
//! gRPC agent session: a full report then delta reports are merged into full samples
//! and a history, node totals show in the agents view, an ended task's summary is the
//! agent's, and the JSON round-trips through the CLI's types.

mod common;

use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::tls;
use cella_proto::v1::{self, agent_message};
use common::*;

const S: u64 = 1_000_000_000;

fn sample(task: &str, t: u64, cpu: u64, mem: u64) -> v1::TaskUsage {
    v1::TaskUsage {
        task_id: task.into(),
        timestamp_ns: 1_700_000_000 * S + t * S,
        cpu_user_ns: Some(cpu),
        cpu_system_ns: Some(7),
        mem_current_bytes: Some(mem),
        io_read_ops: Some(3),
        cpu_pressure: Some(v1::Pressure {
            some_avg10: 1.5,
            some_total_us: 10,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// GET, checked to decode as `T` and encode back to the same JSON.
async fn get<T: serde::de::DeserializeOwned + serde::Serialize>(
    url: &str,
    client: &rustls::ClientConfig,
    path: &str,
) -> T {
    get_typed(url, client, path).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reports_become_full_samples_and_a_history() {
    let m = TlsMaster::start().await;
    let (url, client) = (m.url.clone(), m.client.clone());
    let f = m.framework_on_agent("agent-u", &["t-run", "t-end"]).await;
    let (fw, send) = (f.fw.clone(), |message| f.send(message));
    // A full report, then two deltas: the second changes only the CPU figure of
    // t-run and leaves t-end out.
    send(agent_message::Message::Usage(agent_message::UsageReport {
        tasks: vec![sample("t-run", 0, 100, 1000), sample("t-end", 0, 5, 50)],
        node: Some(Box::new(v1::NodeUsage {
            timestamp_ns: 1,
            mem_total_bytes: Some(8 << 30),
            tasks_running: 2,
            ..Default::default()
        })),
        delta: false,
    }));
    for (t, cpu) in [(1, 200), (2, 300)] {
        send(agent_message::Message::Usage(agent_message::UsageReport {
            tasks: vec![v1::TaskUsage {
                task_id: "t-run".into(),
                timestamp_ns: sample("", t, 0, 0).timestamp_ns,
                cpu_user_ns: Some(cpu),
                ..Default::default()
            }],
            node: None,
            delta: true,
        }));
    }
    let deadline = Instant::now() + WAIT;
    let u = loop {
        let u: api::TaskUsage = get(&url, &client, "/api/v1/tasks/t-run/usage").await;
        if u.history.len() == 3 {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "three samples never arrived: {u:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let latest = u.latest.unwrap();
    assert_eq!(latest.cpu_user_ns, Some(300));
    assert_eq!(
        latest.mem_current_bytes,
        Some(1000),
        "unchanged figures stay"
    );
    assert_eq!(latest.io_read_ops, Some(3));
    assert_eq!(latest.cpu_pressure.map(|p| p.some_avg10), Some(1.5));
    assert_eq!(u.history[2], latest);
    let cpu: Vec<_> = u.history.iter().map(|h| h.cpu_user_ns).collect();
    assert_eq!(cpu, [Some(100), Some(200), Some(300)]);
    let summary = u.summary.unwrap();
    assert!(!summary.is_final);
    assert_eq!(summary.cpu_user_ns, Some(300));
    assert_eq!(summary.mem_peak_bytes, Some(1000));
    assert_eq!(u.state, v1::TaskState::TaskRunning);

    // Coarser on request: the three seconds fold into one point.
    let coarse: api::TaskUsage =
        get(&url, &client, "/api/v1/tasks/t-run/usage?resolution=1h").await;
    assert_eq!(coarse.history.len(), 1, "{coarse:?}");
    assert_eq!(coarse.history[0].cpu_user_ns, Some(300));

    // The node's totals in the agents view.
    let agents: Vec<api::Agent> = get(&url, &client, "/api/v1/agents").await;
    let node = agents[0].node_usage.unwrap();
    assert_eq!(
        (node.mem_total_bytes, node.tasks_running),
        (Some(8 << 30), 2)
    );

    // An ended task's summary is the agent's.
    let mut end = status_update("agent-u", &fw, "t-end", v1::TaskState::TaskFinished, "u1");
    if let Some(s) = end.status.as_mut() {
        s.summary = Some(Box::new(v1::TaskSummary {
            started_ns: 1,
            ended_ns: 2,
            cpu_user_ns: Some(6),
            ..Default::default()
        }));
    }
    send(agent_message::Message::StatusUpdate(end));
    let deadline = Instant::now() + WAIT;
    loop {
        let u: api::TaskUsage = get(&url, &client, "/api/v1/tasks/t-end/usage").await;
        if let Some(s) = u.summary.filter(|s| s.is_final) {
            assert_eq!((s.started_ns, s.ended_ns, s.cpu_user_ns), (1, 2, Some(6)));
            assert_eq!(u.history.len(), 1, "the history stays after the end");
            break;
        }
        assert!(Instant::now() < deadline, "no final summary: {u:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unknown tasks and bad parameters: JSON errors that say what to do.
    for (path, status) in [
        ("/api/v1/tasks/nope/usage", 404),
        ("/api/v1/tasks/t-run/usage?resolution=soon", 400),
        ("/api/v1/tasks/t-run/usage?since=-1", 400),
    ] {
        let r = tls::https_request(
            "GET".parse().unwrap(),
            &format!("{url}{path}"),
            None,
            &client,
        )
        .await
        .unwrap();
        assert_eq!(r.status.as_u16(), status, "{path}");
        let e: api::Error = serde_json::from_slice(&r.body).unwrap();
        assert!(!e.error.is_empty());
    }
    m.master.stop().await;
}
