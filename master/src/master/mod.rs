//! The master: one task (an actor) owns the registry and the allocator; gRPC
//! streams and HTTP handlers talk to it through [`MasterHandle`]. One owner means
//! no locks, and every change happens in one order that is easy to reason about.
//!
//! This module is the actor itself: its commands, its loop and their dispatch. What
//! it does with them is split by concept, each adding methods to [`Master`]:
//!
//! | module | concept |
//! |---|---|
//! | `registry` | what changed since the last write, and writing it to the store |
//! | `recovery` | rebuilding the registry from the store when the master starts |
//! | `agents` | registration and re-registration, pings, unreachable and lost agents |
//! | `frameworks` | subscription, failover, suppress/revive, teardown and removal |
//! | `offers` | allocation, accept, decline, rescind and expiry of offers |
//! | `tasks` | validation, launch, status updates, reconciliation, kill |
//! | `usage` | usage reports: each task's history, each agent's node totals |
//! | `views` | the JSON the operator API serves, and the gauges of `/metrics` |

mod agents;
mod audit;
mod frameworks;
mod offers;
mod recovery;
mod registry;
mod tasks;
mod usage;
mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::acl::Denied;
use cella_proto::api;
use cella_proto::auth::Authenticator;
use cella_proto::tls::{ConnectionStats, Identity, Limits};
use cella_proto::v1::{self, agent_message, call, event, master_to_agent};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tonic::Status;

use crate::allocator::{
    AgentId, Allocator, AllocatorConfig, FrameworkId, HierarchicalDrf, OfferId,
};
use crate::authz::Authorizer;
use crate::metrics::Metrics;
use crate::state::{self, Agent, Framework, OutstandingOffer, Task};
use crate::store::{self, Store, StoreError};
pub use crate::task_defaults::TaskDefaults;
use registry::Registry;
pub use usage::{TaskUsageAnswer, UsageQuery};

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
    /// SIGTERM to SIGKILL, for a killed task whose kill policy names no grace period.
    pub kill_grace_period: Duration,
    /// The longest grace period a task's kill policy or a KILL may ask for.
    pub max_kill_grace_period: Duration,
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
    /// Who may do what (permissive unless an ACL file is configured).
    pub authorizer: Arc<Authorizer>,
    /// How HTTP callers without a client certificate authenticate (tokens, passwords).
    pub authenticator: Arc<Authenticator>,
    /// Connection caps and idle timeout of the master's port.
    pub limits: Limits,
    /// The largest gRPC message the master accepts, in bytes.
    pub max_message_bytes: usize,
    /// The audit log (task ends, kills, denials); `None`: none is kept.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// The resolution and reach of each task's usage history.
    pub usage_history: crate::usage::Tiers,
    /// What a launched task that names no disk or no pids limit gets, so that the
    /// allocator counts the disk it may fill (0: none; the agent's own default applies).
    pub task_defaults: TaskDefaults,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            offer_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(5),
            agent_unreachable_after: Duration::from_secs(15),
            agent_lost_timeout: Duration::from_secs(60),
            allocation_interval: Duration::from_secs(1),
            kill_grace_period: Duration::from_secs(5),
            max_kill_grace_period: Duration::from_secs(300),
            default_refuse: Duration::from_secs(5),
            max_failover_timeout: Duration::from_secs(7 * 24 * 3600),
            weights: Vec::new(),
            completed_tasks_kept: 10_000,
            work_dir: None,
            authorizer: Authorizer::permissive(),
            authenticator: Authenticator::certificates_only(),
            limits: Limits::default(),
            max_message_bytes: 16 << 20,
            audit: None,
            usage_history: crate::usage::Tiers::default(),
            task_defaults: TaskDefaults::default(),
        }
    }
}

/// Why an operator's request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Denied(#[from] Denied),
    #[error("{0}")]
    Failed(String),
    #[error("the master is shutting down")]
    Unavailable,
}

