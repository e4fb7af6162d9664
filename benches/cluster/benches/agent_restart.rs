//! Recovery benchmark 1: an agent with N (default 1,000)
//! running `sleep 1000` tasks is killed with SIGKILL and started again on the same work
//! and runtime directories. Measured from the new process's start (just before
//! `spawn`) until
//!
//! * (a) it has re-attached to all N: its HTTPS `GET /api/v1/containers` (served only
//!   after recovery, and listing only tasks with a live monitor) lists N RUNNING;
//! * (b) the master shows the agent CONNECTED with N tasks and `GET
//!   /api/v1/tasks?state=RUNNING` lists N (both over mutual TLS, polled every 10 ms).
//!
//! Before the restart the bench waits until the master no longer shows the agent
//! CONNECTED (so (b) cannot be satisfied by the old session). It then checks that no
//! task ran twice: the N shims are the same processes (`<runtime>/tasks/<id>/shim.pid`
//! unchanged, each pid alive), and no update other than RUNNING reached the scheduler.
//! Finally it KILLs every task, stops agent and master, and checks that no process or
//! cgroup is left. Fresh master, agent, work directory and cgroup root each run.
//!
//! Arguments: `--tasks N` (1000), `--runs N` (3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cella_bench_cluster::*;
use cella_proto::v1::{self, event};
use serde_json::json;

struct Run {
    launch_s: f64,
    reattached_s: f64,
    master_s: f64,
    shims_before: usize,
    shims_after_same: usize,
    other_updates: usize,
    leftovers: usize,
}

fn shim_pids(runtime: &Path, ids: &[String]) -> BTreeMap<String, String> {
    ids.iter()
        .filter_map(|id| {
            let s = std::fs::read_to_string(runtime.join("tasks").join(id).join("shim.pid")).ok()?;
            Some((id.clone(), s.trim().to_string()))
        })
        .collect()
}

fn pid_alive(pidfile: &str) -> bool {
    let pid = pidfile.split_whitespace().next().unwrap_or("");
    !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists()
}

async fn drain(sched: &mut Scheduler, other: &mut usize) -> Result<()> {
    match sched.next(Duration::from_millis(5)).await {
        Ok(event::Event::Update(u)) => {
            if let Some(s) = u.status {
                sched.ack(&s)?;
                if s.state() != v1::TaskState::TaskRunning {
                    *other += 1;
                    eprintln!("unexpected update: {} {:?}: {}", s.task_id, s.state(), s.message);
                }
            }
        }
        Ok(event::Event::Error(e)) => bail!("master: {}", e.message),
        _ => {}
    }
    Ok(())
}

