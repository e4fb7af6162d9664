//! A master and an agent in this process, on 127.0.0.1 with real TLS, plus a small
//! scheduler driven over the SchedulerService. [`restart`] has what the agent-restart
//! tests share.
#![allow(dead_code)]

pub mod restart;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_agent::{Agent, AgentConfig};
use cella_proto::tls::Layout;
use cella_proto::v1::{self, call, event, scheduler_service_client::SchedulerServiceClient};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);

/// The agent's tests need root (cgroups, namespaces, mounts). Without it they fail,
/// saying so: they never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups, namespaces, mounts): run it as root, e.g. with scripts/test.sh"
    );
}

/// `cella-shim` next to the test's target directory (target/debug/deps/.. ).
pub fn shim_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLA_SHIM") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps");
    let shim = debug.join("cella-shim");
    assert!(
        shim.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins` (or set CELLA_SHIM)",
        shim.display()
    );
    shim
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory that other users may traverse (not list): tasks run as an
/// unprivileged user and reach their sandboxes beneath it.
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod the temporary directory");
    dir
}

/// The TLS configuration of a user of the cluster whose certificates are in `layout`,
/// for the master.
pub fn client_tls(layout: &Layout) -> rustls::ClientConfig {
    cella_proto::tls::client_config(&layout.ca_cert, &layout.client_cert, &layout.client_key)
        .expect("client tls")
}

/// The same user, for an agent's API (the server must present an agent's certificate).
pub fn agent_tls(layout: &Layout) -> rustls::ClientConfig {
    cella_proto::tls::client_config_for(
        &layout.ca_cert,
        &layout.client_cert,
        &layout.client_key,
        cella_proto::tls::ExpectedServer::Agent,
    )
    .expect("client tls for agents")
}

pub struct Master {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Master {
    pub async fn start(layout: &Layout, addr: SocketAddr) -> Master {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind master");
        let addr = listener.local_addr().expect("addr");
        let tls = cella_proto::tls::server_config(
            &layout.ca_cert,
            &layout.master_cert,
            &layout.master_key,
        )
        .expect("master tls");
        let config = cella_master::MasterConfig {
            allocation_interval: Duration::from_millis(100),
            ping_interval: Duration::from_secs(1),
            default_refuse: Duration::from_millis(0),
            ..Default::default()
        };
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cella_master::run(listener, Arc::new(tls), config, async {
            let _ = rx.await;
        }));
        Master {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub struct Cluster {
    pub cgroup: String,
    pub dir: tempfile::TempDir,
    pub layout: Layout,
    pub master: Option<Master>,
    pub agent: Option<Agent>,
    /// The agent's configuration (to start it again on the same directories).
    pub config: AgentConfig,
    pub work_dir: PathBuf,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    /// Starts a cluster whose agent's configuration `edit` has changed first.
    pub async fn start_with(edit: impl FnOnce(&mut AgentConfig)) -> Cluster {
        require_root();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempdir();
        let layout =
            cella_proto::tls::init_dir(&dir.path().join("tls"), &[]).expect("certificates");
        let master = Master::start(&layout, "127.0.0.1:0".parse().expect("addr")).await;
        let work_dir = dir.path().join("work");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let cgroup = format!("cella-test-{}-{n}", std::process::id());
        let config = AgentConfig {
            master: master.url(),
            tls_dir: layout.dir.clone(),
            work_dir: work_dir.clone(),
            runtime_dir: dir.path().join("run"),
            resources: cella_agent::config::parse_resources("cpus:4;mem:4GiB;disk:10GiB", false)
                .expect("resources"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            cgroup_root: Some(PathBuf::from(&cgroup)),
            usage_interval: Duration::from_millis(500),
            shim_path: Some(shim_path()),
            hostname: Some("test-agent".into()),
            attributes: vec![("rack".into(), "r1".into())],
            ..Default::default()
        };
        let mut config = config;
        edit(&mut config);
        let work_dir = config.work_dir.clone();
        let agent = Agent::start(config.clone()).await.expect("agent starts");
        Cluster {
            cgroup,
            dir,
            layout,
            master: Some(master),
            agent: Some(agent),
            config,
            work_dir,
        }
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent")
    }

    pub fn client_tls(&self) -> rustls::ClientConfig {
        client_tls(&self.layout)
    }

    pub fn agent_tls(&self) -> rustls::ClientConfig {
        agent_tls(&self.layout)
    }

    /// A started cluster, its agent's id once registered, and a new framework's
    /// scheduler.
    pub async fn with_scheduler() -> (Cluster, String, Scheduler) {
        let cluster = Cluster::start().await;
        let agent_id = cluster.wait_registered().await;
        let s = cluster.scheduler("").await;
        (cluster, agent_id, s)
    }

    pub async fn scheduler(&self, framework_id: &str) -> Scheduler {
        let url = self.master.as_ref().expect("master").url();
        Scheduler::subscribe(&url, &self.client_tls(), framework_id).await
    }

    pub async fn wait_registered(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(id) = self.agent().agent_id() {
                return id;
            }
            assert!(Instant::now() < deadline, "the agent did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agent, killing its tasks, then the master.
    pub async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown(true).await.expect("agent shutdown");
        }
        if let Some(master) = self.master.take() {
            master.stop().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // After a failed test the agent was not shut down: its tasks still run.
        drop(self.agent.take());
        cleanup_cgroups(&self.cgroup);
    }
}

pub struct Scheduler {
    pub framework_id: String,
    tx: mpsc::UnboundedSender<v1::Call>,
    events: tonic::Streaming<v1::Event>,
    pub auto_ack: bool,
    /// Updates seen, by task.
    pub updates: HashMap<String, Vec<v1::TaskStatus>>,
    offers: Vec<v1::Offer>,
}

impl Scheduler {
    pub async fn subscribe(url: &str, tls: &rustls::ClientConfig, framework_id: &str) -> Scheduler {
        let deadline = Instant::now() + WAIT;
        let channel = loop {
            match cella_proto::tls::grpc_channel(url, tls).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reach the master: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut client = SchedulerServiceClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(v1::Call::subscribe(v1::FrameworkInfo {
            framework_id: framework_id.to_string(),
            name: "agent-test".into(),
            role: "*".into(),
            failover_timeout_secs: 120.0,
        }))
        .expect("send");
        let mut events = client
            .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("subscribe")
            .into_inner();
        let first = events.next().await.expect("an event").expect("subscribed");
        let Some(event::Event::Subscribed(s)) = first.event else {
            panic!("expected Subscribed, got {first:?}");
        };
        Scheduler {
            framework_id: s.framework_id,
            tx,
            events,
            auto_ack: true,
            updates: HashMap::new(),
            offers: Vec::new(),
        }
    }

    pub fn send(&self, call: call::Call) {
        self.tx
            .send(v1::Call { call: Some(call) })
            .expect("send call");
    }

    /// Asks the master to kill `task_id`.
    pub fn kill(&self, task_id: &str) {
        self.send(call::Call::Kill(call::Kill {
            task_id: task_id.to_string(),
            kill_policy: None,
        }));
    }

    pub fn ack(&self, status: &v1::TaskStatus) {
        if status.uuid.is_empty() {
            return;
        }
        self.send(call::Call::Acknowledge(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }));
    }

    /// Reads one event (up to `timeout`); false on timeout.
    async fn pump(&mut self, timeout: Duration) -> bool {
        let event = match tokio::time::timeout(timeout, self.events.next()).await {
            Err(_) => return false,
            Ok(None) => panic!("the master closed the scheduler stream"),
            Ok(Some(Err(e))) => panic!("scheduler stream error: {e}"),
            Ok(Some(Ok(e))) => e,
        };
        match event.event {
            Some(event::Event::Offers(o)) => self.offers.extend(o.offers),
            Some(event::Event::Rescind(r)) => self.offers.retain(|o| o.offer_id != r.offer_id),
            Some(event::Event::Update(u)) => {
                if let Some(status) = u.status {
                    if self.auto_ack {
                        self.ack(&status);
                    }
                    self.updates
                        .entry(status.task_id.clone())
                        .or_default()
                        .push(status);
                }
            }
            Some(event::Event::Error(e)) => panic!("the master refused a call: {}", e.message),
            _ => {}
        }
        true
    }

    /// The agent id of the first offer that arrives (kept for [`Scheduler::launch`]).
    pub async fn any_offer_agent(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(o) = self.offers.first() {
                return o.agent_id.clone();
            }
            assert!(Instant::now() < deadline, "no offer at all");
            self.pump(Duration::from_millis(200)).await;
        }
    }

    pub async fn offer(&mut self, agent_id: &str) -> v1::Offer {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.offers.iter().position(|o| o.agent_id == agent_id) {
                return self.offers.remove(i);
            }
            assert!(Instant::now() < deadline, "no offer from agent {agent_id}");
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// Launches `tasks` on the next offer of `agent_id`.
    pub async fn launch(&mut self, agent_id: &str, tasks: Vec<v1::TaskInfo>) {
        let offer = self.offer(agent_id).await;
        self.send(call::Call::Accept(call::Accept {
            offer_ids: vec![offer.offer_id],
            tasks,
            refuse_seconds: Some(0.0),
        }));
    }

    /// Waits until `task_id` has an update matching `pred`; returns it.
    pub async fn wait_for(
        &mut self,
        task_id: &str,
        timeout: Duration,
        pred: impl Fn(&v1::TaskStatus) -> bool,
    ) -> v1::TaskStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .updates
                .get(task_id)
                .and_then(|v| v.iter().find(|s| pred(s)))
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id}: no matching update; seen {:?}",
                self.updates.get(task_id)
            );
            self.pump(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_terminal(&mut self, task_id: &str) -> v1::TaskStatus {
        self.wait_for(task_id, WAIT, |s| {
            matches!(
                s.state(),
                v1::TaskState::TaskFinished
                    | v1::TaskState::TaskFailed
                    | v1::TaskState::TaskKilled
                    | v1::TaskState::TaskLost
                    | v1::TaskState::TaskError
            )
        })
        .await
    }

    pub fn states(&self, task_id: &str) -> Vec<v1::TaskState> {
        self.updates
            .get(task_id)
            .map(|v| v.iter().map(|s| s.state()).collect())
            .unwrap_or_default()
    }

    /// Keeps reading events for `d` (to catch re-sends).
    pub async fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.pump(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            )
            .await;
        }
    }
}

pub fn task(id: &str, command: &[&str], mem: u64) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: id.to_string(),
        name: id.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        resources: Some(v1::Resources {
            cpus: 0.1,
            mem_bytes: mem,
            disk_bytes: 0,
        }),
        ..Default::default()
    }
}

/// The directories below /sys/fs/cgroup, down to `depth` levels, that `pick` picks
/// (not looking inside a picked one).
pub fn cgroup_dirs(depth: usize, pick: &dyn Fn(&std::path::Path) -> bool) -> Vec<PathBuf> {
    fn walk(
        dir: &std::path::Path,
        depth: usize,
        pick: &dyn Fn(&std::path::Path) -> bool,
        out: &mut Vec<PathBuf>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for p in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            if pick(&p) {
                out.push(p);
            } else if depth > 0 {
                walk(&p, depth - 1, pick, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        std::path::Path::new("/sys/fs/cgroup"),
        depth,
        pick,
        &mut out,
    );
    out
}

/// Kills every process left in the test's cgroups (`<name>` anywhere under
/// /sys/fs/cgroup, e.g. after a failed assertion) and removes them.
pub fn cleanup_cgroups(name: &str) {
    let bases = cgroup_dirs(8, &|p| p.file_name().is_some_and(|n| n == name));
    for base in &bases {
        let Ok(children) = std::fs::read_dir(base) else {
            continue;
        };
        for child in children.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            for _ in 0..50 {
                let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(&child);
        }
        let _ = std::fs::remove_dir(base);
    }
}

/// Asserts that `end` is the failure of a task the kernel killed at its memory limit
/// of 32 MiB, as the agent reports it.
pub fn assert_killed_at_32_mib(end: &v1::TaskStatus) {
    assert_eq!(end.state(), v1::TaskState::TaskFailed, "{end:?}");
    assert_eq!(end.reason(), v1::Reason::MemoryLimit, "{end:?}");
    assert!(
        end.message
            .starts_with("memory limit of 32 MiB reached: the kernel killed the task"),
        "{}",
        end.message
    );
}
