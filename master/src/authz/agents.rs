//! What an agent may say for itself, whatever the ACL (as Kubernetes' node authorizer:
//! a node touches only its own objects).
//!
//! * An agent registers as the node its certificate names: an agent id, once
//!   registered, stays bound to that node, and another node's agent cannot take it.
//! * One live registration per agent id and per node: a second one, while the first
//!   stream is connected, is refused (not "last one wins", which let a rogue agent get
//!   a live agent's tasks marked lost). A restarted agent is let in once the master
//!   notices the old stream is gone.
//! * An agent reports only tasks the master placed on it, with states that can follow
//!   what it reported before; anything else is refused, logged and counted
//!   (`cella_master_agent_refusals_total`, labelled by reason).

use cella_proto::v1::{self, TaskState};

use crate::allocator::AgentId;
use crate::state::{Agent, Task};

/// Why something an agent said was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "agent {id} is registered for node {registered}; the certificate of node {node} cannot \
         register as it"
    )]
    NodeMismatch {
        id: AgentId,
        registered: String,
        node: String,
    },
    #[error(
        "agent {id} is connected on another stream; a second live registration is refused \
         (if that agent is gone, this one is let in once the master notices)"
    )]
    AlreadyConnected { id: AgentId },
    #[error("node {node} is connected as agent {id}; a second agent of the same node is refused")]
    NodeInUse { node: String, id: AgentId },
    #[error("task {task} is not known to the master")]
    UnknownTask { task: String },
    #[error("task {task} runs on agent {owner}, not on agent {sender}")]
    NotItsTask {
        task: String,
        owner: AgentId,
        sender: AgentId,
    },
    #[error("task {task}: an agent cannot report {state}")]
    IllegalState { task: String, state: &'static str },
    #[error("task {task}: {to} cannot follow {from}, which the agent reported before")]
    IllegalTransition {
        task: String,
        from: &'static str,
        to: &'static str,
    },
    #[error("task {task}: a status update without a uuid")]
    NoUuid { task: String },
    #[error("a new agent reported {tasks} tasks: a new agent has none; they are ignored")]
    NewAgentWithTasks { tasks: usize },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NodeMismatch { .. } => "node_mismatch",
            Refusal::AlreadyConnected { .. } => "already_connected",
            Refusal::NodeInUse { .. } => "node_in_use",
            Refusal::UnknownTask { .. } => "unknown_task",
            Refusal::NotItsTask { .. } => "not_its_task",
            Refusal::IllegalState { .. } => "illegal_state",
            Refusal::IllegalTransition { .. } => "illegal_transition",
            Refusal::NoUuid { .. } => "no_uuid",
            Refusal::NewAgentWithTasks { .. } => "new_agent_with_tasks",
        }
    }
}

/// May the agent of `node` register with `id` (`None`: a new agent)? `existing` is the
/// master's record of that id; `same_node` a connected agent of the same node, if any.
pub fn check_registration(
    id: Option<&AgentId>,
    node: &str,
    existing: Option<&Agent>,
    same_node: Option<&Agent>,
) -> Result<(), Refusal> {
    if let (Some(id), Some(agent)) = (id, existing) {
        // An empty node: recorded before agents were bound to nodes; taken on first use.
        if !agent.node.is_empty() && agent.node != node {
            return Err(Refusal::NodeMismatch {
                id: id.clone(),
                registered: agent.node.clone(),
                node: node.to_string(),
            });
        }
        if agent.conn.is_some() {
            return Err(Refusal::AlreadyConnected { id: id.clone() });
        }
    }
    if let Some(other) = same_node {
        if Some(&other.id) != id {
            return Err(Refusal::NodeInUse {
                node: node.to_string(),
                id: other.id.clone(),
            });
        }
    }
    Ok(())
}

/// How far along a task is, for transitions: a later update never goes back to an
/// earlier rank, except that a re-sent update may repeat one.
fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Unspecified | TaskState::TaskStaging => 0,
        TaskState::TaskStarting => 1,
        TaskState::TaskRunning => 2,
        _ => 3,
    }
}

