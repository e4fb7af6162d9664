//! Agents: registration and re-registration (with the tasks they report), their
//! messages, pings, and agents that become unreachable and then lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use cella_proto::time::now_ns;
use cella_proto::v1::{self, agent_message, master_to_agent};
use cella_proto::validate;
use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use super::{Master, kill_message};
use crate::allocator::{AgentId, Allocator, FrameworkId, Resources};
use crate::authz::agents::{Refusal, check_registration};
use crate::state::{Agent, AgentState, Task, duration_ms, from_wire};

/// The `uuid` of a task status the master took from an agent's registration (a
/// status the master decided itself has none; one from an update has the update's).
const FROM_REGISTRATION: &str = "registration";

impl Master {
    /// Counts and logs something an agent said that was refused.
    pub(super) fn agent_refused(&self, agent: &str, refusal: &Refusal) {
        self.metrics.agent_refused(refusal.reason());
        tracing::warn!(agent, reason = refusal.reason(), "refused: {refusal}");
    }

    /// A registration from the agent of `node` (its certificate's identity).
    pub(super) fn agent_register(
        &mut self,
        reg: agent_message::Register,
        node: &str,
        tx: UnboundedSender<v1::MasterToAgent>,
    ) -> Result<(AgentId, u64), Status> {
        let total = from_wire(reg.total.as_ref())
            .map_err(|e| Status::invalid_argument(format!("total: {e}")))?;
        if !reg.agent_id.is_empty() && !validate::is_valid_id(&reg.agent_id) {
            return Err(Status::invalid_argument(
                "agent_id: use letters, digits, '.', '_' and '-'",
            ));
        }
        let claimed = (!reg.agent_id.is_empty()).then(|| AgentId::from(reg.agent_id.clone()));
        let same_node = self
            .agents
            .values()
            .find(|a| a.node == node && a.conn.is_some());
        if let Err(refusal) = check_registration(
            claimed.as_ref(),
            node,
            claimed.as_ref().and_then(|id| self.agents.get(id)),
            same_node,
        ) {
            self.agent_refused(&format!("agent:{node}"), &refusal);
            return Err(match refusal {
                Refusal::AlreadyConnected { .. } | Refusal::NodeInUse { .. } => {
                    Status::already_exists(refusal.to_string())
                }
                _ => Status::permission_denied(refusal.to_string()),
            });
        }
        let id: AgentId =
            claimed.unwrap_or_else(|| AgentId::from(format!("agent-{}", uuid::Uuid::new_v4())));
        let conn = self.next_conn;
        self.next_conn += 1;
        let attributes: BTreeMap<String, String> = reg
            .attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();

        // A re-registering agent replaces its previous connection and state.
        let mut placed_before = BTreeSet::new();
        if let Some(old) = self.agents.remove(&id) {
            for offer in self.allocator.remove_agent(&old.id).unwrap_or_default() {
                self.forget_offer(offer.id, true);
            }
            placed_before = old.tasks;
        }
        self.allocator
            .add_agent(id.clone(), total, attributes.clone())
            .map_err(|e| Status::internal(format!("allocator: {e}")))?;
        let agent = Agent {
            id: id.clone(),
            node: node.to_string(),
            hostname: reg.hostname.clone(),
            attributes,
            total,
            http_endpoint: reg.http_endpoint.clone(),
            state: AgentState::Connected,
            conn: Some((conn, tx.clone())),
            last_seen: Instant::now(),
            registered_at: SystemTime::now(),
            tasks: Default::default(),
        };
        self.agents.insert(id.clone(), agent);
        self.registry.agent_changed(&id);
        tracing::info!(agent_id = %id, node, hostname = %reg.hostname, tasks = reg.tasks.len(), "agent registered");

        // A new agent has no tasks: any it reports would be made up.
        let tasks = if reg.agent_id.is_empty() && !reg.tasks.is_empty() {
            self.agent_refused(
                id.as_str(),
                &Refusal::NewAgentWithTasks {
                    tasks: reg.tasks.len(),
                },
            );
            Vec::new()
        } else {
            reg.tasks
        };
        let reported = self.adopt_reported_tasks(&id, tasks, &tx);
        // Tasks the master placed on this agent that it no longer has are gone (its
        // own task set: no scan of the whole cluster's tasks per registration).
        let missing: Vec<String> = placed_before
            .iter()
            .filter(|task_id| !reported.contains(*task_id))
            .filter_map(|task_id| self.tasks.get(task_id))
            .filter(|t| t.agent == id && !t.is_terminal())
            .filter(|t| t.state() != v1::TaskState::TaskStaging || !reg.agent_id.is_empty())
            .map(|t| t.info.task_id.clone())
            .collect();
        self.lose_tasks(
            missing,
            v1::Reason::AgentRestarted,
            "the agent re-registered without this task: it is no longer running",
        );
        self.sync_agent_allocation(&id);
        // After its tasks are known: the reconciliations that waited see them.
        self.agent_recovered(&id);
        let _ = tx.send(v1::MasterToAgent {
            message: Some(master_to_agent::Message::Registered(
                master_to_agent::Registered {
                    agent_id: id.to_string(),
                    ping_interval_ms: duration_ms(self.config.ping_interval),
                },
            )),
        });
        let _ = tx.send(v1::MasterToAgent {
            message: Some(master_to_agent::Message::Policy(
                self.config.authorizer.agent_policy(),
            )),
        });
        self.allocation_wanted = true;
        Ok((id, conn))
    }

