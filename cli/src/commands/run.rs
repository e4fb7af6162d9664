//! `cella run`: a small scheduler (like `mesos-execute`). It subscribes, waits for
//! an offer that fits, launches one task, prints its state changes on stderr,
//! streams its stdout and stderr, and exits with its exit code.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cella_containerizer::StartFailure;
use cella_containerizer::units::{MilliCpus, format_bytes};
use cella_proto::api;
use cella_proto::v1::{self, call, event, scheduler_service_client::SchedulerServiceClient};
use clap::Args;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::logs::{LogFollower, agent_endpoint};
use crate::profile::{Cluster, ClusterArgs};

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: the task's (128+N if a signal N ended it); 125 if Cella \
could not run it: no registered agent has the resources it asks for, no offer came within \
--wait, or the task ended ERROR or LOST."
)]
pub struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// CPUs for the task (decimal).
    #[arg(long, default_value = "0.1", value_parser = super::exec::parse_cpus_arg)]
    cpus: MilliCpus,
    /// Memory limit (e.g. 64MiB).
    #[arg(long, default_value = "128MiB", value_parser = super::exec::parse_size_arg)]
    mem: u64,
    /// Disk limit for the task's sandbox.
    #[arg(long, value_parser = super::exec::parse_size_arg)]
    disk: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_parser = super::exec::parse_pids_arg)]
    pids: Option<u64>,
    /// The role to get offers for (DRF across roles).
    #[arg(long, default_value = "*")]
    role: String,
    /// A name for the task (its id gets a unique suffix).
    #[arg(long)]
    name: Option<String>,
    /// Run as NAME, UID or UID:GID on the agent.
    #[arg(long)]
    user: Option<String>,
    /// A root filesystem directory on the agent.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    /// Run from a container image: HOST[:PORT]/REPO[:TAG][@DIGEST], a short name
    /// (against the agent's default registry), or oci:DIR / an archive on the agent.
    /// The agent pulls it; its entrypoint, command, environment, user and working
    /// directory apply; a COMMAND replaces the image's command.
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// With --image: keep the image's root filesystem read-only.
    #[arg(long, requires = "image")]
    read_only: bool,
    /// Pass a host device into the task's private /dev, e.g. /dev/fuse (repeatable).
    /// The master's ACL must grant it (use_device) and the agent allow it
    /// (allow_devices).
    #[arg(long = "device", value_name = "/dev/NAME")]
    devices: Vec<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// A secret environment variable: NAME takes its value from this command's own
    /// environment. The task gets it; the cluster keeps it out of its APIs, logs and
    /// stored state (repeatable).
    #[arg(long = "secret-env", value_name = "NAME")]
    secret_env: Vec<String>,
    /// Network: host or none.
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    net: String,
    /// Print the task id once it is RUNNING and exit 0; the task keeps running.
    #[arg(long, short = 'd')]
    detach: bool,
    /// When the task is killed (Ctrl-C, `cella kill`): SIGTERM, then SIGKILL after
    /// this (e.g. 10s; 0 for SIGKILL at once). Default: the cluster's
    /// (`cella-master --kill-grace-period`).
    #[arg(long, value_name = "DURATION", value_parser = super::tasks::parse_grace)]
    grace_period: Option<Duration>,
    /// Give up (exit 125) if no offer fits the task within this (e.g. 30s); without
    /// it, wait as long as some agent could fit the task once resources free up.
    #[arg(long, value_name = "DURATION", value_parser = cella_proto::time::parse_duration)]
    wait: Option<Duration>,
    /// The command and its arguments (with --image: instead of the image's command).
    #[arg(required_unless_present = "image", last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Exit status when Cella could not run the task (ERROR, LOST, launch failures).
const EXIT_NOT_RUN: i32 = StartFailure::Setup.code() as i32;
/// How long a failover timeout a detached task's framework gets (it never comes back).
const DETACHED_FAILOVER: f64 = 7.0 * 24.0 * 3600.0;

pub fn run(args: RunArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cella: starting the runtime: {e}");
            return EXIT_NOT_RUN;
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cella: {e:#}");
            EXIT_NOT_RUN
        }
    }
}

