//! Tasks: the check of a task before launch, the launch, status updates and usage
//! from agents, the end of a task, reconciliation, kill and acknowledgement.

use std::collections::BTreeSet;

use cella_proto::acl::{Action, Denied, Target};
use cella_proto::time::now_ns;
use cella_proto::tls::Identity;
use cella_proto::v1::{self, agent_message::UsageReport, call, master_to_agent};
use cella_proto::{secrets, validate};

use super::{Master, OperatorError, error_event, kill_message, update_event};
use crate::allocator::{AgentId, Allocator, FrameworkId, Resources};
use crate::authz::agents::{Refusal, check_status_update};
use crate::authz::task_request;
use crate::state::{Task, from_wire};

/// Where a state is in a task's life: later states have higher ranks (every end
/// has the same).
fn status_rank(state: v1::TaskState) -> u8 {
    match state {
        v1::TaskState::Unspecified => 0,
        v1::TaskState::TaskStaging => 1,
        v1::TaskState::TaskStarting => 2,
        v1::TaskState::TaskRunning => 3,
        _ => 4,
    }
}

/// The `uuid` of a task status the master took from an agent's newest state (one it
/// decided itself has none).
const NEWEST_STATE: &str = "newest-state";

/// Bounds the reconciliations kept waiting for recovering agents (beyond it, the
/// answer is given at once).
const MAX_DEFERRED_RECONCILES: usize = 100_000;

impl Master {
    /// Checks a task of an ACCEPT ([`validate::task`], that its id is not already
    /// used, and that the framework's scheduler may run it on `agent`: `run_task`,
    /// `use_volume`, `use_rootfs`, `use_image`); returns the resources it needs.
    pub(super) fn check_task(
        &self,
        framework: &FrameworkId,
        agent: Option<&AgentId>,
        task: &v1::TaskInfo,
        seen: &mut BTreeSet<String>,
    ) -> Result<Resources, String> {
        validate::task(task).map_err(|e| e.to_string())?;
        let Some(fw) = self.frameworks.get(framework) else {
            return Err(format!("framework {framework} is not registered"));
        };
        let Some(caller) = &fw.caller else {
            return Err(format!("framework {framework} has no scheduler connected"));
        };
        let attributes = agent
            .and_then(|a| self.agents.get(a))
            .map(|a| &a.attributes);
        self.config
            .authorizer
            .check(
                caller,
                &Action::RunTask(task_request(task, &fw.role, attributes)),
                &format!("launching task {}", task.task_id),
            )
            .map_err(|denied| denied.to_string())?;
        if self.tasks.contains_key(&task.task_id) || !seen.insert(task.task_id.clone()) {
            return Err(format!(
                "task_id {:?} is already used: task ids must be unique",
                task.task_id
            ));
        }
        from_wire(task.resources.as_ref()).map_err(|e| format!("resources: {e}"))
    }

    /// Answers a task that is not launched with `ERROR` / `INVALID_TASK` and `why`.
    pub(super) fn refuse_task(
        &mut self,
        framework: &FrameworkId,
        agent: Option<&AgentId>,
        task: &v1::TaskInfo,
        why: &str,
    ) {
        self.metrics.tasks_invalid.inc();
        self.send_to_framework(
            framework,
            update_event(v1::TaskStatus {
                task_id: task.task_id.clone(),
                framework_id: framework.to_string(),
                agent_id: agent.map(ToString::to_string).unwrap_or_default(),
                state: v1::TaskState::TaskError as i32,
                reason: v1::Reason::InvalidTask as i32,
                message: why.to_string(),
                timestamp_ns: now_ns(),
                ..Default::default()
            }),
        );
    }

