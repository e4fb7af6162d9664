//! `cella-master`: the Cella master daemon, and the backup and restore of its registry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cella_master::authz::Authorizer;
use cella_master::config::{FileConfig, FileError, setting};
use cella_master::task_defaults::TaskDefaults;
use cella_master::usage::Tiers;
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
    /// A TOML file with the same settings as the flags (keys with underscores, e.g.
    /// `agent_timeout = "60s"`; see /etc/cella/master.toml); flags win over the file.
    #[arg(long, value_name = "FILE", env = "CELLA_MASTER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve gRPC and the HTTP API on (TLS only) [default: 127.0.0.1:5050].
    #[arg(long, env = "CELLA_MASTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory with ca.pem, master.pem, master-key.pem and crl.pem (see `cella certs
    /// init`); crl.pem is re-read when it changes [default: /etc/cella/tls].
    #[arg(long, value_name = "DIR", env = "CELLA_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// The ACL file (TOML): once given, everything it does not grant is denied.
    /// Without one every authenticated principal may do everything. Re-read when it
    /// changes or on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CELLA_MASTER_ACL")]
    acl: Option<PathBuf>,
    /// Bearer tokens and passwords for the HTTP API (TOML, mode 0600; see `cella auth`).
    /// Re-read when it changes or on SIGHUP.
    #[arg(long, value_name = "FILE", env = "CELLA_MASTER_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Rescind offers not answered within this [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    offer_timeout: Option<Duration>,
    /// Ping agents (and heartbeat schedulers) this often [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// An agent silent this long is unreachable [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    agent_unreachable_after: Option<Duration>,
    /// An unreachable agent is lost after this; its tasks become LOST (AGENT_LOST)
    /// [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    agent_timeout: Option<Duration>,
    /// A killed task whose kill policy names no grace period gets SIGTERM, then
    /// SIGKILL after this (0s: SIGKILL at once) [default: 5s].
    #[arg(long, value_parser = parse_grace)]
    kill_grace_period: Option<Duration>,
    /// The longest grace period a task or a kill may ask for [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    max_kill_grace_period: Option<Duration>,
    /// Run allocation at least this often [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    allocation_interval: Option<Duration>,
    /// The disk of a task that names none (resources.disk_bytes 0), e.g. 10GiB: the
    /// allocator counts it and the agent enforces it. 0: none, the agent's own
    /// --default-disk applies without the allocator knowing [default: 0].
    #[arg(long, value_name = "SIZE", value_parser = cella_proto::acl::parse_size)]
    default_task_disk: Option<u64>,
    /// The process limit of a task that names none (pids_limit 0). 0: none, the
    /// agent's own --default-pids-limit applies [default: 0].
    #[arg(long, value_name = "N")]
    default_task_pids: Option<u64>,
    /// Each task's usage history: RESOLUTION:SPAN tiers, finest first; older points
    /// are folded into the next tier, beyond the last they are dropped
    /// [default: 1s:10m,10s:6h,1m:24h].
    #[arg(long, value_name = "TIERS", value_parser = Tiers::parse)]
    usage_history: Option<Tiers>,
    /// Where the registry (agents, frameworks, tasks) is persisted, in
    /// `registry.redb`; a restarted master reloads it [default: /var/lib/cella/master].
    #[arg(long, value_name = "DIR", env = "CELLA_MASTER_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// DRF weight of a role, ROLE=WEIGHT (repeatable; default 1). Given once, the
    /// file's role_weights are ignored.
    #[arg(long = "role-weight", value_name = "ROLE=WEIGHT", value_parser = parse_weight)]
    weights: Vec<(String, f64)>,
    /// Open connections at most (lowered to what the descriptor limit allows)
    /// [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections without a client certificate per client address; beyond it the
    /// oldest idle one is closed [default: 128].
    #[arg(long)]
    max_connections_per_address: Option<usize>,
    /// Close connections with no request in flight for this long [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// The largest gRPC message accepted, e.g. 16MiB [default: 16MiB].
    #[arg(long, value_parser = cella_proto::acl::parse_size)]
    max_message_size: Option<u64>,
    /// Where the audit log (finished tasks, kills, denials) is kept
    /// [default: WORK_DIR/audit].
    #[arg(long, value_name = "DIR", env = "CELLA_MASTER_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// An audit log segment past this size is closed and a new one started, e.g.
    /// 64MiB [default: 64MiB].
    #[arg(long, value_parser = cella_proto::acl::parse_size)]
    audit_segment_size: Option<u64>,
    /// Write a signed checkpoint of the audit log's head this often (and at a clean
    /// shutdown) [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    audit_checkpoint_interval: Option<Duration>,
    /// What is logged: "info", "debug", or per module ("info,cella_master=debug");
    /// `$CELLA_LOG` wins. On SIGHUP the `log_level` of the --config file is re-read
    /// [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

