//! The master: one task (an actor) owns the registry and the allocator; gRPC
//! streams and HTTP handlers talk to it through [`MasterHandle`]. One owner means
//! no locks, and every change happens in one order that is easy to reason about.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cella_proto::v1::{self, agent_message, call, event, master_to_agent};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tonic::Status;

use crate::allocator::{
    AgentId, Allocator, AllocatorConfig, FrameworkId, HierarchicalDrf, OfferId, Resources,
};
use crate::metrics::Metrics;
use crate::state::*;
use crate::store::{self, AgentRecord, Batch, FrameworkRecord, Store, StoreError, TaskRecord};

/// Tunables of the master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// An offer not answered within this is rescinded.
    pub offer_timeout: Duration,
    /// How often agents are pinged and schedulers get a heartbeat.
    pub ping_interval: Duration,
    /// An agent silent for this long is unreachable (its stream is dropped).
    pub agent_unreachable_after: Duration,
    /// An unreachable agent that does not come back within this is lost; its tasks
    /// become LOST with reason AGENT_LOST.
    pub agent_lost_timeout: Duration,
    /// Allocation runs at least this often (and right after relevant events).
    pub allocation_interval: Duration,
    /// Unused offer resources are refused this long after an ACCEPT or DECLINE
    /// that names no refuse duration.
    pub default_refuse: Duration,
    /// The longest failover timeout a framework may ask for.
    pub max_failover_timeout: Duration,
    /// Role weights for DRF.
    pub weights: Vec<(String, f64)>,
    /// Finished tasks kept for the API.
    pub completed_tasks_kept: usize,
    /// Where the registry is persisted (`<work_dir>/registry.redb`); `None` keeps
    /// it in memory only (tests, benchmarks).
    pub work_dir: Option<PathBuf>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            offer_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(5),
            agent_unreachable_after: Duration::from_secs(15),
            agent_lost_timeout: Duration::from_secs(60),
            allocation_interval: Duration::from_secs(1),
            default_refuse: Duration::from_secs(5),
            max_failover_timeout: Duration::from_secs(7 * 24 * 3600),
            weights: Vec::new(),
            completed_tasks_kept: 10_000,
            work_dir: None,
        }
    }
}

/// Requests to the master actor.
pub enum Command {
    AgentRegister {
        register: agent_message::Register,
        principal: String,
        tx: UnboundedSender<v1::MasterToAgent>,
        reply: oneshot::Sender<Result<(AgentId, u64), Status>>,
    },
    AgentMessage {
        agent: AgentId,
        conn: u64,
        message: agent_message::Message,
    },
    AgentDisconnected {
        agent: AgentId,
        conn: u64,
    },
    Subscribe {
        framework: v1::FrameworkInfo,
        principal: String,
        tx: UnboundedSender<v1::Event>,
        reply: oneshot::Sender<Result<(FrameworkId, u64), Status>>,
    },
    Call {
        framework: FrameworkId,
        conn: u64,
        call: call::Call,
    },
    SchedulerDisconnected {
        framework: FrameworkId,
        conn: u64,
    },
    State(oneshot::Sender<StateJson>),
    /// Operator kill; answers with an error message for an unknown or ended task.
    Kill {
        task_id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Writes what is pending, closes the store and stops the actor.
    Stop(oneshot::Sender<()>),
}

/// A cheap, cloneable way to talk to the master actor.
#[derive(Clone)]
pub struct MasterHandle {
    tx: UnboundedSender<Command>,
    pub metrics: std::sync::Arc<Metrics>,
}

impl MasterHandle {
    pub fn send(&self, command: Command) -> bool {
        self.tx.send(command).is_ok()
    }

    pub async fn state(&self) -> Option<StateJson> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::State(tx));
        rx.await.ok()
    }

    /// Stops the actor after writing the registry; returns when the store is
    /// closed (a new master may then open the same work dir).
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Stop(tx)) {
            let _ = rx.await;
        }
    }

    pub async fn kill(&self, task_id: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Kill { task_id, reply });
        rx.await
            .unwrap_or_else(|_| Err("the master is shutting down".into()))
    }
}

