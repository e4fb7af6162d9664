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

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cella_bench_cluster::*;
use serde_json::json;

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
    let t0 = Instant::now();
    let fleet = SimFleet::start(&url, tls_dir, a, k, false)?;
    while fleet.registrations.load(Ordering::SeqCst) < a {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("only {} of {a} agents registered", fleet.registrations.load(Ordering::SeqCst));
        }
        if fleet.any_ended() {
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
    fleet.stop().await;
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
    let repeats: usize = arg_or("--repeats", 2);
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
