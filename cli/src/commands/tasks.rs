//! `cella tasks`, `cella agents`, `cella kill`: the operator API for people
//! (tables) and scripts (`--json`).

use cella_containerizer::units::format_bytes;
use cella_proto::api;
use cella_proto::time::now_ns;
use clap::Args;
use serde_json::Value;

use crate::profile::ClusterArgs;

#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Include tasks that ended.
    #[arg(long, short = 'a')]
    all: bool,
    /// JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The task's id.
    task: String,
    /// SIGTERM, then SIGKILL after this (e.g. 10s; 0 for SIGKILL at once), instead of
    /// the task's own grace period.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    grace_period: Option<std::time::Duration>,
}

/// A grace period: `0`, or a duration (`500ms`, `10s`, `1m`).
pub fn parse_grace(input: &str) -> Result<std::time::Duration, String> {
    if input.trim().trim_end_matches('s').trim_end_matches('m') == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    cella_proto::time::parse_duration(input)
}

pub fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f).unwrap_or_else(|e| {
            eprintln!("cella: {e:#}");
            1
        }),
        Err(e) => {
            eprintln!("cella: starting the runtime: {e}");
            1
        }
    }
}

/// Prints rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn tasks(args: TasksArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let tasks: Vec<api::Task> = cluster.get("/api/v1/tasks").await?;
        let tasks: Vec<api::Task> = tasks
            .into_iter()
            .filter(|t| args.all || !t.state.is_terminal())
            .collect();
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&tasks)?);
            return Ok(0);
        }
        let now = now_ns();
        let mut rows: Vec<Vec<String>> = tasks.iter().map(|t| task_row(t, now)).collect();
        let mut header = vec![
            "ID", "STATE", "REASON", "CPUS", "MEM", "CPU USED", "MEM USED", "UPDATED", "COMMAND",
        ];
        // Shown only when a listed task runs from an image: its digest's first 12
        // hex digits, as `docker images` shortens them.
        if tasks.iter().any(|t| !t.image_digest.is_empty()) {
            header.insert(8, "IMAGE");
            for (row, t) in rows.iter_mut().zip(&tasks) {
                row.insert(8, short_digest(&t.image_digest));
            }
        }
        print_table(&header, &rows);
        Ok(0)
    })
}

fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", &hex[..hex.len().min(12)]),
        None if digest.is_empty() => "-".into(),
        None => digest.to_string(),
    }
}

/// A task's line in `cella tasks`; `now` in nanoseconds since the Unix epoch.
fn task_row(t: &api::Task, now: u64) -> Vec<String> {
    let age = format!("{}s", now.saturating_sub(t.updated_ns) / 1_000_000_000);
    let usage = t.usage.clone().unwrap_or_default();
    let cpu = match (usage.cpu_user_ns, usage.cpu_system_ns) {
        (Some(user), Some(system)) => format!("{:.2}s", user.saturating_add(system) as f64 / 1e9),
        _ => "-".into(),
    };
    let reason = match t.reason.name() {
        "" => "-",
        name => name,
    };
    vec![
        t.id.clone(),
        t.state.name().to_string(),
        reason.to_string(),
        format!("{}", t.resources.cpus),
        format_bytes(t.resources.mem_bytes),
        cpu,
        usage.mem_current_bytes.map_or("-".into(), format_bytes),
        age,
        t.command.join(" "),
    ]
}

pub fn agents(args: AgentsArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let agents: Vec<api::Agent> = cluster.get("/api/v1/agents").await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&agents)?);
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                let bytes = |allocated: u64, total: u64| {
                    format!("{}/{}", format_bytes(allocated), format_bytes(total))
                };
                vec![
                    a.id.clone(),
                    a.hostname.clone(),
                    a.state.name().to_string(),
                    format!("{}/{}", a.allocated.cpus, a.total.cpus),
                    bytes(a.allocated.mem_bytes, a.total.mem_bytes),
                    bytes(a.allocated.disk_bytes, a.total.disk_bytes),
                    a.tasks.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "ID",
                "HOSTNAME",
                "STATE",
                "CPUS (ALLOC/TOTAL)",
                "MEM",
                "DISK",
                "TASKS",
            ],
            &rows,
        );
        Ok(0)
    })
}

pub fn kill(args: KillArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let query = args
            .grace_period
            .map(|g| format!("?grace_period_secs={}", g.as_secs_f64()))
            .unwrap_or_default();
        let _: Value = cluster
            .post(&format!("/api/v1/tasks/{}/kill{query}", args.task))
            .await?;
        eprintln!(
            "cella: kill sent to {} (SIGTERM, then SIGKILL after the grace period)",
            args.task
        );
        Ok(0)
    })
}
