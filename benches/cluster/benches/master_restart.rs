//! Recovery benchmark 2 (issue 4, "Performance"): a master with a work directory (the
//! registry persisted in `<work>/registry.redb`) and A (default 1,000) simulated agents,
//! each with K (default 10) running tasks, is killed with SIGKILL and started again on
//! the same work directory and port. Measured from the new master's start (just before
//! `spawn`; the time to open the registry and listen included) until all A agents are
//! re-registered: (1) every simulated agent got `Registered` on its new session, and
//! (2) `GET /api/v1/agents` (mutual TLS, polled every 20 ms) shows all A CONNECTED.
//!
//! The simulated agents run in this process over real mutual-TLS connections (the
//! `agent` certificate), one `AgentService::Session` each, like the `memory` bench: the
//! Register carries fake resources and K fake RUNNING tasks of one framework; they
//! answer pings. When their session breaks they reconnect like the real agent (100 ms
//! doubling to 10 s, jittered ×0.5–1.0) with the agent id the master gave them and the
//! same tasks; at most 32 TLS handshakes at once (as in `memory`).
//!
//! Arguments: `--agents A` (1000), `--tasks-per-agent K` (10), `--runs N` (3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cella_bench_cluster::*;
use cella_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, master_to_agent,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

fn register(i: usize, k: usize, agent_id: &str) -> v1::AgentMessage {
    let tasks = (0..k)
        .map(|j| v1::RunningTask {
            framework_id: "bench-framework".into(),
            task: Some(v1::TaskInfo {
                task_id: format!("task-{i}-{j}"),
                name: format!("task-{i}-{j}"),
                command: vec!["sleep".into(), "1000".into()],
                resources: Some(v1::Resources {
                    cpus: 0.1,
                    mem_bytes: 64 << 20,
                    disk_bytes: 0,
                }),
                ..Default::default()
            }),
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

fn jitter(d: Duration, seed: u64) -> Duration {
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ns();
    let r = (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 33) % 1000;
    d.mul_f64(0.5 + r as f64 / 2000.0)
}

/// One session: connect, register, serve pings until the stream ends or `stop`.
/// Returns Ok(true) if stopped, Ok(false) if the session ended after registering.
async fn session(
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
    tx.send(register(i, k, agent_id))?;
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

#[allow(clippy::too_many_arguments)]
async fn sim_agent(
    url: String,
    tls: rustls::ClientConfig,
    i: usize,
    k: usize,
    registrations: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    connect: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut agent_id = String::new();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u64;
    loop {
        match session(&url, &tls, i, k, &mut agent_id, &registrations, &connect, &mut stop).await {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(100),
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if *stop.borrow() {
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

async fn wait_count(c: &AtomicUsize, want: usize, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    while c.load(Ordering::SeqCst) < want {
        if t.elapsed() > timeout {
            bail!("{} of {want} registrations", c.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(t.elapsed())
}

async fn connected(url: &str, tls: &rustls::ClientConfig) -> (usize, usize) {
    match get_json(url, tls).await {
        Ok(v) => v.as_array().map_or((0, 0), |a| {
            (a.len(), a.iter().filter(|x| x["state"] == "CONNECTED").count())
        }),
        Err(_) => (0, 0),
    }
}

struct Run {
    first_register_s: f64,
    all_registered_s: f64,
    all_connected_s: f64,
    listening_s: f64,
    known_after_restart: usize,
    failed_attempts: usize,
    registry_bytes: u64,
    rss_mib: f64,
}

async fn one(node: &Path, a: usize, k: usize) -> Result<Run> {
    let dir = TempDir::new("master-restart")?;
    let tls_dir = dir.path().join("tls");
    certs(&tls_dir)?;
    let ctls = client_tls(&tls_dir)?;
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let work = dir.path().join("master-work");
    std::fs::create_dir_all(&work)?;
    let mut master = spawn_master_with(node, &tls_dir, port, &dir.path().join("master-1.log"), Some(&work))?;
    let registrations = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let connect = Arc::new(Semaphore::new(32));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    for i in 0..a {
        handles.push(tokio::spawn(sim_agent(
            url.clone(),
            sim_agent_tls(&tls_dir, i)?,
            i,
            k,
            registrations.clone(),
            failures.clone(),
            connect.clone(),
            stop_rx.clone(),
        )));
    }
    let first_register_s = wait_count(&registrations, a, Duration::from_secs(120)).await?.as_secs_f64();
    let agents_url = format!("{url}/api/v1/agents");
    // Everything registered and written to the registry (it is written right after
    // the actor's changes; give it a moment).
    let t = Instant::now();
    while connected(&agents_url, &ctls).await.1 < a {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("not all agents CONNECTED before the kill");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tasks_before = get_json(&format!("{url}/api/v1/tasks?state=RUNNING"), &ctls)
        .await?
        .as_array()
        .map_or(0, Vec::len);
    if tasks_before != a * k {
        eprintln!("warning: {tasks_before} RUNNING tasks before the kill, expected {}", a * k);
    }
    let registry_bytes = std::fs::read_dir(&work)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    failures.store(0, Ordering::SeqCst);

    master.kill9();
    let t0 = Instant::now();
    master = spawn_master_with(node, &tls_dir, port, &dir.path().join("master-2.log"), Some(&work))?;
    let listening_s = t0.elapsed().as_secs_f64();
    // How many agents the recovered registry knows (all UNREACHABLE at first).
    let (known_after_restart, _) = connected(&agents_url, &ctls).await;
    wait_count(&registrations, 2 * a, Duration::from_secs(120)).await?;
    let all_registered_s = t0.elapsed().as_secs_f64();
    loop {
        if connected(&agents_url, &ctls).await.1 >= a {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("not all agents CONNECTED after the restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_connected_s = t0.elapsed().as_secs_f64();
    let tasks_after = get_json(&format!("{url}/api/v1/tasks?state=RUNNING"), &ctls)
        .await?
        .as_array()
        .map_or(0, Vec::len);
    if tasks_after != a * k {
        eprintln!("warning: {tasks_after} RUNNING tasks after the restart, expected {}", a * k);
    }
    let rss_mib = rss_bytes(master.pid()).unwrap_or(0) as f64 / 1048576.0;
    let failed_attempts = failures.load(Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    master.stop(Duration::from_secs(10));
    Ok(Run {
        first_register_s,
        all_registered_s,
        all_connected_s,
        listening_s,
        known_after_restart,
        failed_attempts,
        registry_bytes,
        rss_mib,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_nofile();
    let a: usize = arg("--agents").map_or(1000, |s| s.parse().unwrap_or(1000));
    let k: usize = arg("--tasks-per-agent").map_or(10, |s| s.parse().unwrap_or(10));
    let runs: usize = arg("--runs").map_or(3, |s| s.parse().unwrap_or(3));
    let node = PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let mut results = Vec::new();
    let mut loads = Vec::new();
    for i in 0..runs {
        let load = loadavg();
        let r = one(&node, a, k).await?;
        eprintln!(
            "run {i}: listening {:.3} s, all Registered {:.3} s, all CONNECTED {:.3} s (first registration {:.2} s), known {} , failed attempts {}, load {load}",
            r.listening_s, r.all_registered_s, r.all_connected_s, r.first_register_s, r.known_after_restart, r.failed_attempts
        );
        loads.push(load);
        results.push(r);
    }
    let f = |g: fn(&Run) -> f64| results.iter().map(g).collect::<Vec<_>>();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    let (l, r, c, fr) = (
        f(|r| r.listening_s),
        f(|r| r.all_registered_s),
        f(|r| r.all_connected_s),
        f(|r| r.first_register_s),
    );
    println!(
        "\n{a} simulated agents × {k} tasks = {} tasks, master SIGKILL and restart, {runs} runs; loads at the start of each run: {loads:?}\n",
        a * k
    );
    println!("| | median s | runs s |");
    println!("|---|---:|---|");
    println!("| start → port bound (the registry loads after the bind) | {:.3} | {} |", median(&l), list(&l));
    println!("| start → all {a} agents got Registered | {:.3} | {} |", median(&r), list(&r));
    println!("| start → all {a} CONNECTED in /api/v1/agents | {:.3} | {} |", median(&c), list(&c));
    println!("| (first registration of the {a}, fresh master) | {:.3} | {} |", median(&fr), list(&fr));
    println!(
        "\nagents known to the restarted master before any re-registration: {:?}; failed connection attempts after the kill: {:?}; registry size: {:?} bytes; master RSS after: {:?} MiB",
        results.iter().map(|r| r.known_after_restart).collect::<Vec<_>>(),
        results.iter().map(|r| r.failed_attempts).collect::<Vec<_>>(),
        results.iter().map(|r| r.registry_bytes).collect::<Vec<_>>(),
        results.iter().map(|r| format!("{:.0}", r.rss_mib)).collect::<Vec<_>>(),
    );
    emit(&json!({
        "bench": "master-restart", "agents": a, "tasks_per_agent": k, "loads": loads,
        "listening_s": l, "all_registered_s": r, "all_connected_s": c, "first_register_s": fr,
        "all_connected_median_s": median(&c), "all_registered_median_s": median(&r),
        "known_after_restart": results.iter().map(|r| r.known_after_restart).collect::<Vec<_>>(),
        "failed_attempts": results.iter().map(|r| r.failed_attempts).collect::<Vec<_>>(),
    }));
    Ok(())
}
