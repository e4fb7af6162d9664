//! The agent's shared state ([`Core`]) and its lifecycle ([`Agent`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use cella_containerizer::{Containerizer, ContainerizerConfig, Recovered, Running, TaskId};
use cella_proto::v1;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, ConfigError, RecoverMode};
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
    /// Another agent holds the work directory's lock.
    #[error("{}", locked_message(dir, *pid))]
    Locked { dir: PathBuf, pid: Option<i32> },
}

fn locked_message(dir: &std::path::Path, pid: Option<i32>) -> String {
    let who = pid.map_or_else(
        || "another agent".to_string(),
        |p| format!("another agent (pid {p})"),
    );
    format!(
        "the work directory {} is in use by {who}: it holds {}; stop it first, or give this \
         agent its own --work-dir",
        dir.display(),
        dir.join("meta/lock").display()
    )
}

impl AgentError {
    /// The process exit status: 2 for configuration problems, 1 otherwise (a work
    /// directory locked by another agent, a damaged checkpoint with `--strict`, ...).
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
    pub shim_pid: i32,
    pub shim_start_time: u64,
    pub launched_ns: u64,
    /// When its terminal state was generated (0 while it runs).
    pub ended_ns: u64,
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
            shim_pid: self.shim_pid,
            ended_ns: self.ended_ns,
            kill_requested: self.kill_requested,
            shim_start_time: self.shim_start_time,
        }
    }
}

pub fn is_terminal(state: v1::TaskState) -> bool {
    state.is_terminal()
}