/// The secrets `--secret-env` names, with their values from this process's environment.
fn secrets(names: &[String]) -> anyhow::Result<Vec<v1::SecretEnv>> {
    names
        .iter()
        .map(|name| {
            let value = std::env::var(name).with_context(|| {
                format!("--secret-env {name}: set {name} in this command's environment")
            })?;
            Ok(v1::SecretEnv {
                name: name.clone(),
                value,
            })
        })
        .collect()
}

/// Why no registered agent could ever run a task that needs `need`, if none could.
/// `None` too when the caller may not list the agents: then only waiting tells.
async fn no_agent_fits(cluster: &Cluster, need: &v1::Resources) -> Option<String> {
    let agents: Vec<api::Agent> = cluster.get("/api/v1/agents").await.ok()?;
    let fits = |a: &api::Agent| {
        a.total.cpus >= need.cpus
            && a.total.mem_bytes >= need.mem_bytes
            && a.total.disk_bytes >= need.disk_bytes
    };
    if agents.iter().any(fits) {
        return None;
    }
    let largest = agents
        .iter()
        .map(|a| {
            format!(
                "{}: {} cpus, {} memory, {} disk",
                a.hostname,
                a.total.cpus,
                format_bytes(a.total.mem_bytes),
                format_bytes(a.total.disk_bytes)
            )
        })
        .collect::<Vec<_>>();
    Some(format!(
        "no agent of the cluster has {} cpus, {} memory and {} disk ({}); ask for less \
         (--cpus, --mem, --disk) or add an agent that has that much",
        need.cpus,
        format_bytes(need.mem_bytes),
        format_bytes(need.disk_bytes),
        if largest.is_empty() {
            "no agent is registered".to_string()
        } else {
            format!("the agents have {}", largest.join("; "))
        }
    ))
}

