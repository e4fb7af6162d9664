//! Usage: what agents report of their tasks and nodes, kept as each task's bounded
//! history ([`crate::usage`]) and each agent's latest node totals, and the view of a
//! task's usage (`GET /api/v1/tasks/{id}/usage`).

use std::collections::HashMap;

use cella_proto::api;
use cella_proto::v1::{self, agent_message::UsageReport};

use super::Master;
use crate::allocator::AgentId;
use crate::usage::{History, Point, Tiers};

/// Every task's history and every agent's latest node totals.
#[derive(Debug, Default)]
pub(super) struct UsageBook {
    tiers: Tiers,
    histories: HashMap<String, History>,
    nodes: HashMap<AgentId, Box<v1::NodeUsage>>,
}

impl UsageBook {
    pub(super) fn new(tiers: Tiers) -> Self {
        Self {
            tiers,
            ..Self::default()
        }
    }

    /// A full sample of a task the reporting agent owns.
    pub(super) fn record(&mut self, sample: &v1::TaskUsage) {
        let point = Point::from_wire(sample);
        match self.histories.get_mut(&sample.task_id) {
            Some(h) => h.push(&self.tiers, point),
            None => {
                let mut h = History::default();
                h.push(&self.tiers, point);
                self.histories.insert(sample.task_id.clone(), h);
            }
        }
    }

    pub(super) fn record_node(&mut self, agent: &AgentId, node: Option<Box<v1::NodeUsage>>) {
        if let Some(node) = node {
            self.nodes.insert(agent.clone(), node);
        }
    }

    pub(super) fn node(&self, agent: &AgentId) -> Option<api::NodeUsage> {
        self.nodes
            .get(agent)
            .map(|n| api::NodeUsage::from(n.as_ref()))
    }

    /// The master forgot the task.
    pub(super) fn forget_task(&mut self, task_id: &str) {
        self.histories.remove(task_id);
    }

    /// The master forgot the agent.
    pub(super) fn forget_agent(&mut self, agent: &AgentId) {
        self.nodes.remove(agent);
    }
}

/// What the operator asks of a task's usage.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageQuery {
    /// Only samples taken at or after this time.
    pub since_ns: u64,
    /// Samples folded into buckets this long.
    pub resolution_ns: Option<u64>,
}

/// A task's usage view, with whose the task is (to authorize the caller).
#[derive(Debug, Clone)]
pub struct TaskUsageAnswer {
    pub owner: String,
    pub role: String,
    pub view: api::TaskUsage,
}

impl Master {
    /// Decodes a report (delta figures onto the task's latest sample) and keeps each
    /// full sample: the task's latest and its history.
    pub(super) fn decode_usage(
        &mut self,
        agent: &AgentId,
        report: UsageReport,
    ) -> Vec<v1::TaskUsage> {
        self.usage.record_node(agent, report.node);
        if !report.delta {
            return report.tasks;
        }
        report
            .tasks
            .into_iter()
            .map(|d| {
                let previous = self.tasks.get(&d.task_id).and_then(|t| t.usage.as_ref());
                cella_proto::usage_delta::merge(previous, d)
            })
            .collect()
    }

    /// `GET /api/v1/tasks/{id}/usage`; `None` for an unknown task.
    pub(super) fn task_usage_view(&self, task_id: &str, q: UsageQuery) -> Option<TaskUsageAnswer> {
        let t = self.tasks.get(task_id)?;
        let (owner, role) = self
            .frameworks
            .get(&t.framework)
            .map(|f| (f.principal.clone(), f.role.clone()))
            .unwrap_or_default();
        let history = self.usage.histories.get(task_id);
        let points = history
            .map(|h| h.points(q.since_ns, q.resolution_ns))
            .unwrap_or_default();
        let summary = match &t.status.summary {
            Some(s) => Some(api::Summary::from(s.as_ref())),
            None => history.and_then(|h| {
                let all = h.points(0, None);
                let mut peaks = *all.first()?;
                for p in &all[1..] {
                    peaks.fold(p);
                }
                Some(api::Summary::so_far(
                    all[0].timestamp_ns,
                    &peaks.to_wire(task_id),
                ))
            }),
        };
        Some(TaskUsageAnswer {
            owner,
            role,
            view: api::TaskUsage {
                task_id: task_id.to_string(),
                state: t.state(),
                agent_id: t.agent.to_string(),
                resources: crate::state::to_wire(&t.resources),
                latest: t.usage.as_ref().map(api::Usage::from),
                history: points
                    .iter()
                    .map(|p| api::Usage::from(&p.to_wire(task_id)))
                    .collect(),
                summary,
            },
        })
    }
}
