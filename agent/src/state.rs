//! The state every part of the agent reads ([`Shared`]): its configuration, what it
//! offers, its containerizer and checkpoint, its metrics, the id the master gave it,
//! and the tasks it holds ([`Task`]).
//!
//! It holds data, not behaviour: the status update manager
//! ([`crate::status_updates`]), the task side ([`crate::tasks`]), the connection
//! ([`crate::connection`]) and the HTTP API ([`crate::http`]) each take what they
//! need from it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cella_containerizer::{Containerizer, Running};
use cella_proto::v1;

use crate::config::AgentConfig;
use crate::images::Images;
use crate::metrics::Metrics;
use crate::paths;
use crate::policy::Access;
use crate::resources::Totals;
use crate::store::{Store, TaskRecord};

/// The containerizer's handle of a running task, shared by its monitor, the kill
/// path and the usage sampler; `None` once the task is collected (or detached).
pub type RunningSlot = Arc<Mutex<Option<Running>>>;

/// One task the agent holds: launching, running, or ended with updates still
/// unacknowledged.
pub struct Task {
    pub framework_id: String,
    /// The framework's role and owning principal (from the launch): the API decides
    /// who may read the task's sandbox with them.
    pub role: String,
    pub principal: String,
    /// The task as launched, without its secrets' values (they went to the task only).
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
    pub running: Option<RunningSlot>,
    pub usage: Option<v1::TaskUsage>,
    /// The manifest digest of the task's image once it is resolved: every later
    /// status of the task carries it.
    pub image_digest: String,
}

impl Task {
    /// The task as checkpointed.
    pub fn record(&self) -> TaskRecord {
        TaskRecord {
            framework_id: self.framework_id.clone(),
            role: self.role.clone(),
            principal: self.principal.clone(),
            info: Some(self.info.clone()),
            state: self.state as i32,
            sandbox: self.sandbox.display().to_string(),
            pid: self.pid,
            launched_ns: self.launched_ns,
            shim_pid: self.shim_pid,
            ended_ns: self.ended_ns,
            kill_requested: self.kill_requested,
            shim_start_time: self.shim_start_time,
            image_digest: self.image_digest.clone(),
        }
    }

    /// A task read back from the checkpoint (not running until recovery re-attaches).
    pub fn from_record(record: TaskRecord) -> Task {
        Task {
            state: record.state(),
            framework_id: record.framework_id,
            role: record.role,
            principal: record.principal,
            info: record.info.unwrap_or_default(),
            sandbox: PathBuf::from(record.sandbox),
            pid: record.pid,
            shim_pid: record.shim_pid,
            shim_start_time: record.shim_start_time,
            launched_ns: record.launched_ns,
            ended_ns: record.ended_ns,
            kill_requested: record.kill_requested,
            running: None,
            usage: None,
            image_digest: record.image_digest,
        }
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding it (the
/// state stays usable; the panic itself is reported where it happened).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The state every part of the agent shares.
pub struct Shared {
    pub config: AgentConfig,
    pub totals: Totals,
    pub hostname: String,
    pub http_endpoint: String,
    pub containerizer: Arc<Containerizer>,
    pub store: Store,
    /// The image store and the tasks' leases on it.
    pub images: Images,
    pub metrics: Metrics,
    /// Who may read what through the API.
    pub access: Arc<Access>,
    /// The id the master assigned (checkpointed; `None` before the first registration).
    pub agent_id: Mutex<Option<String>>,
    pub tasks: Mutex<HashMap<String, Task>>,
    /// `--recover cleanup` is killing the recovered tasks: no launches, and the
    /// kills are reported with reason AGENT_RESTARTED.
    cleaning_up: AtomicBool,
}

/// What the agent keeps on disk: the checkpoint and the image store.
pub struct Stores {
    pub store: Store,
    pub images: Images,
}

impl Shared {
    pub fn new(
        config: AgentConfig,
        totals: Totals,
        hostname: String,
        http_endpoint: String,
        containerizer: Arc<Containerizer>,
        stores: Stores,
        access: Arc<Access>,
    ) -> Shared {
        let Stores { store, images } = stores;
        Shared {
            config,
            totals,
            hostname,
            http_endpoint,
            containerizer,
            store,
            images,
            metrics: Metrics::new(access.denials()),
            access,
            agent_id: Mutex::new(None),
            tasks: Mutex::new(HashMap::new()),
            cleaning_up: AtomicBool::new(false),
        }
    }

    /// The agent id, once the master assigned one.
    pub fn agent_id(&self) -> Option<String> {
        lock(&self.agent_id).clone()
    }

    /// Whether `--recover cleanup` is killing the tasks (see [`Shared::start_cleanup`]).
    pub fn cleaning_up(&self) -> bool {
        self.cleaning_up.load(Ordering::SeqCst)
    }

    /// From now on launches are refused and kills are reported as the recovery
    /// cleanup's (reason AGENT_RESTARTED).
    pub fn start_cleanup(&self) {
        self.cleaning_up.store(true, Ordering::SeqCst);
    }

    /// `<work-dir>/sandboxes/<task>`.
    pub fn sandbox_dir(&self, task_id: &str) -> PathBuf {
        paths::sandbox_dir(&self.config.work_dir, task_id)
    }

    /// Ids of the tasks that have not ended: they hold their images' leases.
    pub fn live_task_ids(&self) -> std::collections::HashSet<String> {
        lock(&self.tasks)
            .iter()
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Releases the image leases of ended tasks and keeps the image store within its
    /// size, on the blocking pool.
    pub async fn release_ended_images(self: &Arc<Self>) {
        let shared = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let live = shared.live_task_ids();
            shared.images.release_ended(&live);
        })
        .await;
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

    /// How many tasks have a containerizer handle (run under this agent).
    pub fn attached_tasks(&self) -> usize {
        lock(&self.tasks)
            .values()
            .filter(|t| t.running.is_some())
            .count()
    }

    /// Whether a task has not ended yet.
    pub fn any_unfinished(&self) -> bool {
        lock(&self.tasks).values().any(|t| !t.state.is_terminal())
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
        .map(|s| (s.name(), 0))
        .collect();
        for t in tasks.values() {
            let name = t.state.name();
            if let Some(c) = counts.iter_mut().find(|(n, _)| *n == name) {
                c.1 += 1;
            }
        }
        self.metrics.set_tasks(&counts);
    }
}
