//! `cella-master`: the Cella master daemon, and the backup and restore of its registry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cella_master::authz::Authorizer;
use cella_master::{MasterConfig, parse_duration};
use cella_proto::auth::Authenticator;
use cella_proto::reload::{Trigger, changed, log, revocations};
use cella_proto::tls::{ClientAuth, Layout, Limits, Trust};
use clap::{Parser, Subcommand};

/// The Cella master: registers agents, offers their resources to schedulers by
/// DRF, and serves the scheduler and operator APIs on one mutual-TLS port.
#[derive(Parser)]
#[command(name = "cella-master", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Sub {
    /// Write a consistent copy of the registry to FILE (mode 0600): asked of the master
    /// running on the work dir (it goes on serving), or read directly if none runs.
    Backup(RegistryFile),
    /// Replace the registry of a stopped master with the backup FILE (the current one
    /// is kept as registry.redb.before-restore-<time>).
    Restore(RegistryFile),
}

/// The arguments of `backup` and `restore`.
#[derive(clap::Args)]
struct RegistryFile {
    /// The backup.
    file: PathBuf,
    /// The master's work dir, which holds the registry.
    #[arg(
        long,
        value_name = "DIR",
        env = "CELLA_MASTER_WORK_DIR",
        default_value = "/var/lib/cella/master"
    )]
    work_dir: PathBuf,
}