pub fn state_name(state: v1::TaskState) -> &'static str {
    state.name()
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
    /// `--recover cleanup` is killing the recovered tasks: no launches, and the
    /// kills are reported with reason AGENT_RESTARTED.
    pub cleaning_up: std::sync::atomic::AtomicBool,
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
        // Queued while the task is locked: a concurrent change of the task (a kill
        // request) is checkpointed after this copy, never before it.
        let (seq, durable) = {
            let mut tasks = lock(&self.tasks);
            let record = if update_task {
                tasks.get_mut(&status.task_id).map(|t| {
                    t.state = state;
                    if is_terminal(state) && t.ended_ns == 0 {
                        t.ended_ns = now_ns();
                    }
                    t.record()
                })
            } else {
                None
            };
            let seq = lock(&self.updates).next_seq();
            let mut writes = vec![Write::PutUpdate(seq, status.clone())];
            if let Some(record) = record {
                writes.push(Write::PutTask(status.task_id.clone(), record));
            }
            (seq, self.store.submit(writes))
        };
        durable.await?;
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
    /// The work directory's lock, held for the agent's lifetime.
    _lock: std::fs::File,
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
        let work_lock = lock_work_dir(&config.work_dir)?;
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

        let work_dir = config.work_dir.clone();
        let strict = config.strict;
        let (store, store_owner, checkpoint) =
            tokio::task::spawn_blocking(move || Store::open_with(&work_dir, strict))
                .await
                .map_err(|e| AgentError::Containerizer(format!("opening the checkpoint: {e}")))?
                .map_err(|e| {
                    if strict {
                        AgentError::Io {
                            path: e.path().to_path_buf(),
                            message: format!(
                                "{e}\nThe checkpoint is damaged. To start anyway, either run with \
                                 --strict=false (recover what can be read), or move {} aside to start \
                                 fresh (the agent then loses track of the tasks it recorded: kill them \
                                 or let them end).",
                                e.path().display()
                            ),
                        }
                    } else {
                        e.into()
                    }
                })?;
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
            cleaning_up: std::sync::atomic::AtomicBool::new(false),
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
            tokio::spawn(crate::tasks::gc_loop(core.clone(), stop_rx.clone())),
        ];
        Ok(Agent {
            core,
            http_addr,
            stop,
            background,
            store_owner: Some(store_owner),
            stopped,
            _lock: work_lock,
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

    /// How many tasks run under this agent (after a restart: those it re-attached to).
    pub fn running_tasks(&self) -> usize {
        lock(&self.core.tasks)
            .values()
            .filter(|t| t.running.is_some())
            .count()
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
///
/// With `--recover cleanup` it recovers the previous run's tasks, kills them all,
/// reports them (KILLED, reason AGENT_RESTARTED; sent if the master is reachable
/// within a few seconds, otherwise left in the checkpoint for the next agent to
/// send) and returns.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let kill = config.kill_tasks_on_exit;
    let cleanup = config.recover == RecoverMode::Cleanup;
    let agent = Agent::start(config).await?;
    if cleanup {
        return agent.cleanup().await;
    }
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

impl Agent {
    /// `--recover cleanup`: kills every recovered task, waits (bounded) for their
    /// updates to be acknowledged, and stops.
    pub async fn cleanup(self) -> Result<(), AgentError> {
        self.core
            .cleaning_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let n = lock(&self.core.tasks)
            .values()
            .filter(|t| !is_terminal(t.state))
            .count();
        tracing::info!(tasks = n, "--recover cleanup: killing every recovered task");
        crate::tasks::kill_all(&self.core, Duration::from_secs(10)).await;
        // A terminal state is set before its update is checkpointed and queued: wait
        // (briefly) until every ended task's update is queued or acknowledged.
        let queued = Instant::now();
        while queued.elapsed() < Duration::from_secs(2) {
            let all = {
                let tasks = lock(&self.core.tasks);
                let updates = lock(&self.core.updates);
                tasks
                    .iter()
                    .all(|(id, t)| !is_terminal(t.state) || updates.has_pending(id))
            };
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Up to 5 s to reach the master, then up to 10 s for the acknowledgements.
        let start = Instant::now();
        loop {
            let (empty, connected) = {
                let u = lock(&self.core.updates);
                (u.is_empty(), u.conn().is_some())
            };
            if empty {
                break;
            }
            let waited = start.elapsed();
            if (!connected && waited > Duration::from_secs(5)) || waited > Duration::from_secs(15) {
                tracing::warn!(
                    pending = lock(&self.core.updates).len(),
                    "--recover cleanup: some status updates were not acknowledged; they stay in \
                     the checkpoint and the next agent sends them"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shutdown(false).await
    }
}

/// Takes `<work-dir>/meta/lock` (flock, exclusive, non-blocking) and writes this
/// process's pid into it. The lock lasts as long as the returned file is open (the
/// kernel releases it when the process dies, even with SIGKILL).
fn lock_work_dir(work_dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    use std::io::{Read, Seek, Write as _};
    use std::os::fd::AsRawFd;
    let meta = work_dir.join("meta");
    std::fs::create_dir_all(&meta).map_err(|e| AgentError::Io {
        path: meta.clone(),
        message: format!("cannot create the directory: {e}"),
    })?;
    let path = meta.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| AgentError::Io {
            path: path.clone(),
            message: format!("cannot open the work directory's lock: {e}"),
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(AgentError::Locked {
                dir: work_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        return Err(AgentError::Io {
            path,
            message: format!("cannot lock the work directory: {err}"),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// What recovery decided for one task of the checkpoint.
enum Outcome {
    Running(Box<Running>),
    Ended(v1::TaskStatus),
    Lost(String),
}

/// Takes over what a previous agent left in the checkpoint: re-attaches to every
/// live task (monitored again like a launched one), reports the real end of tasks
/// that ended meanwhile and LOST (AGENT_RESTARTED) for those whose outcome cannot be
/// known. After a reboot no old pid is trusted: every unfinished task is LOST and its
/// leftovers are removed. Unacknowledged updates are kept and re-sent after
/// registration.
async fn restore(core: &Arc<Core>, checkpoint: Checkpoint) -> Result<(), AgentError> {
    use futures::StreamExt;
    let Checkpoint {
        agent_id,
        boot_id,
        tasks,
        updates,
        errors,
    } = checkpoint;
    for e in &errors {
        tracing::error!(checkpoint = %core.store.path().display(), "not recovered: {e}");
        core.metrics.recovery_errors.inc();
    }
    *lock(&core.agent_id) = agent_id;
    let now_boot = store::boot_id();
    let rebooted = matches!((&boot_id, &now_boot), (Some(old), Some(new)) if old != new);
    if rebooted {
        tracing::warn!(
            "the machine rebooted since the checkpoint was written: the tasks of the previous boot are reported LOST"
        );
    }
    lock(&core.updates).restore(updates);
    let mut unfinished = Vec::new();
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
                shim_pid: record.shim_pid,
                shim_start_time: record.shim_start_time,
                launched_ns: record.launched_ns,
                ended_ns: record.ended_ns,
                kill_requested: record.kill_requested,
                running: None,
                usage: None,
            };
            if !is_terminal(state) {
                let shim = (task.shim_pid != 0 && task.shim_start_time != 0)
                    .then_some((task.shim_pid, task.shim_start_time));
                unfinished.push(Unfinished {
                    id: id.clone(),
                    info: task.info.clone(),
                    sandbox: task.sandbox.clone(),
                    kill_requested: task.kill_requested,
                    shim,
                });
            }
            map.insert(id, task);
        }
    }
    let n = unfinished.len();
    let results: Vec<(String, Outcome)> = futures::stream::iter(unfinished)
        .map(|task| {
            let c = core.containerizer.clone();
            async move {
                let key = task.id.clone();
                let outcome = tokio::task::spawn_blocking(move || recover_one(&c, &task, rebooted))
                    .await
                    .unwrap_or_else(|e| Outcome::Lost(format!("recovery failed: {e}")));
                (key, outcome)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut reattached = 0usize;
    // Tasks whose end was recorded now: their leftovers go after that (below).
    let mut ended = Vec::new();
    for (id, outcome) in results {
        let (framework_id, was_running, kill_requested) = match lock(&core.tasks).get(&id) {
            Some(t) => (
                t.framework_id.clone(),
                t.state == v1::TaskState::TaskRunning,
                t.kill_requested,
            ),
            None => continue,
        };
        match outcome {
            Outcome::Running(running) => {
                reattached += 1;
                tracing::info!(task = %id, shim = running.shim_pid(), "re-attached to the running task");
                let slot = crate::tasks::adopt(core, &id, *running);
                if !was_running {
                    // It was launched but RUNNING was never generated.
                    core.send_status(v1::TaskStatus {
                        task_id: id.clone(),
                        framework_id: framework_id.clone(),
                        state: v1::TaskState::TaskRunning as i32,
                        ..Default::default()
                    })
                    .await?;
                }
                if kill_requested {
                    // The kill was requested before the restart and may not have
                    // been delivered: deliver it (again).
                    tracing::info!(task = %id, "killing the task: its kill was requested before the restart");
                    crate::tasks::kill_slot(core, &slot).await;
                }
                crate::tasks::watch(core.clone(), id, framework_id, slot);
            }
            Outcome::Ended(mut s) => {
                s.task_id = id.clone();
                s.framework_id = framework_id;
                tracing::info!(task = %id, state = s.state().as_str_name(), "the task ended while the agent was away: {}", s.message);
                core.send_status(s).await?;
                ended.push(id);
            }
            Outcome::Lost(why) => {
                tracing::warn!(task = %id, "reported LOST: {why}");
                core.send_status(v1::TaskStatus {
                    task_id: id.clone(),
                    framework_id,
                    state: v1::TaskState::TaskLost as i32,
                    reason: v1::Reason::AgentRestarted as i32,
                    message: why,
                    ..Default::default()
                })
                .await?;
                ended.push(id);
            }
        }
    }
    if n > 0 {
        tracing::info!(tasks = n, reattached, "recovery done");
    }
    // Leftovers of the tasks that ended, and of any task no record owns (a task
    // forgotten, a checkpoint moved aside): removed.
    let owned: std::collections::HashSet<String> = lock(&core.tasks)
        .iter()
        .filter(|(_, t)| t.running.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let c = core.containerizer.clone();
    let runtime_tasks = core.config.runtime_dir.join("tasks");
    let _ = tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = c.cgroups().list().unwrap_or_default();
        names.extend(ended);
        if let Ok(entries) = std::fs::read_dir(&runtime_tasks) {
            names.extend(entries.flatten().filter_map(|e| e.file_name().into_string().ok()));
        }
        names.sort();
        names.dedup();
        for name in names {
            if owned.contains(&name) {
                continue;
            }
            if let Ok(id) = TaskId::new(name.clone()) {
                tracing::info!(task = %name, "removing the leftovers of a task that is not running");
                c.destroy(&id);
            }
        }
    })
    .await;
    if let Some(b) = now_boot {
        core.store.write(vec![Write::BootId(b)]).await?;
    }
    Ok(())
}

/// What recovery needs of a checkpointed task that had not ended.
struct Unfinished {
    id: String,
    info: v1::TaskInfo,
    sandbox: PathBuf,
    kill_requested: bool,
    /// The shim's (pid, start time), once the launch had recorded them.
    shim: Option<(i32, u64)>,
}

/// Recovers one unfinished task (blocking: the containerizer is synchronous).
fn recover_one(c: &Containerizer, task: &Unfinished, rebooted: bool) -> Outcome {
    let Unfinished {
        id,
        info,
        sandbox,
        kill_requested,
        shim,
    } = task;
    let kill_requested = *kill_requested;
    let Ok(task_id) = TaskId::new(id.to_string()) else {
        return Outcome::Lost(format!("the checkpoint holds an invalid task id {id:?}"));
    };
    if rebooted {
        c.destroy(&task_id);
        return Outcome::Lost("the machine rebooted".into());
    }
    let config = match crate::tasks::task_config(info, sandbox) {
        Ok(config) => config,
        Err(e) => {
            c.destroy(&task_id);
            return Outcome::Lost(format!(
                "its checkpointed configuration is unusable ({e}); its leftovers were removed"
            ));
        }
    };
    match c.recover(&task_id, &config, *shim) {
        Recovered::Running(r) => Outcome::Running(Box::new(r)),
        Recovered::Ended(t) => {
            Outcome::Ended(crate::tasks::terminal_status(&t, kill_requested, info))
        }
        Recovered::Unknown(why) => Outcome::Lost(format!(
            "the agent restarted and cannot know how the task ended: {why}"
        )),
    }
}
