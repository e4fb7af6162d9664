//! `cella logs TASK [--stderr] [-f]`, and following a task's output for `cella run`:
//! the task's sandbox files are read from its agent's HTTP API.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use cella_proto::api;
use clap::Args;
use serde::Deserialize;

use crate::profile::{Cluster, ClusterArgs};

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The task's id.
    task: String,
    /// Show stderr instead of stdout.
    #[arg(long)]
    stderr: bool,
    /// Keep following the output until the task ends.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// The agent's answer for a piece of a sandbox file.
#[derive(Deserialize)]
struct FileChunk {
    data: String,
    /// Where the next read starts.
    next_offset: u64,
}

/// The HTTP endpoint of the agent of `task_id`: from the task's view, or else from the
/// list of agents (which needs `view(state)`).
pub async fn agent_endpoint(
    cluster: &Cluster,
    agent_id: &str,
    task_id: &str,
) -> anyhow::Result<String> {
    if let Ok(task) = cluster
        .get::<api::Task>(&format!("/api/v1/tasks/{task_id}"))
        .await
    {
        if !task.agent_endpoint.is_empty() {
            return Ok(task.agent_endpoint.trim_end_matches('/').to_string());
        }
    }
    let agents: Vec<api::Agent> = cluster.get("/api/v1/agents").await?;
    agents
        .iter()
        .find(|a| a.id == agent_id && !a.http_endpoint.is_empty())
        .map(|a| a.http_endpoint.trim_end_matches('/').to_string())
        .with_context(|| format!("agent {agent_id} is not registered (or has no HTTP endpoint)"))
}

/// Copies new output of a task's stdout and stderr to ours.
pub struct LogFollower {
    endpoint: String,
    task_id: String,
    streams: Vec<(&'static str, u64)>,
}

impl LogFollower {
    pub fn new(endpoint: String, task_id: &str) -> Self {
        Self {
            endpoint,
            task_id: task_id.to_string(),
            streams: vec![("stdout", 0), ("stderr", 0)],
        }
    }

    fn only(endpoint: String, task_id: &str, name: &'static str) -> Self {
        Self {
            endpoint,
            task_id: task_id.to_string(),
            streams: vec![(name, 0)],
        }
    }

    /// Reads what is new; false when nothing was.
    pub async fn poll(&mut self, tls: &rustls::ClientConfig) -> bool {
        let mut any = false;
        for (name, offset) in &mut self.streams {
            let url = format!(
                "{}/api/v1/tasks/{}/files/{name}?offset={offset}&length=1048576",
                self.endpoint, self.task_id
            );
            let Ok(chunk) = cella_proto::tls::https_get_json::<FileChunk>(&url, tls).await else {
                continue;
            };
            if chunk.data.is_empty() {
                continue;
            }
            any = true;
            *offset = chunk.next_offset;
            let bytes = chunk.data.as_bytes();
            let _ = if *name == "stderr" {
                std::io::stderr().write_all(bytes)
            } else {
                let mut out = std::io::stdout();
                out.write_all(bytes).and_then(|()| out.flush())
            };
        }
        any
    }

    /// Reads until there is nothing new.
    pub async fn drain(&mut self, tls: &rustls::ClientConfig) {
        for _ in 0..64 {
            if !self.poll(tls).await {
                break;
            }
        }
    }
}

pub fn run(args: LogsArgs) -> i32 {
    super::tasks::block_on(async move {
        let cluster = args.cluster.resolve()?;
        let task: api::Task = cluster.get(&format!("/api/v1/tasks/{}", args.task)).await?;
        let endpoint = agent_endpoint(&cluster, &task.agent_id, &args.task).await?;
        let name = if args.stderr { "stderr" } else { "stdout" };
        let mut follower = LogFollower::only(endpoint, &args.task, name);
        follower.drain(&cluster.agent_tls).await;
        if args.follow {
            loop {
                let task: api::Task = cluster.get(&format!("/api/v1/tasks/{}", args.task)).await?;
                let ended = task.state.is_terminal();
                follower.drain(&cluster.agent_tls).await;
                if ended {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(0)
    })
}