/// Starts the master actor; it runs until every handle is dropped or
/// [`MasterHandle::stop`]. Panics if the registry in `config.work_dir` cannot be
/// opened: use [`try_spawn`] to handle that.
pub fn spawn(config: MasterConfig) -> MasterHandle {
    try_spawn(config).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the master actor, first reloading the registry from `config.work_dir`.
pub fn try_spawn(config: MasterConfig) -> Result<MasterHandle, StoreError> {
    let store = match &config.work_dir {
        Some(dir) => Some(Store::open(dir)?),
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics = std::sync::Arc::new(Metrics::new());
    let master = Master::new(config, metrics.clone(), store);
    tokio::spawn(master.run(rx));
    Ok(MasterHandle { tx, metrics })
}

/// Records changed since the last write to the store.
#[derive(Default)]
struct Dirty {
    agents: BTreeSet<AgentId>,
    frameworks: BTreeSet<FrameworkId>,
    tasks: HashSet<String>,
    next_offer_id: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct Master {
    config: MasterConfig,
    allocator: HierarchicalDrf,
    agents: BTreeMap<AgentId, Agent>,
    frameworks: BTreeMap<FrameworkId, Framework>,
    tasks: HashMap<String, Task>,
    completed: VecDeque<String>,
    offers: HashMap<OfferId, OutstandingOffer>,
    next_conn: u64,
    allocation_wanted: bool,
    metrics: std::sync::Arc<Metrics>,
    store: Option<Store>,
    dirty: Dirty,
    stopping: Option<oneshot::Sender<()>>,
    /// Agents reloaded from the registry that have neither re-registered nor been
    /// declared lost yet: until they have, a task unknown to this master may still
    /// be running on one of them.
    recovering: BTreeSet<AgentId>,
    /// Explicit reconciliations of unknown tasks, answered once `recovering` empties.
    deferred_reconciles: Vec<(FrameworkId, String)>,
}

/// The `uuid` of a task status the master took from an agent's registration (a
/// status the master decided itself has none; one from an update has the update's).
const FROM_REGISTRATION: &str = "registration";

/// Bounds the reconciliations kept waiting for recovering agents (beyond it, the
/// answer is given at once).
const MAX_DEFERRED_RECONCILES: usize = 100_000;

fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn offer_id_from_wire(s: &str) -> Option<OfferId> {
    s.strip_prefix("offer-")?.parse().ok().map(OfferId)
}

fn refuse(secs: Option<f64>, default: Duration) -> Duration {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(31_536_000.0)))
        .unwrap_or(default)
}

impl Master {
    fn new(
        config: MasterConfig,
        metrics: std::sync::Arc<Metrics>,
        store: Option<(Store, store::Loaded)>,
    ) -> Self {
        let (store, loaded) = match store {
            Some((s, l)) => (Some(s), Some(l)),
            None => (None, None),
        };
        let mut allocator_config = AllocatorConfig::default();
        if let Some(l) = &loaded {
            allocator_config.first_offer_id = allocator_config.first_offer_id.max(l.next_offer_id);
        }
        let mut allocator = HierarchicalDrf::new(allocator_config);
        for (role, weight) in &config.weights {
            if let Err(e) = allocator.set_weight(role, *weight) {
                tracing::warn!("role weight ignored: {e}");
            }
        }
        let mut master = Self {
            config,
            allocator,
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            tasks: HashMap::new(),
            completed: VecDeque::new(),
            offers: HashMap::new(),
            next_conn: 1,
            allocation_wanted: false,
            metrics,
            store,
            dirty: Dirty::default(),
            stopping: None,
            recovering: BTreeSet::new(),
            deferred_reconciles: Vec::new(),
        };
        if let Some(loaded) = loaded {
            master.recover(loaded);
        }
        master
    }

    async fn run(mut self, mut rx: UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(
            self.config
                .allocation_interval
                .min(self.config.ping_interval),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ping = Instant::now();
        let mut last_allocation = Instant::now();
        loop {
            tokio::select! {
                command = rx.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command);
                    // Drain what is queued before allocating once for all of it.
                    while let Ok(command) = rx.try_recv() {
                        self.handle(command);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_ping) >= self.config.ping_interval {
                        last_ping = now;
                        self.ping_and_expire(now);
                    }
                    self.expire_offers(now);
                    self.expire_frameworks(now);
                    if now.duration_since(last_allocation) >= self.config.allocation_interval {
                        self.allocation_wanted = true;
                    }
                }
            }
            if self.allocation_wanted {
                self.allocation_wanted = false;
                last_allocation = Instant::now();
                self.allocate();
            }
            self.update_gauges();
            self.flush();
            if let Some(reply) = self.stopping.take() {
                self.store = None;
                let _ = reply.send(());
                return;
            }
        }
        self.flush();
    }

    /// Writes every record changed since the last flush, in one transaction. On a
    /// failure the changes stay pending and are retried at the next iteration.
    fn flush(&mut self) {
        let Some(store) = &self.store else { return };
        if self.dirty.agents.is_empty()
            && self.dirty.frameworks.is_empty()
            && self.dirty.tasks.is_empty()
            && self.dirty.next_offer_id.is_none()
        {
            return;
        }
        let now_wall = SystemTime::now();
        let mut batch = Batch {
            next_offer_id: self.dirty.next_offer_id,
            ..Batch::default()
        };
        for id in &self.dirty.agents {
            let record = self.agents.get(id).map(|a| AgentRecord {
                hostname: a.hostname.clone(),
                attributes: a.attributes.clone(),
                total: a.total,
                http_endpoint: a.http_endpoint.clone(),
                last_seen_ms: unix_ms(
                    now_wall
                        .checked_sub(a.last_seen.elapsed())
                        .unwrap_or(now_wall),
                ),
                registered_ms: unix_ms(a.registered_at),
            });
            batch.agents.push((id.to_string(), record));
        }
        for id in &self.dirty.frameworks {
            let record = self.frameworks.get(id).map(|f| FrameworkRecord {
                name: f.name.clone(),
                role: f.role.clone(),
                principal: f.principal.clone(),
                failover_timeout_ms: u64::try_from(f.failover_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                suppressed: f.suppressed,
            });
            batch.frameworks.push((id.to_string(), record));
        }
        for id in &self.dirty.tasks {
            let record = self.tasks.get(id).map(|t| TaskRecord {
                framework: t.framework.to_string(),
                agent: t.agent.to_string(),
                info: t.info.clone(),
                status: t.status.clone(),
            });
            batch.tasks.push((id.clone(), record));
        }
        let started = Instant::now();
        match store.commit(&batch) {
            Ok(()) => {
                self.dirty = Dirty::default();
                self.metrics
                    .registry_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::trace!(
                    tasks = batch.tasks.len(),
                    elapsed = ?started.elapsed(),
                    "registry written"
                );
            }
            Err(e) => {
                self.metrics.registry_write_errors.inc();
                tracing::error!("{e}; retrying");
            }
        }
    }

    /// Rebuilds the registry from the store: agents unreachable until they
    /// re-register (lost after the agent timeout), frameworks disconnected until
    /// they re-subscribe (removed after their failover timeout), tasks with their
    /// last known status.
    fn recover(&mut self, loaded: store::Loaded) {
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
                tracing::warn!(framework = %id, "allocator: {e}");
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
            };
            if is_terminal(task.state()) {
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
        while self.completed.len() > self.config.completed_tasks_kept {
            if let Some(old) = self.completed.pop_front() {
                self.tasks.remove(&old);
                self.dirty_task(&old);
            }
        }
        for id in orphans {
            self.master_status(
                &id,
                v1::TaskState::TaskLost,
                v1::Reason::AgentLost,
                "the registry names no agent for this task",
            );
        }
        tracing::info!(
            agents = n_agents,
            frameworks = n_frameworks,
            tasks = n_tasks,
            path = %self.store.as_ref().map(|s| s.path().display().to_string()).unwrap_or_default(),
            "registry recovered: waiting for agents to re-register and schedulers to re-subscribe"
        );
    }

    fn dirty_agent(&mut self, id: &AgentId) {
        if self.store.is_some() {
            self.dirty.agents.insert(id.clone());
        }
    }

    fn dirty_framework(&mut self, id: &FrameworkId) {
        if self.store.is_some() {
            self.dirty.frameworks.insert(id.clone());
        }
    }

    fn dirty_task(&mut self, id: &str) {
        if self.store.is_some() {
            self.dirty.tasks.insert(id.to_string());
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::AgentRegister {
                register,
                principal,
                tx,
                reply,
            } => {
                let _ = reply.send(self.agent_register(register, &principal, tx));
            }
            Command::AgentMessage {
                agent,
                conn,
                message,
            } => self.agent_message(&agent, conn, message),
            Command::AgentDisconnected { agent, conn } => self.agent_disconnected(&agent, conn),
            Command::Subscribe {
                framework,
                principal,
                tx,
                reply,
            } => {
                let _ = reply.send(self.subscribe(framework, principal, tx));
            }
            Command::Call {
                framework,
                conn,
                call,
            } => self.scheduler_call(&framework, conn, call),
            Command::SchedulerDisconnected { framework, conn } => {
                self.scheduler_disconnected(&framework, conn)
            }
            Command::State(reply) => {
                let _ = reply.send(self.state_json());
            }
            Command::Kill { task_id, reply } => {
                let _ = reply.send(self.kill_task(&task_id));
            }
            Command::Stop(reply) => self.stopping = Some(reply),
        }
    }

    // ------------------------------------------------------------ agents

    fn agent_register(
        &mut self,
        reg: agent_message::Register,
        principal: &str,
        tx: UnboundedSender<v1::MasterToAgent>,
    ) -> Result<(AgentId, u64), Status> {
        let total = from_wire(reg.total.as_ref())
            .map_err(|e| Status::invalid_argument(format!("total: {e}")))?;
        if !reg.agent_id.is_empty() && !valid_task_id(&reg.agent_id) {
            return Err(Status::invalid_argument(
                "agent_id: use letters, digits, '.', '_' and '-'",
            ));
        }
        let id: AgentId = if reg.agent_id.is_empty() {
            AgentId::from(format!("agent-{}", uuid::Uuid::new_v4()))
        } else {
            AgentId::from(reg.agent_id.clone())
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let attributes = reg
            .attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();
        let now = Instant::now();

        // A re-registering agent replaces its previous connection and state.
        let mut placed_before = BTreeSet::new();
        if let Some(old) = self.agents.remove(&id) {
            for offer in self.allocator.remove_agent(&old.id).unwrap_or_default() {
                self.forget_offer(offer.id, true);
            }
            placed_before = old.tasks;
        }
        self.allocator
            .add_agent(id.clone(), total, attributes)
            .map_err(|e| Status::internal(format!("allocator: {e}")))?;
        let agent = Agent {
            id: id.clone(),
            hostname: reg.hostname.clone(),
            attributes: reg
                .attributes
                .iter()
                .map(|a| (a.key.clone(), a.value.clone()))
                .collect(),
            total,
            http_endpoint: reg.http_endpoint.clone(),
            state: AgentState::Connected,
            conn: Some((conn, tx.clone())),
            last_seen: now,
            registered_at: SystemTime::now(),
            tasks: Default::default(),
        };
        self.agents.insert(id.clone(), agent);
        self.dirty_agent(&id);
        tracing::info!(agent = %id, principal, hostname = %reg.hostname, tasks = reg.tasks.len(), "agent registered");

        // Reconcile the tasks it reports with what the master knows.
        let mut reported = std::collections::BTreeSet::new();
        for running in reg.tasks {
            let state = running.state();
            let Some(info) = running.task else { continue };
            let task_id = info.task_id.clone();
            reported.insert(task_id.clone());
            let framework = FrameworkId::from(running.framework_id.clone());
            let known_terminal = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| is_terminal(t.state()));
            if known_terminal {
                // The master already reported it ended (e.g. LOST when the agent was
                // gone too long): it must not keep running unaccounted.
                let _ = tx.send(v1::MasterToAgent {
                    message: Some(master_to_agent::Message::Kill(master_to_agent::KillTask {
                        framework_id: running.framework_id.clone(),
                        task_id: task_id.clone(),
                    })),
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
                    message: if is_terminal(state) {
                        format!(
                            "{} on the agent; its update with the details follows",
                            state_name(state)
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
            });
            if unknown && is_terminal(state) {
                // A task this master never recorded (the previous one died right
                // after sending it) that has already ended: kept as completed.
                self.dirty_task(&task_id);
                self.completed.push_back(task_id);
                continue;
            }
            task.agent = id.clone();
            // After a master restart the registry has the last status the master
            // saw; what the agent reports now is the truth (a terminal state comes
            // with its details in the agent's status update).
            if state != task.state()
                && state != v1::TaskState::Unspecified
                && !is_terminal(state)
                && !is_terminal(task.state())
            {
                task.status.state = state as i32;
                task.status.agent_id = id.to_string();
                task.status.reason = 0;
                task.status.message = "reported by the agent when it re-registered".into();
                task.status.timestamp_ns = now_ns();
                task.status.uuid = FROM_REGISTRATION.into();
            }
            self.dirty_task(&task_id);
            if let Some(f) = self.frameworks.get_mut(&framework) {
                f.tasks.insert(task_id.clone());
            }
            if let Some(a) = self.agents.get_mut(&id) {
                a.tasks.insert(task_id);
            }
        }
        // Tasks the master placed on this agent that it no longer has are gone (its
        // own task set: no scan of the whole cluster's tasks per registration).
        let missing: Vec<String> = placed_before
            .iter()
            .filter(|task_id| !reported.contains(*task_id))
            .filter_map(|task_id| self.tasks.get(task_id))
            .filter(|t| t.agent == id && !is_terminal(t.state()))
            .filter(|t| t.state() != v1::TaskState::TaskStaging || !reg.agent_id.is_empty())
            .map(|t| t.info.task_id.clone())
            .collect();
        for task_id in missing {
            self.master_status(
                &task_id,
                v1::TaskState::TaskLost,
                v1::Reason::AgentRestarted,
                "the agent re-registered without this task: it is no longer running",
            );
        }
        self.sync_agent_allocation(&id);
        // After its tasks are known: the reconciliations that waited see them.
        self.agent_recovered(&id);
        let _ = tx.send(v1::MasterToAgent {
            message: Some(master_to_agent::Message::Registered(
                master_to_agent::Registered {
                    agent_id: id.to_string(),
                    ping_interval_ms: u64::try_from(self.config.ping_interval.as_millis())
                        .unwrap_or(u64::MAX),
                },
            )),
        });
        self.allocation_wanted = true;
        Ok((id, conn))
    }

    /// Tells the allocator what each framework holds on `agent` (its live tasks).
    fn sync_agent_allocation(&mut self, agent: &AgentId) {
        let mut held: BTreeMap<FrameworkId, Resources> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| &t.agent == agent && !is_terminal(t.state()))
        {
            let entry = held.entry(t.framework.clone()).or_default();
            *entry = entry.saturating_add(&t.resources);
        }
        for (framework, resources) in held {
            if let Err(e) = self
                .allocator
                .update_agent_allocation(agent, &framework, resources)
            {
                tracing::warn!(agent = %agent, framework = %framework, "allocation not recorded: {e}");
            }
        }
    }

    /// A framework the master has not seen subscribe (its tasks were reported by an
    /// agent): kept inactive, so it can re-subscribe within the failover timeout.
    fn ensure_framework(&mut self, id: &FrameworkId) {
        if self.frameworks.contains_key(id) {
            return;
        }
        let timeout = self
            .config
            .max_failover_timeout
            .min(Duration::from_secs(3600));
        let _ = self.allocator.add_framework(id.clone(), "*", false);
        self.frameworks.insert(
            id.clone(),
            Framework {
                id: id.clone(),
                name: String::new(),
                role: "*".into(),
                principal: String::new(),
                failover_timeout: timeout,
                conn: None,
                failover_deadline: Some(Instant::now() + timeout),
                suppressed: false,
                tasks: Default::default(),
            },
        );
        self.dirty_framework(id);
    }

    fn agent_message(&mut self, id: &AgentId, conn: u64, message: agent_message::Message) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        agent.last_seen = Instant::now();
        match message {
            agent_message::Message::Register(_) => {
                tracing::warn!(agent = %id, "ignoring a second Register on one stream");
            }
            agent_message::Message::Pong(_) => {}
            agent_message::Message::Usage(report) => {
                for usage in report.tasks {
                    if let Some(task) = self.tasks.get_mut(&usage.task_id) {
                        task.usage = Some(usage);
                    }
                }
            }
            agent_message::Message::StatusUpdate(update) => {
                let latest_state = update.latest_state();
                if let Some(status) = update.status {
                    self.status_update(id, status, latest_state);
                }
            }
        }
    }

    fn status_update(
        &mut self,
        agent: &AgentId,
        mut status: v1::TaskStatus,
        latest_state: v1::TaskState,
    ) {
        status.agent_id = agent.to_string();
        let Some(task) = self.tasks.get_mut(&status.task_id) else {
            // Unknown to this master: forward if the framework is known, and
            // acknowledge so the agent does not retry forever.
            tracing::warn!(task = %status.task_id, "status update for an unknown task");
            let framework = FrameworkId::from(status.framework_id.clone());
            if !self.send_to_framework(&framework, update_event(status.clone())) {
                self.ack_to_agent(agent, &status.task_id, &status.uuid);
            }
            return;
        };
        let was_terminal = is_terminal(task.state());
        if was_terminal && task.status.uuid.is_empty() {
            // The master ended this task itself (LOST: its agent was gone too long,
            // or came back without it) and told the scheduler so. Anything the
            // agent says later would be a second end: acknowledged and dropped.
            tracing::info!(
                task = %status.task_id,
                state = state_name(status.state()),
                "update of a task the master already reported {}: dropped",
                state_name(task.state())
            );
            self.ack_to_agent(agent, &status.task_id, &status.uuid);
            return;
        }
        status.framework_id = task.framework.to_string();
        // A late non-terminal update must not resurrect a finished task; a terminal
        // one brings the details (exit code, reason) of how it ended.
        if !was_terminal || is_terminal(status.state()) {
            task.status = status.clone();
        }
        // Updates of a task reach the master one at a time, each after the previous
        // one was acknowledged; the agent's newest state may be ahead (the task ended
        // while a scheduler was away). The master's view follows the newest state.
        if is_terminal(latest_state) && !is_terminal(task.state()) {
            task.status.state = latest_state as i32;
            task.status.message = format!(
                "{} on the agent; the update with the details waits for the scheduler's \
                 acknowledgement of earlier updates",
                state_name(latest_state)
            );
        }
        let framework = task.framework.clone();
        let resources = task.resources;
        let ended = !was_terminal && is_terminal(task.state());
        self.dirty_task(&status.task_id);
        if ended {
            self.task_ended(&status.task_id, agent, &framework, resources);
        }
        self.metrics.status_updates.inc();
        if self.frameworks.contains_key(&framework) {
            self.send_to_framework(&framework, update_event(status));
        } else {
            // The framework was removed (teardown, failover timeout): nobody will ever
            // acknowledge this update, so the master does, or the agent would keep it
            // and re-send it forever.
            self.ack_to_agent(agent, &status.task_id, &status.uuid);
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
            tracing::debug!(task = task_id, "recover resources: {e}");
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.remove(task_id);
        }
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.tasks.remove(task_id);
        }
        self.completed.push_back(task_id.to_string());
        while self.completed.len() > self.config.completed_tasks_kept {
            if let Some(old) = self.completed.pop_front() {
                self.tasks.remove(&old);
                self.dirty_task(&old);
            }
        }
        self.allocation_wanted = true;
    }

    /// A status the master decides itself (LOST, ERROR): no acknowledgement needed.
    fn master_status(
        &mut self,
        task_id: &str,
        state: v1::TaskState,
        reason: v1::Reason,
        message: &str,
    ) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if is_terminal(task.state()) {
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
        };
        let status = task.status.clone();
        let (agent, framework, resources) =
            (task.agent.clone(), task.framework.clone(), task.resources);
        self.dirty_task(task_id);
        if is_terminal(state) {
            self.task_ended(task_id, &agent, &framework, resources);
        }
        self.send_to_framework(&framework, update_event(status));
    }

    fn agent_disconnected(&mut self, id: &AgentId, conn: u64) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        tracing::warn!(agent = %id, "agent disconnected: unreachable until it re-registers");
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
        let offers: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| &o.agent == id)
            .map(|(k, _)| *k)
            .collect();
        for offer in offers {
            let _ = self.allocator.rescind_offer(offer);
            self.forget_offer(offer, true);
        }
        let _ = self.allocator.update_agent_total(id, Resources::default());
        self.dirty_agent(id);
    }

    fn ping_and_expire(&mut self, now: Instant) {
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
            tracing::warn!(agent = %id, "agent stopped answering pings: unreachable");
            self.mark_unreachable(&id);
        }
        for id in lost {
            self.agent_lost(&id);
        }
        for framework in self.frameworks.values() {
            if let Some((_, tx)) = &framework.conn {
                let _ = tx.send(v1::Event {
                    event: Some(event::Event::Heartbeat(event::Heartbeat {})),
                });
            }
        }
    }

    fn agent_lost(&mut self, id: &AgentId) {
        tracing::warn!(agent = %id, "agent lost: its tasks are LOST");
        let offers = self.allocator.remove_agent(id).unwrap_or_default();
        for offer in offers {
            self.forget_offer(offer.id, true);
        }
        let tasks: Vec<String> = self
            .agents
            .get(id)
            .map(|a| a.tasks.iter().cloned().collect())
            .unwrap_or_default();
        for task_id in tasks {
            self.master_status(
                &task_id,
                v1::TaskState::TaskLost,
                v1::Reason::AgentLost,
                "the agent running this task was unreachable for longer than the agent timeout",
            );
        }
        self.agents.remove(id);
        self.dirty_agent(id);
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

    // ------------------------------------------------------------ schedulers

    fn subscribe(
        &mut self,
        info: v1::FrameworkInfo,
        principal: String,
        tx: UnboundedSender<v1::Event>,
    ) -> Result<(FrameworkId, u64), Status> {
        let role = if info.role.is_empty() {
            "*".to_string()
        } else {
            info.role.clone()
        };
        if role.len() > 128 || role.contains('/') || role.chars().any(char::is_whitespace) {
            return Err(Status::invalid_argument(
                "framework.role: at most 128 characters, no '/' or spaces",
            ));
        }
        if !info.failover_timeout_secs.is_finite() || info.failover_timeout_secs < 0.0 {
            return Err(Status::invalid_argument(
                "framework.failover_timeout_secs: must be a number ≥ 0",
            ));
        }
        let failover = Duration::from_secs_f64(
            info.failover_timeout_secs
                .min(self.config.max_failover_timeout.as_secs_f64()),
        );
        let conn = self.next_conn;
        self.next_conn += 1;
        let id = if info.framework_id.is_empty() {
            FrameworkId::from(format!("fw-{}", uuid::Uuid::new_v4()))
        } else if valid_task_id(&info.framework_id) {
            FrameworkId::from(info.framework_id.clone())
        } else {
            return Err(Status::invalid_argument(
                "framework.framework_id: letters, digits, '.', '_' and '-'",
            ));
        };
        match self.frameworks.get_mut(&id) {
            Some(existing) => {
                if !existing.principal.is_empty() && existing.principal != principal {
                    return Err(Status::permission_denied(format!(
                        "framework {id} belongs to principal {:?}, not {principal:?}",
                        existing.principal
                    )));
                }
                // Failover: the new stream replaces the old one.
                if let Some((_, old)) = existing.conn.take() {
                    let _ = old.send(error_event(
                        "another scheduler subscribed with this framework id",
                    ));
                }
                existing.conn = Some((conn, tx.clone()));
                existing.failover_deadline = None;
                existing.failover_timeout = failover;
                existing.principal = principal.clone();
                if !info.name.is_empty() {
                    existing.name = info.name.clone();
                }
                let _ = self.allocator.activate_framework(&id);
                tracing::info!(framework = %id, "framework re-subscribed");
            }
            None => {
                if !info.framework_id.is_empty() {
                    tracing::info!(framework = %id, "framework subscribed with an id this master does not know");
                }
                self.allocator
                    .add_framework(id.clone(), &role, true)
                    .map_err(|e| Status::internal(format!("allocator: {e}")))?;
                self.frameworks.insert(
                    id.clone(),
                    Framework {
                        id: id.clone(),
                        name: info.name.clone(),
                        role: role.clone(),
                        principal: principal.clone(),
                        failover_timeout: failover,
                        conn: Some((conn, tx.clone())),
                        failover_deadline: None,
                        suppressed: false,
                        tasks: Default::default(),
                    },
                );
                tracing::info!(framework = %id, role, principal, "framework subscribed");
            }
        }
        self.dirty_framework(&id);
        let _ = tx.send(v1::Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: id.to_string(),
                heartbeat_interval_ms: u64::try_from(self.config.ping_interval.as_millis())
                    .unwrap_or(u64::MAX),
            })),
        });
        self.allocation_wanted = true;
        Ok((id, conn))
    }

    fn scheduler_disconnected(&mut self, id: &FrameworkId, conn: u64) {
        let Some(framework) = self.frameworks.get_mut(id) else {
            return;
        };
        if framework.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        framework.conn = None;
        framework.failover_deadline = Some(Instant::now() + framework.failover_timeout);
        tracing::info!(framework = %id, timeout = ?framework.failover_timeout, "framework disconnected; waiting for failover");
        let _ = self.allocator.deactivate_framework(id);
        let offers: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| &o.framework == id)
            .map(|(k, _)| *k)
            .collect();
        for offer in offers {
            let _ = self.allocator.rescind_offer(offer);
            self.forget_offer(offer, false);
        }
    }

    fn expire_frameworks(&mut self, now: Instant) {
        let expired: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_none() && f.failover_deadline.is_some_and(|d| now >= d))
            .map(|f| f.id.clone())
            .collect();
        for id in expired {
            tracing::info!(framework = %id, "failover timeout passed: removing the framework and killing its tasks");
            self.remove_framework(&id);
        }
    }

    fn remove_framework(&mut self, id: &FrameworkId) {
        let Some(framework) = self.frameworks.remove(id) else {
            return;
        };
        self.dirty_framework(id);
        for task_id in &framework.tasks {
            if let Some(task) = self.tasks.get(task_id) {
                self.send_to_agent(
                    &task.agent.clone(),
                    master_to_agent::Message::Kill(master_to_agent::KillTask {
                        framework_id: id.to_string(),
                        task_id: task_id.clone(),
                    }),
                );
            }
        }
        for offer in self.allocator.remove_framework(id).unwrap_or_default() {
            self.offers.remove(&offer.id);
        }
        let offers: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| &o.framework == id)
            .map(|(k, _)| *k)
            .collect();
        for offer in offers {
            self.offers.remove(&offer);
        }
    }

    fn scheduler_call(&mut self, id: &FrameworkId, conn: u64, call: call::Call) {
        let Some(framework) = self.frameworks.get(id) else {
            return;
        };
        if framework.conn.as_ref().map(|(c, _)| *c) != Some(conn) {
            return;
        }
        let now = Instant::now();
        match call {
            call::Call::Subscribe(_) => {
                self.send_to_framework(id, error_event("already subscribed on this stream"));
            }
            call::Call::Accept(accept) => self.accept(id, accept, now),
            call::Call::Decline(decline) => {
                let refuse_for = refuse(decline.refuse_seconds, self.config.default_refuse);
                for offer_id in &decline.offer_ids {
                    match offer_id_from_wire(offer_id)
                        .filter(|o| self.offers.get(o).is_some_and(|o| &o.framework == id))
                    {
                        Some(offer) => {
                            self.offers.remove(&offer);
                            let _ = self.allocator.decline_offer(offer, refuse_for, now);
                        }
                        None => {
                            self.send_to_framework(
                                id,
                                error_event(&format!("DECLINE: unknown offer {offer_id:?}")),
                            );
                        }
                    }
                }
                self.allocation_wanted = true;
            }
            call::Call::Kill(kill) => {
                let owned = self
                    .tasks
                    .get(&kill.task_id)
                    .is_some_and(|t| &t.framework == id);
                if !owned {
                    self.send_to_framework(
                        id,
                        error_event(&format!("KILL: unknown task {:?}", kill.task_id)),
                    );
                } else if let Err(e) = self.kill_task(&kill.task_id) {
                    self.send_to_framework(id, error_event(&format!("KILL: {e}")));
                }
            }
            call::Call::Acknowledge(ack) => {
                let agent = self
                    .tasks
                    .get(&ack.task_id)
                    .map(|t| t.agent.clone())
                    .or_else(|| {
                        (!ack.agent_id.is_empty()).then(|| AgentId::from(ack.agent_id.clone()))
                    });
                if let Some(agent) = agent {
                    self.ack_to_agent(&agent, &ack.task_id, &ack.uuid);
                }
            }
            call::Call::Reconcile(reconcile) => self.reconcile(id, &reconcile.task_ids),
            call::Call::Suppress(_) => {
                let _ = self.allocator.suppress(id);
                if let Some(f) = self.frameworks.get_mut(id) {
                    f.suppressed = true;
                }
                self.dirty_framework(id);
            }
            call::Call::Revive(_) => {
                let _ = self.allocator.revive(id);
                if let Some(f) = self.frameworks.get_mut(id) {
                    f.suppressed = false;
                }
                self.dirty_framework(id);
                self.allocation_wanted = true;
            }
            call::Call::Teardown(_) => {
                tracing::info!(framework = %id, "teardown: killing its tasks");
                self.remove_framework(id);
            }
            call::Call::Heartbeat(_) => {}
        }
    }

    fn accept(&mut self, framework: &FrameworkId, accept: call::Accept, now: Instant) {
        let refuse_for = refuse(accept.refuse_seconds, self.config.default_refuse);
        // The offers: outstanding, this framework's, all on one agent.
        let mut offers = Vec::new();
        let mut problem = None;
        for raw in &accept.offer_ids {
            match offer_id_from_wire(raw).and_then(|o| self.offers.get(&o).map(|x| (o, x))) {
                Some((o, x)) if &x.framework == framework => {
                    offers.push((o, x.agent.clone(), x.resources))
                }
                _ => {
                    problem = Some(format!(
                        "offer {raw:?} is not outstanding for this framework (expired, rescinded, declined or \
                         already used): wait for a new offer"
                    ));
                }
            }
        }
        if offers.is_empty() && problem.is_none() {
            problem = Some("ACCEPT names no offer".to_string());
        }
        let agent = offers.first().map(|(_, a, _)| a.clone());
        if problem.is_none() && offers.iter().any(|(_, a, _)| Some(a) != agent.as_ref()) {
            problem = Some("the offers of one ACCEPT must come from the same agent".to_string());
        }
        let offered = offers
            .iter()
            .fold(Resources::default(), |acc, (_, _, r)| acc.saturating_add(r));

        // Each task on its own, then all of them against the offers.
        let mut seen = std::collections::BTreeSet::new();
        let mut checked: Vec<(v1::TaskInfo, Result<Resources, String>)> = Vec::new();
        for task in accept.tasks {
            let verdict = problem
                .clone()
                .map_or_else(|| self.validate_task(&task, &mut seen), Err);
            checked.push((task, verdict));
        }
        let needed = checked
            .iter()
            .filter_map(|(_, v)| v.as_ref().ok())
            .fold(Resources::default(), |acc, r| acc.saturating_add(r));
        if !needed.fits(&offered) && problem.is_none() {
            let why = format!(
                "the tasks need {} cpus, {} bytes of memory and {} bytes of disk; the offers hold {} cpus, {} and {}",
                needed.cpus(),
                needed.mem_bytes,
                needed.disk_bytes,
                offered.cpus(),
                offered.mem_bytes,
                offered.disk_bytes
            );
            for (_, verdict) in &mut checked {
                if verdict.is_ok() {
                    *verdict = Err(why.clone());
                }
            }
        }

        // Give the offers back to the allocator: what the tasks use becomes the
        // framework's allocation, the rest is refused for `refuse_for`.
        let mut remaining = needed;
        for (offer, _, resources) in &offers {
            if !needed.fits(&offered) {
                let _ = self.allocator.decline_offer(*offer, Duration::ZERO, now);
            } else {
                let used = remaining.min(resources);
                remaining = remaining.saturating_sub(&used);
                let _ = self.allocator.accept_offer(*offer, used);
                if let Some(agent) = &agent {
                    if !resources.saturating_sub(&used).is_empty() && !refuse_for.is_zero() {
                        let _ = self
                            .allocator
                            .decline_agent(framework, agent, refuse_for, now);
                    }
                }
            }
            self.offers.remove(offer);
        }

        for (task, verdict) in checked {
            let verdict = match (verdict, &agent) {
                (Ok(resources), Some(agent)) => Ok((resources, agent.clone())),
                (Ok(_), None) => Err("no agent to launch on".to_string()),
                (Err(why), _) => Err(why),
            };
            match verdict {
                Ok((resources, agent)) => self.launch(framework, &agent, task, resources),
                Err(why) => {
                    self.metrics.tasks_invalid.inc();
                    self.send_to_framework(
                        framework,
                        update_event(v1::TaskStatus {
                            task_id: task.task_id.clone(),
                            framework_id: framework.to_string(),
                            agent_id: agent.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                            state: v1::TaskState::TaskError as i32,
                            reason: v1::Reason::InvalidTask as i32,
                            message: why,
                            timestamp_ns: now_ns(),
                            ..Default::default()
                        }),
                    );
                }
            }
        }
        self.allocation_wanted = true;
    }

    fn validate_task(
        &self,
        task: &v1::TaskInfo,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> Result<Resources, String> {
        if !valid_task_id(&task.task_id) {
            return Err(format!(
                "task_id {:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.')",
                task.task_id
            ));
        }
        if self.tasks.contains_key(&task.task_id) || !seen.insert(task.task_id.clone()) {
            return Err(format!(
                "task_id {:?} is already used: task ids must be unique",
                task.task_id
            ));
        }
        if task.command.is_empty() || task.command[0].is_empty() {
            return Err("command: empty; give the program and its arguments".into());
        }
        let resources =
            from_wire(task.resources.as_ref()).map_err(|e| format!("resources: {e}"))?;
        if resources.cpus_milli == 0 || resources.mem_bytes == 0 {
            return Err("resources: a task needs cpus > 0 and mem_bytes > 0".into());
        }
        for kv in &task.env {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(format!("env: {kv:?} is not KEY=VALUE"));
            }
        }
        Ok(resources)
    }

    fn launch(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        task: v1::TaskInfo,
        resources: Resources,
    ) {
        let task_id = task.task_id.clone();
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
                info: task.clone(),
                framework: framework.clone(),
                agent: agent.clone(),
                resources,
                status,
                usage: None,
            },
        );
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.tasks.insert(task_id.clone());
        }
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.insert(task_id.clone());
        }
        self.dirty_task(&task_id);
        self.metrics.tasks_launched.inc();
        let sent = self.send_to_agent(
            agent,
            master_to_agent::Message::Launch(master_to_agent::LaunchTask {
                framework_id: framework.to_string(),
                task: Some(task),
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

    fn reconcile(&mut self, framework: &FrameworkId, task_ids: &[String]) {
        let ids: Vec<String> = if task_ids.is_empty() {
            self.frameworks
                .get(framework)
                .map(|f| f.tasks.iter().cloned().collect())
                .unwrap_or_default()
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
                    reason: if task.status.reason == 0 {
                        v1::Reason::Reconciliation as i32
                    } else {
                        task.status.reason
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

    fn kill_task(&mut self, task_id: &str) -> Result<(), String> {
        let Some(task) = self.tasks.get(task_id) else {
            return Err(format!("unknown task {task_id:?}"));
        };
        if is_terminal(task.state()) {
            return Err(format!(
                "task {task_id} already ended ({})",
                state_name(task.state())
            ));
        }
        let (agent, framework) = (task.agent.clone(), task.framework.clone());
        let sent = self.send_to_agent(
            &agent,
            master_to_agent::Message::Kill(master_to_agent::KillTask {
                framework_id: framework.to_string(),
                task_id: task_id.to_string(),
            }),
        );
        if !sent {
            return Err(format!(
                "agent {agent} is not connected; the task will be killed when it comes back"
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------ offers

    fn allocate(&mut self) {
        let started = Instant::now();
        let offers = self.allocator.allocate(started);
        self.metrics
            .allocation_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut by_framework: BTreeMap<FrameworkId, Vec<v1::Offer>> = BTreeMap::new();
        // Offer ids are never reused, not even across restarts.
        if let (Some(max), true) = (offers.iter().map(|o| o.id.0).max(), self.store.is_some()) {
            self.dirty.next_offer_id = Some(max.saturating_add(1));
        }
        for offer in offers {
            let Some(agent) = self.agents.get(&offer.agent) else {
                let _ = self.allocator.rescind_offer(offer.id);
                continue;
            };
            self.offers.insert(
                offer.id,
                OutstandingOffer {
                    framework: offer.framework.clone(),
                    agent: offer.agent.clone(),
                    resources: offer.resources,
                    expires: started + self.config.offer_timeout,
                },
            );
            self.metrics.offers_sent.inc();
            by_framework
                .entry(offer.framework.clone())
                .or_default()
                .push(v1::Offer {
                    offer_id: offer.id.to_string(),
                    agent_id: offer.agent.to_string(),
                    hostname: agent.hostname.clone(),
                    resources: Some(to_wire(&offer.resources)),
                    attributes: agent
                        .attributes
                        .iter()
                        .map(|(k, v)| v1::Attribute {
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                });
        }
        for (framework, offers) in by_framework {
            let ids: Vec<OfferId> = offers
                .iter()
                .filter_map(|o| offer_id_from_wire(&o.offer_id))
                .collect();
            if !self.send_to_framework(
                &framework,
                v1::Event {
                    event: Some(event::Event::Offers(event::Offers { offers })),
                },
            ) {
                for id in ids {
                    let _ = self.allocator.rescind_offer(id);
                    self.offers.remove(&id);
                }
            }
        }
    }

    fn expire_offers(&mut self, now: Instant) {
        let expired: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| now >= o.expires)
            .map(|(k, _)| *k)
            .collect();
        for offer in expired {
            let _ = self.allocator.rescind_offer(offer);
            self.forget_offer(offer, true);
            self.allocation_wanted = true;
        }
    }

    /// Drops the master's record of an offer, telling its framework when asked.
    fn forget_offer(&mut self, offer: OfferId, tell: bool) {
        if let Some(o) = self.offers.remove(&offer) {
            if tell {
                self.metrics.offers_rescinded.inc();
                self.send_to_framework(
                    &o.framework,
                    v1::Event {
                        event: Some(event::Event::Rescind(event::Rescind {
                            offer_id: offer.to_string(),
                        })),
                    },
                );
            }
        }
    }

    // ------------------------------------------------------------ plumbing

    fn send_to_framework(&self, id: &FrameworkId, event: v1::Event) -> bool {
        self.frameworks
            .get(id)
            .and_then(|f| f.conn.as_ref())
            .is_some_and(|(_, tx)| tx.send(event).is_ok())
    }

    fn send_to_agent(&self, id: &AgentId, message: master_to_agent::Message) -> bool {
        self.agents
            .get(id)
            .and_then(|a| a.conn.as_ref())
            .is_some_and(|(_, tx)| {
                tx.send(v1::MasterToAgent {
                    message: Some(message),
                })
                .is_ok()
            })
    }

    fn ack_to_agent(&self, agent: &AgentId, task_id: &str, uuid: &str) {
        if uuid.is_empty() {
            return;
        }
        self.send_to_agent(
            agent,
            master_to_agent::Message::Acknowledge(master_to_agent::Acknowledge {
                task_id: task_id.to_string(),
                uuid: uuid.to_string(),
            }),
        );
    }

    fn update_gauges(&self) {
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
        let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
        for t in self.tasks.values() {
            *by_state.entry(state_name(t.state())).or_default() += 1;
        }
        m.set_tasks(&by_state);
    }

    fn state_json(&self) -> StateJson {
        let agents = self
            .agents
            .values()
            .map(|a| {
                let mut allocated = Resources::default();
                let mut used = UsedJson::default();
                for t in a.tasks.iter().filter_map(|id| self.tasks.get(id)) {
                    allocated = allocated.saturating_add(&t.resources);
                    if let Some(u) = &t.usage {
                        used.cpu_user_ns += u.cpu_user_ns.unwrap_or(0);
                        used.cpu_system_ns += u.cpu_system_ns.unwrap_or(0);
                        used.mem_bytes += u.mem_current_bytes.unwrap_or(0);
                        used.disk_bytes += u.disk_used_bytes.unwrap_or(0);
                    }
                }
                AgentJson {
                    id: a.id.to_string(),
                    hostname: a.hostname.clone(),
                    state: match a.state {
                        AgentState::Connected => "CONNECTED",
                        AgentState::Unreachable { .. } => "UNREACHABLE",
                    },
                    attributes: a.attributes.clone(),
                    http_endpoint: a.http_endpoint.clone(),
                    total: ResourcesJson::from(&a.total),
                    allocated: ResourcesJson::from(&allocated),
                    used,
                    tasks: a.tasks.len(),
                }
            })
            .collect();
        let frameworks = self
            .frameworks
            .values()
            .map(|f| FrameworkJson {
                id: f.id.to_string(),
                name: f.name.clone(),
                role: f.role.clone(),
                principal: f.principal.clone(),
                connected: f.conn.is_some(),
                suppressed: f.suppressed,
                tasks: f.tasks.len(),
            })
            .collect();
        let mut tasks: Vec<TaskJson> = self.tasks.values().map(TaskJson::from).collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        StateJson {
            version: env!("CARGO_PKG_VERSION"),
            agents,
            frameworks,
            tasks,
        }
    }
}

fn update_event(status: v1::TaskStatus) -> v1::Event {
    v1::Event {
        event: Some(event::Event::Update(event::Update {
            status: Some(status),
        })),
    }
}

fn error_event(message: &str) -> v1::Event {
    v1::Event {
        event: Some(event::Event::Error(event::Error {
            message: message.to_string(),
        })),
    }
}
