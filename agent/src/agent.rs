//! The agent's shared state ([`Core`]) and its lifecycle ([`Agent`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use cella_containerizer::{Containerizer, ContainerizerConfig, Running, TaskId};
use cella_proto::v1;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, ConfigError};
use crate::metrics::Metrics;
use crate::resources::{self, Totals};
use crate::store::{self, Checkpoint, Store, StoreError, StoreOwner, TaskRecord, Write};
use crate::updates::{Acked, Updates};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("containerizer: {0}")]
    Containerizer(String),
}

impl AgentError {
    /// The process exit status: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => ConfigError::EXIT_CODE,
            _ => 1,
        }
    }
}

/// One task the agent holds: launching, running, or ended with updates still
/// unacknowledged.
pub struct Task {
    pub framework_id: String,
    pub info: v1::TaskInfo,
    pub state: v1::TaskState,
    pub sandbox: PathBuf,
    pub pid: i32,
    pub launched_ns: u64,
    /// A Kill arrived: the end is reported KILLED.
    pub kill_requested: bool,
    /// The containerizer's handle while the task runs.
    pub running: Option<Arc<Mutex<Option<Running>>>>,
    pub usage: Option<v1::TaskUsage>,
}

impl Task {
    pub fn record(&self) -> TaskRecord {
        TaskRecord {
            framework_id: self.framework_id.clone(),
            info: Some(self.info.clone()),
            state: self.state as i32,
            sandbox: self.sandbox.display().to_string(),
            pid: self.pid,
            launched_ns: self.launched_ns,
        }
    }
}

pub fn is_terminal(state: v1::TaskState) -> bool {
    matches!(
        state,
        v1::TaskState::TaskFinished
            | v1::TaskState::TaskFailed
            | v1::TaskState::TaskKilled
            | v1::TaskState::TaskLost
            | v1::TaskState::TaskError
    )
}

