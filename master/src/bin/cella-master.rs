//! `cella-master`: the Cella master daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cella_master::{MasterConfig, parse_duration};
use clap::Parser;

/// The Cella master: registers agents, offers their resources to schedulers by
/// DRF, and serves the scheduler and operator APIs on one mutual-TLS port.
#[derive(Parser)]
#[command(name = "cella-master", version)]
struct Args {
    /// Address to serve gRPC and the HTTP API on (TLS only).
    #[arg(long, default_value = "127.0.0.1:5050", env = "CELLA_MASTER_LISTEN")]
    listen: SocketAddr,
    /// Directory with ca.pem, master.pem and master-key.pem (see `cella certs init`).
    #[arg(
        long,
        value_name = "DIR",
        env = "CELLA_TLS_DIR",
        default_value = "/etc/cella/tls"
    )]
    tls_dir: PathBuf,
    /// Rescind offers not answered within this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    offer_timeout: Duration,
    /// Ping agents (and heartbeat schedulers) this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// An agent silent this long is unreachable.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    agent_unreachable_after: Duration,
    /// An unreachable agent is lost after this; its tasks become LOST (AGENT_LOST).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    agent_timeout: Duration,
    /// Run allocation at least this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    allocation_interval: Duration,
    /// Where the registry (agents, frameworks, tasks) is persisted, in
    /// `registry.redb`; a restarted master reloads it.
    #[arg(
        long,
        value_name = "DIR",
        env = "CELLA_MASTER_WORK_DIR",
        default_value = "/var/lib/cella/master"
    )]
    work_dir: PathBuf,
    /// DRF weight of a role, ROLE=WEIGHT (repeatable; default 1).
    #[arg(long = "role-weight", value_name = "ROLE=WEIGHT", value_parser = parse_weight)]
    weights: Vec<(String, f64)>,
}

fn parse_weight(s: &str) -> Result<(String, f64), String> {
    let (role, weight) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use ROLE=WEIGHT, e.g. prod=2"))?;
    let weight: f64 = weight
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a number"))?;
    if role.is_empty() || !weight.is_finite() || weight <= 0.0 {
        return Err(format!(
            "{s:?}: use a role name and a weight greater than zero"
        ));
    }
    Ok((role.to_string(), weight))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let dir = &args.tls_dir;
    let tls = cella_proto::tls::server_config(
        &dir.join("ca.pem"),
        &dir.join("master.pem"),
        &dir.join("master-key.pem"),
    )
    .with_context(|| {
        format!(
            "loading TLS files from {} (create them with `cella certs init DIR`)",
            dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!("cella-master serving on https://{}", args.listen);
    let config = MasterConfig {
        offer_timeout: args.offer_timeout,
        ping_interval: args.ping_interval,
        agent_unreachable_after: args.agent_unreachable_after,
        agent_lost_timeout: args.agent_timeout,
        allocation_interval: args.allocation_interval,
        weights: args.weights,
        work_dir: Some(args.work_dir),
        ..MasterConfig::default()
    };
    cella_master::run(listener, Arc::new(tls), config, shutdown_signal()).await?;
    tracing::info!("cella-master stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
