//! The queue of unacknowledged status updates (no I/O: the manager in
//! [`crate::status_updates`] checkpoints before it adds, and drives the timer).
//!
//! Like Mesos's status update manager, each task has a queue of unacknowledged
//! updates and only its head is in flight: the next update of a task (RUNNING after
//! STARTING) is sent once the previous one is acknowledged. A scheduler therefore
//! never sees a task's updates out of order, even across re-sends and reconnections.
//! An acknowledgement for an unknown uuid is ignored (duplicates are harmless).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use cella_proto::v1::{self, agent_message};
use tokio::sync::mpsc::UnboundedSender;

/// First re-send delay of an unacknowledged update; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

struct Pending {
    status: v1::TaskStatus,
    /// When to send it again (None: never sent on the current connection).
    next_retry: Option<Instant>,
    backoff: Duration,
}

/// The unacknowledged updates and the current connection to the master.
#[derive(Default)]
pub struct Updates {
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    by_task: HashMap<String, VecDeque<u64>>,
    by_uuid: HashMap<String, u64>,
    conn: Option<UnboundedSender<v1::AgentMessage>>,
}

/// What an acknowledgement did.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// Unknown uuid (a duplicate acknowledgement): nothing happened.
    Unknown,
    /// The update with this sequence number is forgotten; `drained` when it was the
    /// last pending update of its task.
    Forgotten {
        seq: u64,
        state: v1::TaskState,
        drained: bool,
    },
}

fn message(status: &v1::TaskStatus, latest_state: i32) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(agent_message::Message::StatusUpdate(
            agent_message::StatusUpdate {
                status: Some(status.clone()),
                latest_state,
            },
        )),
    }
}

impl Updates {
    /// Picks up the unacknowledged updates of a checkpoint, in sequence order.
    pub fn restore(&mut self, updates: Vec<(u64, v1::TaskStatus)>) {
        for (seq, status) in updates {
            self.next_seq = self.next_seq.max(seq);
            self.insert(seq, status);
        }
    }

    /// Reserves the sequence number of a new update.
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn insert(&mut self, seq: u64, status: v1::TaskStatus) {
        self.by_uuid.insert(status.uuid.clone(), seq);
        self.by_task
            .entry(status.task_id.clone())
            .or_default()
            .push_back(seq);
        self.pending.insert(
            seq,
            Pending {
                status,
                next_retry: None,
                backoff: RETRY_MIN,
            },
        );
    }

    /// Adds a checkpointed update; sends it now when it heads its task's queue and
    /// the agent is connected. Returns whether it was sent. Queued behind an update
    /// already sent and not acknowledged, it is told to the master as the task's
    /// newest state at once ([`agent_message::NewestState`]): the master's view
    /// follows the task while its scheduler has not acknowledged.
    pub fn add(&mut self, seq: u64, status: v1::TaskStatus, now: Instant) -> bool {
        let task = status.task_id.clone();
        self.insert(seq, status);
        let head = self.by_task.get(&task).and_then(|q| q.front().copied());
        match head {
            Some(h) if h == seq => self.send(seq, now),
            Some(h) if self.pending.get(&h).is_some_and(|p| p.next_retry.is_some()) => {
                self.tell_newest_state(seq);
                false
            }
            _ => false,
        }
    }

    /// Tells the master the state of update `seq` is its task's newest.
    fn tell_newest_state(&self, seq: u64) {
        if let (Some(conn), Some(p)) = (&self.conn, self.pending.get(&seq)) {
            let _ = conn.send(v1::AgentMessage {
                message: Some(agent_message::Message::NewestState(
                    agent_message::NewestState {
                        task_id: p.status.task_id.clone(),
                        state: p.status.state,
                    },
                )),
            });
        }
    }

    /// Sends update `seq` with its task's newest state; false when not connected.
    fn transmit(&self, seq: u64) -> bool {
        let (Some(conn), Some(p)) = (&self.conn, self.pending.get(&seq)) else {
            return false;
        };
        conn.send(message(&p.status, self.latest_state(seq)))
            .is_ok()
    }

