//! The status update manager (like Mesos' `StatusUpdateManager`): every task status
//! the agent generates goes through [`StatusUpdateManager::send`], which
//!
//! 1. checkpoints it (with the task's record) and waits until that is durable,
//! 2. queues it behind the task's earlier unacknowledged updates ([`queue`]),
//! 3. sends it when it heads its task's queue and the agent is registered,
//!
//! and it is re-sent with backoff ([`StatusUpdateManager::retry_timer`], 1 s doubling
//! to 30 s) until a scheduler acknowledges it ([`StatusUpdateManager::acknowledge`]):
//! at-least-once, in order per task, never lost across a crash. When the last update
//! of an ended task is acknowledged, the task is forgotten.
//!
//! The connection tells the manager when the agent is registered
//! ([`StatusUpdateManager::connected`], which sends every queue's head) and when the
//! stream broke ([`StatusUpdateManager::disconnected`]).

pub mod queue;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cella_proto::time::now_ns;
use cella_proto::v1;
use tokio::sync::{mpsc, watch};

use crate::periodic::Periodic;
use crate::state::{Shared, lock};
use crate::status_updates::queue::{Acked, Updates};
use crate::store::{StoreError, Write};

/// How often the queue is looked at for updates whose re-send time has come.
pub const RETRY_TICK: Duration = Duration::from_millis(200);

/// The reliable path of status updates to the master.
pub struct StatusUpdateManager {
    shared: Arc<Shared>,
    queue: Mutex<Updates>,
}

