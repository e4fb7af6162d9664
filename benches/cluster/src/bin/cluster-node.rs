//! `cluster-node master|agent`: a Cella master or agent as its own process, built
//! from the library crates exactly like `cella-master` and `cella-agent`, with one
//! addition the agent binary lacks: `--launch-concurrency N`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    node: Node,
}

#[derive(Subcommand)]
enum Node {
    /// A master with the default configuration (plus `--work-dir`).
    Master {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        tls_dir: PathBuf,
        /// Persist the registry in `<DIR>/registry.redb` (`MasterConfig::work_dir`);
        /// without it the registry lives in memory only.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// An agent (`cella-agent` flags, plus `--launch-concurrency`).
    Agent {
        #[command(flatten)]
        args: cella_agent::AgentArgs,
        /// Launches run at once (default: twice the agent's CPUs, 2..=64).
        #[arg(long)]
        launch_concurrency: Option<usize>,
    },
}

async fn signal() {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().node {
        Node::Master {
            listen,
            tls_dir,
            work_dir,
        } => {
            let tls = cella_proto::tls::server_config(
                &tls_dir.join("ca.pem"),
                &tls_dir.join("master.pem"),
                &tls_dir.join("master-key.pem"),
            )?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            cella_master::run(
                listener,
                Arc::new(tls),
                cella_master::MasterConfig {
                    work_dir,
                    ..Default::default()
                },
                signal(),
            )
            .await?;
        }
        Node::Agent {
            args,
            launch_concurrency,
        } => {
            let mut config = args.resolve()?;
            config.launch_concurrency = launch_concurrency;
            cella_agent::run(config, signal()).await?;
        }
    }
    Ok(())
}
