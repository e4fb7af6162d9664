//! Simulated agent nodes for the master benchmarks: each one a real mutual-TLS
//! `AgentService::Session` whose Register carries fake resources and K fake RUNNING
//! tasks (`sleep 1000`, one framework for all), answering the master's pings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use cella_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, master_to_agent,
};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{now_ns, sim_agent_tls, sleep_task};

/// Simulated agents 0..A, each with K tasks, each a tokio task of its own.
pub struct SimFleet {
    /// Registrations so far (an agent that registers again counts again).
    pub registrations: Arc<AtomicUsize>,
    /// Failed connection attempts of reconnecting agents.
    pub failures: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    agents: Vec<JoinHandle<()>>,
}

/// What the agents of a fleet share.
struct Fleet {
    url: String,
    tasks_per_agent: usize,
    reconnect: bool,
    registrations: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    /// At most 32 TLS handshakes at once.
    connect: Semaphore,
}

impl SimFleet {
    /// Starts `agents` simulated agents with `tasks_per_agent` tasks against the master
    /// at `url`, with certificates issued from the CA in `tls_dir`. With `reconnect`,
    /// an agent whose session breaks reconnects like the real agent (100 ms doubling
    /// to 10 s, jittered ×0.5–1.0) with the agent id the master gave it and the same
    /// tasks; without, it ends with its first session.
    pub fn start(
        url: &str,
        tls_dir: &Path,
        agents: usize,
        tasks_per_agent: usize,
        reconnect: bool,
    ) -> Result<SimFleet> {
        let fleet = Arc::new(Fleet {
            url: url.to_string(),
            tasks_per_agent,
            reconnect,
            registrations: Arc::new(AtomicUsize::new(0)),
            failures: Arc::new(AtomicUsize::new(0)),
            connect: Semaphore::new(32),
        });
        let (stop, stopped) = watch::channel(false);
        let agents = (0..agents)
            .map(|i| {
                let tls = sim_agent_tls(tls_dir, i)?;
                Ok(tokio::spawn(run_agent(fleet.clone(), i, tls, stopped.clone())))
            })
            .collect::<Result<_>>()?;
        Ok(SimFleet {
            registrations: fleet.registrations.clone(),
            failures: fleet.failures.clone(),
            stop,
            agents,
        })
    }

    /// Whether an agent has ended (without `reconnect`: its only session did).
    pub fn any_ended(&self) -> bool {
        self.agents.iter().any(JoinHandle::is_finished)
    }

    /// Ends every session and waits for the agents.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for agent in self.agents {
            let _ = agent.await;
        }
    }
}

async fn run_agent(
    fleet: Arc<Fleet>,
    i: usize,
    tls: rustls::ClientConfig,
    mut stop: watch::Receiver<bool>,
) {
    let k = fleet.tasks_per_agent;
    let mut agent_id = String::new();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u64;
    loop {
        let session = sim_session(
            &fleet.url,
            &tls,
            i,
            k,
            &mut agent_id,
            &fleet.registrations,
            &fleet.connect,
            &mut stop,
        );
        match session.await {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(100),
            Err(_) => {
                fleet.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !fleet.reconnect || *stop.borrow() {
            return;
        }
        attempt += 1;
        let d = jitter(backoff, (i as u64) << 20 | attempt);
        backoff = (backoff * 2).min(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.changed() => return,
        }
    }
}

fn jitter(d: Duration, seed: u64) -> Duration {
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ns();
    let r = (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 33) % 1000;
    d.mul_f64(0.5 + r as f64 / 2000.0)
}

/// The Register of simulated agent `i` with `k` RUNNING tasks, under `agent_id` (empty
/// for a first registration).
fn sim_register(i: usize, k: usize, agent_id: &str) -> v1::AgentMessage {
    let tasks = (0..k)
        .map(|j| v1::RunningTask {
            framework_id: "bench-framework".into(),
            task: Some(sleep_task(&format!("task-{i}-{j}"), 0.1, 64 << 20)),
            state: v1::TaskState::TaskRunning as i32,
        })
        .collect();
    v1::AgentMessage {
        message: Some(agent_message::Message::Register(agent_message::Register {
            agent_id: agent_id.to_string(),
            hostname: format!("sim-{i}.example"),
            attributes: vec![v1::Attribute {
                key: "rack".into(),
                value: format!("r{}", i % 40),
            }],
            total: Some(v1::Resources {
                cpus: 32.0,
                mem_bytes: 128 << 30,
                disk_bytes: 1 << 40,
            }),
            tasks,
            http_endpoint: format!("https://10.0.{}.{}:5051", i / 256, i % 256),
            version: "0.1.0".into(),
        })),
    }
}

/// One session of simulated agent `i`: connect, register with `k` tasks (as
/// `agent_id`, which becomes the id the master gives), count the registration in
/// `registrations`, then answer pings until the stream ends or `stop` changes. A
/// `connect` permit is held from the connection until Registered, which bounds the
/// TLS handshakes in flight. Returns Ok(true) if stopped, Ok(false) if the session
/// ended after registering.
#[allow(clippy::too_many_arguments)]
async fn sim_session(
    url: &str,
    tls: &rustls::ClientConfig,
    i: usize,
    k: usize,
    agent_id: &mut String,
    registrations: &AtomicUsize,
    connect: &Semaphore,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(sim_register(i, k, agent_id))?;
    let mut inbound = {
        let _permit = connect.acquire().await?;
        let channel = cella_proto::tls::grpc_channel(url, tls).await?;
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let mut inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            match inbound.next().await {
                Some(Ok(v1::MasterToAgent {
                    message: Some(master_to_agent::Message::Registered(r)),
                })) => {
                    *agent_id = r.agent_id;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("agent {i}: {e}"),
                None => bail!("agent {i}: stream closed before Registered"),
            }
        }
        registrations.fetch_add(1, Ordering::SeqCst);
        inbound
    };
    loop {
        tokio::select! {
            m = inbound.next() => match m {
                Some(Ok(v1::MasterToAgent { message: Some(master_to_agent::Message::Ping(p)) })) => {
                    let _ = tx.send(v1::AgentMessage {
                        message: Some(agent_message::Message::Pong(agent_message::Pong { nonce: p.nonce })),
                    });
                }
                Some(Ok(_)) => {}
                _ => return Ok(false),
            },
            _ = stop.changed() => return Ok(true),
        }
    }
}
