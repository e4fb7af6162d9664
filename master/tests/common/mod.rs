//! Helpers of the master's tests: a master actor driven through its command channel
//! (fake agents and schedulers that are plain channels), and a real master served over
//! mutual TLS with gRPC agents and schedulers.
//!
//! Waits are on conditions: [`handled`] returns once the actor has handled every
//! command sent before it, [`wait_allocations`] once allocation rounds have run.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

mod cluster;
// Not every test binary uses these either.
#[allow(unused_imports)]
pub use cluster::{FrameworkOnAgent, TlsMaster, get_error, get_typed};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cella_master::master::{Command, MasterConfig, MasterHandle};
use cella_proto::tls::{self, Layout};
use cella_proto::v1::agent_service_client::AgentServiceClient;
use cella_proto::v1::scheduler_service_client::SchedulerServiceClient;
use cella_proto::v1::{self, agent_message, call, event, master_to_agent};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How long anything the master should do "soon" may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Short timeouts, and the registry in `dir`.
pub fn config(dir: &Path) -> MasterConfig {
    MasterConfig {
        allocation_interval: Duration::from_millis(50),
        ping_interval: Duration::from_millis(50),
        agent_unreachable_after: Duration::from_secs(30),
        agent_lost_timeout: Duration::from_millis(400),
        default_refuse: Duration::ZERO,
        work_dir: Some(dir.to_path_buf()),
        ..MasterConfig::default()
    }
}

/// A master actor on `config` in a new work directory, which lives as long as the
/// returned `TempDir`.
pub fn spawned() -> (tempfile::TempDir, MasterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let m = cella_master::master::try_spawn(config(dir.path())).unwrap();
    (dir, m)
}

pub fn task_info(id: &str) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: id.into(),
        name: id.into(),
        command: vec!["sleep".into(), "1000".into()],
        resources: Some(v1::Resources {
            cpus: 0.5,
            mem_bytes: 64 << 20,
            disk_bytes: 0,
        }),
        ..Default::default()
    }
}

/// What a test agent registers with: 4 cpus, 4 GiB, 10 GiB, and `tasks` as
/// (framework, task, state).
pub fn registration(id: &str, tasks: Vec<(&str, &str, v1::TaskState)>) -> agent_message::Register {
    agent_message::Register {
        agent_id: id.into(),
        hostname: format!("{id}.example"),
        total: Some(v1::Resources {
            cpus: 4.0,
            mem_bytes: 4 << 30,
            disk_bytes: 10 << 30,
        }),
        tasks: tasks
            .into_iter()
            .map(|(fw, t, state)| v1::RunningTask {
                framework_id: fw.into(),
                task: Some(task_info(t)),
                state: state as i32,
            })
            .collect(),
        http_endpoint: "https://127.0.0.1:5051".into(),
        ..Default::default()
    }
}

/// A status update of `task`, as an agent sends it.
pub fn status_update(
    agent: &str,
    fw: &str,
    task: &str,
    state: v1::TaskState,
    uuid: &str,
) -> agent_message::StatusUpdate {
    agent_message::StatusUpdate {
        status: Some(v1::TaskStatus {
            task_id: task.into(),
            framework_id: fw.into(),
            agent_id: agent.into(),
            state: state as i32,
            uuid: uuid.into(),
            timestamp_ns: 1,
            ..Default::default()
        }),
        latest_state: state as i32,
    }
}

/// Returns once the master actor has handled every command sent before this call
/// (commands are handled in order): what they made it send is in the channels.
pub async fn handled(m: &MasterHandle) {
    m.state().await.expect("the master is running");
}

