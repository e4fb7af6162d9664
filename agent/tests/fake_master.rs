//! The agent against a scripted master: a real AgentService over real TLS whose
//! every message the test sends and inspects. Needs root and `cella-shim`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cella_agent::{Agent, AgentConfig};
use cella_proto::v1::{
    self, agent_message,
    agent_service_server::{AgentService, AgentServiceServer},
    master_to_agent,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One agent stream as the test sees it.
struct Session {
    register: agent_message::Register,
    to_agent: mpsc::UnboundedSender<v1::MasterToAgent>,
    from_agent: mpsc::UnboundedReceiver<agent_message::Message>,
}

struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
}

type Out = std::pin::Pin<Box<dyn Stream<Item = Result<v1::MasterToAgent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Fake {
    type SessionStream = Out;
    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::aborted("no Register"))??;
        let Some(agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument("first message must be Register"));
        };
        let (to_agent, rx) = mpsc::unbounded_channel();
        let (tx, from_agent) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if let Some(m) = m.message
                    && tx.send(m).is_err()
                {
                    break;
                }
            }
        });
        let _ = self.sessions.send(Session {
            register,
            to_agent,
            from_agent,
        });
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }
}

struct Rig {
    cgroup: String,
    _dir: tempfile::TempDir,
    work_dir: std::path::PathBuf,
    sessions: mpsc::UnboundedReceiver<Session>,
    agent: Option<Agent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);

impl Rig {
    async fn start() -> Rig {
        common::require_root();
        let dir = common::tempdir();
        let layout = cella_proto::tls::init_dir(&dir.path().join("tls"), &[]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = cella_proto::tls::server_config(
            &layout.ca_cert,
            &layout.master_cert,
            &layout.master_key,
        )
        .unwrap();
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let router = cella_proto::tls::grpc_router(tonic::service::Routes::new(
            AgentServiceServer::new(Fake {
                sessions: sessions_tx,
            }),
        ));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cella_proto::tls::serve(
            listener,
            Arc::new(tls),
            router,
            async {
                let _ = stop_rx.await;
            },
        ));
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let work_dir = dir.path().join("work");
        let cgroup = format!("cella-test-{}-{n}", std::process::id());
        let config = AgentConfig {
            master: format!("https://{addr}"),
            tls_dir: layout.dir.clone(),
            work_dir: work_dir.clone(),
            runtime_dir: dir.path().join("run"),
            resources: cella_agent::config::parse_resources("cpus:2;mem:2GiB;disk:5GiB", false)
                .unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            cgroup_root: Some(cgroup.clone().into()),
            usage_interval: Duration::from_millis(300),
            shim_path: Some(common::shim_path()),
            ..Default::default()
        };
        let agent = Agent::start(config).await.unwrap();
        Rig {
            cgroup,
            _dir: dir,
            work_dir,
            sessions,
            agent: Some(agent),
            stop: Some(stop),
        }
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(common::WAIT, self.sessions.recv())
            .await
            .expect("the agent connects")
            .unwrap()
    }

    /// The agent's next session, answered as registered under `id`.
    async fn registered_session(&mut self, id: &str) -> Session {
        let s = self.session().await;
        registered(&s, id);
        s
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown(true).await.unwrap();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.agent.take());
        common::cleanup_cgroups(&self.cgroup);
    }
}

fn registered(s: &Session, id: &str) {
    s.to_agent
        .send(v1::MasterToAgent {
            message: Some(master_to_agent::Message::Registered(
                master_to_agent::Registered {
                    agent_id: id.into(),
                    ping_interval_ms: 1000,
                },
            )),
        })
        .unwrap();
}

fn send(s: &Session, m: master_to_agent::Message) {
    s.to_agent
        .send(v1::MasterToAgent { message: Some(m) })
        .unwrap();
}

fn launch(s: &Session, info: v1::TaskInfo) {
    send(
        s,
        master_to_agent::Message::Launch(master_to_agent::LaunchTask {
            framework_id: "fw-1".into(),
            task: Some(info),
            role: "*".into(),
            principal: "user:local".into(),
        }),
    );
}

fn kill(s: &Session, task_id: &str) {
    send(
        s,
        master_to_agent::Message::Kill(master_to_agent::KillTask {
            framework_id: "fw-1".into(),
            task_id: task_id.into(),
            grace_period_ms: None,
        }),
    );
}