async fn run_async(args: RunArgs) -> anyhow::Result<i32> {
    let secrets = secrets(&args.secret_env)?;
    let cluster = args.cluster.resolve()?;
    let need = v1::Resources {
        cpus: args.cpus.as_cpus(),
        mem_bytes: args.mem,
        disk_bytes: args.disk.unwrap_or(0),
    };
    if let Some(why) = no_agent_fits(&cluster, &need).await {
        eprintln!("cella: {why}");
        return Ok(EXIT_NOT_RUN);
    }
    let channel = cella_proto::tls::grpc_channel(&cluster.master, &cluster.tls)
        .await
        .with_context(|| format!("connecting to the master at {}", cluster.master))?;
    let mut client = SchedulerServiceClient::new(channel);
    let (calls, rx) = mpsc::unbounded_channel::<v1::Call>();
    let send = |c: call::Call| {
        let _ = calls.send(v1::Call { call: Some(c) });
    };
    send(call::Call::Subscribe(call::Subscribe {
        framework: Some(v1::FrameworkInfo {
            framework_id: String::new(),
            name: "cella-run".into(),
            role: args.role.clone(),
            failover_timeout_secs: if args.detach { DETACHED_FAILOVER } else { 10.0 },
        }),
    }));
    let mut events = client
        .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .context("subscribing to the master")?
        .into_inner();

    let base = args.name.clone().unwrap_or_else(|| "run".into());
    let task_id = format!(
        "{base}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let task = v1::TaskInfo {
        task_id: task_id.clone(),
        name: base,
        command: args.command.clone(),
        env: args.env.clone(),
        resources: Some(need),
        pids_limit: args.pids.unwrap_or(0),
        net: if args.net == "none" {
            v1::NetMode::None as i32
        } else {
            v1::NetMode::Host as i32
        },
        rootfs: args
            .rootfs
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        volumes: Vec::new(),
        hostname: String::new(),
        secrets,
        kill_policy: args.grace_period.map(|g| v1::KillPolicy {
            grace_period_secs: Some(g.as_secs_f64()),
        }),
        image: args.image.as_ref().map(|reference| v1::ContainerImage {
            reference: reference.clone(),
            read_only: args.read_only,
        }),
        devices: args.devices.clone(),
    };

    let started = Instant::now();
    let mut launched = false;
    let mut waiting_told = false;
    let mut largest_seen: Option<v1::Resources> = None;
    let mut follower: Option<LogFollower> = None;
    let mut interrupted = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut log_tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else {
                    anyhow::bail!("the master closed the connection");
                };
                let event = event.context("the master's stream failed")?;
                match event.event {
                    Some(event::Event::Subscribed(s)) => tracing::debug!("subscribed as {}", s.framework_id),
                    Some(event::Event::Offers(offers)) => {
                        let mut decline = Vec::new();
                        for offer in offers.offers {
                            let r = offer.resources.unwrap_or_default();
                            if !launched && fits(&r, &need) {
                                launched = true;
                                eprintln!("cella: launching {task_id} on {} ({})", offer.hostname, offer.agent_id);
                                send(call::Call::Accept(call::Accept {
                                    offer_ids: vec![offer.offer_id],
                                    tasks: vec![task.clone()],
                                    refuse_seconds: None,
                                }));
                            } else {
                                if largest_seen.as_ref().is_none_or(|l| r.mem_bytes > l.mem_bytes) {
                                    largest_seen = Some(r);
                                }
                                decline.push(offer.offer_id);
                            }
                        }
                        if !decline.is_empty() {
                            send(call::Call::Decline(call::Decline { offer_ids: decline, refuse_seconds: Some(1.0) }));
                        }
                        if launched {
                            send(call::Call::Suppress(call::Suppress {}));
                        }
                    }
                    Some(event::Event::Rescind(_)) | Some(event::Event::Heartbeat(_)) => {}
                    Some(event::Event::Error(e)) => eprintln!("cella: the master says: {}", e.message),
                    Some(event::Event::Update(update)) => {
                        let Some(status) = update.status else { continue };
                        if status.task_id != task_id {
                            continue;
                        }
                        if !status.uuid.is_empty() {
                            send(call::Call::Acknowledge(call::Acknowledge {
                                agent_id: status.agent_id.clone(),
                                task_id: status.task_id.clone(),
                                uuid: status.uuid.clone(),
                            }));
                        }
                        let state = status.state();
                        let terminal = state.is_terminal();
                        if !terminal {
                            print_state(&task_id, &status);
                        }
                        if state == v1::TaskState::TaskRunning {
                            if args.detach {
                                outln!("{task_id}");
                                // Let the acknowledgement reach the master before leaving.
                                drop(calls);
                                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                                    while events.next().await.is_some() {}
                                })
                                .await;
                                return Ok(0);
                            }
                            if follower.is_none() {
                                if let Ok(endpoint) = agent_endpoint(&cluster, &status.agent_id, &task_id).await {
                                    follower = Some(LogFollower::new(endpoint, &task_id));
                                }
                            }
                        }
                        if terminal {
                            if follower.is_none() && !status.agent_id.is_empty() {
                                if let Ok(endpoint) = agent_endpoint(&cluster, &status.agent_id, &task_id).await {
                                    follower = Some(LogFollower::new(endpoint, &task_id));
                                }
                            }
                            if let Some(f) = follower.as_mut() {
                                f.drain(&cluster.agent_tls).await;
                            }
                            // After the output, so the reason is the last thing said.
                            print_state(&task_id, &status);
                            send(call::Call::Teardown(call::Teardown {}));
                            // Let the acknowledgement and teardown reach the master.
                            drop(calls);
                            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                                while events.next().await.is_some() {}
                            })
                            .await;
                            return Ok(exit_code(&status, interrupted));
                        }
                    }
                    None => {}
                }
            }
            _ = log_tick.tick() => {
                if let Some(f) = follower.as_mut() {
                    f.poll(&cluster.agent_tls).await;
                }
                if let Some(limit) = args.wait.filter(|l| !launched && started.elapsed() > *l) {
                    eprintln!("cella: no offer fit the task within --wait {limit:?}; giving up");
                    send(call::Call::Teardown(call::Teardown {}));
                    return Ok(EXIT_NOT_RUN);
                }
                if !launched && !waiting_told && started.elapsed() > Duration::from_secs(3) {
                    waiting_told = true;
                    eprintln!("cella: waiting for an offer with {} cpus, {} memory, {} disk{}",
                        need.cpus, format_bytes(need.mem_bytes), format_bytes(need.disk_bytes),
                        largest_seen.as_ref().map(|l| format!("; the offers so far are too small (largest: {} cpus, {} memory, {} disk)",
                            l.cpus, format_bytes(l.mem_bytes), format_bytes(l.disk_bytes))).unwrap_or_else(|| "; no agent has offered resources yet (is an agent connected? see `cella agents`)".into()));
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                if launched {
                    eprintln!("cella: interrupted: stopping {task_id} (SIGTERM, then SIGKILL after its grace period)");
                    send(call::Call::Kill(call::Kill { task_id: task_id.clone(), kill_policy: None }));
                } else {
                    send(call::Call::Teardown(call::Teardown {}));
                    return Ok(130);
                }
            }
        }
    }
}