/// Requests to the master actor.
pub enum Command {
    AgentRegister {
        register: agent_message::Register,
        /// The node the agent's certificate names.
        node: String,
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
        /// Who subscribes (a user identity, from the scheduler's certificate).
        caller: Identity,
        tx: UnboundedSender<v1::Event>,
        reply: oneshot::Sender<Result<(FrameworkId, u64), Status>>,
    },
    Call {
        framework: FrameworkId,
        conn: u64,
        call: call::Call,
    },
    /// A call that names no call (an empty `Call` message).
    EmptyCall {
        framework: FrameworkId,
        conn: u64,
    },
    SchedulerDisconnected {
        framework: FrameworkId,
        conn: u64,
    },
    State(oneshot::Sender<api::State>),
    /// A task's usage (`None`: unknown task).
    TaskUsage {
        task_id: String,
        query: UsageQuery,
        reply: oneshot::Sender<Option<TaskUsageAnswer>>,
    },
    /// Operator kill (`kill_task`).
    Kill {
        task_id: String,
        /// The grace period asked for (`None`: the task's own).
        policy: Option<v1::KillPolicy>,
        caller: Identity,
        reply: oneshot::Sender<Result<(), OperatorError>>,
    },
    /// Operator teardown of a framework (`teardown_framework`).
    Teardown {
        framework_id: String,
        caller: Identity,
        reply: oneshot::Sender<Result<(), OperatorError>>,
    },
    /// The ACL changed: agents get the new access policy.
    PolicyChanged,
    /// Writes a consistent copy of the registry to a file.
    Backup {
        path: PathBuf,
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
    /// The settings the master started with: its authorizer, authenticator, port
    /// limits and audit log serve the APIs too.
    pub config: Arc<MasterConfig>,
    /// The connection counters of the master's port.
    pub connections: Arc<ConnectionStats>,
}

impl MasterHandle {
    pub fn send(&self, command: Command) -> bool {
        self.tx.send(command).is_ok()
    }

    /// Sends the command `command` builds around a reply channel, and waits for the
    /// answer: `None` when the master is stopping.
    pub async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.send(command(reply));
        rx.await.ok()
    }

    /// A task's usage: `None` when the master is stopping, `Some(None)` for an
    /// unknown task.
    pub async fn task_usage(
        &self,
        task_id: String,
        query: UsageQuery,
    ) -> Option<Option<TaskUsageAnswer>> {
        self.ask(|reply| Command::TaskUsage {
            task_id,
            query,
            reply,
        })
        .await
    }

    pub async fn state(&self) -> Option<api::State> {
        self.ask(Command::State).await
    }

    /// Stops the actor after writing the registry; returns when the store is
    /// closed (a new master may then open the same work dir).
    pub async fn stop(&self) {
        self.ask(Command::Stop).await;
    }

    /// An operator's kill of a task, if `caller` may (`kill_task`).
    pub async fn kill(
        &self,
        task_id: String,
        policy: Option<v1::KillPolicy>,
        caller: Identity,
    ) -> Result<(), OperatorError> {
        self.ask(|reply| Command::Kill {
            task_id,
            policy,
            caller,
            reply,
        })
        .await
        .unwrap_or(Err(OperatorError::Unavailable))
    }

    /// An operator's teardown of a framework, if `caller` may (`teardown_framework`).
    pub async fn teardown(
        &self,
        framework_id: String,
        caller: Identity,
    ) -> Result<(), OperatorError> {
        self.ask(|reply| Command::Teardown {
            framework_id,
            caller,
            reply,
        })
        .await
        .unwrap_or(Err(OperatorError::Unavailable))
    }

