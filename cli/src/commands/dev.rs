//! `cella dev`: a master and an agent in one process, for trying Cella on one
//! machine. It creates a development CA and certificates on first start (a master,
//! an agent for node `localhost` and a user `local`), binds loopback only, and writes
//! the client profile so that `cella run` in another terminal needs no flags. It is
//! permissive and says so: no ACL (every certificate of its CA may do everything),
//! tasks run as root unless they name a user, any volume and rootfs. Ctrl-C stops both
//! and kills their tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cella_agent::policy::TaskPolicy;
use cella_agent::{Agent, AgentConfig};
use clap::Args;

use crate::profile::{Profile, profile_path, write_profile};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the development cluster keeps its certificates, checkpoint and sandboxes.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The master's address (loopback).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// The agent's HTTP API address (loopback).
    #[arg(long, default_value = "127.0.0.1:5051")]
    agent_listen: SocketAddr,
    /// Resources the agent offers instead of what it detects, e.g. "cpus:2;mem:4GiB".
    #[arg(long, value_name = "SPEC")]
    resources: Option<String>,
    /// Where task cgroups go (default: <own cgroup>/cella).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// Registries for `cella run --image`. Without --insecure-registry, a registry on
    /// localhost:5000 (127.0.0.1:5000) is spoken to over plain HTTP.
    #[command(flatten)]
    images: cella_agent::config::ImageArgs,
}

/// Registries a development cluster reaches over plain HTTP unless told otherwise:
/// a registry started on this machine for trying images.
const DEV_INSECURE_REGISTRIES: [&str; 2] = ["localhost:5000", "127.0.0.1:5000"];

/// A certificate directory made by an older `cella dev` (one shared agent
/// certificate, no revocation list) is moved aside, so that a new one is made.
fn set_aside_older_certificates(tls_dir: &std::path::Path) -> anyhow::Result<()> {
    let layout = cella_proto::tls::Layout::new(tls_dir);
    if !layout.agent_cert.exists() {
        return Ok(());
    }
    let is_agent = cella_proto::tls::load_certs(&layout.agent_cert)
        .ok()
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| cella_proto::tls::Identity::from_cert_der(c))
        })
        .is_some_and(|i| i.node().is_some());
    if is_agent && layout.crl.exists() {
        return Ok(());
    }
    let secs = cella_proto::time::now_secs();
    let aside = tls_dir.with_file_name(format!("tls.older-{secs}"));
    std::fs::rename(tls_dir, &aside)
        .with_context(|| format!("moving {} aside", tls_dir.display()))?;
    eprintln!(
        "cella dev: {} held certificates of an older layout (a shared agent certificate); \
         moved to {} and made new ones",
        tls_dir.display(),
        aside.display()
    );
    Ok(())
}

fn default_work_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/cella/dev")
}

pub fn run(args: DevArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cella: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(dev(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella dev: {e:#}");
            1
        }
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    for addr in [args.listen, args.agent_listen] {
        if !addr.ip().is_loopback() {
            anyhow::bail!("cella dev binds loopback only; {addr} is not a loopback address");
        }
    }
    let work_dir = args.work_dir.clone().unwrap_or_else(default_work_dir);
    // Traversable (not listable) by other users: a task that runs as one reaches its
    // sandbox; what is inside is private.
    cella_proto::perms::ensure_dir(&work_dir, 0o711)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let tls_dir = work_dir.join("tls");
    set_aside_older_certificates(&tls_dir)?;
    let layout =
        cella_proto::tls::init_or_load_dir(&tls_dir, &cella_proto::tls::default_master_sans())
            .with_context(|| format!("development certificates in {}", tls_dir.display()))?;
    let server_tls =
        cella_proto::tls::server_config(&layout.ca_cert, &layout.master_cert, &layout.master_key)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (is another cella dev or master running?)",
                args.listen
            )
        })?;

    let (stop_master, master_stopped) = tokio::sync::oneshot::channel::<()>();
    let master = tokio::spawn(cella_master::run(
        listener,
        Arc::new(server_tls),
        cella_master::MasterConfig {
            // The registry survives a restart of `cella dev` on the same directory.
            work_dir: Some(work_dir.join("master")),
            ..cella_master::MasterConfig::default()
        },
        async {
            let _ = master_stopped.await;
        },
    ));

    let mut config = AgentConfig {
        master: format!("https://{}", args.listen),
        tls_dir: tls_dir.clone(),
        work_dir: work_dir.join("agent"),
        runtime_dir: work_dir.join("run"),
        http_listen: args.agent_listen,
        cgroup_root: args.cgroup_root.clone(),
        kill_tasks_on_exit: true,
        tasks: TaskPolicy::permissive(),
        ..AgentConfig::default()
    };
    if let Some(spec) = &args.resources {
        config.resources = cella_agent::config::parse_resources(spec, false)
            .map_err(|e| anyhow::anyhow!("--resources: {e}"))?;
    }
    config.images = args
        .images
        .resolve(&Default::default(), None)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    if args.images.insecure_registries.is_empty() {
        config.images.registries.insecure_registries =
            DEV_INSECURE_REGISTRIES.map(str::to_owned).to_vec();
    }
    let agent = Agent::start(config).await.context("starting the agent")?;

    let profile = profile_path();
    write_profile(
        &profile,
        &Profile {
            master: format!("https://{}", args.listen),
            tls_dir: tls_dir.clone(),
        },
    )?;

    // One write for the whole banner: the agent's and master's log lines, written
    // from other threads, cannot land in the middle of it, and whoever reads it sees
    // all of it or nothing.
    let mut banner = String::new();
    let mut line = |text: String| {
        banner.push_str(&text);
        banner.push('\n');
    };
    line("cella dev: a master and an agent are running on this machine".into());
    line(format!("  master      https://{}", args.listen));
    line(format!(
        "  agent       https://{} (its tasks' sandboxes: {})",
        agent.http_addr(),
        work_dir.join("agent/sandboxes").display()
    ));
    line(format!("  state       {}", work_dir.display()));
    let recovered = agent.running_tasks();
    if recovered > 0 {
        line(format!(
            "  recovered   {recovered} running task{} of the previous run (cella tasks lists them)",
            if recovered == 1 { "" } else { "s" }
        ));
    }
    line(format!("  certificates {}", tls_dir.display()));
    line(
        "  access      permissive: no ACL (every certificate of this CA may do everything); \
         tasks run as root unless they name a --user; any volume or rootfs"
            .into(),
    );
    line(format!(
        "  profile     {} (cella run, tasks, agents, logs and kill read it)",
        profile.display()
    ));
    line("try, in another terminal:  cella run -- echo hello".into());
    line("Ctrl-C stops both and kills their tasks.".into());
    eprint!("{banner}");

    let stopped_by_master = tokio::select! {
        _ = cella_proto::signals::shutdown_signal() => None,
        why = agent.stopped_by_master() => Some(why),
    };
    if let Some(why) = stopped_by_master {
        eprintln!("cella dev: the agent was stopped by the master: {why}");
    }
    eprintln!("cella dev: stopping; killing tasks");
    agent.shutdown(true).await.context("stopping the agent")?;
    let _ = stop_master.send(());
    master
        .await
        .context("the master task")?
        .context("the master")?;
    eprintln!("cella dev: stopped");
    Ok(())
}
