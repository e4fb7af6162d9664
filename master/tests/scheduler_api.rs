//! The scheduler API as a scheduler written from `cella.proto` and `docs/api.md` finds
//! it, through the master actor with a fake agent: reconciliation, acknowledgements,
//! teardown, kill grace periods, ACCEPTs that do not fit, and the master's view of a
//! task whose scheduler does not acknowledge.

mod common;

use cella_master::master;
use cella_proto::v1::{self, agent_message, call, event};
use common::*;

/// A framework of alice with `tasks` launched on one agent.
async fn launched(
    m: &master::MasterHandle,
    agent: &str,
    tasks: Vec<v1::TaskInfo>,
) -> (Scheduler, Agent) {
    let (s, mut a, offers) = offered(m, "alice", agent).await;
    let n = tasks.len();
    s.accept(m, offers[0].offer_id.clone(), tasks);
    for _ in 0..n {
        a.next_launch().await;
    }
    (s, a)
}

/// [`launched`] with the one task `t1`, whose RUNNING update (uuid `u1`) has reached
/// the scheduler.
async fn t1_running(m: &master::MasterHandle, agent: &str) -> (Scheduler, Agent) {
    let (mut s, a) = launched(m, agent, vec![task_info("t1")]).await;
    a.send(m, running(&a, &s.id, "t1", "u1"));
    assert_eq!(s.update_for("t1").await.uuid, "u1");
    (s, a)
}

fn update(
    agent: &Agent,
    fw: &str,
    task: &str,
    state: v1::TaskState,
    latest: v1::TaskState,
    reason: v1::Reason,
    uuid: &str,
) -> agent_message::Message {
    let mut u = status_update(&agent.id, fw, task, state, uuid);
    u.latest_state = latest as i32;
    if let Some(s) = u.status.as_mut() {
        s.reason = reason as i32;
        s.message = format!("{} reported by the test agent", state.as_str_name());
    }
    agent_message::Message::StatusUpdate(u)
}

/// A RUNNING update whose newest state is RUNNING too.
fn running(agent: &Agent, fw: &str, task: &str, uuid: &str) -> agent_message::Message {
    use v1::TaskState::TaskRunning;
    update(
        agent,
        fw,
        task,
        TaskRunning,
        TaskRunning,
        v1::Reason::Unspecified,
        uuid,
    )
}

/// The agent's word that `task` is now in `state` (no update of its own).
fn newest_state(task: &str, state: v1::TaskState) -> agent_message::Message {
    agent_message::Message::NewestState(agent_message::NewestState {
        task_id: task.into(),
        state: state as i32,
    })
}

/// `agent` sends `message` and the master has handled it.
async fn step(m: &master::MasterHandle, agent: &Agent, message: agent_message::Message) {
    agent.send(m, message);
    handled(m).await;
}

fn ack(task: &str, uuid: &str) -> call::Call {
    call::Call::Acknowledge(call::Acknowledge {
        agent_id: String::new(),
        task_id: task.into(),
        uuid: uuid.into(),
    })
}

/// The next ERROR event's message (other events are kept or dropped as `next` does).
async fn next_error(s: &mut Scheduler) -> String {
    loop {
        match s.next().await {
            event::Event::Error(e) => return e.message,
            event::Event::Update(u) => s.pending.push_back(u.status.unwrap()),
            _ => {}
        }
    }
}