#[derive(clap::Args)]
struct Args {
    /// Address to serve gRPC and the HTTP API on (TLS only).
    #[arg(long, default_value = "127.0.0.1:5050", env = "CELLA_MASTER_LISTEN")]
    listen: SocketAddr,
    /// Directory with ca.pem, master.pem, master-key.pem and crl.pem (see `cella certs
    /// init`); crl.pem is re-read when it changes.
    #[arg(
        long,
        value_name = "DIR",
        env = "CELLA_TLS_DIR",
        default_value = "/etc/cella/tls"
    )]
    tls_dir: PathBuf,
    /// The ACL file (TOML): once given, everything it does not grant is denied.
    /// Without one every authenticated principal may do everything. Re-read when it
    /// changes or on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CELLA_MASTER_ACL")]
    acl: Option<PathBuf>,
    /// Bearer tokens and passwords for the HTTP API (TOML, mode 0600; see `cella auth`).
    /// Re-read when it changes or on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CELLA_MASTER_CREDENTIALS")]
    credentials: Option<PathBuf>,
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
    /// A killed task whose kill policy names no grace period gets SIGTERM, then
    /// SIGKILL after this (0s: SIGKILL at once).
    #[arg(long, default_value = "5s", value_parser = parse_grace)]
    kill_grace_period: Duration,
    /// The longest grace period a task or a kill may ask for.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    max_kill_grace_period: Duration,
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
    /// Open connections at most (lowered to what the descriptor limit allows).
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Connections without a client certificate per client address; beyond it the
    /// oldest idle one is closed.
    #[arg(long, default_value_t = Limits::default().max_anonymous_per_address)]
    max_connections_per_address: usize,
    /// Close connections with no request in flight for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// The largest gRPC message accepted (e.g. 16MiB).
    #[arg(long, default_value = "16MiB", value_parser = cella_proto::acl::parse_size)]
    max_message_size: u64,
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
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Backup(RegistryFile { file, work_dir })) => backup(&work_dir, &file).await,
        Some(Sub::Restore(RegistryFile { file, work_dir })) => {
            let kept = cella_master::store::restore(&work_dir, &file)?;
            eprintln!(
                "cella-master: restored {} from {}{}",
                work_dir.join(cella_master::store::FILE_NAME).display(),
                file.display(),
                kept.map(|k| format!(" (the previous registry is kept as {})", k.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        None => serve(cli.args).await,
    }
}

async fn backup(work_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let dest = std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
    match cella_master::control::request_backup(work_dir, &dest).await {
        Ok(Some(())) => {}
        Ok(None) => cella_master::store::backup_offline(work_dir, &dest)?,
        Err(e) => anyhow::bail!("the running master could not back up: {e}"),
    }
    eprintln!("cella-master: registry backed up to {}", dest.display());
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let layout = Layout::new(&args.tls_dir);
    cella_proto::perms::check_private_file(&layout.master_key)
        .context("the master's private key")?;
    let trust = Trust::load(&layout.ca_cert, &layout.crl).with_context(|| {
        format!(
            "loading the CA and revocation list from {} (create them with `cella certs init DIR`)",
            args.tls_dir.display()
        )
    })?;
    let tls = cella_proto::tls::server_config_trusting(
        &trust,
        &layout.master_cert,
        &layout.master_key,
        ClientAuth::Optional,
    )
    .with_context(|| format!("loading master.pem from {}", args.tls_dir.display()))?;
    let authorizer = match &args.acl {
        Some(path) => {
            let a = Authorizer::from_file(path).map_err(anyhow::Error::msg)?;
            tracing::info!(acl = %path.display(), "ACL in force: everything it does not grant is denied");
            a
        }
        None => {
            tracing::warn!(
                "no ACL file (--acl): every authenticated principal may do everything; give \
                 one to lock the cluster down (see README, Security)"
            );
            Authorizer::permissive()
        }
    };
    let authenticator =
        Authenticator::new(args.credentials.as_deref()).map_err(anyhow::Error::msg)?;
    let descriptors = cella_proto::tls::raise_descriptor_limit();
    let limits = Limits {
        max_connections: args
            .max_connections
            .min(usize::try_from(descriptors.saturating_sub(64)).unwrap_or(usize::MAX))
            .max(16),
        max_anonymous_per_address: args.max_connections_per_address.max(1),
        idle_timeout: args.idle_timeout,
        ..Limits::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let config = MasterConfig {
        offer_timeout: args.offer_timeout,
        ping_interval: args.ping_interval,
        agent_unreachable_after: args.agent_unreachable_after,
        agent_lost_timeout: args.agent_timeout,
        kill_grace_period: args.kill_grace_period.min(args.max_kill_grace_period),
        max_kill_grace_period: args.max_kill_grace_period,
        allocation_interval: args.allocation_interval,
        weights: args.weights,
        work_dir: Some(args.work_dir.clone()),
        authorizer: authorizer.clone(),
        authenticator: authenticator.clone(),
        limits,
        max_message_bytes: usize::try_from(args.max_message_size).unwrap_or(usize::MAX),
        ..MasterConfig::default()
    };
    let master = cella_master::master::try_spawn(config)?;
    let control = cella_master::control::listen(&args.work_dir, master.clone())
        .with_context(|| format!("the control socket in {}", args.work_dir.display()))?;
    let mut watched = vec![trust.crl_path().to_path_buf()];
    watched.extend(args.acl.iter().cloned());
    watched.extend(args.credentials.iter().cloned());
    let reloads = {
        let master = master.clone();
        tokio::spawn(cella_proto::reload::watch(
            watched,
            cella_proto::reload::CHECK_EVERY,
            move |why| reload(why, &trust, &authorizer, &authenticator, &master),
        ))
    };
    tracing::info!("cella-master serving on https://{}", args.listen);
    let served = cella_master::serve(listener, Arc::new(tls), master, async {
        let signal = cella_proto::signals::shutdown_signal().await;
        tracing::info!("{signal}: stopping");
    })
    .await;
    reloads.abort();
    control.abort();
    let _ = std::fs::remove_file(args.work_dir.join(cella_master::control::SOCKET));
    served?;
    tracing::info!("cella-master stopped");
    Ok(())
}

/// Re-reads the revocation list, the ACL and the credentials that changed; a file that
/// cannot be used leaves the previous version in force.
fn reload(
    why: Trigger,
    trust: &Trust,
    authorizer: &Authorizer,
    authenticator: &Authenticator,
    master: &cella_master::MasterHandle,
) {
    log(
        why,
        "revocation list",
        revocations(trust.reload(why.forced())),
    );
    let acl = authorizer.reload(why.forced());
    if acl == Ok(true) {
        // The agents authorize their API with it.
        master.send(cella_master::master::Command::PolicyChanged);
    }
    log(why, "ACL", changed(acl));
    log(
        why,
        "credentials",
        changed(authenticator.reload(why.forced())),
    );
}

/// A grace period: `0` (or `0s`: SIGKILL at once), or a duration (`5s`, `1m`).
fn parse_grace(input: &str) -> Result<Duration, String> {
    if matches!(input.trim(), "0" | "0s" | "0ms") {
        return Ok(Duration::ZERO);
    }
    parse_duration(input)
}