pub fn state_name(state: v1::TaskState) -> &'static str {
    match state {
        v1::TaskState::Unspecified => "UNSPECIFIED",
        v1::TaskState::TaskStaging => "STAGING",
        v1::TaskState::TaskStarting => "STARTING",
        v1::TaskState::TaskRunning => "RUNNING",
        v1::TaskState::TaskFinished => "FINISHED",
        v1::TaskState::TaskFailed => "FAILED",
        v1::TaskState::TaskKilled => "KILLED",
        v1::TaskState::TaskLost => "LOST",
        v1::TaskState::TaskError => "ERROR",
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Locks a mutex, recovering the data if a thread panicked while holding it (the
/// state stays usable; the panic itself is reported where it happened).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The state every part of the agent shares.
pub struct Core {
    pub config: AgentConfig,
    pub totals: Totals,
    pub hostname: String,
    pub http_endpoint: String,
    pub containerizer: Arc<Containerizer>,
    pub store: Store,
    pub metrics: Metrics,
    pub agent_id: Mutex<Option<String>>,
    pub tasks: Mutex<HashMap<String, Task>>,
    pub updates: Mutex<Updates>,
    /// Bounds the blocking launches that run at once.
    pub launch_permits: Semaphore,
    /// Set when the master sent Shutdown.
    pub stopped_by_master: watch::Sender<Option<String>>,
}

impl Core {
    /// Checkpoints `status` (with the task's record, if it still exists), then sends it
    /// when it heads its task's queue. Returns once it is durable.
    pub async fn send_status(&self, status: v1::TaskStatus) -> Result<(), StoreError> {
        self.send_status_inner(status, true).await
    }

    /// Like [`Core::send_status`], without touching the task's record: for an update
    /// about a launch that was refused because its id is taken by another task.
    pub async fn send_status_detached(&self, status: v1::TaskStatus) -> Result<(), StoreError> {
        self.send_status_inner(status, false).await
    }

    async fn send_status_inner(
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
        if let Some(id) = lock(&self.agent_id).clone() {
            status.agent_id = id;
        }
        let state = status.state();
        let record = if !update_task {
            None
        } else {
            let mut tasks = lock(&self.tasks);
            tasks.get_mut(&status.task_id).map(|t| {
                t.state = state;
                t.record()
            })
        };
        let seq = lock(&self.updates).next_seq();
        let mut writes = vec![Write::PutUpdate(seq, status.clone())];
        if let Some(record) = record {
            writes.push(Write::PutTask(status.task_id.clone(), record));
        }
        self.store.write(writes).await?;
        let mut updates = lock(&self.updates);
        if updates.add(seq, status, Instant::now()) {
            self.metrics.updates_sent.inc();
        }
        self.metrics
            .updates_pending
            .set(i64::try_from(updates.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// A scheduler acknowledged an update. When it was a task's last update and the
    /// task has ended, the task is forgotten (its sandbox stays for `cella logs`).
    pub fn acknowledge(&self, task_id: &str, uuid: &str) {
        let acked = {
            let mut updates = lock(&self.updates);
            let acked = updates.acknowledge(task_id, uuid, Instant::now());
            self.metrics
                .updates_pending
                .set(i64::try_from(updates.len()).unwrap_or(i64::MAX));
            acked
        };
        match acked {
            Acked::Unknown => {
                tracing::debug!(
                    task = task_id,
                    uuid,
                    "acknowledgement of an unknown update ignored"
                );
            }
            Acked::Forgotten {
                seq,
                state,
                drained,
            } => {
                self.metrics.updates_acknowledged.inc();
                let mut writes = vec![Write::DeleteUpdate(seq)];
                if drained && is_terminal(state) {
                    let mut tasks = lock(&self.tasks);
                    if tasks
                        .get(task_id)
                        .is_some_and(|t| is_terminal(t.state) && t.running.is_none())
                    {
                        tasks.remove(task_id);
                        writes.push(Write::DeleteTask(task_id.to_string()));
                    }
                }
                self.store.write_later(writes);
            }
        }
    }

    /// The tasks to list in Register: everything not yet forgotten.
    pub fn running_tasks(&self) -> Vec<v1::RunningTask> {
        let tasks = lock(&self.tasks);
        let mut out: Vec<v1::RunningTask> = tasks
            .values()
            .map(|t| v1::RunningTask {
                framework_id: t.framework_id.clone(),
                task: Some(t.info.clone()),
                state: t.state as i32,
            })
            .collect();
        out.sort_by(|a, b| {
            let id = |r: &v1::RunningTask| r.task.as_ref().map(|t| t.task_id.clone());
            id(a).cmp(&id(b))
        });
        out
    }

    pub fn update_task_gauges(&self) {
        let tasks = lock(&self.tasks);
        let mut counts: Vec<(&str, i64)> = [
            v1::TaskState::TaskStarting,
            v1::TaskState::TaskRunning,
            v1::TaskState::TaskFinished,
            v1::TaskState::TaskFailed,
            v1::TaskState::TaskKilled,
            v1::TaskState::TaskLost,
            v1::TaskState::TaskError,
        ]
        .iter()
        .map(|s| (state_name(*s), 0))
        .collect();
        for t in tasks.values() {
            let name = state_name(t.state);
            if let Some(c) = counts.iter_mut().find(|(n, _)| *n == name) {
                c.1 += 1;
            }
        }
        self.metrics.set_tasks(&counts);
    }

    pub fn sandbox_dir(&self, task_id: &str) -> PathBuf {
        self.config.work_dir.join("sandboxes").join(task_id)
    }
}

/// A running agent. Dropping it without [`Agent::shutdown`] aborts its background
/// work (tasks keep running under their shims).
pub struct Agent {
    core: Arc<Core>,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    store_owner: Option<StoreOwner>,
    stopped: watch::Receiver<Option<String>>,
}

impl Agent {
    /// Prepares the work and runtime directories, opens the checkpoint, detects the
    /// resources, loads the TLS files, binds the HTTP API and starts talking to the
    /// master. Returns once all of that is done (the master may not be reachable yet).
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        for dir in [
            config.work_dir.clone(),
            config.work_dir.join("sandboxes"),
            config.runtime_dir.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::Io {
                path: dir.clone(),
                message: format!("cannot create the directory: {e}"),
            })?;
        }
        let layout = cella_proto::tls::Layout::new(&config.tls_dir);
        let missing: Vec<String> = [&layout.ca_cert, &layout.agent_cert, &layout.agent_key]
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::Tls(format!(
                "missing {} (--tls-dir {}): create them with `cella certs init DIR` and copy ca.pem, \
                 agent.pem and agent-key.pem here",
                missing.join(", "),
                config.tls_dir.display()
            )));
        }
        let client_tls =
            cella_proto::tls::client_config(&layout.ca_cert, &layout.agent_cert, &layout.agent_key)
                .map_err(|e| AgentError::Tls(e.to_string()))?;
        let server_tls =
            cella_proto::tls::server_config(&layout.ca_cert, &layout.agent_cert, &layout.agent_key)
                .map_err(|e| AgentError::Tls(e.to_string()))?;

        let shim_path = config
            .shim_path
            .clone()
            .unwrap_or_else(ContainerizerConfig::default_shim_path);
        if !shim_path.is_file() {
            return Err(AgentError::Containerizer(format!(
                "the task shim {} does not exist: install cella-shim next to cella-agent or set CELLA_SHIM",
                shim_path.display()
            )));
        }
        let containerizer = Containerizer::new(ContainerizerConfig {
            shim_path,
            runtime_dir: config.runtime_dir.clone(),
            cgroup_root: config.cgroup_root.clone(),
            cleanup_if_orphaned: false,
        })
        .map_err(|e| AgentError::Containerizer(e.to_string()))?;

        let work_dir = config.work_dir.clone();
        let detected = tokio::task::spawn_blocking(move || resources::detect(&work_dir))
            .await
            .map_err(|e| AgentError::Containerizer(format!("resource detection: {e}")))?;
        let totals = resources::compute(detected, config.reserve, config.resources);
        if totals.cpus.0 == 0 || totals.mem_bytes == 0 {
            return Err(ConfigError::new(
                "--reserve",
                format!(
                    "detected {} CPUs and {} of memory; after the reservation nothing is left to offer: \
                     lower --reserve or set --resources",
                    detected.cpus,
                    cella_containerizer::units::format_bytes(detected.mem_bytes)
                ),
            )
            .into());
        }

        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| {
                ConfigError::new(
                    "--http-listen",
                    format!("cannot listen on {}: {e}", config.http_listen),
                )
            })?;
        let http_addr = listener.local_addr().map_err(|e| AgentError::Io {
            path: PathBuf::from(config.http_listen.to_string()),
            message: e.to_string(),
        })?;

        let (store, store_owner, checkpoint) = Store::open(&config.work_dir)?;
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        });
        let concurrency = config.launch_concurrency.unwrap_or_else(|| {
            usize::try_from(totals.cpus.0.div_ceil(1000))
                .unwrap_or(1)
                .saturating_mul(2)
                .clamp(2, 64)
        });
        let (stopped_tx, stopped) = watch::channel(None);
        let core = Arc::new(Core {
            http_endpoint: format!("https://{http_addr}"),
            config,
            totals,
            hostname,
            containerizer: Arc::new(containerizer),
            store,
            metrics: Metrics::new(),
            agent_id: Mutex::new(None),
            tasks: Mutex::new(HashMap::new()),
            updates: Mutex::new(Updates::default()),
            launch_permits: Semaphore::new(concurrency),
            stopped_by_master: stopped_tx,
        });
        restore(&core, checkpoint).await?;
        tracing::info!(
            cpus = %core.totals.cpus,
            mem = %cella_containerizer::units::format_bytes(core.totals.mem_bytes),
            disk = %cella_containerizer::units::format_bytes(core.totals.disk_bytes),
            http = %core.http_endpoint,
            master = %core.config.master,
            "agent starting"
        );

        let (stop, stop_rx) = watch::channel(false);
        let background = vec![
            tokio::spawn(crate::http::serve(
                core.clone(),
                listener,
                Arc::new(server_tls),
                stop_rx.clone(),
            )),
            tokio::spawn(crate::connection::run(
                core.clone(),
                client_tls,
                stop_rx.clone(),
            )),
            tokio::spawn(crate::tasks::usage_loop(core.clone(), stop_rx.clone())),
        ];
        Ok(Agent {
            core,
            http_addr,
            stop,
            background,
            store_owner: Some(store_owner),
            stopped,
        })
    }

    /// The address of the HTTPS API (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The id the master assigned, once registered.
    pub fn agent_id(&self) -> Option<String> {
        lock(&self.core.agent_id).clone()
    }

    /// The resources reported to the master.
    pub fn totals(&self) -> Totals {
        self.core.totals
    }

    /// Resolves when the master told the agent to shut down (its tasks are killed);
    /// the message says why.
    pub async fn stopped_by_master(&self) -> String {
        let mut rx = self.stopped.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the agent. With `kill_tasks`, every task is killed first and its terminal
    /// status is checkpointed (and sent, if the master is reachable, for up to a few
    /// seconds). Without it, tasks keep running under their shims: a later agent on the
    /// same work directory finds them in the checkpoint (recovery: issue 4).
    pub async fn shutdown(mut self, kill_tasks: bool) -> Result<(), AgentError> {
        if kill_tasks {
            crate::tasks::kill_all(&self.core, Duration::from_secs(10)).await;
            // Give the terminal updates a moment to be acknowledged.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && !lock(&self.core.updates).is_empty() {
                if lock(&self.core.updates).conn().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = self.stop.send(true);
        for handle in self.background.drain(..) {
            if tokio::time::timeout(Duration::from_secs(6), &mut Box::pin(handle))
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop in time");
            }
        }
        crate::tasks::detach_all(&self.core);
        let owner = self.store_owner.take();
        let core = self.core.clone();
        drop(self);
        // The writer thread ends when the last Store handle is gone; monitors that
        // still hold the core are aborted by detach_all.
        let _ = tokio::task::spawn_blocking(move || {
            drop(core);
            if let Some(owner) = owner {
                owner.close();
            }
        })
        .await;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for handle in &self.background {
            handle.abort();
        }
    }
}