/// The master's settings: flags, then the --config file, then the defaults.
struct Settings {
    listen: SocketAddr,
    tls_dir: PathBuf,
    acl: Option<PathBuf>,
    credentials: Option<PathBuf>,
    offer_timeout: Duration,
    ping_interval: Duration,
    agent_unreachable_after: Duration,
    agent_timeout: Duration,
    kill_grace_period: Duration,
    max_kill_grace_period: Duration,
    allocation_interval: Duration,
    task_defaults: TaskDefaults,
    usage_history: Tiers,
    work_dir: PathBuf,
    audit_dir: PathBuf,
    audit_segment_size: u64,
    audit_checkpoint_interval: Duration,
    weights: Vec<(String, f64)>,
    max_connections: usize,
    max_connections_per_address: usize,
    idle_timeout: Duration,
    max_message_size: u64,
    log_level: String,
    /// Re-read on SIGHUP for `log_level`, when no --log-level was given.
    reload_log_level_from: Option<PathBuf>,
}

impl Args {
    fn resolve(self) -> Result<Settings, FileError> {
        let path = self.config.clone();
        let file = match &path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let p = path.as_deref();
        let duration = |s: &String| parse_duration(s);
        let defaults = Limits::default();
        let weights = if self.weights.is_empty() {
            let mut weights = Vec::new();
            for (role, weight) in file.role_weights.clone().unwrap_or_default() {
                weights.push(
                    parse_weight(&format!("{role}={weight}")).map_err(|message| FileError {
                        key: "role_weights".into(),
                        file: p.map(|p| p.display().to_string()).unwrap_or_default(),
                        message,
                    })?,
                );
            }
            weights
        } else {
            self.weights
        };
        let reload_log_level_from = if self.log_level.is_none() {
            path.clone()
        } else {
            None
        };
        // A setting: its flag, else the file's key of the same name parsed with
        // `parse` (an error names the key and the file), else `default`.
        macro_rules! pick {
            ($name:ident, $parse:expr, $default:expr) => {
                setting(
                    self.$name,
                    file.$name.as_ref(),
                    stringify!($name),
                    p,
                    $parse,
                    $default,
                )?
            };
        }
        let secs = |n| move || Duration::from_secs(n);
        let size = |s: &String| cella_proto::acl::parse_size(s);
        let log_level = pick!(
            log_level,
            |s: &String| cella_proto::logging::check_level(s).map(|()| s.clone()),
            || "info".to_string()
        );
        let address = |s: &String| {
            s.parse()
                .map_err(|e| format!("{s:?}: {e}; use ADDRESS:PORT, e.g. 0.0.0.0:5050"))
        };
        Ok(Settings {
            listen: pick!(listen, address, || SocketAddr::from(([127, 0, 0, 1], 5050))),
            tls_dir: self
                .tls_dir
                .or(file.tls_dir)
                .unwrap_or_else(|| PathBuf::from("/etc/cella/tls")),
            acl: self.acl.or(file.acl),
            credentials: self.credentials.or(file.credentials),
            offer_timeout: pick!(offer_timeout, duration, secs(30)),
            ping_interval: pick!(ping_interval, duration, secs(5)),
            agent_unreachable_after: pick!(agent_unreachable_after, duration, secs(15)),
            agent_timeout: pick!(agent_timeout, duration, secs(60)),
            kill_grace_period: pick!(kill_grace_period, |s: &String| parse_grace(s), secs(5)),
            max_kill_grace_period: pick!(max_kill_grace_period, duration, secs(300)),
            allocation_interval: pick!(allocation_interval, duration, secs(1)),
            task_defaults: TaskDefaults {
                disk_bytes: pick!(default_task_disk, size, || 0),
                pids_limit: self
                    .default_task_pids
                    .or(file.default_task_pids)
                    .unwrap_or(0),
            },
            audit_segment_size: pick!(audit_segment_size, size, || 64 << 20),
            audit_checkpoint_interval: pick!(audit_checkpoint_interval, duration, secs(60)),
            audit_dir: self.audit_dir.or(file.audit_dir).unwrap_or_else(|| {
                self.work_dir
                    .clone()
                    .or(file.work_dir.clone())
                    .unwrap_or_else(|| PathBuf::from("/var/lib/cella/master"))
                    .join("audit")
            }),
            usage_history: pick!(usage_history, |s: &String| Tiers::parse(s), Tiers::default),
            work_dir: self
                .work_dir
                .or(file.work_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/cella/master")),
            weights,
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(defaults.max_anonymous_per_address),
            idle_timeout: pick!(idle_timeout, duration, secs(60)),
            max_message_size: pick!(max_message_size, size, || 16 << 20),
            reload_log_level_from,
            log_level,
        })
    }
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

/// The exit status for a configuration that cannot be used (the unit does not
/// restart the master then: RestartPreventExitStatus=2).
const CONFIG_EXIT_CODE: i32 = 2;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.command.is_some() {
        cella_proto::logging::init("info");
    }
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
        None => {
            let settings = match cli.args.resolve() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cella-master: {e}");
                    std::process::exit(CONFIG_EXIT_CODE);
                }
            };
            // To the journal with structured fields under systemd, to stderr otherwise.
            cella_proto::logging::init(&settings.log_level);
            let result = serve(settings).await;
            if let Err(e) = &result {
                cella_proto::service::stopping(&format!("failed: {e:#}"));
            }
            result
        }
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