fn print_state(task_id: &str, status: &v1::TaskStatus) {
    let message = if status.message.is_empty() {
        String::new()
    } else {
        format!(": {}", status.message)
    };
    eprintln!("cella: {task_id} {}{message}", status.state().name());
}

fn fits(offer: &v1::Resources, need: &v1::Resources) -> bool {
    offer.cpus + 1e-9 >= need.cpus
        && offer.mem_bytes >= need.mem_bytes
        && offer.disk_bytes >= need.disk_bytes
}

/// Why a task that never reached its command failed, as the reason says it.
fn start_failure(reason: v1::Reason) -> Option<StartFailure> {
    match reason {
        v1::Reason::CommandNotFound => Some(StartFailure::NotFound),
        v1::Reason::CommandNotExecutable => Some(StartFailure::NotExecutable),
        _ => None,
    }
}

/// The task's exit code, 128+N for a signal, and 125–127 ([`StartFailure`]) when it
/// never ran.
fn exit_code(status: &v1::TaskStatus, interrupted: bool) -> i32 {
    if let Some(code) = status.exit_code {
        return code;
    }
    if let Some(signal) = status.signal {
        return 128 + signal;
    }
    match (status.state(), start_failure(status.reason())) {
        (v1::TaskState::TaskFinished, _) => 0,
        (_, Some(failure)) => i32::from(failure.code()),
        (v1::TaskState::TaskKilled, None) if interrupted => 130,
        (v1::TaskState::TaskKilled, None) => 137,
        _ => EXIT_NOT_RUN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: v1::TaskState, reason: v1::Reason) -> v1::TaskStatus {
        v1::TaskStatus {
            state: state as i32,
            reason: reason as i32,
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes() {
        use v1::{Reason, TaskState};
        let exited = v1::TaskStatus {
            exit_code: Some(3),
            ..status(TaskState::TaskFailed, Reason::CommandExited)
        };
        assert_eq!(exit_code(&exited, false), 3);
        let signalled = v1::TaskStatus {
            signal: Some(9),
            ..status(TaskState::TaskFailed, Reason::MemoryLimit)
        };
        assert_eq!(exit_code(&signalled, false), 137);
        let cases = [
            (TaskState::TaskFinished, Reason::CommandExited, false, 0),
            (TaskState::TaskFailed, Reason::CommandNotFound, false, 127),
            (
                TaskState::TaskFailed,
                Reason::CommandNotExecutable,
                false,
                126,
            ),
            (TaskState::TaskKilled, Reason::KilledByRequest, true, 130),
            (TaskState::TaskKilled, Reason::KilledByRequest, false, 137),
            (TaskState::TaskError, Reason::InvalidTask, false, 125),
            (TaskState::TaskLost, Reason::AgentLost, false, 125),
            (TaskState::TaskFailed, Reason::LaunchFailed, false, 125),
        ];
        for (state, reason, interrupted, code) in cases {
            assert_eq!(
                exit_code(&status(state, reason), interrupted),
                code,
                "{state:?} {reason:?} interrupted={interrupted}"
            );
        }
    }
}
