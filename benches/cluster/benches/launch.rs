//! Benchmark 1: launch latency of one task, from the scheduler's ACCEPT to RUNNING at
//! the scheduler, through a real master and a real agent (containerizer, cella-shim)
//! over mutual TLS on 127.0.0.1. Tasks are `sleep 1000`, launched one after another
//! (each ACCEPT waits for the previous RUNNING); all are killed at the end.
//!
//! The split uses the agent's own timestamps (`TaskStatus.timestamp_ns`, taken when
//! the agent creates the update, before checkpointing it) on the same clock:
//!
//! - `to_agent`:   ACCEPT sent → STARTING created on the agent (scheduler → master →
//!   agent, validation, the task record);
//! - `starting`:   STARTING created → STARTING received by the scheduler (its checkpoint
//!   with fsync, agent → master → scheduler);
//! - `launch`:     STARTING created → RUNNING created (STARTING's checkpoint, then the
//!   containerizer's launch on the blocking pool, shim and exec);
//! - `running`:    RUNNING created → RUNNING received (RUNNING's checkpoint, waiting for
//!   the STARTING acknowledgement, agent → master → scheduler);
//! - `ack_wait`:   STARTING ack sent → RUNNING received.
//!
//! Arguments: `--runs N` (default 60), `--warmup N` (default 5).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cella_bench_cluster::*;
use cella_proto::v1::{self, event};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = arg_or("--runs", 60);
    let warmup: usize = arg_or("--warmup", 5);
    let node = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let shim = shim_path();
    if !shim.is_file() {
        bail!("{} missing: build cella-shim (run.sh does)", shim.display());
    }
    let mut cluster = OneNode::start(&node, "launch", "cpus:64;mem:64GiB;disk:100GiB", None)?;
    let load_before = loadavg();
    let mut sched = Scheduler::subscribe(&cluster.url, &cluster.tls, "bench-launch").await?;
    let mut offer = Some(sched.wait_offer(Duration::from_secs(20)).await?);

    let mut total = Vec::new();
    let (mut to_agent, mut starting, mut launch, mut running, mut ack_wait) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for i in 0..warmup + runs {
        let o = match offer.take() {
            Some(o) => o,
            None => sched.wait_offer(Duration::from_secs(10)).await?,
        };
        let id = format!("launch-{i}");
        ids.push(id.clone());
        let task = sleep_task(&id, 0.01, 32 << 20);
        let t0 = Instant::now();
        let t0_ns = now_ns();
        sched.accept(&o.offer_id, vec![task])?;
        let (mut starting_ts, mut starting_recv, mut ack_sent) = (0u64, 0u64, Instant::now());
        let (running_ts, running_recv, done) = loop {
            match sched.next(Duration::from_secs(30)).await? {
                event::Event::Offers(os) => {
                    if let Some(o) = os.offers.into_iter().next() {
                        offer = Some(o);
                    }
                }
                event::Event::Update(u) => {
                    let Some(s) = u.status else { continue };
                    let recv = now_ns();
                    sched.ack(&s)?;
                    if s.task_id != id {
                        continue;
                    }
                    match s.state() {
                        v1::TaskState::TaskStarting => {
                            starting_ts = s.timestamp_ns;
                            starting_recv = recv;
                            ack_sent = Instant::now();
                        }
                        v1::TaskState::TaskRunning => {
                            break (s.timestamp_ns, recv, Instant::now());
                        }
                        other => bail!("task {id}: {other:?}: {}", s.message),
                    }
                }
                event::Event::Error(e) => bail!("master: {}", e.message),
                _ => {}
            }
        };
        if i < warmup {
            continue;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        total.push(done.duration_since(t0).as_secs_f64() * 1e3);
        to_agent.push(ms(starting_ts.saturating_sub(t0_ns)));
        starting.push(ms(starting_recv.saturating_sub(starting_ts)));
        launch.push(ms(running_ts.saturating_sub(starting_ts)));
        running.push(ms(running_recv.saturating_sub(running_ts)));
        ack_wait.push(done.duration_since(ack_sent).as_secs_f64() * 1e3);
    }
    let load_after = loadavg();

    // Kill everything and wait for KILLED.
    let t_kill = Instant::now();
    sched.kill_all(&ids, 0, Duration::from_secs(60)).await?;
    let kill_s = t_kill.elapsed().as_secs_f64();
    drop(sched);
    let (_, Leftovers { processes: shims, cgroups }) = cluster.stop(Duration::from_secs(30));

    let row = |name: &str, v: &[f64]| {
        let s = stats(v);
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.median, s.p90, s.min, s.max
        );
        json!({"median": s.median, "p90": s.p90, "min": s.min, "max": s.max, "mean": s.mean, "n": s.n})
    };
    println!("\nlaunch latency, {runs} runs (+{warmup} warm-up), load {load_before} → {load_after}\n");
    println!("| ms | median | p90 | min | max |\n|---|---:|---:|---:|---:|");
    let j = json!({
        "bench": "launch",
        "runs": runs,
        "load_before": load_before,
        "load_after": load_after,
        "work_dir": cluster.dir.path().display().to_string(),
        "total": row("ACCEPT → RUNNING (total)", &total),
        "to_agent": row("ACCEPT → STARTING created on the agent", &to_agent),
        "starting": row("STARTING created → at the scheduler", &starting),
        "launch": row("STARTING created → RUNNING created (checkpoint + containerizer)", &launch),
        "running": row("RUNNING created → at the scheduler", &running),
        "ack_wait": row("STARTING ack sent → RUNNING at the scheduler", &ack_wait),
        "kill_all_s": kill_s,
        "leftover_processes": shims.len(),
        "leftover_cgroups": cgroups.len(),
    });
    println!("\nkilled {} tasks in {kill_s:.2} s; leftovers: {} processes, {} cgroups", ids.len(), shims.len(), cgroups.len());
    emit(&j);
    if !shims.is_empty() || !cgroups.is_empty() {
        bail!("leftovers: processes {shims:?}, cgroups {cgroups:?}");
    }
    Ok(())
}
