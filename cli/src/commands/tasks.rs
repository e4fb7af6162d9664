//! `cella tasks`, `cella agents`, `cella kill`: the operator API for people
//! (tables) and scripts (`--json`).

use std::time::{SystemTime, UNIX_EPOCH};

use cella_containerizer::units::format_bytes;
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

const TERMINAL: [&str; 5] = ["FINISHED", "FAILED", "KILLED", "LOST", "ERROR"];

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn u(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_u64()
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_f64()
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
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn tasks(args: TasksArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let tasks: Vec<Value> = cluster.get("/api/v1/tasks").await?;
        let tasks: Vec<Value> = tasks
            .into_iter()
            .filter(|t| args.all || !TERMINAL.contains(&s(t, "state").as_str()))
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&tasks)?);
            return Ok(0);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let age = u(t, &["updated_ns"]).map_or("-".into(), |ns| {
                    let secs = now.saturating_sub(u128::from(ns)) / 1_000_000_000;
                    format!("{secs}s")
                });
                let cpu = match (
                    u(t, &["usage", "cpu_user_ns"]),
                    u(t, &["usage", "cpu_system_ns"]),
                ) {
                    (Some(a), Some(b)) => format!("{:.2}s", (a + b) as f64 / 1e9),
                    _ => "-".into(),
                };
                let command =
                    t.get("command")
                        .and_then(Value::as_array)
                        .map_or(String::new(), |c| {
                            c.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(" ")
                        });
                vec![
                    s(t, "id"),
                    s(t, "state"),
                    if s(t, "reason").is_empty() {
                        "-".into()
                    } else {
                        s(t, "reason")
                    },
                    f(t, &["resources", "cpus"]).map_or("-".into(), |c| format!("{c}")),
                    u(t, &["resources", "mem_bytes"]).map_or("-".into(), format_bytes),
                    cpu,
                    u(t, &["usage", "mem_current_bytes"]).map_or("-".into(), format_bytes),
                    age,
                    command,
                ]
            })
            .collect();
        print_table(
            &[
                "ID", "STATE", "REASON", "CPUS", "MEM", "CPU USED", "MEM USED", "UPDATED",
                "COMMAND",
            ],
            &rows,
        );
        Ok(0)
    })
}

pub fn agents(args: AgentsArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let agents: Vec<Value> = cluster.get("/api/v1/agents").await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&agents)?);
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                let res = |k: &str| {
                    let total = f(a, &["total", k]).unwrap_or(0.0);
                    let alloc = f(a, &["allocated", k]).unwrap_or(0.0);
                    if k == "cpus" {
                        format!("{alloc}/{total}")
                    } else {
                        // Byte counts are below 2^53 in practice; shown rounded.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        let (alloc, total) = (alloc as u64, total as u64);
                        format!("{}/{}", format_bytes(alloc), format_bytes(total))
                    }
                };
                vec![
                    s(a, "id"),
                    s(a, "hostname"),
                    s(a, "state"),
                    res("cpus"),
                    res("mem_bytes"),
                    res("disk_bytes"),
                    s(a, "tasks"),
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
        let _: Value = cluster
            .post(&format!("/api/v1/tasks/{}/kill", args.task))
            .await?;
        eprintln!("cella: kill sent to {}", args.task);
        Ok(0)
    })
}
