//! Benchmark 2: one agent launches N (default 1,000) sleeping tasks from one ACCEPT
//! until all are RUNNING at the scheduler, then the scheduler KILLs them all until all
//! are KILLED. Real master and agent processes, real containerizer and cella-shim,
//! mutual TLS on 127.0.0.1. The scheduler acknowledges every update at once.
//!
//! Each variant (the agent's launch concurrency) gets a fresh master, agent, work
//! directory and cgroup root `/cella-bench-<pid>`; after each run the bench checks
//! that no process of the run is left and removes the (empty) cgroup roots.
//!
//! Arguments: `--tasks N` (1000), `--concurrency LIST` (`default,2,4,8,16`; `default`
//! is the agent's own choice: twice its CPUs, clamped to 2..=64 — 64 here, because the
//! agent advertises `cpus:1000`), `--repeats N` (2).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cella_bench_cluster::*;
use cella_proto::v1::{self, event};
use serde_json::json;

struct Run {
    up_s: f64,
    first_running_s: f64,
    all_starting_s: f64,
    down_s: f64,
    agent_stop_s: f64,
    failed: usize,
    leftovers: usize,
}

async fn one(n: usize, conc: Option<usize>) -> Result<Run> {
    let node = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let mut cluster = OneNode::start(&node, "many", "cpus:1000;mem:1000GiB;disk:1000GiB", conc)?;
    let mut sched = Scheduler::subscribe(&cluster.url, &cluster.tls, "bench-many").await?;
    let offer = sched.wait_offer(Duration::from_secs(20)).await?;
    let ids: Vec<String> = (0..n).map(|i| format!("many-{i}")).collect();
    let tasks = ids
        .iter()
        .map(|id| sleep_task(id, 0.01, 32 << 20))
        .collect();

    let t0 = Instant::now();
    sched.accept(&offer.offer_id, tasks)?;
    let (mut running, mut starting, mut failed) = (0usize, 0usize, 0usize);
    let (mut first_running, mut all_starting) = (None, None);
    while running + failed < n {
        match sched.next(Duration::from_secs(120)).await? {
            event::Event::Update(u) => {
                let Some(s) = u.status else { continue };
                sched.ack(&s)?;
                match s.state() {
                    v1::TaskState::TaskStarting => {
                        starting += 1;
                        if starting == n {
                            all_starting = Some(t0.elapsed());
                        }
                    }
                    v1::TaskState::TaskRunning => {
                        running += 1;
                        first_running.get_or_insert(t0.elapsed());
                    }
                    other => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("task {}: {other:?}: {}", s.task_id, s.message);
                        }
                    }
                }
            }
            event::Event::Error(e) => bail!("master: {}", e.message),
            _ => {}
        }
    }
    let up = t0.elapsed();

    let t1 = Instant::now();
    sched.kill_all(&ids, failed, Duration::from_secs(120)).await?;
    let down = t1.elapsed();
    drop(sched);
    let (agent_stop, leftovers) = cluster.stop(Duration::from_secs(60));
    Ok(Run {
        up_s: up.as_secs_f64(),
        first_running_s: first_running.unwrap_or_default().as_secs_f64(),
        all_starting_s: all_starting.unwrap_or_default().as_secs_f64(),
        down_s: down.as_secs_f64(),
        agent_stop_s: agent_stop.as_secs_f64(),
        failed,
        leftovers: leftovers.report(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_nofile();
    let n: usize = arg_or("--tasks", 1000);
    let repeats: usize = arg_or("--repeats", 2);
    let list = arg("--concurrency").unwrap_or_else(|| "default,2,4,8,16".into());
    let variants: Vec<Option<usize>> = list
        .split(',')
        .map(|s| if s == "default" { None } else { s.parse().ok() })
        .collect();
    // Interleaved rounds, so that a burst of load elsewhere hits every variant.
    let mut results: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    let mut loads = Vec::new();
    for round in 0..repeats {
        for (i, conc) in variants.iter().enumerate() {
            let load = loadavg();
            let r = one(n, *conc).await?;
            eprintln!(
                "round {round} concurrency {}: up {:.2} s, down {:.2} s, failed {}, load {load}",
                conc.map_or("default".into(), |c| c.to_string()),
                r.up_s,
                r.down_s,
                r.failed
            );
            loads.push(load);
            results[i].push(r);
        }
    }
    println!("\n{n} tasks on one agent, {repeats} rounds; loads at the start of each run: {loads:?}\n");
    println!("| launch concurrency | all RUNNING s (median) | runs | all KILLED s (median) | runs | first RUNNING s | all STARTING s | failed | leftovers |");
    println!("|---|---:|---|---:|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (conc, runs) in variants.iter().zip(&results) {
        let f = |g: fn(&Run) -> f64| runs.iter().map(g).collect::<Vec<_>>();
        let list = |v: &[f64]| samples_cell(v, 2);
        let name = conc.map_or("default (64)".to_string(), |c| c.to_string());
        let (up, down) = (f(|r| r.up_s), f(|r| r.down_s));
        println!(
            "| {name} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {} |",
            median(&up),
            list(&up),
            median(&down),
            list(&down),
            median(&f(|r| r.first_running_s)),
            median(&f(|r| r.all_starting_s)),
            runs.iter().map(|r| r.failed).sum::<usize>(),
            runs.iter().map(|r| r.leftovers).sum::<usize>(),
        );
        rows.push(json!({
            "concurrency": name, "up_s": up, "down_s": down,
            "up_median_s": median(&up), "down_median_s": median(&down),
            "first_running_s": f(|r| r.first_running_s),
            "all_starting_s": f(|r| r.all_starting_s),
            "agent_stop_s": f(|r| r.agent_stop_s),
            "failed": runs.iter().map(|r| r.failed).sum::<usize>(),
            "leftovers": runs.iter().map(|r| r.leftovers).sum::<usize>(),
        }));
    }
    emit(&json!({"bench": "many", "tasks": n, "repeats": repeats, "loads": loads, "variants": rows}));
    Ok(())
}
