//! The registry survives a master restart: frameworks, agents and tasks are
//! reloaded from `<work-dir>/registry.redb`; agents re-register, schedulers
//! re-subscribe, agents that do not come back are lost.

mod common;

use std::time::{Duration, Instant};

use cella_master::master::{self, Command, MasterConfig};
use cella_master::store::{self, Batch, FrameworkRecord, Store, TaskRecord};
use cella_proto::api;
use cella_proto::v1::{self, call, event};
use common::*;

/// A new framework of alice's (with its id) and agent-a, registered without tasks.
async fn framework_and_agent_a(m: &master::MasterHandle) -> (Scheduler, String, Agent) {
    let s = subscribe(m, "", "alice").await.unwrap();
    let fw = s.id.clone();
    let a = register_agent(m, "agent-a", vec![]).await;
    (s, fw, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_restart_keeps_frameworks_tasks_and_agents() {
    let dir = tempfile::tempdir().unwrap();

    // ---- first master: a framework launches two tasks on agent-a; agent-b
    // registers with a task it already runs.
    let m = master::try_spawn(config(dir.path())).unwrap();
    let (mut s, fw, mut a) = framework_and_agent_a(&m).await;
    let offers = s.next_offers().await;
    let offer = offers.iter().find(|o| o.agent_id == "agent-a").unwrap();
    let first_offer = offer_number(offer);
    s.accept(
        &m,
        offer.offer_id.clone(),
        vec![task_info("t1"), task_info("t2")],
    );
    assert_eq!(a.next_launch().await.task_id, "t1");
    assert_eq!(a.next_launch().await.task_id, "t2");
    a.status(&m, &fw, "t1", v1::TaskState::TaskRunning, "u1");
    assert_eq!(s.next_update().await.state(), v1::TaskState::TaskRunning);
    let _b = register_agent(
        &m,
        "agent-b",
        vec![(fw.as_str(), "t3", v1::TaskState::TaskRunning)],
    )
    .await;
    let mut max_offer = first_offer;
    // Let a few more offers go out, so the next offer id moves on.
    for _ in 0..2 {
        for o in s.next_offers().await {
            max_offer = max_offer.max(offer_number(&o));
            s.call(
                &m,
                call::Call::Decline(call::Decline {
                    offer_ids: vec![o.offer_id.clone()],
                    refuse_seconds: Some(0.0),
                }),
            );
        }
    }
    assert_eq!(task_state(&m, "t1").await.0, "RUNNING");
    assert_eq!(task_state(&m, "t2").await.0, "STAGING");
    m.stop().await;
    drop((s, a, _b));

    // ---- second master on the same work dir.
    let m = master::try_spawn(config(dir.path())).unwrap();
    let state = m.state().await.unwrap();
    let f = state
        .frameworks
        .iter()
        .find(|f| f.id == fw)
        .expect("framework reloaded");
    assert!(!f.connected);
    assert_eq!(
        (f.role.as_str(), f.principal.as_str(), f.tasks),
        ("web", "user:alice", 3)
    );
    assert_eq!(state.tasks.len(), 3);
    assert!(
        state
            .agents
            .iter()
            .all(|a| a.state == api::AgentState::Unreachable)
    );
    assert_eq!(state.agents.len(), 2);
    assert_eq!(task_state(&m, "t1").await.0, "RUNNING");
    assert_eq!(task_state(&m, "t2").await.0, "STAGING");

    // Another principal cannot take the framework over.
    let err = subscribe(&m, &fw, "mallory").await.err().expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut s = subscribe(&m, &fw, "alice").await.unwrap();
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile { task_ids: vec![] }),
    );
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let u = s.next_update().await;
        assert_eq!(u.reason(), v1::Reason::Reconciliation);
        answers.insert(u.task_id.clone(), u.state());
    }
    assert_eq!(answers["t1"], v1::TaskState::TaskRunning);
    assert_eq!(answers["t2"], v1::TaskState::TaskStaging);
    assert_eq!(answers["t3"], v1::TaskState::TaskRunning);

    // agent-a comes back with both tasks running: t2 is RUNNING now.
    let _a = register_agent(
        &m,
        "agent-a",
        vec![
            (fw.as_str(), "t1", v1::TaskState::TaskRunning),
            (fw.as_str(), "t2", v1::TaskState::TaskRunning),
        ],
    )
    .await;
    assert_eq!(task_state(&m, "t2").await.0, "RUNNING");
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile {
            task_ids: vec!["t2".into()],
        }),
    );
    let u = s.update_for("t2").await;
    assert_eq!(u.state(), v1::TaskState::TaskRunning);

    // Offers after the restart never reuse an id, and agent-a's offer leaves out
    // what its tasks hold.
    let offers = loop {
        let offers = s.next_offers().await;
        if offers.iter().any(|o| o.agent_id == "agent-a") {
            break offers;
        }
    };
    for o in &offers {
        assert!(
            offer_number(o) > max_offer,
            "{} after {max_offer}",
            o.offer_id
        );
    }
    let a_offer = offers.iter().find(|o| o.agent_id == "agent-a").unwrap();
    assert_eq!(a_offer.resources.as_ref().unwrap().cpus, 3.0);
    assert!(offers.iter().all(|o| o.agent_id != "agent-b"));

    // agent-b does not come back within the agent timeout: t3 is LOST.
    let u = s.update_for("t3").await;
    assert_eq!(u.state(), v1::TaskState::TaskLost);
    assert_eq!(u.reason(), v1::Reason::AgentLost);
    assert_eq!(task_state(&m, "t3").await, ("LOST", "AGENT_LOST"));
    m.stop().await;

    // ---- third master: the outcome of the second one was written too.
    let m = master::try_spawn(config(dir.path())).unwrap();
    let state = m.state().await.unwrap();
    assert_eq!(state.agents.len(), 1, "agent-b was lost and forgotten");
    assert_eq!(task_state(&m, "t2").await.0, "RUNNING");
    assert_eq!(task_state(&m, "t3").await, ("LOST", "AGENT_LOST"));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_registry_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(store::FILE_NAME), vec![0x5a; 16384]).unwrap();
    let err = master::try_spawn(config(dir.path()))
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(message.contains(&dir.path().join(store::FILE_NAME).display().to_string()));
    assert!(message.contains("Move it aside"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_update_storm_is_batched() {
    let (dir, m) = spawned();
    let s = subscribe(&m, "fw-storm", "alice").await.unwrap();
    let tasks: Vec<String> = (0..500).map(|i| format!("storm-{i}")).collect();
    let a = register_agent_with_tasks(
        &m,
        "agent-storm",
        "fw-storm",
        &tasks,
        v1::TaskState::TaskStarting,
    )
    .await;
    let updates = 20_000;
    let started = Instant::now();
    for i in 0..updates {
        let state = if i + tasks.len() >= updates {
            v1::TaskState::TaskFinished
        } else {
            v1::TaskState::TaskRunning
        };
        a.status(
            &m,
            "fw-storm",
            &tasks[i % tasks.len()],
            state,
            &format!("u{i}"),
        );
    }
    m.stop().await;
    let elapsed = started.elapsed();
    let (writes, seconds) = (
        metric(&m, "cella_master_registry_write_seconds_count"),
        metric(&m, "cella_master_registry_write_seconds_sum"),
    );
    println!(
        "{updates} status updates handled and written in {elapsed:?}: {writes} write \
         transactions since the master started, {:.2} ms each on average",
        1000.0 * seconds / writes.max(1.0)
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    drop(s);

    let m = master::try_spawn(config(dir.path())).unwrap();
    let state = m.state().await.unwrap();
    assert_eq!(state.tasks.len(), tasks.len());
    assert!(
        state
            .tasks
            .iter()
            .all(|t| t.state == v1::TaskState::TaskFinished)
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_tasks_beyond_the_limit_leave_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = MasterConfig {
        completed_tasks_kept: 3,
        ..config(dir.path())
    };
    let m = master::try_spawn(config.clone()).unwrap();
    let _s = subscribe(&m, "fw-gc", "alice").await.unwrap();
    let tasks: Vec<String> = (0..10).map(|i| format!("gc-{i}")).collect();
    let a = register_agent_with_tasks(&m, "agent-gc", "fw-gc", &tasks, v1::TaskState::TaskRunning)
        .await;
    for t in &tasks[..8] {
        a.status(&m, "fw-gc", t, v1::TaskState::TaskFinished, "u");
    }
    m.stop().await;
    let (_store, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(loaded.tasks.len(), 5, "2 running + 3 completed kept");
}

/// A generated registry of 10,000 tasks reloads fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_10000_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        for f in 0..10 {
            batch.frameworks.push((
                format!("fw-{f}"),
                Some(FrameworkRecord {
                    name: format!("framework {f}"),
                    role: "*".into(),
                    principal: "alice".into(),
                    failover_timeout_ms: 3_600_000,
                    suppressed: false,
                }),
            ));
        }
        for a in 0..100 {
            batch.agents.push((
                format!("agent-{a}"),
                Some(store::AgentRecord {
                    node: String::new(),
                    hostname: format!("host-{a}"),
                    attributes: [("rack".to_string(), format!("r{}", a % 4))].into(),
                    total: cella_master::allocator::Resources::from_cpus(64.0, 256 << 30, 0)
                        .unwrap(),
                    http_endpoint: format!("https://host-{a}:5051"),
                    last_seen_ms: 1,
                    registered_ms: 1,
                }),
            ));
        }
        for i in 0..n {
            let id = format!("task-{i:05}");
            let mut info = task_info(&id);
            info.env = vec!["A=1".into(), "B=2".into()];
            batch.tasks.push((
                id.clone(),
                Some(TaskRecord {
                    framework: format!("fw-{}", i % 10),
                    agent: format!("agent-{}", i % 100),
                    info,
                    status: v1::TaskStatus {
                        task_id: id,
                        framework_id: format!("fw-{}", i % 10),
                        agent_id: format!("agent-{}", i % 100),
                        state: v1::TaskState::TaskRunning as i32,
                        timestamp_ns: 1,
                        uuid: "0123456789abcdef".into(),
                        ..Default::default()
                    },
                }),
            ));
        }
        store.commit(&batch).unwrap();
    }
    let started = Instant::now();
    let (store, loaded) = Store::open(dir.path()).unwrap();
    let read = started.elapsed();
    assert_eq!(loaded.tasks.len(), n);
    drop((store, loaded));

    let started = Instant::now();
    let m = master::try_spawn(config(dir.path())).unwrap();
    let state = m.state().await.unwrap();
    let total = started.elapsed();
    assert_eq!(state.tasks.len(), n);
    println!(
        "reload of {n} tasks, 100 agents, 10 frameworks: store read {read:?}, \
         master ready (read + rebuild + first state) {total:?}"
    );
    assert!(total < Duration::from_secs(10), "{total:?}");
    m.stop().await;
}

// ------------------------------------------------------------ over mTLS

mod over_mtls {
    use cella_proto::tls;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_over_mtls() {
        let m = TlsMaster::start().await;
        let client = m.client.clone();
        // An agent registers with a task of that framework it runs.
        let fw = m.framework_on_agent("agent-tls", &["tls-1"]).await.fw;
        m.master.stop().await;

        // A new master on the same work dir knows the framework and the task.
        let master = start(&m.layout, &m.dir.path().join("master")).await;
        let state: serde_json::Value =
            tls::https_get_json(&format!("{}/api/v1/state", master.url()), &client)
                .await
                .unwrap();
        let frameworks = state["frameworks"].as_array().unwrap();
        assert!(
            frameworks
                .iter()
                .any(|f| f["id"] == fw.as_str() && f["connected"] == false),
            "{state}"
        );
        let task = state["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == "tls-1")
            .expect("task reloaded")
            .clone();
        assert_eq!(task["state"], "RUNNING");
        assert_eq!(state["agents"][0]["state"], "UNREACHABLE");

        // The scheduler re-subscribes with its id and reconciles.
        let (calls, mut events, again) = grpc_scheduler(&master.url(), &client, &fw).await;
        assert_eq!(again, fw);
        calls
            .send(v1::Call {
                call: Some(call::Call::Reconcile(call::Reconcile { task_ids: vec![] })),
            })
            .unwrap();
        let status = loop {
            let e = tokio::time::timeout(WAIT, events.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(event::Event::Update(u)) = e.event {
                break u.status.unwrap();
            }
        };
        assert_eq!(status.task_id, "tls-1");
        assert_eq!(status.state(), v1::TaskState::TaskRunning);
        drop((calls, events));
        master.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_framework_stays_suppressed_after_a_restart() {
    let (dir, m) = spawned();
    let (mut s, fw, _a) = framework_and_agent_a(&m).await;
    let offers = s.next_offers().await;
    s.call(&m, call::Call::Suppress(call::Suppress {}));
    s.call(
        &m,
        call::Call::Decline(call::Decline {
            offer_ids: offers.iter().map(|o| o.offer_id.clone()).collect(),
            refuse_seconds: Some(0.0),
        }),
    );
    s.expect_no_offers(&m, 4).await;
    m.stop().await;
    drop((s, _a));

    let m = master::try_spawn(config(dir.path())).unwrap();
    let state = m.state().await.unwrap();
    let f = state.frameworks.iter().find(|f| f.id == fw).unwrap();
    assert!(f.suppressed, "the registry keeps SUPPRESS");
    let mut s = subscribe(&m, &fw, "alice").await.unwrap();
    let _a = register_agent(&m, "agent-a", vec![]).await;
    s.expect_no_offers(&m, 4).await;
    s.call(&m, call::Call::Revive(call::Revive {}));
    let offers = s.next_offers().await;
    assert!(offers.iter().any(|o| o.agent_id == "agent-a"));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_an_unknown_task_waits_for_the_agents_of_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let config = MasterConfig {
        agent_lost_timeout: Duration::from_secs(30),
        ..config(dir.path())
    };
    let m = master::try_spawn(config.clone()).unwrap();
    let (s, fw, _a) = framework_and_agent_a(&m).await;
    m.stop().await;
    drop((s, _a));

    // The previous master sent "ghost" to agent-a and died before recording it.
    let m = master::try_spawn(config).unwrap();
    let mut s = subscribe(&m, &fw, "alice").await.unwrap();
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile {
            task_ids: vec!["ghost".into(), "nowhere".into(), "done".into()],
        }),
    );
    // agent-a has not re-registered: "unknown" now could be wrong.
    s.expect_no_update(&m).await;
    // "done" was sent too, and has already ended.
    let a = register_agent(
        &m,
        "agent-a",
        vec![
            (fw.as_str(), "ghost", v1::TaskState::TaskRunning),
            (fw.as_str(), "done", v1::TaskState::TaskFinished),
        ],
    )
    .await;
    let ghost = s.update_for("ghost").await;
    assert_eq!(ghost.state(), v1::TaskState::TaskRunning, "{ghost:?}");
    let nowhere = s.update_for("nowhere").await;
    assert_eq!(nowhere.state(), v1::TaskState::TaskLost, "{nowhere:?}");
    assert_eq!(nowhere.reason(), v1::Reason::Reconciliation);
    let done = s.update_for("done").await;
    assert_eq!(done.state(), v1::TaskState::TaskFinished, "{done:?}");
    // The agent's own update of that end, with its details, is passed on.
    a.status(&m, &fw, "done", v1::TaskState::TaskFinished, "u-done");
    let done = s.update_for("done").await;
    assert_eq!(
        (done.state(), done.uuid.as_str()),
        (v1::TaskState::TaskFinished, "u-done")
    );
    // With every agent back, answers are immediate.
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile {
            task_ids: vec!["nowhere".into()],
        }),
    );
    assert_eq!(
        s.update_for("nowhere").await.state(),
        v1::TaskState::TaskLost
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_after_its_tasks_were_lost_cannot_end_them_twice() {
    let (_dir, m) = spawned();
    let (mut s, fw, mut a) = framework_and_agent_a(&m).await;
    let offer = s.next_offers().await.remove(0);
    s.accept(&m, offer.offer_id, vec![task_info("t1")]);
    assert_eq!(a.next_launch().await.task_id, "t1");
    a.status(&m, &fw, "t1", v1::TaskState::TaskRunning, "u1");
    assert_eq!(s.update_for("t1").await.state(), v1::TaskState::TaskRunning);

    // The agent is gone longer than the agent timeout: t1 is LOST.
    m.send(Command::AgentDisconnected {
        agent: a.id.clone().into(),
        conn: a.conn,
    });
    let lost = s.update_for("t1").await;
    assert_eq!(lost.state(), v1::TaskState::TaskLost);

    // It comes back still running t1: the master has it killed, and the agent's
    // KILLED is acknowledged but not passed on (the scheduler was told LOST).
    let mut a = register_agent(
        &m,
        "agent-a",
        vec![(fw.as_str(), "t1", v1::TaskState::TaskRunning)],
    )
    .await;
    let k = a.next_kill().await;
    assert_eq!(k.task_id, "t1");
    a.status(&m, &fw, "t1", v1::TaskState::TaskKilled, "u2");
    let ack = a.next_acknowledge().await;
    assert_eq!((ack.task_id.as_str(), ack.uuid.as_str()), ("t1", "u2"));
    s.expect_no_update(&m).await;
    assert_eq!(task_state(&m, "t1").await.0, "LOST");
    m.stop().await;
}