/// Runs an agent until `shutdown` completes (or the master tells it to shut down).
/// On `shutdown`, tasks are killed only if `config.kill_tasks_on_exit`.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let kill = config.kill_tasks_on_exit;
    let agent = Agent::start(config).await?;
    tokio::select! {
        () = shutdown => {
            tracing::info!(kill_tasks = kill, "agent stopping");
            agent.shutdown(kill).await
        }
        why = agent.stopped_by_master() => {
            tracing::warn!("the master shut this agent down: {why}");
            agent.shutdown(true).await
        }
    }
}

/// Takes over what a previous agent left in the checkpoint. Until recovery (issue 4)
/// exists, tasks that were still running cannot be re-attached: they are destroyed
/// (killed, cleaned up) and reported LOST, never silently dropped. Unacknowledged
/// updates are kept and re-sent after registration.
async fn restore(core: &Arc<Core>, checkpoint: Checkpoint) -> Result<(), AgentError> {
    let Checkpoint {
        agent_id,
        boot_id,
        tasks,
        updates,
    } = checkpoint;
    *lock(&core.agent_id) = agent_id;
    let now_boot = store::boot_id();
    if let (Some(old), Some(new)) = (&boot_id, &now_boot)
        && old != new
    {
        tracing::info!("the machine rebooted since the checkpoint was written");
    }
    if let Some(b) = now_boot {
        core.store.write(vec![Write::BootId(b)]).await?;
    }
    lock(&core.updates).restore(updates);
    let mut orphans = Vec::new();
    {
        let mut map = lock(&core.tasks);
        for (id, record) in tasks {
            let state = record.state();
            let task = Task {
                framework_id: record.framework_id.clone(),
                info: record.info.clone().unwrap_or_default(),
                state,
                sandbox: PathBuf::from(&record.sandbox),
                pid: record.pid,
                launched_ns: record.launched_ns,
                kill_requested: false,
                running: None,
                usage: None,
            };
            if !is_terminal(state) {
                orphans.push(id.clone());
            }
            map.insert(id, task);
        }
    }
    for id in orphans {
        tracing::warn!(task = %id, "task of a previous agent run: cannot re-attach yet; destroying it and reporting LOST");
        if let Ok(task_id) = TaskId::new(id.clone()) {
            let c = core.containerizer.clone();
            let _ = tokio::task::spawn_blocking(move || c.destroy(&task_id)).await;
        }
        let framework_id = lock(&core.tasks)
            .get(&id)
            .map(|t| t.framework_id.clone())
            .unwrap_or_default();
        core.send_status(v1::TaskStatus {
            task_id: id,
            framework_id,
            state: v1::TaskState::TaskLost as i32,
            reason: v1::Reason::AgentRestarted as i32,
            message: "the agent restarted and this version cannot re-attach to running tasks: \
                      the task was killed; launch it again"
                .into(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}
