//! What the operator API shows of the registry: the JSON views of
//! [`cella_proto::api`] and the gauges of `/metrics`.

use std::collections::BTreeMap;

use cella_proto::{api, v1};

use super::Master;
use crate::allocator::Resources;
use crate::state::{Agent, AgentState, Framework, Task, to_wire};

impl Master {
    /// `GET /api/v1/state`.
    pub(super) fn state_view(&self) -> api::State {
        let agents = self.agents.values().map(|a| self.agent_view(a)).collect();
        let frameworks = self.frameworks.values().map(framework_view).collect();
        let mut tasks: Vec<api::Task> = self.tasks.values().map(|t| self.task_view(t)).collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        api::State {
            version: env!("CARGO_PKG_VERSION").to_string(),
            agents,
            frameworks,
            tasks,
        }
    }

    fn agent_view(&self, a: &Agent) -> api::Agent {
        let mut allocated = Resources::default();
        let mut used = api::Used::default();
        for t in a.tasks.iter().filter_map(|id| self.tasks.get(id)) {
            allocated = allocated.saturating_add(&t.resources);
            if let Some(u) = &t.usage {
                used.add(u);
            }
        }
        api::Agent {
            id: a.id.to_string(),
            node: a.node.clone(),
            hostname: a.hostname.clone(),
            state: match a.state {
                AgentState::Connected => api::AgentState::Connected,
                AgentState::Unreachable { .. } => api::AgentState::Unreachable,
            },
            attributes: a.attributes.clone(),
            http_endpoint: a.http_endpoint.clone(),
            total: to_wire(&a.total),
            allocated: to_wire(&allocated),
            used,
            tasks: a.tasks.len(),
            node_usage: self.usage.node(&a.id),
        }
    }

    /// Agents, frameworks, offers and tasks by state, for `/metrics`.
    pub(super) fn update_gauges(&self) {
        let m = &self.metrics;
        let connected = self
            .agents
            .values()
            .filter(|a| a.state == AgentState::Connected)
            .count();
        m.set_agents(connected, self.agents.len() - connected);
        m.set_frameworks(
            self.frameworks
                .values()
                .filter(|f| f.conn.is_some())
                .count(),
            self.frameworks.len(),
        );
        m.set_offers(self.offers.len());
        let mut by_state: BTreeMap<v1::TaskState, usize> = BTreeMap::new();
        for t in self.tasks.values() {
            *by_state.entry(t.state()).or_default() += 1;
        }
        m.set_tasks(&by_state);
    }
}

fn framework_view(f: &Framework) -> api::Framework {
    api::Framework {
        id: f.id.to_string(),
        name: f.name.clone(),
        role: f.role.clone(),
        principal: f.principal.clone(),
        connected: f.conn.is_some(),
        suppressed: f.suppressed,
        tasks: f.tasks.len(),
    }
}

impl Master {
    fn task_view(&self, t: &Task) -> api::Task {
        task_view(
            t,
            self.agents
                .get(&t.agent)
                .map(|a| a.http_endpoint.clone())
                .unwrap_or_default(),
        )
    }
}

fn task_view(t: &Task, agent_endpoint: String) -> api::Task {
    api::Task {
        id: t.info.task_id.clone(),
        name: t.info.name.clone(),
        framework_id: t.framework.to_string(),
        agent_id: t.agent.to_string(),
        state: t.state(),
        reason: t.status.reason(),
        message: t.status.message.clone(),
        exit_code: t.status.exit_code,
        signal: t.status.signal,
        command: t.info.command.clone(),
        secrets: t.info.secrets.iter().map(|s| s.name.clone()).collect(),
        resources: to_wire(&t.resources),
        agent_endpoint,
        usage: t.usage.as_ref().map(api::Usage::from),
        updated_ns: t.status.timestamp_ns,
        image_digest: t.status.image_digest.clone(),
    }
}