async fn one(n: usize) -> Result<Run> {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let shim = shim_path();
    let dir = TempDir::new("agent-restart")?;
    let tls = dir.path().join("tls");
    certs(&tls)?;
    let ctls = client_tls(&tls)?;
    let port = free_port()?;
    let http_port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let mut master = spawn_master(&node, &tls, port, &dir.path().join("master.log"))?;
    let cgroup_root = format!("/cella-bench-{}", std::process::id());
    let (runtime, _runtime_dir) = runtime_dir(&dir)?;
    let work = dir.path().join("work");
    let opts = |log: &'static str| AgentOpts {
        master_url: &url,
        tls_dir: &tls,
        work_dir: &work,
        runtime_dir: &runtime,
        resources: "cpus:1000;mem:1000GiB;disk:1000GiB",
        cgroup_root: &cgroup_root,
        launch_concurrency: None,
        shim: &shim,
        log: Box::leak(dir.path().join(log).into_boxed_path()),
    };
    let http = format!("127.0.0.1:{http_port}");
    let mut agent = spawn_agent_http(&node, &opts("agent-1.log"), &http)?;
    let mut sched = Scheduler::subscribe(&url, &tls, "bench-agent-restart").await?;
    let offer = sched.wait_offer(Duration::from_secs(20)).await?;
    let agent_id = offer.agent_id.clone();
    let ids: Vec<String> = (0..n).map(|i| format!("ar-{i}")).collect();
    let tasks = ids.iter().map(|id| sleep_task(id, 0.01, 32 << 20)).collect();
    let t = Instant::now();
    sched.accept(&offer.offer_id, tasks)?;
    let mut running = 0;
    while running < n {
        if let event::Event::Update(u) = sched.next(Duration::from_secs(120)).await?
            && let Some(s) = u.status
        {
            sched.ack(&s)?;
            match s.state() {
                v1::TaskState::TaskRunning => running += 1,
                v1::TaskState::TaskStarting => {}
                other => bail!("task {}: {other:?}: {}", s.task_id, s.message),
            }
        }
    }
    let launch_s = t.elapsed().as_secs_f64();
    // Let the agent checkpoint settle and the scheduler's acks land.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        drain(&mut sched, &mut 0).await?;
    }
    let before = shim_pids(&runtime, &ids);
    let shims_before = before.values().filter(|p| pid_alive(p)).count();

    agent.kill9();
    // Wait until the master has seen the session end.
    let agents_url = format!("{url}/api/v1/agents");
    let mut other = 0usize;
    let t = Instant::now();
    loop {
        let a = get_json(&agents_url, &ctls).await?;
        let connected = a.as_array().is_some_and(|v| {
            v.iter().any(|x| x["id"] == agent_id.as_str() && x["state"] == "CONNECTED")
        });
        if !connected {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the master still shows the killed agent CONNECTED");
        }
        drain(&mut sched, &mut other).await?;
    }

    // The measured part.
    let t0 = Instant::now();
    agent = spawn_agent_http(&node, &opts("agent-2.log"), &http)?;
    let done = Arc::new(AtomicBool::new(false));
    let containers_url = format!("https://127.0.0.1:{http_port}/api/v1/containers");
    let (c_tls, c_done) = (ctls.clone(), done.clone());
    let reattach = tokio::spawn(async move {
        loop {
            if let Ok(v) = get_json(&containers_url, &c_tls).await
                && v.as_array().is_some_and(|a| a.iter().filter(|c| c["state"] == "TASK_RUNNING" || c["state"] == "RUNNING").count() >= n)
            {
                return Ok(t0.elapsed());
            }
            if c_done.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(120) {
                bail!("the agent did not list {n} running containers");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (m_tls, m_done, aid) = (ctls.clone(), done.clone(), agent_id.clone());
    let tasks_url = format!("{url}/api/v1/tasks?state=RUNNING");
    let at_master = tokio::spawn(async move {
        loop {
            if let Ok(a) = get_json(&agents_url, &m_tls).await
                && a.as_array().is_some_and(|v| {
                    v.iter().any(|x| x["id"] == aid.as_str() && x["state"] == "CONNECTED" && x["tasks"].as_u64() == Some(n as u64))
                })
                && let Ok(t) = get_json(&tasks_url, &m_tls).await
                && t.as_array().is_some_and(|v| v.iter().filter(|x| x["agent_id"] == aid.as_str()).count() == n)
            {
                return Ok(t0.elapsed());
            }
            if m_done.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(120) {
                bail!("the master did not show the agent CONNECTED with {n} RUNNING");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    while !(reattach.is_finished() && at_master.is_finished()) {
        drain(&mut sched, &mut other).await?;
    }
    done.store(true, Ordering::Relaxed);
    let reattached_s = reattach.await??.as_secs_f64();
    let master_s = at_master.await??.as_secs_f64();
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        drain(&mut sched, &mut other).await?;
    }
    let after = shim_pids(&runtime, &ids);
    let shims_after_same = ids
        .iter()
        .filter(|id| before.get(*id).is_some_and(|b| after.get(*id) == Some(b) && pid_alive(b)))
        .count();

    // Clean-up: KILL everything, wait for the ends.
    sched.kill_all(&ids, 0, Duration::from_secs(120)).await?;
    drop(sched);
    agent.stop(Duration::from_secs(60));
    master.stop(Duration::from_secs(10));
    let leftovers = Leftovers::of(&runtime, &cgroup_root);
    Ok(Run {
        launch_s,
        reattached_s,
        master_s,
        shims_before,
        shims_after_same,
        other_updates: other,
        leftovers: leftovers.report(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_nofile();
    let n: usize = arg_or("--tasks", 1000);
    let runs: usize = arg_or("--runs", 3);
    let (results, loads) = repeat_runs(runs, async || one(n).await, |r| {
        format!(
            "re-attached {:.3} s, master {:.3} s, shims {} → same {}, other updates {}, leftovers {}",
            r.reattached_s, r.master_s, r.shims_before, r.shims_after_same, r.other_updates, r.leftovers
        )
    })
    .await?;
    let f = |g: fn(&Run) -> f64| results.iter().map(g).collect::<Vec<_>>();
    let (ra, ms) = (f(|r| r.reattached_s), f(|r| r.master_s));
    println!("\n{n} tasks on one agent, SIGKILL and restart, {runs} runs; loads at the start of each run: {loads:?}\n");
    print_timings(&[
        (format!("(a) start → agent re-attached to all {n}"), &ra),
        (format!("(b) start → master: agent CONNECTED, {n} RUNNING"), &ms),
    ]);
    let counts = |g: fn(&Run) -> usize| results.iter().map(g).collect::<Vec<_>>();
    let (before, after) = (counts(|r| r.shims_before), counts(|r| r.shims_after_same));
    let other: usize = counts(|r| r.other_updates).iter().sum();
    let leftovers: usize = counts(|r| r.leftovers).iter().sum();
    println!(
        "\nshims alive before: {before:?}; same shim pid and alive after: {after:?}; updates other than RUNNING: {other}; leftovers: {leftovers}; launch of the {n} took {} s",
        samples_cell(&f(|r| r.launch_s), 3),
    );
    emit(&json!({
        "bench": "agent-restart", "tasks": n, "loads": loads,
        "reattached_s": ra, "master_s": ms,
        "reattached_median_s": median(&ra), "master_median_s": median(&ms),
        "shims_before": before, "shims_after_same": after,
        "other_updates": other, "leftovers": leftovers,
    }));
    Ok(())
}