/// May `sender` report `status` (with its newest state `latest`) about `task`?
pub fn check_status_update(
    sender: &AgentId,
    task: Option<&Task>,
    status: &v1::TaskStatus,
    latest: TaskState,
) -> Result<(), Refusal> {
    let id = &status.task_id;
    let state = status.state();
    if rank(state) == 0 {
        return Err(Refusal::IllegalState {
            task: id.clone(),
            state: state.name(),
        });
    }
    if status.uuid.is_empty() {
        return Err(Refusal::NoUuid { task: id.clone() });
    }
    let Some(task) = task else {
        return Err(Refusal::UnknownTask { task: id.clone() });
    };
    if &task.agent != sender {
        return Err(Refusal::NotItsTask {
            task: id.clone(),
            owner: task.agent.clone(),
            sender: sender.clone(),
        });
    }
    // The newest state cannot be behind the update it comes with, nor another end.
    if latest != TaskState::Unspecified
        && (rank(latest) < rank(state) || (state.is_terminal() && latest != state))
    {
        return Err(Refusal::IllegalTransition {
            task: id.clone(),
            from: state.name(),
            to: latest.name(),
        });
    }
    // A task the agent already reported ended cannot end another way.
    let recorded = task.state();
    if recorded.is_terminal()
        && state.is_terminal()
        && recorded != state
        && !task.status.uuid.is_empty()
    {
        return Err(Refusal::IllegalTransition {
            task: id.clone(),
            from: recorded.name(),
            to: state.name(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{FrameworkId, Resources};

    fn task(agent: &str, state: TaskState, uuid: &str) -> Task {
        Task {
            info: v1::TaskInfo::default(),
            framework: FrameworkId::from("fw".to_string()),
            agent: AgentId::from(agent.to_string()),
            resources: Resources::default(),
            status: v1::TaskStatus {
                task_id: "t".into(),
                state: state as i32,
                uuid: uuid.into(),
                ..Default::default()
            },
            usage: None,
            acks: Default::default(),
        }
    }

    fn update(state: TaskState) -> v1::TaskStatus {
        v1::TaskStatus {
            task_id: "t".into(),
            state: state as i32,
            uuid: "u".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_updates() {
        use TaskState::*;
        let a = AgentId::from("a".to_string());
        let b = AgentId::from("b".to_string());
        let running = task("a", TaskRunning, "x");
        let ok = |t: &Task, s, l| check_status_update(&a, Some(t), &update(s), l);
        assert_eq!(ok(&running, TaskFailed, TaskFailed), Ok(()));
        assert_eq!(ok(&running, TaskRunning, Unspecified), Ok(()));
        // A late update of an earlier state, re-sent after a restart, is legal.
        assert_eq!(ok(&running, TaskStarting, TaskRunning), Ok(()));
        let r = check_status_update(&b, Some(&running), &update(TaskFailed), TaskFailed);
        assert_eq!(r.unwrap_err().reason(), "not_its_task");
        let r = check_status_update(&a, None, &update(TaskFailed), Unspecified);
        assert_eq!(r.unwrap_err().reason(), "unknown_task");
        assert_eq!(
            ok(&running, TaskStaging, Unspecified).unwrap_err().reason(),
            "illegal_state"
        );
        // The newest state behind the update, or another end.
        assert_eq!(
            ok(&running, TaskRunning, TaskStarting)
                .unwrap_err()
                .reason(),
            "illegal_transition"
        );
        assert_eq!(
            ok(&running, TaskFailed, TaskFinished).unwrap_err().reason(),
            "illegal_transition"
        );
        // An end the agent reported cannot become another end.
        let finished = task("a", TaskFinished, "y");
        assert_eq!(
            ok(&finished, TaskFailed, TaskFailed).unwrap_err().reason(),
            "illegal_transition"
        );
        assert_eq!(ok(&finished, TaskFinished, TaskFinished), Ok(()));
        let mut no_uuid = update(TaskRunning);
        no_uuid.uuid.clear();
        let r = check_status_update(&a, Some(&running), &no_uuid, Unspecified);
        assert_eq!(r.unwrap_err().reason(), "no_uuid");
    }
}
