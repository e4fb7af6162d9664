//! Recovery benchmark 2: a master with a work directory (the
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cella_bench_cluster::*;
use serde_json::json;

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

/// Polls `GET /api/v1/agents` every 20 ms until `a` agents are CONNECTED; fails
/// once `timeout` has passed `since`.
async fn wait_connected(
    agents_url: &str,
    tls: &rustls::ClientConfig,
    a: usize,
    since: Instant,
    timeout: Duration,
    when: &str,
) -> Result<()> {
    while connected(agents_url, tls).await.1 < a {
        if since.elapsed() > timeout {
            bail!("not all agents CONNECTED {when}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Warns when the master does not list `expected` RUNNING tasks.
async fn warn_unless_running(url: &str, tls: &rustls::ClientConfig, expected: usize, when: &str) -> Result<()> {
    let running = get_json(&format!("{url}/api/v1/tasks?state=RUNNING"), tls)
        .await?
        .as_array()
        .map_or(0, Vec::len);
    if running != expected {
        eprintln!("warning: {running} RUNNING tasks {when}, expected {expected}");
    }
    Ok(())
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
    let fleet = SimFleet::start(&url, &tls_dir, a, k, true)?;
    let first_register_s = wait_count(&fleet.registrations, a, Duration::from_secs(120)).await?.as_secs_f64();
    let agents_url = format!("{url}/api/v1/agents");
    // Everything registered and written to the registry (it is written right after
    // the actor's changes; give it a moment).
    wait_connected(&agents_url, &ctls, a, Instant::now(), Duration::from_secs(30), "before the kill").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    warn_unless_running(&url, &ctls, a * k, "before the kill").await?;
    let registry_bytes = std::fs::read_dir(&work)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    fleet.failures.store(0, Ordering::SeqCst);

    master.kill9();
    let t0 = Instant::now();
    master = spawn_master_with(node, &tls_dir, port, &dir.path().join("master-2.log"), Some(&work))?;
    let listening_s = t0.elapsed().as_secs_f64();
    // How many agents the recovered registry knows (all UNREACHABLE at first).
    let (known_after_restart, _) = connected(&agents_url, &ctls).await;
    wait_count(&fleet.registrations, 2 * a, Duration::from_secs(120)).await?;
    let all_registered_s = t0.elapsed().as_secs_f64();
    wait_connected(&agents_url, &ctls, a, t0, Duration::from_secs(120), "after the restart").await?;
    let all_connected_s = t0.elapsed().as_secs_f64();
    warn_unless_running(&url, &ctls, a * k, "after the restart").await?;
    let rss_mib = rss_bytes(master.pid()).unwrap_or(0) as f64 / 1048576.0;
    let failed_attempts = fleet.failures.load(Ordering::SeqCst);
    fleet.stop().await;
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
    let a: usize = arg_or("--agents", 1000);
    let k: usize = arg_or("--tasks-per-agent", 10);
    let runs: usize = arg_or("--runs", 3);
    let node = PathBuf::from(env!("CARGO_BIN_EXE_cluster-node"));
    let (results, loads) = repeat_runs(runs, async || one(&node, a, k).await, |r| {
        format!(
            "listening {:.3} s, all Registered {:.3} s, all CONNECTED {:.3} s (first registration {:.2} s), known {} , failed attempts {}",
            r.listening_s, r.all_registered_s, r.all_connected_s, r.first_register_s, r.known_after_restart, r.failed_attempts
        )
    })
    .await?;
    let f = |g: fn(&Run) -> f64| results.iter().map(g).collect::<Vec<_>>();
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
    print_timings(&[
        ("start → port bound (the registry loads after the bind)".into(), &l),
        (format!("start → all {a} agents got Registered"), &r),
        (format!("start → all {a} CONNECTED in /api/v1/agents"), &c),
        (format!("(first registration of the {a}, fresh master)"), &fr),
    ]);
    let counts = |g: fn(&Run) -> usize| results.iter().map(g).collect::<Vec<_>>();
    let (known, failed) = (counts(|r| r.known_after_restart), counts(|r| r.failed_attempts));
    println!(
        "\nagents known to the restarted master before any re-registration: {known:?}; failed connection attempts after the kill: {failed:?}; registry size: {:?} bytes; master RSS after: {:?} MiB",
        results.iter().map(|r| r.registry_bytes).collect::<Vec<_>>(),
        results.iter().map(|r| format!("{:.0}", r.rss_mib)).collect::<Vec<_>>(),
    );
    emit(&json!({
        "bench": "master-restart", "agents": a, "tasks_per_agent": k, "loads": loads,
        "listening_s": l, "all_registered_s": r, "all_connected_s": c, "first_register_s": fr,
        "all_connected_median_s": median(&c), "all_registered_median_s": median(&r),
        "known_after_restart": known, "failed_attempts": failed,
    }));
    Ok(())
}