impl StatusUpdateManager {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            queue: Mutex::new(Updates::default()),
        }
    }

    /// Takes the unacknowledged updates of a checkpoint (in sequence order); they are
    /// sent once the agent registers.
    pub fn restore(&self, unacknowledged: Vec<(u64, v1::TaskStatus)>) {
        let mut queue = lock(&self.queue);
        queue.restore(unacknowledged);
        self.set_pending_gauge(&queue);
    }

    fn set_pending_gauge(&self, queue: &Updates) {
        self.shared
            .metrics
            .updates_pending
            .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
    }

    /// Checkpoints `status` (with the task's record, if it still exists), then sends it
    /// when it heads its task's queue. Returns once it is durable.
    pub async fn send(&self, status: v1::TaskStatus) -> Result<(), StoreError> {
        self.checkpoint_and_queue(status, true).await
    }

    /// Like [`StatusUpdateManager::send`], without touching the task's record: for an
    /// update about a launch that was refused because its id is taken by another task.
    pub async fn send_detached(&self, status: v1::TaskStatus) -> Result<(), StoreError> {
        self.checkpoint_and_queue(status, false).await
    }

    async fn checkpoint_and_queue(
        &self,
        mut status: v1::TaskStatus,
        update_task: bool,
    ) -> Result<(), StoreError> {
        if status.uuid.is_empty() {
            status.uuid = uuid::Uuid::new_v4().to_string();
        }
        if status.timestamp_ns == 0 {
            status.timestamp_ns = now_ns();
        }
        if let Some(id) = self.shared.agent_id() {
            status.agent_id = id;
        }
        let state = status.state();
        // Queued while the task is locked: a concurrent change of the task (a kill
        // request) is checkpointed after this copy, never before it.
        let (seq, durable) = {
            let mut tasks = lock(&self.shared.tasks);
            let record = if update_task {
                tasks.get_mut(&status.task_id).map(|t| {
                    t.state = state;
                    if status.image_digest.is_empty() {
                        status.image_digest.clone_from(&t.image_digest);
                    }
                    if state.is_terminal() && t.ended_ns == 0 {
                        t.ended_ns = now_ns();
                    }
                    t.record()
                })
            } else {
                None
            };
            let seq = lock(&self.queue).next_seq();
            let mut writes = vec![Write::PutUpdate(seq, status.clone())];
            if let Some(record) = record {
                writes.push(Write::PutTask(status.task_id.clone(), Box::new(record)));
            }
            (seq, self.shared.store.submit(writes))
        };
        durable.await?;
        let mut queue = lock(&self.queue);
        if queue.add(seq, status, Instant::now()) {
            self.shared.metrics.updates_sent.inc();
        }
        self.set_pending_gauge(&queue);
        Ok(())
    }

    /// A scheduler acknowledged an update: it is forgotten and the task's next update
    /// (if any) is sent. When it was a task's last update and the task has ended, the
    /// task is forgotten too (its sandbox stays for `cella logs`).
    pub fn acknowledge(&self, task_id: &str, uuid: &str) {
        let acked = {
            let mut queue = lock(&self.queue);
            let acked = queue.acknowledge(task_id, uuid, Instant::now());
            self.set_pending_gauge(&queue);
            acked
        };
        match acked {
            Acked::Unknown => {
                tracing::debug!(
                    task_id = task_id,
                    uuid,
                    "acknowledgement of an unknown update ignored"
                );
            }
            Acked::Forgotten {
                seq,
                state,
                drained,
            } => {
                self.shared.metrics.updates_acknowledged.inc();
                let mut writes = vec![Write::DeleteUpdate(seq)];
                if drained && state.is_terminal() {
                    let mut tasks = lock(&self.shared.tasks);
                    if tasks
                        .get(task_id)
                        .is_some_and(|t| t.state.is_terminal() && t.running.is_none())
                    {
                        if let Some(task) = tasks.remove(task_id) {
                            keep_end_time(&task.sandbox, task.ended_ns);
                        }
                        writes.push(Write::DeleteTask(task_id.to_string()));
                    }
                }
                self.shared.store.write_later(writes);
            }
        }
    }

    /// The agent (re-)registered: updates go out on `conn` from now on, starting with
    /// every task's oldest unacknowledged one. Returns how many were sent.
    pub fn connected(&self, conn: mpsc::UnboundedSender<v1::AgentMessage>) -> usize {
        let sent = lock(&self.queue).connected(conn, Instant::now());
        self.shared
            .metrics
            .updates_sent
            .inc_by(u64::try_from(sent).unwrap_or(0));
        sent
    }

    /// The stream to the master broke: nothing is sent (or re-sent) until the next
    /// registration.
    pub fn disconnected(&self) {
        lock(&self.queue).disconnected();
    }

    /// Whether the agent is registered with the master (updates can go out).
    pub fn is_connected(&self) -> bool {
        lock(&self.queue).conn().is_some()
    }

    /// How many updates wait for their acknowledgement.
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether the task still has unacknowledged updates.
    pub fn has_pending(&self, task_id: &str) -> bool {
        lock(&self.queue).has_pending(task_id)
    }

    /// Re-sends, every [`RETRY_TICK`], the updates whose backoff has passed, until
    /// `stop` is set.
    pub async fn retry_timer(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut timer = Periodic::new(RETRY_TICK, stop);
        while timer.next().await {
            let sent = lock(&self.queue).retry_due(Instant::now());
            if sent > 0 {
                self.shared
                    .metrics
                    .updates_sent
                    .inc_by(u64::try_from(sent).unwrap_or(0));
                tracing::debug!(sent, "re-sent unacknowledged status updates");
            }
        }
    }
}

/// Once a task is forgotten, the garbage collector knows its end only from its
/// sandbox's modification time: the sandbox is stamped with the end, or a task that
/// wrote nothing lately would look as old as its launch and lose its sandbox before
/// `--gc-delay` has passed.
fn keep_end_time(sandbox: &std::path::Path, ended_ns: u64) {
    if ended_ns == 0 {
        return;
    }
    let end = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ended_ns);
    if let Err(e) = std::fs::File::open(sandbox).and_then(|dir| dir.set_modified(end)) {
        tracing::debug!(sandbox = %sandbox.display(), "stamping the end time: {e}");
    }
}
