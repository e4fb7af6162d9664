//! The agent's lifecycle ([`Agent`]): start (directories, lock, TLS, containerizer,
//! resources, checkpoint, recovery, background work), the dispatch of the master's
//! commands to the task side, and the ways to stop (keep the tasks, kill them, or
//! `--recover cleanup`).
//!
//! This is the one module that knows every other: it builds the shared state, the
//! status update manager and the task side, and wires the connection's commands to
//! them. Nothing else imports it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_proto::auth::Authenticator;
use cella_proto::reload::{Trigger, changed, log, revocations};
use cella_proto::service;
use cella_proto::tls::Trust;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, ConfigError, RecoverMode};
use crate::connection::{self, Connection, MasterCommand};
use crate::http::{self, Api};
use crate::images::Images;
use crate::paths;
use crate::policy::Access;
use crate::recovery;
use crate::resources::{self, Totals};
use crate::state::{Shared, Stores, lock};
use crate::status_updates::StatusUpdateManager;
use crate::store::StoreOwner;
use crate::tasks::TaskRunner;
use crate::tasks::gc::gc_loop;
use crate::tasks::kill::{detach_all, kill, kill_all};
use crate::tasks::launch::{Owner, launch};
use crate::tasks::usage::usage_loop;

pub use crate::startup::AgentError;
use crate::startup::{
    check_task_user, load_tls, lock_work_dir, new_containerizer, open_checkpoint,
};

/// A running agent. Dropping it without [`Agent::shutdown`] aborts its background
/// work (tasks keep running under their shims).
pub struct Agent {
    shared: Arc<Shared>,
    updates: Arc<StatusUpdateManager>,
    runner: Arc<TaskRunner>,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// Re-reads certificates' revocations, ACLs and the log level; it has nothing to
    /// finish, so a stop aborts it rather than waiting.
    reloader: JoinHandle<()>,
    store_owner: Option<StoreOwner>,
    stopped: watch::Receiver<Option<String>>,
    /// The work directory's lock, held for the agent's lifetime.
    _lock: std::fs::File,
}

impl Agent {
    /// Prepares the work and runtime directories, opens the checkpoint, detects the
    /// resources, loads the TLS files, binds the HTTP API, recovers the previous run's
    /// tasks and starts talking to the master. Returns once all of that is done (the
    /// master may not be reachable yet).
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        for (dir, mode) in paths::directories_to_create(&config.work_dir, &config.runtime_dir) {
            match cella_proto::perms::ensure_dir(&dir, mode) {
                Ok(Some(warning)) => tracing::warn!("{warning}"),
                Ok(None) => {}
                Err(e) => {
                    return Err(AgentError::Io {
                        path: dir.clone(),
                        message: format!("cannot prepare the directory: {e}"),
                    });
                }
            }
        }
        check_task_user(&config)?;
        let work_lock = lock_work_dir(&config.work_dir)?;
        let (client_tls, server_tls, trust) = load_tls(&config)?;
        let access =
            Arc::new(Access::new(config.acl.as_deref()).map_err(|m| ConfigError::new("--acl", m))?);
        let authenticator = Authenticator::new(config.credentials.as_deref())
            .map_err(|m| ConfigError::new("--credentials", m))?;
        let containerizer = new_containerizer(&config)?;
        let images_config = config.clone();
        let images = tokio::task::spawn_blocking(move || Images::open(&images_config))
            .await
            .map_err(|e| AgentError::Containerizer(format!("opening the image store: {e}")))?
            .map_err(|message| AgentError::Io {
                path: paths::images_dir(&config.work_dir),
                message,
            })?;

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