    /// Reconciles the tasks a registering agent reports with what the master knows;
    /// returns their ids.
    fn adopt_reported_tasks(
        &mut self,
        id: &AgentId,
        running: Vec<v1::RunningTask>,
        tx: &UnboundedSender<v1::MasterToAgent>,
    ) -> BTreeSet<String> {
        let mut reported = BTreeSet::new();
        for running in running {
            let state = running.state();
            let Some(info) = running.task else { continue };
            let task_id = info.task_id.clone();
            reported.insert(task_id.clone());
            let framework = FrameworkId::from(running.framework_id);
            if let Some(owner) = self
                .tasks
                .get(&task_id)
                .map(|t| t.agent.clone())
                .filter(|owner| owner != id)
            {
                // Another agent's task: an agent speaks only for its own.
                reported.remove(&task_id);
                self.agent_refused(
                    id.as_str(),
                    &Refusal::NotItsTask {
                        task: task_id,
                        owner,
                        sender: id.clone(),
                    },
                );
                continue;
            }
            if let Some(ended) = self.tasks.get(&task_id).filter(|t| t.is_terminal()) {
                // The master already reported it ended (e.g. LOST when the agent was
                // gone too long): it must not keep running unaccounted.
                let grace = self.kill_grace(ended, None);
                let _ = tx.send(v1::MasterToAgent {
                    message: Some(kill_message(&framework, &task_id, grace)),
                });
                continue;
            }
            self.ensure_framework(&framework);
            let resources = from_wire(info.resources.as_ref()).unwrap_or_default();
            let unknown = !self.tasks.contains_key(&task_id);
            let task = self.tasks.entry(task_id.clone()).or_insert_with(|| Task {
                info: info.clone(),
                framework: framework.clone(),
                agent: id.clone(),
                resources,
                status: v1::TaskStatus {
                    task_id: task_id.clone(),
                    framework_id: framework.to_string(),
                    agent_id: id.to_string(),
                    state: state as i32,
                    message: if state.is_terminal() {
                        format!(
                            "{} on the agent; its update with the details follows",
                            state.name()
                        )
                    } else {
                        "reported by the agent when it registered".into()
                    },
                    timestamp_ns: now_ns(),
                    // From the agent, not decided by the master: its update about
                    // the same end is passed on, not dropped.
                    uuid: FROM_REGISTRATION.into(),
                    ..Default::default()
                },
                usage: None,
                acks: Default::default(),
            });
            if unknown && state.is_terminal() {
                // A task this master never recorded (the previous one died right
                // after sending it) that has already ended: kept as completed.
                self.registry.task_changed(&task_id);
                self.completed.push_back(task_id);
                continue;
            }
            task.agent = id.clone();
            // After a master restart the registry has the last status the master
            // saw; what the agent reports now is the truth (a terminal state comes
            // with its details in the agent's status update).
            if state != task.state()
                && state != v1::TaskState::Unspecified
                && !state.is_terminal()
                && !task.is_terminal()
            {
                task.status.state = state as i32;
                task.status.agent_id = id.to_string();
                task.status.reason = 0;
                task.status.message = "reported by the agent when it re-registered".into();
                task.status.timestamp_ns = now_ns();
                task.status.uuid = FROM_REGISTRATION.into();
            }
            self.registry.task_changed(&task_id);
            if let Some(f) = self.frameworks.get_mut(&framework) {
                f.tasks.insert(task_id.clone());
            }
            if let Some(a) = self.agents.get_mut(id) {
                a.tasks.insert(task_id);
            }
        }
        // Ended tasks adopted above count against the ones kept, like any other.
        self.forget_old_completed_tasks();
        reported
    }

