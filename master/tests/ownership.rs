//! A framework's tasks are its own, through the actor: another framework cannot
//! acknowledge their updates or kill them, and the agent hears nothing of it.

mod common;

use cella_proto::v1::{self, call, event, master_to_agent};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_framework_cannot_acknowledge_or_kill_a_task() {
    let (_dir, m) = spawned();
    let (mut alice, mut a, offers) = offered(&m, "alice", "agent-a").await;
    // Bob subscribes once alice holds the agent's offer (with both subscribed first,
    // the one offer could go to either).
    let mut bob = subscribe(&m, "", "bob").await.unwrap();
    alice.accept(&m, offers[0].offer_id.clone(), vec![task_info("t1")]);
    assert_eq!(a.next_launch().await.task_id, "t1");
    a.status(&m, &alice.id, "t1", v1::TaskState::TaskRunning, "u1");
    assert_eq!(alice.next_update().await.uuid, "u1");

    // Bob acknowledges alice's update and kills her task: both refused.
    bob.call(
        &m,
        call::Call::Acknowledge(call::Acknowledge {
            agent_id: "agent-a".into(),
            task_id: "t1".into(),
            uuid: "u1".into(),
        }),
    );
    bob.call(
        &m,
        call::Call::Kill(call::Kill {
            task_id: "t1".into(),
            kill_policy: None,
        }),
    );
    let mut errors = Vec::new();
    let mut others = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while errors.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two errors expected; errors {errors:?}, other events {others:?}"
        );
        match bob.next().await {
            event::Event::Error(e) => errors.push(e.message),
            other => others.push(format!("{other:?}")),
        }
    }
    assert!(
        errors[0].contains("not a task of this framework"),
        "{errors:?}"
    );
    assert!(errors[1].contains("unknown task"), "{errors:?}");

    // Alice's own acknowledgement reaches the agent, and it is the first thing it hears
    // since the launch: neither bob's acknowledgement nor his kill did.
    alice.call(
        &m,
        call::Call::Acknowledge(call::Acknowledge {
            agent_id: "agent-a".into(),
            task_id: "t1".into(),
            uuid: "u1".into(),
        }),
    );
    let first = a
        .next_picked("an acknowledgement or a kill", |msg| match msg {
            master_to_agent::Message::Acknowledge(ack) => Some(format!("ack {}", ack.uuid)),
            master_to_agent::Message::Kill(k) => Some(format!("kill {}", k.task_id)),
            _ => None,
        })
        .await;
    assert_eq!(first, "ack u1");
    m.stop().await;
}