        let (store, store_owner, checkpoint) = open_checkpoint(&config).await?;
        if let Some(acl) = &checkpoint.access_policy {
            // The master's last word, until it speaks again.
            access.from_master(&cella_proto::v1::master_to_agent::AccessPolicy {
                enforced: acl.is_some(),
                acl_toml: acl.clone().unwrap_or_default(),
            });
        }
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
        let shared = Arc::new(Shared::new(
            config,
            totals,
            hostname,
            format!("https://{http_addr}"),
            Arc::new(containerizer),
            Stores { store, images },
            access.clone(),
        ));
        let updates = Arc::new(StatusUpdateManager::new(shared.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let runner = Arc::new(TaskRunner::new(
            shared.clone(),
            updates.clone(),
            concurrency,
            stop_rx.clone(),
        ));
        recovery::recover(&runner, checkpoint).await?;
        // Leases of tasks that did not survive the restart go before any GC.
        shared.release_ended_images().await;
        tracing::info!(
            cpus = %shared.totals.cpus,
            mem = %cella_containerizer::units::format_bytes(shared.totals.mem_bytes),
            disk = %cella_containerizer::units::format_bytes(shared.totals.disk_bytes),
            http = %shared.http_endpoint,
            master = %shared.config.master,
            "agent starting"
        );

        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (usage_tx, usage_rx) = watch::channel(None);
        let (stopped_tx, stopped) = watch::channel(None);
        let api = Arc::new(Api {
            shared: shared.clone(),
            updates: updates.clone(),
            auth: authenticator.clone(),
        });
        let log_level_from = shared.config.reload_log_level_from.clone();
        let mut watched = vec![trust.crl_path().to_path_buf()];
        watched.extend(shared.config.acl.iter().cloned());
        watched.extend(shared.config.credentials.iter().cloned());
        let link = Connection {
            shared: shared.clone(),
            updates: updates.clone(),
            tls: client_tls,
            commands: commands_tx,
            usage: usage_rx,
        };
        let background = vec![
            tokio::spawn(http::serve(
                api,
                listener,
                Arc::new(server_tls),
                stop_rx.clone(),
            )),
            tokio::spawn(connection::run(link, stop_rx.clone())),
            tokio::spawn(dispatch(runner.clone(), commands, stopped_tx)),
            tokio::spawn(updates.clone().retry_timer(stop_rx.clone())),
            tokio::spawn(usage_loop(shared.clone(), usage_tx, stop_rx.clone())),
            tokio::spawn(gc_loop(shared.clone(), stop_rx)),
        ];
        let reloader = tokio::spawn(cella_proto::reload::watch(
            watched,
            cella_proto::reload::CHECK_EVERY,
            move |why| {
                reload(
                    why,
                    &trust,
                    &access,
                    &authenticator,
                    log_level_from.as_deref(),
                )
            },
        ));
        Ok(Agent {
            shared,
            updates,
            runner,
            http_addr,
            stop,
            background,
            reloader,
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
        self.shared.agent_id()
    }

    /// How many tasks run under this agent (after a restart: those it re-attached to).
    pub fn running_tasks(&self) -> usize {
        self.shared.attached_tasks()
    }

    /// How many status updates wait for their acknowledgement.
    pub fn pending_updates(&self) -> usize {
        self.updates.pending()
    }

    /// The resources reported to the master.
    pub fn totals(&self) -> Totals {
        self.shared.totals
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
    /// same work directory finds them in the checkpoint ([`crate::recovery`]).
    pub async fn shutdown(mut self, kill_tasks: bool) -> Result<(), AgentError> {
        if kill_tasks {
            kill_all(&self.runner, Duration::from_secs(10)).await;
            // Give the terminal updates a moment to be acknowledged.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && self.updates.pending() > 0 {
                if !self.updates.is_connected() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Monitors let go of their tasks; the background work ends.
        let _ = self.stop.send(true);
        self.reloader.abort();
        for handle in self.background.drain(..) {
            if tokio::time::timeout(Duration::from_secs(6), &mut Box::pin(handle))
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop in time");
            }
        }
        detach_all(&self.shared);
        let owner = self.store_owner.take();
        drop(self);
        // The checkpoint's writer applies what is queued and stops, which releases
        // the database for the next agent on this work directory.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(owner) = owner {
                owner.close();
            }
        })
        .await;
        Ok(())
    }

    /// `--recover cleanup`: kills every recovered task, waits (bounded) for their
    /// updates to be acknowledged, and stops.
    pub async fn cleanup(self) -> Result<(), AgentError> {
        self.shared.start_cleanup();
        let n = lock(&self.shared.tasks)
            .values()
            .filter(|t| !t.state.is_terminal())
            .count();
        tracing::info!(tasks = n, "--recover cleanup: killing every recovered task");
        kill_all(&self.runner, Duration::from_secs(10)).await;
        // A terminal state is set before its update is checkpointed and queued: wait
        // (briefly) until every ended task's update is queued or acknowledged.
        let queued = Instant::now();
        while queued.elapsed() < Duration::from_secs(2) {
            let all = lock(&self.shared.tasks)
                .iter()
                .all(|(id, t)| !t.state.is_terminal() || self.updates.has_pending(id));
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Up to 5 s to reach the master, then up to 10 s for the acknowledgements.
        let start = Instant::now();
        loop {
            if self.updates.pending() == 0 {
                break;
            }
            let connected = self.updates.is_connected();
            let waited = start.elapsed();
            if (!connected && waited > Duration::from_secs(5)) || waited > Duration::from_secs(15) {
                tracing::warn!(
                    pending = self.updates.pending(),
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

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.reloader.abort();
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
    service::extend_timeout(RECOVERY_TIMEOUT, "recovering the previous run's tasks");
    let agent = Agent::start(config).await?;
    if cleanup {
        return agent.cleanup().await;
    }
    let status = tokio::spawn(report_status(agent.shared.clone(), agent.updates.clone()));
    tokio::select! {
        () = shutdown => {
            service::stopping("stopping; the tasks keep running");
            tracing::info!(kill_tasks = kill, "agent stopping");
            status.abort();
            agent.shutdown(kill).await
        }
        why = agent.stopped_by_master() => {
            service::stopping("stopping: the master shut this agent down");
            tracing::warn!("the master shut this agent down: {why}");
            status.abort();
            agent.shutdown(true).await
        }
    }
}

/// How long systemd waits for the recovery of the previous run's tasks.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent waits to register before it says it is ready anyway (and
/// goes on trying): a node must boot even while its master is down.
const REGISTRATION_WAIT: Duration = Duration::from_secs(90);

/// Tells systemd READY=1 once the agent has registered with the master (or after
/// [`REGISTRATION_WAIT`]), and keeps its STATUS= line current.
async fn report_status(shared: Arc<Shared>, updates: Arc<StatusUpdateManager>) {
    let started = Instant::now();
    let mut ready = false;
    let mut extended = Instant::now();
    loop {
        let registered = updates.is_connected();
        let tasks = shared.attached_tasks();
        let line = if registered {
            format!(
                "{tasks} tasks running; registered with {} as {}",
                shared.config.master,
                shared.agent_id().unwrap_or_default()
            )
        } else if ready {
            format!(
                "{tasks} tasks running; not connected to the master {}, retrying",
                shared.config.master
            )
        } else {
            format!(
                "{tasks} tasks recovered; registering with the master {}",
                shared.config.master
            )
        };
        if !ready && (registered || started.elapsed() >= REGISTRATION_WAIT) {
            ready = true;
            service::ready(&line);
            tracing::info!("ready: {line}");
        } else if !ready && extended.elapsed() >= Duration::from_secs(10) {
            // Still making progress (retrying the master): give it more time.
            extended = Instant::now();
            service::extend_timeout(Duration::from_secs(30), &line);
        } else {
            service::status(&line);
        }
        tokio::time::sleep(if ready {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(200)
        })
        .await;
    }
}

/// Hands the master's commands, in order, to the task side (Launch, Kill), the
/// status update manager (Acknowledge) and the agent's owner (Shutdown, through
/// [`Agent::stopped_by_master`]). Ends when the connection stops.
async fn dispatch(
    runner: Arc<TaskRunner>,
    mut commands: mpsc::UnboundedReceiver<MasterCommand>,
    stopped_by_master: watch::Sender<Option<String>>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            MasterCommand::Launch {
                framework_id,
                task,
                role,
                principal,
            } => {
                let owner = Owner {
                    framework_id,
                    role,
                    principal,
                };
                tokio::spawn(launch(runner.clone(), owner, *task));
            }
            MasterCommand::Kill {
                framework_id,
                task_id,
                grace,
            } => {
                tokio::spawn(kill(runner.clone(), framework_id, task_id, grace));
            }
            MasterCommand::Acknowledge { task_id, uuid } => {
                runner.updates.acknowledge(&task_id, &uuid);
            }
            MasterCommand::Shutdown { why } => {
                stopped_by_master.send_replace(Some(why));
            }
        }
    }
}

/// Re-reads the revocation list, the agent's own ACL and its credentials when they
/// changed, and on SIGHUP the log level of the configuration file `config`; a file
/// that cannot be used leaves the previous version in force.
fn reload(
    why: Trigger,
    trust: &Trust,
    access: &Access,
    auth: &Authenticator,
    config: Option<&std::path::Path>,
) {
    log(
        why,
        "revocation list",
        revocations(trust.reload(why.forced())),
    );
    log(why, "ACL", changed(access.reload(why.forced())));
    log(why, "credentials", changed(auth.reload(why.forced())));
    if why == Trigger::Hangup {
        if let Some(path) = config {
            let file_level = crate::config::AgentArgs::load_file(path)
                .map(|file| file.log_level)
                .map_err(|e| e.to_string());
            cella_proto::reload::log_level(why, file_level);
        }
        tracing::info!(
            "SIGHUP: re-read the revocation list{}, the credentials file (if any){}",
            if access.local_path().is_some() {
                ", the ACL"
            } else {
                ""
            },
            if config.is_some() {
                " and the log level"
            } else {
                ""
            },
        );
    }
}