    /// Tells the allocator what each framework holds on `agent` (its live tasks).
    fn sync_agent_allocation(&mut self, agent: &AgentId) {
        let mut held: BTreeMap<FrameworkId, Resources> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| &t.agent == agent && !t.is_terminal())
        {
            let entry = held.entry(t.framework.clone()).or_default();
            *entry = entry.saturating_add(&t.resources);
        }
        for (framework, resources) in held {
            if let Err(e) = self
                .allocator
                .update_agent_allocation(agent, &framework, resources)
            {
                tracing::warn!(agent_id = %agent, framework_id = %framework, "allocation not recorded: {e}");
            }
        }
    }

    /// A message on an agent's stream; messages from a replaced stream are ignored.
    pub(super) fn agent_message(
        &mut self,
        id: &AgentId,
        conn: u64,
        message: agent_message::Message,
    ) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        agent.last_seen = Instant::now();
        match message {
            agent_message::Message::Register(_) => {
                tracing::warn!(agent_id = %id, "ignoring a second Register on one stream");
            }
            agent_message::Message::Pong(_) => {}
            agent_message::Message::Usage(report) => self.record_usage(id, report),
            agent_message::Message::StatusUpdate(update) => {
                let latest_state = update.latest_state();
                if let Some(status) = update.status {
                    self.status_update(id, status, latest_state);
                }
            }
            agent_message::Message::NewestState(newest) => {
                let state = newest.state();
                self.newest_state(id, &newest.task_id, state);
            }
        }
    }

    pub(super) fn agent_disconnected(&mut self, id: &AgentId, conn: u64) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        tracing::warn!(agent_id = %id, "agent disconnected: unreachable until it re-registers");
        self.mark_unreachable(id);
    }

    fn mark_unreachable(&mut self, id: &AgentId) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.conn = None;
        if agent.state == AgentState::Connected {
            agent.state = AgentState::Unreachable {
                since: Instant::now(),
            };
        }
        // Its resources cannot be offered while it is away.
        self.rescind_offers(|o| &o.agent == id, true);
        let _ = self.allocator.update_agent_total(id, Resources::default());
        self.registry.agent_changed(id);
    }

    /// Pings connected agents; those silent too long become unreachable, and those
    /// unreachable too long are lost.
    pub(super) fn ping_agents(&mut self, now: Instant) {
        let mut silent = Vec::new();
        let mut lost = Vec::new();
        for agent in self.agents.values() {
            match agent.state {
                AgentState::Connected => {
                    if now.duration_since(agent.last_seen) > self.config.agent_unreachable_after {
                        silent.push(agent.id.clone());
                    } else if let Some((_, tx)) = &agent.conn {
                        let _ = tx.send(v1::MasterToAgent {
                            message: Some(master_to_agent::Message::Ping(master_to_agent::Ping {
                                nonce: 0,
                            })),
                        });
                    }
                }
                AgentState::Unreachable { since } => {
                    if now.duration_since(since) > self.config.agent_lost_timeout {
                        lost.push(agent.id.clone());
                    }
                }
            }
        }
        for id in silent {
            tracing::warn!(agent_id = %id, "agent stopped answering pings: unreachable");
            self.mark_unreachable(&id);
        }
        for id in lost {
            self.agent_lost(&id);
        }
    }

    fn agent_lost(&mut self, id: &AgentId) {
        tracing::warn!(agent_id = %id, "agent lost: its tasks are LOST");
        let offers = self.allocator.remove_agent(id).unwrap_or_default();
        for offer in offers {
            self.forget_offer(offer.id, true);
        }
        let tasks: Vec<String> = self
            .agents
            .get(id)
            .map(|a| a.tasks.iter().cloned().collect())
            .unwrap_or_default();
        self.lose_tasks(
            tasks,
            v1::Reason::AgentLost,
            "the agent running this task was unreachable for longer than the agent timeout",
        );
        self.agents.remove(id);
        self.usage.forget_agent(id);
        self.registry.agent_changed(id);
        self.metrics.agents_lost.inc();
        self.agent_recovered(id);
    }

    /// Agent `id` re-registered or was declared lost: when it was the last one the
    /// registry knew, the reconciliations that waited for it are answered.
    fn agent_recovered(&mut self, id: &AgentId) {
        if self.recovering.remove(id) && self.recovering.is_empty() {
            tracing::info!("every agent of the registry re-registered or was declared lost");
            for (framework, task_id) in std::mem::take(&mut self.deferred_reconciles) {
                self.reconcile(&framework, &[task_id]);
            }
        }
    }
}
