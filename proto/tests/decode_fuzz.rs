//! Decoding protobuf from the network: arbitrary or corrupted bytes give errors, never
//! panics.

use cella_proto::v1::{
    AgentMessage, Call, Event, MasterToAgent, Resources, TaskInfo, TaskStatus, agent_message, call,
    event, master_to_agent,
};
use proptest::prelude::*;
use prost::Message;

fn decode_all(bytes: &[u8]) {
    let _ = AgentMessage::decode(bytes);
    let _ = Call::decode(bytes);
    let _ = Event::decode(bytes);
    let _ = MasterToAgent::decode(bytes);
    let _ = AgentMessage::decode_length_delimited(bytes);
    let _ = Call::decode_length_delimited(bytes);
}

fn samples() -> Vec<Vec<u8>> {
    let task = TaskInfo {
        task_id: "t1".into(),
        name: "echo".into(),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["A=B".into()],
        resources: Some(Resources {
            cpus: 0.5,
            mem_bytes: 64 << 20,
            disk_bytes: 1 << 30,
        }),
        pids_limit: 10,
        ..Default::default()
    };
    let status = TaskStatus {
        task_id: "t1".into(),
        state: 3,
        exit_code: Some(0),
        uuid: "u".into(),
        ..Default::default()
    };
    vec![
        AgentMessage {
            message: Some(agent_message::Message::Register(agent_message::Register {
                agent_id: "a1".into(),
                hostname: "h".into(),
                total: task.resources,
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        AgentMessage {
            message: Some(agent_message::Message::StatusUpdate(
                agent_message::StatusUpdate {
                    status: Some(status.clone()),
                    latest_state: cella_proto::v1::TaskState::TaskRunning as i32,
                },
            )),
        }
        .encode_to_vec(),
        MasterToAgent {
            message: Some(master_to_agent::Message::Launch(
                master_to_agent::LaunchTask {
                    framework_id: "f".into(),
                    task: Some(task.clone()),
                    role: "r".into(),
                    principal: "user:u".into(),
                },
            )),
        }
        .encode_to_vec(),
        Call {
            call: Some(call::Call::Accept(call::Accept {
                offer_ids: vec!["o1".into()],
                tasks: vec![task],
                refuse_seconds: Some(5.0),
            })),
        }
        .encode_to_vec(),
        Event {
            event: Some(event::Event::Update(event::Update {
                status: Some(status),
            })),
        }
        .encode_to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_messages_never_panic(
        which in 0usize..5,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = samples()[which].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        decode_all(&bytes);
        let n = cut.index(bytes.len() + 1);
        decode_all(&bytes[..n]);
    }
}

#[test]
fn samples_round_trip() {
    for bytes in samples() {
        // Each sample decodes as its own type at least.
        let ok = AgentMessage::decode(&bytes[..]).is_ok()
            || MasterToAgent::decode(&bytes[..]).is_ok()
            || Call::decode(&bytes[..]).is_ok()
            || Event::decode(&bytes[..]).is_ok();
        assert!(ok);
    }
    let bytes = samples()[3].clone();
    let call = Call::decode(&bytes[..]).unwrap();
    assert_eq!(call.encode_to_vec(), bytes);
}