    /// The newest state of the task of update `seq`: that of the last update in its
    /// queue.
    fn latest_state(&self, seq: u64) -> i32 {
        self.pending
            .get(&seq)
            .and_then(|p| self.by_task.get(&p.status.task_id))
            .and_then(|queue| queue.back())
            .and_then(|last| self.pending.get(last))
            .map_or(0, |p| p.status.state)
    }

    fn send(&mut self, seq: u64, now: Instant) -> bool {
        if !self.transmit(seq) {
            return false;
        }
        let Some(p) = self.pending.get_mut(&seq) else {
            return false;
        };
        p.next_retry = Some(now + p.backoff);
        p.backoff = (p.backoff * 2).min(RETRY_MAX);
        true
    }

    /// The agent (re-)registered: every queue's head is sent on `conn`. Returns how
    /// many were sent.
    pub fn connected(&mut self, conn: UnboundedSender<v1::AgentMessage>, now: Instant) -> usize {
        self.conn = Some(conn);
        let mut heads: Vec<u64> = self
            .by_task
            .values()
            .filter_map(|q| q.front().copied())
            .collect();
        heads.sort_unstable();
        let mut sent = 0;
        for seq in heads {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.backoff = RETRY_MIN;
            }
            if self.send(seq, now) {
                sent += 1;
            }
        }
        sent
    }

    pub fn disconnected(&mut self) {
        self.conn = None;
        for p in self.pending.values_mut() {
            p.next_retry = None;
        }
    }

    pub fn conn(&self) -> Option<&UnboundedSender<v1::AgentMessage>> {
        self.conn.as_ref()
    }

    /// Re-sends the heads whose retry time has come. Returns how many were sent.
    pub fn retry_due(&mut self, now: Instant) -> usize {
        let due: Vec<u64> = self
            .by_task
            .values()
            .filter_map(|q| q.front().copied())
            .filter(|seq| {
                self.pending
                    .get(seq)
                    .is_some_and(|p| p.next_retry.is_some_and(|t| t <= now))
            })
            .collect();
        let mut sent = 0;
        for seq in due {
            if self.send(seq, now) {
                sent += 1;
            }
        }
        sent
    }

    /// A scheduler acknowledged `uuid`; the next update of the task (if any) is sent.
    pub fn acknowledge(&mut self, task_id: &str, uuid: &str, now: Instant) -> Acked {
        let Some(seq) = self.by_uuid.get(uuid).copied() else {
            return Acked::Unknown;
        };
        let Some(p) = self.pending.remove(&seq) else {
            return Acked::Unknown;
        };
        self.by_uuid.remove(uuid);
        if p.status.task_id != task_id {
            tracing::debug!(
                task_id = task_id,
                "acknowledgement names task {} for update {uuid}",
                p.status.task_id
            );
        }
        let task = p.status.task_id.clone();
        let mut drained = false;
        let mut next = None;
        if let Some(q) = self.by_task.get_mut(&task) {
            q.retain(|s| *s != seq);
            next = q.front().copied();
            if q.is_empty() {
                self.by_task.remove(&task);
                drained = true;
            }
        }
        if let Some(next) = next {
            self.send(next, now);
        }
        Acked::Forgotten {
            seq,
            state: p.status.state(),
            drained,
        }
    }

    /// Whether the task still has unacknowledged updates.
    pub fn has_pending(&self, task_id: &str) -> bool {
        self.by_task.contains_key(task_id)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A fresh update (new uuid) of `task` to `state`.
    pub(crate) fn status(task: &str, state: v1::TaskState) -> v1::TaskStatus {
        v1::TaskStatus {
            task_id: task.into(),
            state: state as i32,
            uuid: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }
    }

    fn sent(rx: &mut mpsc::UnboundedReceiver<v1::AgentMessage>) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(agent_message::Message::StatusUpdate(u)) = m.message {
                let s = u.status.unwrap_or_default();
                out.push((s.task_id, s.state));
            }
        }
        out
    }

    #[test]
    fn in_order_per_task_with_retries() {
        let now = Instant::now();
        let mut u = Updates::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Written while disconnected: nothing is sent.
        let s1 = status("a", v1::TaskState::TaskStarting);
        let seq1 = u.next_seq();
        assert!(!u.add(seq1, s1.clone(), now));
        let s2 = status("a", v1::TaskState::TaskRunning);
        let seq2 = u.next_seq();
        u.add(seq2, s2.clone(), now);
        let s3 = status("b", v1::TaskState::TaskStarting);
        let seq3 = u.next_seq();
        u.add(seq3, s3.clone(), now);
        // Registration sends each task's head only.
        assert_eq!(u.connected(tx, now), 2);
        assert_eq!(sent(&mut rx), vec![("a".into(), 2), ("b".into(), 2)]);
        // Nothing is due before the backoff; then both heads are re-sent.
        assert_eq!(u.retry_due(now + Duration::from_millis(500)), 0);
        assert_eq!(u.retry_due(now + Duration::from_secs(1)), 2);
        sent(&mut rx);
        // The backoff doubled: 2 s after the re-send.
        assert_eq!(u.retry_due(now + Duration::from_secs(2)), 0);
        assert_eq!(u.retry_due(now + Duration::from_secs(3)), 2);
        sent(&mut rx);
        // Acknowledging a's STARTING sends its RUNNING.
        assert_eq!(
            u.acknowledge("a", &s1.uuid, now),
            Acked::Forgotten {
                seq: seq1,
                state: v1::TaskState::TaskStarting,
                drained: false
            }
        );
        assert_eq!(sent(&mut rx), vec![("a".into(), 3)]);
        // Duplicates and unknown uuids are ignored.
        assert_eq!(u.acknowledge("a", &s1.uuid, now), Acked::Unknown);
        assert_eq!(u.acknowledge("a", "nope", now), Acked::Unknown);
        assert!(matches!(
            u.acknowledge("a", &s2.uuid, now),
            Acked::Forgotten { drained: true, .. }
        ));
        assert!(!u.has_pending("a"));
        assert_eq!(u.len(), 1);
        u.disconnected();
        assert_eq!(u.retry_due(now + Duration::from_secs(100)), 0);
    }

    #[test]
    fn a_new_state_behind_an_unacknowledged_update_is_told_at_once() {
        let now = Instant::now();
        let mut u = Updates::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        u.connected(tx, now);
        let starting = status("a", v1::TaskState::TaskStarting);
        let seq = u.next_seq();
        assert!(u.add(seq, starting, now));
        rx.try_recv().unwrap();
        // RUNNING while STARTING waits for its acknowledgement: the master hears of
        // it at once; the update itself waits (no update is sent again early).
        let seq = u.next_seq();
        assert!(!u.add(seq, status("a", v1::TaskState::TaskRunning), now));
        let m = rx.try_recv().unwrap();
        let Some(agent_message::Message::NewestState(newest)) = m.message else {
            panic!("not the newest state: {m:?}");
        };
        assert_eq!(
            (newest.task_id.as_str(), newest.state()),
            ("a", v1::TaskState::TaskRunning)
        );
        assert!(rx.try_recv().is_err());
        // The retry schedule is unchanged: the first re-send is still 1 s after the send.
        assert_eq!(u.retry_due(now + Duration::from_millis(999)), 0);
        assert_eq!(u.retry_due(now + Duration::from_secs(1)), 1);
    }

    #[test]
    fn restore_keeps_order() {
        let mut u = Updates::default();
        let a = status("a", v1::TaskState::TaskRunning);
        let b = status("a", v1::TaskState::TaskFinished);
        u.restore(vec![(5, a.clone()), (9, b)]);
        assert_eq!(u.next_seq(), 10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert_eq!(u.connected(tx, Instant::now()), 1);
        assert_eq!(sent(&mut rx), vec![("a".into(), 3)]);
    }
}
