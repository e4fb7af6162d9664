//! What the master writes to its audit log (`crate::audit`): task ends, built from
//! its view of the task and the terminal status, and kill requests; and the group
//! commit of task ends: the records of a batch of commands are written, then synced
//! once, and what the batch sends to schedulers and agents is held back until then.

use cella_proto::v1;

use super::{Master, OperatorError};
use crate::allocator::{AgentId, FrameworkId};

/// A message held back until the audit log is synced.
pub(super) enum Held {
    Framework(FrameworkId, v1::Event),
    /// An acknowledgement to an agent: agent, task id, uuid.
    Ack(AgentId, String, String),
}
use crate::audit::record::{Kill, Requested};
use crate::audit::{Event, TaskEnd};

impl Master {
    /// Notes a launch (its time goes on the task's end record).
    pub(super) fn audit_launched(&self, task_id: &str) {
        if let Some(log) = &self.config.audit {
            log.launched(task_id);
        }
    }

    /// Records the end of `task_id` as `status` says (an agent's terminal update, or
    /// a state the master decided), or notes its start. `false` when the record
    /// could not be written: then nothing that lets the agent drop the update may
    /// be sent (it sends it again, and the write is tried again).
    pub(super) fn audit_status(&self, task_id: &str, status: &v1::TaskStatus) -> bool {
        let Some(log) = &self.config.audit else {
            return true;
        };
        if status.state() == v1::TaskState::TaskRunning {
            log.running(task_id, status.timestamp_ns);
            return true;
        }
        if !status.state().is_terminal() || log.has_ended(task_id, &status.uuid) {
            return true;
        }
        let Some(task) = self.tasks.get(task_id) else {
            return true;
        };
        let (principal, role) = self.target_of(&task.framework);
        let hostname = self
            .agents
            .get(&task.agent)
            .map(|a| a.hostname.clone())
            .unwrap_or_default();
        let summary = status.summary.as_deref().cloned();
        let end = TaskEnd {
            task_id: task_id.to_string(),
            update_uuid: status.uuid.clone(),
            framework_id: task.framework.to_string(),
            principal,
            role,
            user: task.info.user.clone(),
            command: task.info.command.clone(),
            image: task
                .info
                .image
                .as_ref()
                .map(|i| i.reference.clone())
                .unwrap_or_default(),
            image_digest: if status.image_digest.is_empty() {
                task.status.image_digest.clone()
            } else {
                status.image_digest.clone()
            },
            rootfs: task.info.rootfs.clone(),
            resources: Requested {
                cpus: task.resources.cpus(),
                mem_bytes: task.resources.mem_bytes,
                disk_bytes: task.resources.disk_bytes,
            },
            agent_id: task.agent.to_string(),
            hostname,
            submitted_ns: None,
            started_ns: summary.as_ref().map(|s| s.started_ns).filter(|t| *t > 0),
            ended_ns: summary
                .as_ref()
                .map(|s| s.ended_ns)
                .filter(|t| *t > 0)
                .unwrap_or(status.timestamp_ns),
            state: status.state().name().to_string(),
            reason: status.reason().name().to_string(),
            exit_code: status.exit_code,
            signal: status.signal,
            message: status.message.clone(),
            summary,
        };
        log.task_end_unsynced(end).is_ok()
    }

    /// Whether messages to schedulers and agents are held back now: a task end is
    /// written but not synced yet (or earlier messages are held: order is kept).
    pub(super) fn holding(&self) -> bool {
        self.config
            .audit
            .as_ref()
            .is_some_and(|log| log.unsynced() || !self.held.borrow().is_empty())
    }

    /// Holds `held` back until [`Master::release_held`].
    pub(super) fn hold(&self, held: Held) {
        self.held.borrow_mut().push(held);
    }

    /// Syncs the audit log, then sends what was held back, in order. Should the sync
    /// fail, the terminal updates and acknowledgements are dropped (their records
    /// are gone): the agents send those updates again, and they are recorded then.
    pub(super) fn release_held(&mut self) {
        let Some(log) = self.config.audit.clone() else {
            return;
        };
        if !log.unsynced() && self.held.borrow().is_empty() {
            return;
        }
        let synced = log.sync().is_ok();
        for held in self.held.take() {
            match held {
                Held::Framework(id, event) => {
                    let terminal = matches!(
                        &event.event,
                        Some(v1::event::Event::Update(u))
                            if u.status.as_ref().is_some_and(|s| s.state().is_terminal())
                    );
                    if synced || !terminal {
                        self.send_to_framework(&id, event);
                    }
                }
                Held::Ack(agent, task, uuid) if synced => self.ack_to_agent(&agent, &task, &uuid),
                Held::Ack(..) => {}
            }
        }
    }

    /// Records a kill request: who asked, through which API, and whether it was
    /// sent on (`result`).
    pub(super) fn audit_kill(
        &self,
        task_id: &str,
        by: String,
        via: &str,
        policy: Option<&v1::KillPolicy>,
        result: &Result<(), OperatorError>,
    ) {
        let Some(log) = &self.config.audit else {
            return;
        };
        let framework_id = self
            .tasks
            .get(task_id)
            .map(|t| t.framework.to_string())
            .unwrap_or_default();
        let _ = log.record(Event::Kill(Kill {
            task_id: task_id.to_string(),
            framework_id,
            by,
            via: via.to_string(),
            grace_period_secs: policy.and_then(|p| p.grace_period_secs),
            refused: result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }));
    }
}
