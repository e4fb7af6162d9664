//! Benchmark 3: the master's memory per registered agent and per task.
//!
//! For each size A×K a fresh master process (`cluster-node master`) is started; A
//! simulated agents connect over real mutual-TLS connections (the `agent`
//! certificate), each with one `AgentService::Session` stream whose Register carries
//! fake resources and K fake running tasks (`sleep 1000`, one framework for all); they
//! answer pings. Once every agent is registered the master's VmRSS is read (median of
//! 3 readings, 0.5 s apart, after 2 s to settle) and compared with its RSS before the
//! first connection. Least squares over the sizes gives bytes per agent (with its
//! connection) and bytes per task.
//!
//! Arguments: `--sizes` (default `500x0,1000x0,2000x0,1000x10,1000x20,2000x10`),
//! `--repeats N` (default 2).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cella_bench_cluster::*;
use cella_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, master_to_agent,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

fn register(i: usize, k: usize) -> v1::AgentMessage {
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
            agent_id: String::new(),
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

async fn sim_agent(
    url: String,
    tls: rustls::ClientConfig,
    i: usize,
    k: usize,
    registered: Arc<AtomicUsize>,
    connect: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(register(i, k))?;
    let mut inbound = {
        let _permit = connect.acquire().await?;
        let channel = cella_proto::tls::grpc_channel(&url, &tls).await?;
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let mut inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        // Wait for Registered while holding the permit (bounds the handshakes).
        loop {
            match inbound.next().await {
                Some(Ok(v1::MasterToAgent {
                    message: Some(master_to_agent::Message::Registered(_)),
                })) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("agent {i}: {e}"),
                None => bail!("agent {i}: stream closed before Registered"),
            }
        }
        registered.fetch_add(1, Ordering::SeqCst);
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
                _ => return Ok(()),
            },
            _ = stop.changed() => return Ok(()),
        }
    }
}

struct Sample {
    agents: usize,
    tasks_per_agent: usize,
    base: u64,
    after: u64,
    register_s: f64,
}

async fn one(node: &std::path::Path, tls_dir: &std::path::Path, a: usize, k: usize) -> Result<Sample> {
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let log = tls_dir.parent().context("dir")?.join(format!("master-{a}x{k}.log"));
    let mut master = spawn_master(node, tls_dir, port, &log)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_bytes(master.pid())?;
    let registered = Arc::new(AtomicUsize::new(0));
    let connect = Arc::new(Semaphore::new(32));
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..a {
        handles.push(tokio::spawn(sim_agent(
            url.clone(),
            sim_agent_tls(&tls_dir, i)?,
            i,
            k,
            registered.clone(),
            connect.clone(),
            stop_rx.clone(),
        )));
    }
    while registered.load(Ordering::SeqCst) < a {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("only {} of {a} agents registered", registered.load(Ordering::SeqCst));
        }
        if let Some(h) = handles.iter().find(|h| h.is_finished()) {
            let _ = h;
            bail!("a simulated agent ended early");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let register_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut readings = Vec::new();
    for _ in 0..3 {
        readings.push(rss_bytes(master.pid())? as f64);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = median(&readings) as u64;
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    master.stop(Duration::from_secs(10));
    Ok(Sample {
        agents: a,
        tasks_per_agent: k,
        base,
        after,
        register_s,
    })
}

/// Least squares for y = c + p·x1 + q·x2.
fn fit(rows: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    // Normal equations, 3×3, solved by Cramer's rule.
    let n = rows.len() as f64;
    let (mut s1, mut s2, mut s11, mut s22, mut s12, mut sy, mut s1y, mut s2y) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x1, x2, y) in rows {
        s1 += x1;
        s2 += x2;
        s11 += x1 * x1;
        s22 += x2 * x2;
        s12 += x1 * x2;
        sy += y;
        s1y += x1 * y;
        s2y += x2 * y;
    }
    let m = [[n, s1, s2], [s1, s11, s12], [s2, s12, s22]];
    let b = [sy, s1y, s2y];
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(m);
    let col = |c: usize| {
        let mut mm = m;
        for r in 0..3 {
            mm[r][c] = b[r];
        }
        det(mm) / d
    };
    (col(0), col(1), col(2))
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_nofile();
    let sizes = arg("--sizes").unwrap_or_else(|| "500x0,1000x0,2000x0,1000x10,1000x20,2000x10".into());
    let repeats: usize = arg("--repeats").map_or(2, |s| s.parse().unwrap_or(2));
    let sizes: Vec<(usize, usize)> = sizes
        .split(',')
        .filter_map(|s| {
            let (a, k) = s.split_once('x')?;
            Some((a.parse().ok()?, k.parse().ok()?))
        })
        .collect();
    let node = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let dir = TempDir::new("memory")?;
    let tls_dir = dir.path().join("tls");
    certs(&tls_dir)?;
    let load_before = loadavg();
    let mut samples = Vec::new();
    for _ in 0..repeats {
        for &(a, k) in &sizes {
            let s = one(&node, &tls_dir, a, k).await?;
            eprintln!(
                "{a} agents × {k} tasks: RSS {:.1} → {:.1} MiB, registered in {:.2} s",
                s.base as f64 / 1048576.0,
                s.after as f64 / 1048576.0,
                s.register_s
            );
            samples.push(s);
        }
    }
    let rows: Vec<(f64, f64, f64)> = samples
        .iter()
        .map(|s| {
            (
                s.agents as f64,
                (s.agents * s.tasks_per_agent) as f64,
                s.after as f64 - s.base as f64,
            )
        })
        .collect();
    let (c, per_agent, per_task) = fit(&rows);
    println!("\nmaster RSS, load {load_before} → {}\n", loadavg());
    println!("| agents | tasks/agent | tasks | RSS before MiB | RSS after MiB | Δ MiB | Δ/agent KiB (all-in) | registration s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &samples {
        let d = s.after as f64 - s.base as f64;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            s.agents,
            s.tasks_per_agent,
            s.agents * s.tasks_per_agent,
            s.base as f64 / 1048576.0,
            s.after as f64 / 1048576.0,
            d / 1048576.0,
            d / s.agents as f64 / 1024.0,
            s.register_s
        );
    }
    println!(
        "\nfit Δ = {:.2} MiB + {:.1} KiB × agents + {:.0} B × tasks",
        c / 1048576.0,
        per_agent / 1024.0,
        per_task
    );
    emit(&json!({
        "bench": "memory",
        "per_agent_bytes": per_agent,
        "per_task_bytes": per_task,
        "intercept_bytes": c,
        "samples": samples.iter().map(|s| json!({
            "agents": s.agents, "tasks_per_agent": s.tasks_per_agent,
            "rss_before": s.base, "rss_after": s.after, "register_s": s.register_s
        })).collect::<Vec<_>>(),
    }));
    Ok(())
}