async fn serve(args: Settings) -> anyhow::Result<()> {
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
    let audit = cella_master::audit::AuditLog::open(&cella_master::audit::AuditConfig {
        dir: args.audit_dir.clone(),
        segment_bytes: args.audit_segment_size,
        checkpoint_interval: args.audit_checkpoint_interval,
        signer: Some((layout.master_cert.clone(), layout.master_key.clone())),
        // Every ended task the master tracks can have its end resent.
        ends_kept: cella_master::audit::ends::ends_to_keep(
            MasterConfig::default().completed_tasks_kept,
        ),
    })
    .map_err(anyhow::Error::msg)?;
    let config = MasterConfig {
        offer_timeout: args.offer_timeout,
        ping_interval: args.ping_interval,
        agent_unreachable_after: args.agent_unreachable_after,
        agent_lost_timeout: args.agent_timeout,
        kill_grace_period: args.kill_grace_period.min(args.max_kill_grace_period),
        max_kill_grace_period: args.max_kill_grace_period,
        allocation_interval: args.allocation_interval,
        usage_history: args.usage_history,
        task_defaults: args.task_defaults,
        weights: args.weights,
        work_dir: Some(args.work_dir.clone()),
        authorizer: authorizer.clone(),
        authenticator: authenticator.clone(),
        limits,
        max_message_bytes: usize::try_from(args.max_message_size).unwrap_or(usize::MAX),
        audit: Some(audit),
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
        let config = args.reload_log_level_from.clone();
        tokio::spawn(cella_proto::reload::watch(
            watched,
            cella_proto::reload::CHECK_EVERY,
            move |why| {
                reload(why, &trust, &authorizer, &authenticator, &master);
                if why == Trigger::Hangup {
                    reload_log_level(why, config.as_deref());
                }
            },
        ))
    };
    // systemd's watchdog is pinged when the master's actor, which does its work,
    // answers a request: a stuck actor stops the pings and systemd restarts it.
    let watchdog = cella_proto::service::watchdog_period().map(|period| {
        let master = master.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if master.state().await.is_some() {
                    cella_proto::service::watchdog();
                }
            }
        })
    });
    tracing::info!("cella-master serving on https://{}", args.listen);
    // The registry is loaded (try_spawn) and the port is bound: clients are served
    // from here on.
    cella_proto::service::ready(&format!("serving on https://{}", args.listen));
    let served = cella_master::serve(listener, Arc::new(tls), master, async {
        let signal = cella_proto::signals::shutdown_signal().await;
        cella_proto::service::stopping("stopping: closing the streams and the registry");
        tracing::info!("{signal}: stopping");
    })
    .await;
    reloads.abort();
    control.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = std::fs::remove_file(args.work_dir.join(cella_master::control::SOCKET));
    served?;
    tracing::info!("cella-master stopped");
    Ok(())
}

/// On SIGHUP: the `log_level` of the configuration file, re-read.
fn reload_log_level(why: Trigger, config: Option<&Path>) {
    let Some(path) = config else {
        tracing::info!(
            "SIGHUP: re-read the revocation list, the ACL and the credentials files in use"
        );
        return;
    };
    let file_level = FileConfig::load(path)
        .map(|file| file.log_level)
        .map_err(|e| e.to_string());
    cella_proto::reload::log_level(why, file_level);
    tracing::info!(
        "SIGHUP: re-read the revocation list, the ACL and the credentials files in use, and \
         the log level of {}",
        path.display()
    );
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
