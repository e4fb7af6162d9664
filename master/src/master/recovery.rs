//! Rebuilding the registry from the store when the master starts.

use std::time::{Duration, Instant, UNIX_EPOCH};

use cella_proto::v1;

use super::Master;
use crate::allocator::{AgentId, Allocator, FrameworkId};
use crate::state::{Agent, AgentState, Framework, Task, from_wire};
use crate::store;

impl Master {
    /// Rebuilds the registry from the store: agents unreachable until they
    /// re-register (lost after the agent timeout), frameworks disconnected until
    /// they re-subscribe (removed after their failover timeout), tasks with their
    /// last known status.
    pub(super) fn recover(&mut self, loaded: store::Loaded) {
        let now = Instant::now();
        let (n_agents, n_frameworks, n_tasks) = (
            loaded.agents.len(),
            loaded.frameworks.len(),
            loaded.tasks.len(),
        );
        for (id, r) in loaded.agents {
            let id = AgentId::from(id);
            self.recovering.insert(id.clone());
            let registered_at = UNIX_EPOCH + Duration::from_millis(r.registered_ms);
            self.agents.insert(
                id.clone(),
                Agent {
                    id,
                    node: r.node,
                    hostname: r.hostname,
                    attributes: r.attributes,
                    total: r.total,
                    http_endpoint: r.http_endpoint,
                    state: AgentState::Unreachable { since: now },
                    conn: None,
                    last_seen: now,
                    registered_at,
                    tasks: Default::default(),
                },
            );
        }
        for (id, r) in loaded.frameworks {
            let id = FrameworkId::from(id);
            let role = if r.role.is_empty() {
                "*".into()
            } else {
                r.role
            };
            if let Err(e) = self.allocator.add_framework(id.clone(), &role, false) {
                tracing::warn!(framework_id = %id, "allocator: {e}");
            }
            if r.suppressed {
                let _ = self.allocator.suppress(&id);
            }
            let failover_timeout = Duration::from_millis(r.failover_timeout_ms);
            self.frameworks.insert(
                id.clone(),
                Framework {
                    id,
                    name: r.name,
                    role,
                    principal: r.principal,
                    caller: None,
                    failover_timeout,
                    conn: None,
                    failover_deadline: Some(now + failover_timeout),
                    suppressed: r.suppressed,
                    tasks: Default::default(),
                },
            );
        }
        let mut completed = Vec::new();
        let mut orphans = Vec::new();
        for (id, r) in loaded.tasks {
            let framework = FrameworkId::from(r.framework);
            let agent = AgentId::from(r.agent);
            let resources = from_wire(r.info.resources.as_ref()).unwrap_or_default();
            let task = Task {
                info: r.info,
                framework: framework.clone(),
                agent: agent.clone(),
                resources,
                status: r.status,
                usage: None,
                acks: Default::default(),
            };
            if task.is_terminal() {
                completed.push((task.status.timestamp_ns, id.clone()));
            } else {
                self.ensure_framework(&framework);
                if let Some(f) = self.frameworks.get_mut(&framework) {
                    f.tasks.insert(id.clone());
                }
                match self.agents.get_mut(&agent) {
                    Some(a) => {
                        a.tasks.insert(id.clone());
                    }
                    None => orphans.push(id.clone()),
                }
            }
            self.tasks.insert(id, task);
        }
        completed.sort();
        self.completed = completed.into_iter().map(|(_, id)| id).collect();
        self.forget_old_completed_tasks();
        self.lose_tasks(
            orphans,
            v1::Reason::AgentLost,
            "the registry names no agent for this task",
        );
        tracing::info!(
            agents = n_agents,
            frameworks = n_frameworks,
            tasks = n_tasks,
            path = %self.registry.path(),
            "registry recovered: waiting for agents to re-register and schedulers to re-subscribe"
        );
    }
}