/// A figure of the master's `/metrics` (0 when absent).
pub fn metric(m: &MasterHandle, name: &str) -> f64 {
    m.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Returns once `n` allocation rounds have run, all of them after every command
/// sent before this call was handled.
pub async fn wait_allocations(m: &MasterHandle, n: u32) {
    handled(m).await;
    let rounds = || metric(m, "cella_master_allocation_cycle_seconds_count");
    // A round counted after this read started after the commands were handled; the
    // one after the n-th has started only once the n-th has sent its offers.
    let target = rounds() + f64::from(n) + 1.0;
    tokio::time::timeout(WAIT, async {
        while rounds() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("allocation rounds in time");
}

/// The state and reason names the master shows for task `id`.
pub async fn task_state(m: &MasterHandle, id: &str) -> (&'static str, &'static str) {
    let state = m.state().await.unwrap();
    let t = state
        .tasks
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("task {id} in state"));
    (t.state.name(), t.reason.name())
}

pub fn offer_number(offer: &v1::Offer) -> u64 {
    offer
        .offer_id
        .strip_prefix("offer-")
        .unwrap()
        .parse()
        .unwrap()
}

// ------------------------------------------------------------ through the actor

/// An agent connected to the actor through a channel.
pub struct Agent {
    pub id: String,
    pub conn: u64,
    pub rx: UnboundedReceiver<v1::MasterToAgent>,
}

/// A name no other test agent has.
fn uuid_like() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Registers agent `id` with every task of `tasks` (of framework `framework`) in
/// `state`.
pub async fn register_agent_with_tasks(
    m: &MasterHandle,
    id: &str,
    framework: &str,
    tasks: &[String],
    state: v1::TaskState,
) -> Agent {
    let tasks = tasks
        .iter()
        .map(|t| (framework, t.as_str(), state))
        .collect();
    register_agent(m, id, tasks).await
}

pub async fn register_agent(
    m: &MasterHandle,
    id: &str,
    tasks: Vec<(&str, &str, v1::TaskState)>,
) -> Agent {
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    m.send(Command::AgentRegister {
        register: registration(id, tasks),
        // Each test agent is a node of its own.
        node: if id.is_empty() {
            format!("node-{}", uuid_like())
        } else {
            format!("node-{id}")
        },
        tx,
        reply,
    });
    let (agent, conn) = answer.await.unwrap().expect("agent registers");
    Agent {
        id: agent.to_string(),
        conn,
        rx,
    }
}

impl Agent {
    pub fn send(&self, m: &MasterHandle, message: agent_message::Message) {
        m.send(Command::AgentMessage {
            agent: self.id.clone().into(),
            conn: self.conn,
            message,
        });
    }

    pub fn status(&self, m: &MasterHandle, fw: &str, task: &str, state: v1::TaskState, uuid: &str) {
        self.send(
            m,
            agent_message::Message::StatusUpdate(status_update(&self.id, fw, task, state, uuid)),
        );
    }

    /// The next kill the master sends; other messages are skipped.
    pub async fn next_kill(&mut self) -> master_to_agent::KillTask {
        self.next_picked("kill", |msg| match msg {
            master_to_agent::Message::Kill(k) => Some(k),
            _ => None,
        })
        .await
    }

    /// The next acknowledgement the master forwards; other messages are skipped.
    pub async fn next_acknowledge(&mut self) -> master_to_agent::Acknowledge {
        self.next_picked("acknowledgement", |msg| match msg {
            master_to_agent::Message::Acknowledge(ack) => Some(ack),
            _ => None,
        })
        .await
    }

    /// The next message from the master that `pick` selects; others are skipped.
    pub async fn next_picked<T>(
        &mut self,
        what: &str,
        pick: impl Fn(master_to_agent::Message) -> Option<T>,
    ) -> T {
        loop {
            let msg = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{what} in time"))
                .expect("agent stream open");
            if let Some(picked) = msg.message.and_then(&pick) {
                return picked;
            }
        }
    }

    pub async fn next_launch(&mut self) -> v1::TaskInfo {
        self.next_picked("launch", |m| match m {
            master_to_agent::Message::Launch(l) => l.task,
            _ => None,
        })
        .await
    }
}

/// A scheduler connected to the actor through a channel.
pub struct Scheduler {
    pub id: String,
    pub conn: u64,
    pub rx: UnboundedReceiver<v1::Event>,
    /// Updates received while waiting for something else.
    pub pending: VecDeque<v1::TaskStatus>,
    /// Offers received while waiting for an update (an offer is made once: dropping
    /// it would leave the test waiting for one that never comes).
    pub pending_offers: VecDeque<Vec<v1::Offer>>,
}

/// Framework `principal` subscribed, agent `agent` registered without tasks, and
/// the first offers the framework gets.
pub async fn offered(
    m: &MasterHandle,
    principal: &str,
    agent: &str,
) -> (Scheduler, Agent, Vec<v1::Offer>) {
    let mut s = subscribe(m, "", principal).await.unwrap();
    let a = register_agent(m, agent, vec![]).await;
    let offers = s.next_offers().await;
    (s, a, offers)
}

pub async fn subscribe(
    m: &MasterHandle,
    framework_id: &str,
    principal: &str,
) -> Result<Scheduler, tonic::Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    m.send(Command::Subscribe {
        framework: v1::FrameworkInfo {
            framework_id: framework_id.into(),
            name: "persist-test".into(),
            role: "web".into(),
            failover_timeout_secs: 3600.0,
        },
        caller: cella_proto::tls::Identity::user(principal.trim_start_matches("user:"), &[])
            .expect("a valid user name"),
        tx,
        reply,
    });
    let (id, conn) = answer.await.unwrap()?;
    Ok(Scheduler {
        id: id.to_string(),
        conn,
        rx,
        pending: Default::default(),
        pending_offers: Default::default(),
    })
}

impl Scheduler {
    pub fn call(&self, m: &MasterHandle, call: call::Call) {
        m.send(Command::Call {
            framework: self.id.clone().into(),
            conn: self.conn,
            call,
        });
    }

    /// Accepts offer `offer_id` with `tasks` (the rest of the offer is not refused).
    pub fn accept(&self, m: &MasterHandle, offer_id: String, tasks: Vec<v1::TaskInfo>) {
        self.call(
            m,
            call::Call::Accept(call::Accept {
                offer_ids: vec![offer_id],
                tasks,
                refuse_seconds: None,
            }),
        );
    }

    pub async fn next_offers(&mut self) -> Vec<v1::Offer> {
        if let Some(offers) = self.pending_offers.pop_front() {
            return offers;
        }
        loop {
            match self.next().await {
                event::Event::Offers(o) => return o.offers,
                event::Event::Update(u) => self.pending.push_back(u.status.unwrap()),
                _ => {}
            }
        }
    }

    pub async fn next_update(&mut self) -> v1::TaskStatus {
        if let Some(u) = self.pending.pop_front() {
            return u;
        }
        loop {
            match self.next().await {
                event::Event::Update(u) => return u.status.unwrap(),
                event::Event::Offers(o) => self.pending_offers.push_back(o.offers),
                _ => {}
            }
        }
    }

    /// The next update of `task_id`; others stay pending.
    pub async fn update_for(&mut self, task_id: &str) -> v1::TaskStatus {
        if let Some(i) = self.pending.iter().position(|u| u.task_id == task_id) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            match self.next().await {
                event::Event::Update(u) => {
                    let u = u.status.unwrap();
                    if u.task_id == task_id {
                        return u;
                    }
                    self.pending.push_back(u);
                }
                event::Event::Offers(o) => self.pending_offers.push_back(o.offers),
                _ => {}
            }
        }
    }

    pub async fn next(&mut self) -> event::Event {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("event in time")
            .expect("scheduler stream open")
            .event
            .unwrap()
    }

    /// The events already delivered.
    fn delivered(&mut self) -> Vec<event::Event> {
        std::iter::from_fn(|| self.rx.try_recv().ok())
            .filter_map(|e| e.event)
            .collect()
    }

    /// Panics if the master sent a status update in answer to anything sent before
    /// this call.
    pub async fn expect_no_update(&mut self, m: &MasterHandle) {
        assert!(self.pending.is_empty(), "updates: {:?}", self.pending);
        handled(m).await;
        for e in self.delivered() {
            match e {
                event::Event::Update(u) => panic!("unexpected update: {:?}", u.status),
                event::Event::Offers(o) => self.pending_offers.push_back(o.offers),
                _ => {}
            }
        }
    }

    /// Panics if the next `rounds` allocation rounds (and anything sent before this
    /// call) made offers to this framework; offers received before are dropped.
    pub async fn expect_no_offers(&mut self, m: &MasterHandle, rounds: u32) {
        self.pending_offers.clear();
        wait_allocations(m, rounds).await;
        for e in self.delivered() {
            match e {
                event::Event::Offers(o) => panic!("unexpected offers: {:?}", o.offers),
                event::Event::Update(u) => self.pending.push_back(u.status.unwrap()),
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------ over mutual TLS

/// A master served by `cella_master::run` on 127.0.0.1.
pub struct Running {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

pub async fn start(layout: &Layout, work_dir: &Path) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tls::server_config(&layout.ca_cert, &layout.master_cert, &layout.master_key).unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(cella_master::run(
        listener,
        Arc::new(server),
        config(work_dir),
        async {
            let _ = rx.await;
        },
    ));
    Running { addr, stop, task }
}

impl Running {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("master stops in time")
            .unwrap()
            .unwrap();
    }
}

/// Opens a scheduler stream; returns the sender of further calls, the events after
/// SUBSCRIBED, and the framework id.
pub async fn grpc_scheduler(
    url: &str,
    cfg: &rustls::ClientConfig,
    framework_id: &str,
) -> (
    UnboundedSender<v1::Call>,
    tonic::Streaming<v1::Event>,
    String,
) {
    let channel = tls::grpc_channel(url, cfg).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(v1::Call::subscribe(v1::FrameworkInfo {
        framework_id: framework_id.into(),
        name: "tls".into(),
        role: "*".into(),
        failover_timeout_secs: 600.0,
    }))
    .unwrap();
    let mut events = SchedulerServiceClient::new(channel)
        .subscribe(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    let Some(event::Event::Subscribed(s)) = first.event else {
        panic!("expected SUBSCRIBED, got {first:?}");
    };
    (tx, events, s.framework_id)
}

/// Opens an agent session with `register`; returns the sender of further messages
/// and the master's messages after REGISTERED.
pub async fn grpc_agent(
    url: &str,
    cfg: &rustls::ClientConfig,
    register: agent_message::Register,
) -> (
    UnboundedSender<v1::AgentMessage>,
    tonic::Streaming<v1::MasterToAgent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(v1::AgentMessage {
        message: Some(agent_message::Message::Register(register)),
    })
    .unwrap();
    let channel = tls::grpc_channel(url, cfg).await.unwrap();
    let mut to_agent = AgentServiceClient::new(channel)
        .session(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = to_agent.message().await.unwrap().unwrap();
    assert!(
        matches!(first.message, Some(master_to_agent::Message::Registered(_))),
        "expected REGISTERED, got {first:?}"
    );
    (tx, to_agent)
}