fn ack(s: &Session, st: &v1::TaskStatus) {
    send(
        s,
        master_to_agent::Message::Acknowledge(master_to_agent::Acknowledge {
            task_id: st.task_id.clone(),
            uuid: st.uuid.clone(),
        }),
    );
}

/// The next status update (other messages are skipped; Usage reports are kept
/// aside in `usage`).
async fn next_status(s: &mut Session, timeout: Duration) -> Option<v1::TaskStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.from_agent.recv()).await {
            Ok(Some(agent_message::Message::StatusUpdate(u))) => return u.status,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Launches `info` and returns its terminal update.
async fn run_task(s: &mut Session, info: v1::TaskInfo) -> v1::TaskStatus {
    let task = info.task_id.clone();
    launch(s, info);
    run_to_end(s, &task).await.pop().unwrap()
}

/// Launches `info` and acknowledges its updates until it is RUNNING.
async fn launch_running(s: &mut Session, info: v1::TaskInfo) {
    let task = info.task_id.clone();
    launch(s, info);
    loop {
        let st = next_status(s, common::WAIT)
            .await
            .unwrap_or_else(|| panic!("{task}: no RUNNING update"));
        ack(s, &st);
        if st.state() == v1::TaskState::TaskRunning {
            return;
        }
    }
}

/// Collects (and acknowledges) updates until `task` is terminal.
async fn run_to_end(s: &mut Session, task: &str) -> Vec<v1::TaskStatus> {
    let mut out = Vec::new();
    loop {
        let st = next_status(s, common::WAIT)
            .await
            .unwrap_or_else(|| panic!("{task}: no terminal update; got {out:?}"));
        ack(s, &st);
        if st.task_id != task {
            continue;
        }
        let terminal = !matches!(
            st.state(),
            v1::TaskState::TaskStarting | v1::TaskState::TaskRunning
        );
        out.push(st);
        if terminal {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_exit_code_memory_limit_kill_and_errors() {
    let mut rig = Rig::start().await;
    let mut s = rig.session().await;
    assert_eq!(s.register.agent_id, "");
    assert_eq!(s.register.total.unwrap().mem_bytes, 2 << 30);
    assert!(s.register.http_endpoint.starts_with("https://127.0.0.1:"));
    registered(&s, "agent-x");

    // Ping → Pong.
    send(
        &s,
        master_to_agent::Message::Ping(master_to_agent::Ping { nonce: 7 }),
    );
    loop {
        match tokio::time::timeout(common::WAIT, s.from_agent.recv())
            .await
            .unwrap()
        {
            Some(agent_message::Message::Pong(p)) => {
                assert_eq!(p.nonce, 7);
                break;
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }

    launch(
        &s,
        common::task("t3", &["sh", "-c", "echo hi; exit 3"], 64 << 20),
    );
    let seen = run_to_end(&mut s, "t3").await;
    let states: Vec<_> = seen.iter().map(|u| u.state()).collect();
    assert_eq!(
        states,
        vec![
            v1::TaskState::TaskStarting,
            v1::TaskState::TaskRunning,
            v1::TaskState::TaskFailed
        ],
        "{seen:?}"
    );
    let end = seen.last().unwrap();
    assert_eq!(
        (end.exit_code, end.reason()),
        (Some(3), v1::Reason::CommandExited)
    );
    assert_eq!(end.agent_id, "agent-x");
    let sandbox = cella_agent::paths::sandbox_dir(&rig.work_dir, "t3");
    assert_eq!(
        std::fs::read_to_string(cella_agent::paths::sandbox_stdout(&sandbox)).unwrap(),
        "hi\n"
    );

    let end = run_task(
        &mut s,
        common::task(
            "hog",
            &["sh", "-c", "head -c 100000000 /dev/zero | tail > /dev/null"],
            32 << 20,
        ),
    )
    .await;
    common::assert_killed_at_32_mib(&end);

    let end = run_task(&mut s, common::task("nf", &["/no/such/program"], 16 << 20)).await;
    assert_eq!(
        (end.state(), end.reason(), end.exit_code),
        (
            v1::TaskState::TaskFailed,
            v1::Reason::CommandNotFound,
            Some(127)
        ),
        "{end:?}"
    );

    let end = run_task(&mut s, common::task("bad id/x", &["true"], 16 << 20)).await;
    assert_eq!(
        (end.state(), end.reason()),
        (v1::TaskState::TaskError, v1::Reason::InvalidTask)
    );

    launch_running(&mut s, common::task("sl", &["sleep", "100"], 16 << 20)).await;
    // A duplicate launch is refused.
    launch(&s, common::task("sl", &["sleep", "100"], 16 << 20));
    let dup = next_status(&mut s, common::WAIT).await.unwrap();
    ack(&s, &dup);
    assert_eq!(
        (dup.state(), dup.reason()),
        (v1::TaskState::TaskError, v1::Reason::InvalidTask)
    );
    assert!(dup.message.contains("already used"), "{}", dup.message);

    kill(&s, "sl");
    let end = run_to_end(&mut s, "sl").await.pop().unwrap();
    assert_eq!(
        (end.state(), end.reason(), end.signal),
        (
            v1::TaskState::TaskKilled,
            v1::Reason::KilledByRequest,
            Some(9)
        ),
        "{end:?}"
    );

    // Kill of an unknown task: LOST, with a message.
    kill(&s, "ghost");
    let end = run_to_end(&mut s, "ghost").await.pop().unwrap();
    assert_eq!(end.state(), v1::TaskState::TaskLost);
    assert!(end.message.contains("does not know"), "{}", end.message);

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_with_backoff_and_after_reconnecting() {
    let mut rig = Rig::start().await;
    let mut s = rig.registered_session("agent-r").await;
    launch(&s, common::task("r1", &["sleep", "100"], 16 << 20));
    let starting = next_status(&mut s, common::WAIT).await.unwrap();
    assert_eq!(starting.state(), v1::TaskState::TaskStarting);
    // Not acknowledged: the same update again after ~1 s, and nothing else.
    let t0 = Instant::now();
    let again = next_status(&mut s, Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.uuid, starting.uuid);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    // Backoff: the next re-send comes after twice that delay.
    let t1 = Instant::now();
    let third = next_status(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(third.uuid, starting.uuid);
    assert!(
        t1.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t1.elapsed()
    );

    // The stream breaks; the agent comes back with its id, the task, and the update.
    drop(s);
    let mut s = rig.session().await;
    assert_eq!(s.register.agent_id, "agent-r");
    let listed: Vec<_> = s
        .register
        .tasks
        .iter()
        .map(|t| (t.task.as_ref().unwrap().task_id.clone(), t.state()))
        .collect();
    assert_eq!(listed, vec![("r1".to_string(), v1::TaskState::TaskRunning)]);
    registered(&s, "agent-r");
    let resent = next_status(&mut s, common::WAIT).await.unwrap();
    assert_eq!(resent.uuid, starting.uuid);
    ack(&s, &resent);
    ack(&s, &resent); // a duplicate acknowledgement is harmless
    let running = next_status(&mut s, common::WAIT).await.unwrap();
    assert_eq!(running.state(), v1::TaskState::TaskRunning);
    ack(&s, &running);

    // The checkpoint holds no acknowledged update, and the task.
    kill(&s, "r1");
    let end = next_status(&mut s, common::WAIT).await.unwrap();
    assert_eq!(end.state(), v1::TaskState::TaskKilled);
    // Unacknowledged terminal update: still listed on the next registration.
    drop(s);
    let s = rig.session().await;
    assert_eq!(s.register.tasks.len(), 1);
    assert_eq!(s.register.tasks[0].state(), v1::TaskState::TaskKilled);
    registered(&s, "agent-r");
    let mut s = s;
    let end2 = next_status(&mut s, common::WAIT).await.unwrap();
    assert_eq!(end2.uuid, end.uuid);
    ack(&s, &end2);
    // Acknowledged: forgotten, also in the checkpoint.
    let agent = rig.agent.as_ref().expect("agent");
    let deadline = Instant::now() + common::WAIT;
    while agent.pending_updates() > 0 {
        assert!(
            Instant::now() < deadline,
            "the acknowledgement was not processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    let s = rig.session().await;
    assert!(s.register.tasks.is_empty(), "{:?}", s.register.tasks);
    drop(s);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_the_master_kills_everything() {
    let mut rig = Rig::start().await;
    let mut s = rig.registered_session("agent-s").await;
    launch_running(&mut s, common::task("z", &["sleep", "100"], 16 << 20)).await;
    send(
        &s,
        master_to_agent::Message::Shutdown(master_to_agent::Shutdown {
            message: "agent removed".into(),
        }),
    );
    let agent = rig.agent.take().unwrap();
    let why = tokio::time::timeout(common::WAIT, agent.stopped_by_master())
        .await
        .unwrap();
    assert_eq!(why, "agent removed");
    let stopping = tokio::spawn(agent.shutdown(true));
    let end = run_to_end(&mut s, "z").await.pop().unwrap();
    assert_eq!(end.state(), v1::TaskState::TaskKilled);
    stopping.await.unwrap().unwrap();
    rig.stop().await;
}

/// A task's terminal update carries its summary: a short task's page cache, seen only by
/// the sampling of its first second (the file is gone when it ends); and every usage
/// report carries the node's totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_task_s_summary_and_the_node_s_totals() {
    const MIB: u64 = 1 << 20;
    let mut rig = Rig::start().await;
    let mut s = rig.registered_session("agent-u").await;
    let script =
        "dd if=/dev/zero of=big bs=1M count=64 2>/dev/null && cat big >/dev/null && rm big";
    let end = run_task(
        &mut s,
        common::task("short", &["sh", "-c", script], 256 << 20),
    )
    .await;
    assert_eq!(end.state(), v1::TaskState::TaskFinished, "{end:?}");
    let summary = end.summary.expect("a terminal update carries the summary");
    assert!(
        summary.started_ns > 0 && summary.ended_ns > summary.started_ns,
        "{summary:?}"
    );
    assert!(
        summary
            .mem_file_peak_sampled_bytes
            .is_some_and(|f| f >= 48 * MIB),
        "page cache peak: {summary:?}"
    );
    assert!(
        summary
            .mem_anon_peak_sampled_bytes
            .is_some_and(|a| a < 16 * MIB),
        "anon peak: {summary:?}"
    );
    assert!(summary.cpu_system_ns.is_some_and(|n| n > 0), "{summary:?}");
    assert!(
        summary.mem_peak_bytes.is_some_and(|n| n >= 48 * MIB),
        "{summary:?}"
    );
    assert_eq!(summary.oom_kills, Some(0), "{summary:?}");

    let node = loop {
        match tokio::time::timeout(common::WAIT, s.from_agent.recv()).await {
            Ok(Some(agent_message::Message::Usage(report))) => {
                if let Some(node) = report.node {
                    break node;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no usage report with the node's totals"),
        }
    };
    assert!(node.mem_total_bytes.is_some_and(|n| n > 0), "{node:?}");
    assert!(node.mem_available_bytes.is_some(), "{node:?}");
    assert!(node.cpu_user_ns.is_some_and(|n| n > 0), "{node:?}");
    rig.stop().await;
}

/// The next usage report (status updates in between are acknowledged).
async fn next_usage(s: &mut Session) -> agent_message::UsageReport {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a usage report");
        match tokio::time::timeout(left, s.from_agent.recv()).await {
            Ok(Some(agent_message::Message::Usage(r))) if !r.tasks.is_empty() => return r,
            Ok(Some(agent_message::Message::StatusUpdate(u))) => ack(s, &u.status.unwrap()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no usage report"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_are_full_first_then_deltas_and_full_after_reconnecting() {
    let mut rig = Rig::start().await;
    let mut s = rig.registered_session("agent-u").await;
    launch(&s, common::task("u1", &["sleep", "100"], 16 << 20));
    // The stream's first report (sent before the task ran, with the node's totals
    // only) is full; a task new to the stream comes with every figure, even in a delta.
    let first = next_usage(&mut s).await;
    assert!(first.tasks[0].mem_current_bytes.is_some(), "{first:?}");
    assert!(first.tasks[0].oom_kills.is_some(), "{first:?}");
    let second = next_usage(&mut s).await;
    assert!(second.delta, "{second:?}");
    let t = &second.tasks[0];
    assert_eq!(t.task_id, "u1");
    assert!(t.timestamp_ns > first.tasks[0].timestamp_ns);
    // A sleeping task is not OOM-killed: that figure is left out of the delta.
    assert_eq!(t.oom_kills, None, "{second:?}");
    drop(s);
    let mut s = rig.registered_session("agent-u").await;
    let again = next_usage(&mut s).await;
    assert!(!again.delta, "full after a new registration: {again:?}");
    assert!(again.tasks[0].mem_current_bytes.is_some(), "{again:?}");
    drop(s);
    rig.stop().await;
}