/// Every reconciliation answer until `n` have come, by task id.
async fn answers(
    s: &mut Scheduler,
    n: usize,
) -> std::collections::BTreeMap<String, v1::TaskStatus> {
    let mut out = std::collections::BTreeMap::new();
    while out.len() < n {
        let u = s.next_update().await;
        out.insert(u.task_id.clone(), u);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_reconciliation_answers_every_task_not_fully_acknowledged() {
    let (_dir, m) = spawned();
    let (mut s, a) = launched(&m, "agent-r", vec![task_info("t-run"), task_info("t-end")]).await;
    let fw = s.id.clone();
    use v1::TaskState::{TaskFinished, TaskRunning};
    a.send(&m, running(&a, &fw, "t-run", "u1"));
    a.send(
        &m,
        update(
            &a,
            &fw,
            "t-end",
            TaskFinished,
            TaskFinished,
            v1::Reason::CommandExited,
            "u2",
        ),
    );
    assert_eq!(s.update_for("t-run").await.uuid, "u1");
    assert_eq!(s.update_for("t-end").await.uuid, "u2");

    // Nothing acknowledged: both are answered, t-end although it has ended; every
    // answer says it is one, keeps the reason of the state in its message and needs
    // no acknowledgement.
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile { task_ids: vec![] }),
    );
    let got = answers(&mut s, 2).await;
    assert_eq!(got["t-run"].state(), TaskRunning);
    assert_eq!(got["t-end"].state(), TaskFinished);
    for answer in got.values() {
        assert_eq!(answer.reason(), v1::Reason::Reconciliation, "{answer:?}");
        assert!(answer.uuid.is_empty(), "{answer:?}");
    }
    assert!(
        got["t-end"].message.starts_with("COMMAND_EXITED: "),
        "{:?}",
        got["t-end"].message
    );
    s.expect_no_update(&m).await;

    // t-end's end acknowledged: an implicit reconciliation leaves it out; an explicit
    // one still answers for it.
    s.call(&m, ack("t-end", "u2"));
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile { task_ids: vec![] }),
    );
    let got = answers(&mut s, 1).await;
    assert!(got.contains_key("t-run"), "{got:?}");
    s.expect_no_update(&m).await;
    s.call(
        &m,
        call::Call::Reconcile(call::Reconcile {
            task_ids: vec!["t-end".into()],
        }),
    );
    let u = s.update_for("t-end").await;
    assert_eq!(
        (u.state(), u.reason()),
        (TaskFinished, v1::Reason::Reconciliation)
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_of_no_update_get_an_error_event() {
    let (_dir, m) = spawned();
    let (mut s, mut a) = t1_running(&m, "agent-k").await;

    s.call(&m, ack("t1", "no-such-uuid"));
    let e = next_error(&mut s).await;
    assert!(
        e.starts_with("ACKNOWLEDGE") && e.contains("no-such-uuid") && e.contains("\"u1\""),
        "{e}"
    );
    s.call(&m, ack("t1", ""));
    let e = next_error(&mut s).await;
    assert!(
        e.starts_with("ACKNOWLEDGE") && e.contains("uuid is empty"),
        "{e}"
    );

    // The real one reaches the agent (the refused ones did not); a second copy of it
    // is harmless: the next error is about the next bad uuid.
    s.call(&m, ack("t1", "u1"));
    let first = a.next_acknowledge().await.uuid;
    assert_eq!(first, "u1");
    s.call(&m, ack("t1", "u1"));
    s.call(&m, ack("t1", "bogus-2"));
    let e = next_error(&mut s).await;
    assert!(e.contains("bogus-2"), "{e}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_kills_with_the_grace_period_and_reason_framework_removed() {
    let (_dir, m) = spawned();
    let (s, mut a) = t1_running(&m, "agent-t").await;
    let fw = s.id.clone();
    use v1::TaskState::TaskKilled;
    s.call(&m, ack("t1", "u1"));

    s.call(&m, call::Call::Teardown(call::Teardown {}));
    let kill = a.next_kill().await;
    assert_eq!(kill.task_id, "t1");
    assert_eq!(kill.grace_period_ms, Some(5_000), "the cluster's default");

    // The agent reports the kill it was asked for; the master says why it happened.
    a.send(
        &m,
        update(
            &a,
            &fw,
            "t1",
            TaskKilled,
            TaskKilled,
            v1::Reason::KilledByRequest,
            "u2",
        ),
    );
    let acked = a.next_acknowledge().await.uuid;
    assert_eq!(acked, "u2");
    assert_eq!(task_state(&m, "t1").await, ("KILLED", "FRAMEWORK_REMOVED"));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_carry_the_grace_period_of_the_call_the_task_or_the_cluster() {
    let (_dir, m) = spawned();
    let with_policy = |id: &str, secs: f64| v1::TaskInfo {
        kill_policy: Some(v1::KillPolicy {
            grace_period_secs: Some(secs),
        }),
        ..task_info(id)
    };
    let (s, mut a) = launched(
        &m,
        "agent-g",
        vec![
            with_policy("own", 2.5),
            with_policy("huge", 1e9),
            task_info("plain"),
        ],
    )
    .await;
    let kill = |task: &str, policy: Option<f64>| {
        s.call(
            &m,
            call::Call::Kill(call::Kill {
                task_id: task.into(),
                kill_policy: policy.map(|g| v1::KillPolicy {
                    grace_period_secs: Some(g),
                }),
            }),
        );
    };
    kill("own", None);
    kill("huge", None);
    kill("plain", None);
    kill("own", Some(0.0));
    let mut graces = Vec::new();
    while graces.len() < 4 {
        let k = a.next_kill().await;
        graces.push((k.task_id, k.grace_period_ms));
    }
    assert_eq!(
        graces,
        vec![
            ("own".to_string(), Some(2_500)),
            ("huge".to_string(), Some(300_000)),
            ("plain".to_string(), Some(5_000)),
            ("own".to_string(), Some(0)),
        ]
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_beyond_the_offer_refuses_the_task_that_does_not_fit_with_units() {
    let (_dir, m) = spawned();
    let (mut s, mut a, offers) = offered(&m, "alice", "agent-f").await;
    let big = v1::TaskInfo {
        resources: Some(v1::Resources {
            cpus: 0.5,
            mem_bytes: 5 << 30,
            disk_bytes: 0,
        }),
        ..task_info("big")
    };
    s.accept(
        &m,
        offers[0].offer_id.clone(),
        vec![task_info("small-1"), big, task_info("small-2")],
    );
    let refused = s.update_for("big").await;
    assert_eq!(
        (refused.state(), refused.reason()),
        (v1::TaskState::TaskError, v1::Reason::InvalidTask)
    );
    let msg = &refused.message;
    assert!(
        msg.contains("task \"big\"")
            && msg.contains("5 GiB of memory")
            && msg.contains("left of 4 GiB"),
        "{msg}"
    );
    assert!(
        !msg.contains("cpus"),
        "cpus fit, only memory is named: {msg}"
    );
    // The tasks that fit are launched.
    let mut launched = vec![a.next_launch().await.task_id, a.next_launch().await.task_id];
    launched.sort();
    assert_eq!(launched, ["small-1", "small-2"]);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masters_view_follows_the_agents_newest_state_without_acknowledgements() {
    let (_dir, m) = spawned();
    let (s, a) = launched(&m, "agent-v", vec![task_info("t1")]).await;
    let fw = s.id.clone();
    use v1::TaskState::{TaskKilled, TaskRunning, TaskStarting};
    // STARTING is never acknowledged: the agent tells the newest state as the task
    // moves on, and sends STARTING again (with the newest state) on its retries.
    let starting = |newest| {
        update(
            &a,
            &fw,
            "t1",
            TaskStarting,
            newest,
            v1::Reason::Unspecified,
            "u1",
        )
    };
    step(&m, &a, starting(TaskStarting)).await;
    assert_eq!(task_state(&m, "t1").await.0, "STARTING");
    step(&m, &a, newest_state("t1", TaskRunning)).await;
    assert_eq!(task_state(&m, "t1").await.0, "RUNNING");
    // Another agent cannot move it.
    let other = register_agent(&m, "agent-w", vec![]).await;
    step(&m, &other, newest_state("t1", TaskKilled)).await;
    assert_eq!(task_state(&m, "t1").await.0, "RUNNING");
    step(&m, &a, starting(TaskKilled)).await;
    assert_eq!(task_state(&m, "t1").await.0, "KILLED");
    m.stop().await;
}