    /// Writes a consistent copy of the registry to `path` (the master keeps running).
    pub async fn backup(&self, path: PathBuf) -> Result<(), String> {
        self.ask(|reply| Command::Backup { path, reply })
            .await
            .unwrap_or_else(|| Err("the master is shutting down".into()))
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
    if let Some(log) = &config.audit {
        config.authorizer.record_denials_in(log.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let connections = Arc::new(ConnectionStats::default());
    let metrics = std::sync::Arc::new(Metrics::new(
        &config.authorizer,
        config.authenticator.clone(),
        connections.clone(),
    ));
    let handle = MasterHandle {
        tx,
        metrics: metrics.clone(),
        config: Arc::new(config.clone()),
        connections,
    };
    let master = Master::new(config, metrics, store);
    tokio::spawn(master.run(rx));
    Ok(handle)
}

/// The actor's state. Its methods live in the modules of each concept.
struct Master {
    config: MasterConfig,
    allocator: HierarchicalDrf,
    agents: BTreeMap<AgentId, Agent>,
    frameworks: BTreeMap<FrameworkId, Framework>,
    tasks: HashMap<String, Task>,
    /// Ended tasks, oldest first; beyond `completed_tasks_kept` they are forgotten.
    completed: VecDeque<String>,
    offers: HashMap<OfferId, OutstandingOffer>,
    next_conn: u64,
    allocation_wanted: bool,
    metrics: std::sync::Arc<Metrics>,
    registry: Registry,
    stopping: Option<oneshot::Sender<()>>,
    /// Agents reloaded from the registry that have neither re-registered nor been
    /// declared lost yet: until they have, a task unknown to this master may still
    /// be running on one of them.
    recovering: BTreeSet<AgentId>,
    /// Explicit reconciliations of unknown tasks, answered once `recovering` empties.
    deferred_reconciles: Vec<(FrameworkId, String)>,
    /// Messages held back until the audit log is synced (see `audit.rs`).
    held: std::cell::RefCell<Vec<audit::Held>>,
    usage: usage::UsageBook,
    /// Something the gauges count may have changed since they were last set: they
    /// count every task, which a batch of usage reports alone leaves as it was.
    gauges_stale: bool,
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
        let usage = usage::UsageBook::new(config.usage_history.clone());
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
            registry: Registry::new(store),
            stopping: None,
            recovering: BTreeSet::new(),
            deferred_reconciles: Vec::new(),
            held: Default::default(),
            usage,
            gauges_stale: true,
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
                    self.gauges_stale = true;
                    let now = Instant::now();
                    if now.duration_since(last_ping) >= self.config.ping_interval {
                        last_ping = now;
                        self.ping_agents(now);
                        self.heartbeat_frameworks();
                    }
                    self.expire_offers(now);
                    if let Some(log) = &self.config.audit {
                        log.checkpoint_if_due();
                    }
                    self.expire_frameworks(now);
                    if now.duration_since(last_allocation) >= self.config.allocation_interval {
                        self.allocation_wanted = true;
                    }
                }
            }
            self.release_held();
            if self.allocation_wanted {
                self.allocation_wanted = false;
                last_allocation = Instant::now();
                self.allocate();
            }
            if std::mem::take(&mut self.gauges_stale) {
                self.update_gauges();
            }
            self.flush();
            if let Some(reply) = self.stopping.take() {
                self.registry.close();
                if let Some(Err(e)) = self.config.audit.as_ref().map(|l| l.checkpoint()) {
                    tracing::error!("audit log: {e}");
                }
                let _ = reply.send(());
                return;
            }
        }
        self.flush();
    }

    /// Writes every record changed since the last flush (see [`Registry::flush`]).
    fn flush(&mut self) {
        self.registry
            .flush(&self.agents, &self.frameworks, &self.tasks, &self.metrics);
    }

    fn handle(&mut self, command: Command) {
        if !matches!(
            &command,
            Command::AgentMessage {
                message: agent_message::Message::Usage(_) | agent_message::Message::Pong(_),
                ..
            }
        ) {
            self.gauges_stale = true;
        }
        match command {
            Command::AgentRegister {
                register,
                node,
                tx,
                reply,
            } => {
                let _ = reply.send(self.agent_register(register, &node, tx));
            }
            Command::AgentMessage {
                agent,
                conn,
                message,
            } => self.agent_message(&agent, conn, message),
            Command::AgentDisconnected { agent, conn } => self.agent_disconnected(&agent, conn),
            Command::Subscribe {
                framework,
                caller,
                tx,
                reply,
            } => {
                let _ = reply.send(self.subscribe(framework, caller, tx));
            }
            Command::Call {
                framework,
                conn,
                call,
            } => self.scheduler_call(&framework, conn, call),
            Command::EmptyCall { framework, conn } => {
                if self.is_current_stream(&framework, conn) {
                    self.send_to_framework(
                        &framework,
                        error_event(
                            "an empty call: set one of the fields of Call (accept, decline, kill, \
                             acknowledge, reconcile, suppress, revive, teardown, heartbeat)",
                        ),
                    );
                }
            }
            Command::SchedulerDisconnected { framework, conn } => {
                self.scheduler_disconnected(&framework, conn)
            }
            Command::State(reply) => {
                let _ = reply.send(self.state_view());
            }
            Command::TaskUsage {
                task_id,
                query,
                reply,
            } => {
                let _ = reply.send(self.task_usage_view(&task_id, query));
            }
            Command::Kill {
                task_id,
                policy,
                caller,
                reply,
            } => {
                let _ = reply.send(self.operator_kill(&task_id, policy.as_ref(), &caller));
            }
            Command::Teardown {
                framework_id,
                caller,
                reply,
            } => {
                let _ = reply.send(self.operator_teardown(&framework_id, &caller));
            }
            Command::PolicyChanged => self.send_policy_to_agents(),
            Command::Backup { path, reply } => self.registry.backup(path, reply),
            Command::Stop(reply) => self.stopping = Some(reply),
        }
    }

    /// A call on a scheduler's stream; calls from a replaced stream are ignored.
    fn is_current_stream(&self, id: &FrameworkId, conn: u64) -> bool {
        self.frameworks
            .get(id)
            .is_some_and(|f| f.conn.as_ref().map(|(c, _)| *c) == Some(conn))
    }

    fn scheduler_call(&mut self, id: &FrameworkId, conn: u64, call: call::Call) {
        if !self.is_current_stream(id, conn) {
            return;
        }
        let now = Instant::now();
        match call {
            call::Call::Subscribe(_) => {
                self.send_to_framework(id, error_event("already subscribed on this stream"));
            }
            call::Call::Accept(accept) => self.accept(id, accept, now),
            call::Call::Decline(decline) => self.decline(id, &decline, now),
            call::Call::Kill(kill) => {
                self.scheduler_kill(id, &kill.task_id, kill.kill_policy.as_ref())
            }
            call::Call::Acknowledge(ack) => self.acknowledge(id, &ack),
            call::Call::Reconcile(reconcile) => self.reconcile(id, &reconcile.task_ids),
            call::Call::Suppress(_) => self.suppress(id),
            call::Call::Revive(_) => self.revive(id),
            call::Call::Teardown(_) => {
                tracing::info!(framework = %id, "teardown: killing its tasks");
                self.remove_framework(id);
            }
            call::Call::Heartbeat(_) => {}
        }
    }

    // ------------------------------------------------------------ plumbing

    fn send_to_framework(&self, id: &FrameworkId, event: v1::Event) -> bool {
        if self.holding() {
            self.hold(audit::Held::Framework(id.clone(), event));
            return self.frameworks.get(id).is_some_and(|f| f.conn.is_some());
        }
        self.frameworks
            .get(id)
            .and_then(|f| f.conn.as_ref())
            .is_some_and(|(_, tx)| tx.send(event).is_ok())
    }

    /// The access policy agents authorize their API with, to every connected agent.
    fn send_policy_to_agents(&self) {
        let policy = self.config.authorizer.agent_policy();
        for id in self.agents.keys() {
            self.send_to_agent(id, master_to_agent::Message::Policy(policy.clone()));
        }
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

    /// The grace period of a kill of `task`: `asked` (a KILL's own policy), else the
    /// task's kill policy, else the cluster's default; at most the cluster's maximum.
    fn kill_grace(&self, task: &Task, asked: Option<&v1::KillPolicy>) -> Duration {
        asked
            .or(task.info.kill_policy.as_ref())
            .and_then(|p| p.grace_period_secs)
            .filter(|s| cella_proto::validate::is_grace_period(*s))
            .map_or(self.config.kill_grace_period, |s| {
                Duration::from_secs_f64(s.min(self.config.max_kill_grace_period.as_secs_f64()))
            })
            .min(self.config.max_kill_grace_period)
    }

    /// Tells the agent an update was acknowledged (updates without a uuid need none).
    fn ack_to_agent(&self, agent: &AgentId, task_id: &str, uuid: &str) {
        if uuid.is_empty() {
            return;
        }
        if self.holding() {
            let held = audit::Held::Ack(agent.clone(), task_id.to_string(), uuid.to_string());
            self.hold(held);
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

fn kill_message(
    framework: &FrameworkId,
    task_id: &str,
    grace: Duration,
) -> master_to_agent::Message {
    master_to_agent::Message::Kill(master_to_agent::KillTask {
        framework_id: framework.to_string(),
        task_id: task_id.to_string(),
        grace_period_ms: Some(state::duration_ms(grace)),
    })
}