    /// Records the task and sends it to its agent. Only the agent gets the secrets'
    /// values: the master keeps (and stores) the task without them.
    pub(super) fn launch(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        task: v1::TaskInfo,
        resources: Resources,
    ) {
        let task_id = task.task_id.clone();
        let (role, principal) = self
            .frameworks
            .get(framework)
            .map(|f| (f.role.clone(), f.principal.clone()))
            .unwrap_or_default();
        let status = v1::TaskStatus {
            task_id: task_id.clone(),
            framework_id: framework.to_string(),
            agent_id: agent.to_string(),
            state: v1::TaskState::TaskStaging as i32,
            timestamp_ns: now_ns(),
            ..Default::default()
        };
        self.tasks.insert(
            task_id.clone(),
            Task {
                info: secrets::redacted(&task),
                framework: framework.clone(),
                agent: agent.clone(),
                resources,
                status,
                usage: None,
                acks: Default::default(),
            },
        );
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.tasks.insert(task_id.clone());
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.insert(task_id.clone());
        }
        self.registry.task_changed(&task_id);
        self.metrics.tasks_launched.inc();
        self.audit_launched(&task_id);
        let sent = self.send_to_agent(
            agent,
            master_to_agent::Message::Launch(master_to_agent::LaunchTask {
                framework_id: framework.to_string(),
                task: Some(task),
                role,
                principal,
            }),
        );
        if !sent {
            self.master_status(
                &task_id,
                v1::TaskState::TaskLost,
                v1::Reason::AgentLost,
                "the agent disconnected before the task could be sent to it",
            );
        }
    }

    /// Keeps each task's latest usage sample, every figure of it, and its history
    /// (of the tasks on the reporting agent only).
    pub(super) fn record_usage(&mut self, agent: &AgentId, report: UsageReport) {
        let samples = self.decode_usage(agent, report);
        let mut foreign = 0;
        for usage in samples {
            match self.tasks.get_mut(&usage.task_id) {
                Some(task) if &task.agent == agent => {
                    self.usage.record(&usage);
                    task.usage = Some(usage);
                }
                Some(_) => foreign += 1,
                None => {}
            }
        }
        if foreign > 0 {
            self.metrics.agent_refused("usage_not_its_task");
            tracing::warn!(agent_id = %agent, tasks = foreign, "refused usage samples of other agents' tasks");
        }
    }

    pub(super) fn status_update(
        &mut self,
        agent: &AgentId,
        mut status: v1::TaskStatus,
        latest_state: v1::TaskState,
    ) {
        status.agent_id = agent.to_string();
        if let Err(refusal) = check_status_update(
            agent,
            self.tasks.get(&status.task_id),
            &status,
            latest_state,
        ) {
            // Acknowledged to the sender, so that it does not re-send it forever; not
            // passed on, and the master's view does not change.
            self.agent_refused(agent.as_str(), &refusal);
            self.ack_to_agent(agent, &status.task_id, &status.uuid);
            return;
        }
        let Some(task) = self.tasks.get_mut(&status.task_id) else {
            return;
        };
        let was_terminal = task.is_terminal();
        if was_terminal && task.status.uuid.is_empty() {
            // The master ended this task itself (LOST: its agent was gone too long,
            // or came back without it) and told the scheduler so. Anything the
            // agent says later would be a second end: acknowledged and dropped.
            tracing::info!(
                task_id = %status.task_id,
                state = status.state().name(),
                "update of a task the master already reported {}: dropped",
                task.state().name()
            );
            self.ack_to_agent(agent, &status.task_id, &status.uuid);
            return;
        }
        status.framework_id = task.framework.to_string();
        // A late non-terminal update must not resurrect a finished task; a terminal
        // one brings the details (exit code, reason) of how it ended.
        if !was_terminal || status.state().is_terminal() {
            task.status = status.clone();
        }
        // Updates of a task reach the master one at a time, each after the previous
        // one was acknowledged; the agent's newest state may be ahead (the task runs,
        // or ended, while its scheduler has not acknowledged STARTING). The master's
        // view follows the newest state.
        if status_rank(latest_state) > status_rank(task.state()) && !task.is_terminal() {
            task.status.state = latest_state as i32;
            task.status.message = format!(
                "{} on the agent; the update with the details waits for the scheduler's \
                 acknowledgement of earlier updates",
                latest_state.name()
            );
        }
        let framework = task.framework.clone();
        let framework_removed = !self.frameworks.contains_key(&framework);
        if framework_removed
            && status.state() == v1::TaskState::TaskKilled
            && status.reason() == v1::Reason::KilledByRequest
        {
            // The master killed it because its framework was removed (teardown or
            // failover timeout): say so, to whoever reads the task's status.
            status.reason = v1::Reason::FrameworkRemoved as i32;
            status.message = "killed because its framework was removed (teardown, or its \
                              failover timeout passed)"
                .into();
            if task.is_terminal() {
                task.status.reason = status.reason;
                task.status.message.clone_from(&status.message);
            }
        }
        if !framework_removed {
            task.acks.passed_on(&status.uuid);
        }
        let resources = task.resources;
        let ended = !was_terminal && task.is_terminal();
        // Recorded (while the master still knows the task) before anything that
        // lets the agent drop the update; if it cannot be, nothing is sent.
        let recorded = self.audit_status(&status.task_id, &status);
        self.registry.task_changed(&status.task_id);
        if ended {
            self.task_ended(&status.task_id, agent, &framework, resources);
        }
        self.metrics.status_updates.inc();
        if !recorded {
            return;
        }
        if !framework_removed {
            self.send_to_framework(&framework, update_event(status));
        } else {
            // The framework was removed (teardown, failover timeout): nobody will ever
            // acknowledge this update, so the master does, or the agent would keep it
            // and re-send it forever.
            self.ack_to_agent(agent, &status.task_id, &status.uuid);
        }
    }

    /// The agent's newest state of a task whose earlier update waits for its
    /// scheduler's acknowledgement: the master's view follows it (only forward, only
    /// for a task the master placed on that agent).
    pub(super) fn newest_state(&mut self, agent: &AgentId, task_id: &str, state: v1::TaskState) {
        let refusal = match self.tasks.get(task_id) {
            _ if status_rank(state) < status_rank(v1::TaskState::TaskStarting) => {
                Some(Refusal::IllegalState {
                    task: task_id.to_string(),
                    state: state.name(),
                })
            }
            None => Some(Refusal::UnknownTask {
                task: task_id.to_string(),
            }),
            Some(t) if &t.agent != agent => Some(Refusal::NotItsTask {
                task: task_id.to_string(),
                owner: t.agent.clone(),
                sender: agent.clone(),
            }),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            self.agent_refused(agent.as_str(), &refusal);
            return;
        }
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if task.is_terminal() || status_rank(state) <= status_rank(task.state()) {
            return;
        }
        task.status.state = state as i32;
        task.status.reason = 0;
        task.status.message = format!(
            "{} on the agent; the update with the details waits for the scheduler's \
             acknowledgement of earlier updates",
            state.name()
        );
        task.status.timestamp_ns = now_ns();
        if task.status.uuid.is_empty() {
            // From the agent, not decided by the master: its update about the same
            // state is passed on, not dropped.
            task.status.uuid = NEWEST_STATE.into();
        }
        let (framework, resources) = (task.framework.clone(), task.resources);
        let ended = task.is_terminal();
        self.registry.task_changed(task_id);
        if ended {
            self.task_ended(task_id, agent, &framework, resources);
        }
    }

    /// Bookkeeping when a task reaches a terminal state.
    fn task_ended(
        &mut self,
        task_id: &str,
        agent: &AgentId,
        framework: &FrameworkId,
        resources: Resources,
    ) {
        if let Err(e) = self
            .allocator
            .recover_resources(agent, framework, resources)
        {
            tracing::debug!(task_id = task_id, "recover resources: {e}");
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.remove(task_id);
        }
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.tasks.remove(task_id);
        }
        self.completed.push_back(task_id.to_string());
        self.forget_old_completed_tasks();
        self.allocation_wanted = true;
    }

    /// Forgets the oldest ended tasks beyond `completed_tasks_kept`.
    pub(super) fn forget_old_completed_tasks(&mut self) {
        while self.completed.len() > self.config.completed_tasks_kept {
            if let Some(old) = self.completed.pop_front() {
                self.tasks.remove(&old);
                self.usage.forget_task(&old);
                self.registry.task_changed(&old);
            }
        }
    }

    /// Marks tasks LOST for `reason` (a status the master decides itself).
    pub(super) fn lose_tasks(
        &mut self,
        task_ids: impl IntoIterator<Item = String>,
        reason: v1::Reason,
        message: &str,
    ) {
        for task_id in task_ids {
            self.master_status(&task_id, v1::TaskState::TaskLost, reason, message);
        }
    }

    /// A status the master decides itself (LOST, ERROR): no acknowledgement needed.
    pub(super) fn master_status(
        &mut self,
        task_id: &str,
        state: v1::TaskState,
        reason: v1::Reason,
        message: &str,
    ) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if task.is_terminal() {
            return;
        }
        task.status = v1::TaskStatus {
            task_id: task_id.to_string(),
            framework_id: task.framework.to_string(),
            agent_id: task.agent.to_string(),
            state: state as i32,
            reason: reason as i32,
            message: message.to_string(),
            exit_code: None,
            signal: None,
            timestamp_ns: now_ns(),
            uuid: String::new(),
            summary: None,
            image_digest: task.status.image_digest.clone(),
        };
        let status = task.status.clone();
        let (agent, framework, resources) =
            (task.agent.clone(), task.framework.clone(), task.resources);
        self.audit_status(task_id, &status);
        self.registry.task_changed(task_id);
        if state.is_terminal() {
            self.task_ended(task_id, &agent, &framework, resources);
        }
        self.send_to_framework(&framework, update_event(status));
    }

    /// RECONCILE: the current status of each task, with reason RECONCILIATION;
    /// unknown tasks are LOST. Implicit (no task named): every task of the framework
    /// that is live or has an update it has not acknowledged yet.
    pub(super) fn reconcile(&mut self, framework: &FrameworkId, task_ids: &[String]) {
        let ids: Vec<String> = if task_ids.is_empty() {
            let mut ids: BTreeSet<String> = self
                .frameworks
                .get(framework)
                .map(|f| f.tasks.iter().cloned().collect())
                .unwrap_or_default();
            ids.extend(
                self.tasks
                    .iter()
                    .filter(|(_, t)| &t.framework == framework && t.acks.waiting.is_some())
                    .map(|(id, _)| id.clone()),
            );
            ids.into_iter().collect()
        } else {
            task_ids.to_vec()
        };
        for task_id in ids {
            let known = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| &t.framework == framework);
            if !known
                && !self.recovering.is_empty()
                && self.deferred_reconciles.len() < MAX_DEFERRED_RECONCILES
            {
                // After a restart, a task this master never recorded may run on an
                // agent that has not re-registered yet: answer once they all have
                // (or were declared lost), never "unknown" too early.
                self.deferred_reconciles.push((framework.clone(), task_id));
                continue;
            }
            let status = match self
                .tasks
                .get(&task_id)
                .filter(|t| &t.framework == framework)
            {
                Some(task) => v1::TaskStatus {
                    reason: v1::Reason::Reconciliation as i32,
                    // The reason of the state is in its own update; the answer keeps
                    // it in the message.
                    message: match task.status.reason() {
                        v1::Reason::Unspecified => task.status.message.clone(),
                        reason => format!("{}: {}", reason.name(), task.status.message),
                    },
                    uuid: String::new(),
                    ..task.status.clone()
                },
                None => v1::TaskStatus {
                    task_id: task_id.clone(),
                    framework_id: framework.to_string(),
                    state: v1::TaskState::TaskLost as i32,
                    reason: v1::Reason::Reconciliation as i32,
                    message: "the master does not know this task".into(),
                    timestamp_ns: now_ns(),
                    ..Default::default()
                },
            };
            self.send_to_framework(framework, update_event(status));
        }
    }

    /// Sends the kill of a live task to its agent, with the grace period of `policy`
    /// (else the task's own); the outcome comes as its update.
    pub(super) fn kill_task(
        &mut self,
        task_id: &str,
        policy: Option<&v1::KillPolicy>,
    ) -> Result<(), OperatorError> {
        let Some(task) = self.tasks.get(task_id) else {
            return Err(OperatorError::NotFound(format!("unknown task {task_id:?}")));
        };
        if task.is_terminal() {
            return Err(OperatorError::Conflict(format!(
                "task {task_id} already ended ({})",
                task.state().name()
            )));
        }
        let agent = task.agent.clone();
        let grace = self.kill_grace(task, policy);
        if !self.send_to_agent(&agent, kill_message(&task.framework, task_id, grace)) {
            return Err(OperatorError::Conflict(format!(
                "agent {agent} is not connected; the task will be killed when it comes back"
            )));
        }
        Ok(())
    }

    /// The owner and role of a framework, as the ACL's target (unknown: nobody's).
    pub(super) fn target_of(&self, framework: &FrameworkId) -> (String, String) {
        self.frameworks
            .get(framework)
            .map(|f| (f.principal.clone(), f.role.clone()))
            .unwrap_or_default()
    }

    /// Checks an operator's command (`action`) on a framework or its tasks, against
    /// the framework's owner and role.
    pub(super) fn authorize_operator(
        &self,
        caller: &Identity,
        framework: &FrameworkId,
        action: fn(Target<'_>) -> Action<'_>,
        what: &str,
    ) -> Result<(), Denied> {
        let (owner, role) = self.target_of(framework);
        let target = Target {
            owner: &owner,
            role: &role,
        };
        self.config.authorizer.check(caller, &action(target), what)
    }

    /// An operator's kill (HTTP): allowed by `kill_task(own|role|any)`.
    pub(super) fn operator_kill(
        &mut self,
        task_id: &str,
        policy: Option<&v1::KillPolicy>,
        caller: &Identity,
    ) -> Result<(), OperatorError> {
        let Some(task) = self.tasks.get(task_id) else {
            return Err(OperatorError::NotFound(format!("unknown task {task_id:?}")));
        };
        #[expect(
            clippy::redundant_closure,
            reason = "the variant alone is not general over the target's lifetime"
        )]
        self.authorize_operator(
            caller,
            &task.framework,
            |target| Action::KillTask(target),
            &format!("killing task {task_id}"),
        )?;
        let result = self.kill_task(task_id, policy);
        self.audit_kill(task_id, caller.principal(), "operator", policy, &result);
        result
    }

    /// KILL from a scheduler: only its own tasks.
    pub(super) fn scheduler_kill(
        &mut self,
        framework: &FrameworkId,
        task_id: &str,
        policy: Option<&v1::KillPolicy>,
    ) {
        let owned = self
            .tasks
            .get(task_id)
            .is_some_and(|t| &t.framework == framework);
        if !owned {
            self.send_to_framework(
                framework,
                error_event(&format!("KILL: unknown task {task_id:?}")),
            );
        } else {
            let result = self.kill_task(task_id, policy);
            let (principal, _) = self.target_of(framework);
            let by = format!("{principal} (framework {framework})");
            self.audit_kill(task_id, by, "scheduler", policy, &result);
            if let Err(e) = result {
                self.send_to_framework(framework, error_event(&format!("KILL: {e}")));
            }
        }
    }

    /// ACKNOWLEDGE: passed on to the task's agent, for the caller's own tasks and
    /// updates the master passed on only (a duplicate acknowledgement is harmless).
    pub(super) fn acknowledge(&mut self, framework: &FrameworkId, ack: &call::Acknowledge) {
        match self.tasks.get_mut(&ack.task_id) {
            Some(task) if &task.framework == framework => {
                let problem = if ack.uuid.is_empty() {
                    Some("uuid is empty: copy it from the UPDATE being acknowledged".to_string())
                } else if task.acks.knows(&ack.uuid) == Some(false) {
                    Some(format!(
                        "task {:?} has no update with uuid {:?}{}: acknowledge the uuid of \
                         an UPDATE event of this task (reconciliation answers have none and \
                         need no acknowledgement)",
                        ack.task_id,
                        ack.uuid,
                        task.acks
                            .waiting
                            .as_ref()
                            .map(|w| format!(" (the one waiting for it is {w:?})"))
                            .unwrap_or_default()
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    self.send_to_framework(
                        framework,
                        error_event(&format!("ACKNOWLEDGE: {problem}")),
                    );
                    return;
                }
                task.acks.acknowledged(&ack.uuid);
                let agent = task.agent.clone();
                self.ack_to_agent(&agent, &ack.task_id, &ack.uuid);
            }
            _ => {
                tracing::warn!(framework_id = %framework, task_id = %ack.task_id, "refused an acknowledgement of a task that is not the framework's");
                self.send_to_framework(
                    framework,
                    error_event(&format!(
                        "ACKNOWLEDGE: task {:?} is not a task of this framework",
                        ack.task_id
                    )),
                );
            }
        }
    }
}
