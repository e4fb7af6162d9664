//! `cella usage TASK`: a task's latest figures, its rates over the last two samples,
//! its summary and a short history, from `GET /api/v1/tasks/{id}/usage`.

use cella_containerizer::units::format_bytes;
use cella_proto::api;
use clap::Args;

use super::rates::{Rates, bytes_per_second, percent, sparkline};
use super::tasks::block_on;
use crate::profile::ClusterArgs;

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The task's id.
    task: String,
    /// How much history to show (e.g. 10m, 6h).
    #[arg(long, default_value = "10m", value_parser = cella_proto::time::parse_duration)]
    since: std::time::Duration,
    /// The master's answer as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

/// History columns shown at most.
const WIDTH: usize = 60;

pub fn run(args: UsageArgs) -> i32 {
    block_on(async move {
        let cluster = args.cluster.resolve()?;
        let path = format!(
            "/api/v1/tasks/{}/usage?since={}s",
            args.task,
            args.since.as_secs().max(1)
        );
        let u: api::TaskUsage = cluster.get(&path).await?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&u)?);
        } else {
            outln!("{}", render(&u));
        }
        Ok(0)
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn bytes(v: Option<u64>) -> String {
    v.map_or("-".into(), format_bytes)
}

fn seconds(ns: Option<u64>) -> String {
    #[allow(clippy::cast_precision_loss)]
    ns.map_or("-".into(), |n| format!("{:.2}s", n as f64 / 1e9))
}

fn pressure(p: Option<api::Pressure>) -> String {
    p.map_or("-".into(), |p| {
        let full = p.full_avg10.map_or("-".into(), |f| format!("{f:.2}%"));
        format!("some {:.2}% full {full}", p.some_avg10)
    })
}

/// The text `cella usage` prints.
pub fn render(u: &api::TaskUsage) -> String {
    let mut out = Vec::new();
    let limits = &u.resources;
    out.push(format!(
        "task {}  {} on agent {}  limits: {} cpus, {}",
        u.task_id,
        u.state.name(),
        u.agent_id,
        limits.cpus,
        format_bytes(limits.mem_bytes)
    ));
    let previous = u.history.iter().rev().nth(1);
    if let Some(l) = &u.latest {
        let rates = previous.map(|p| Rates::between(p, l)).unwrap_or_default();
        let of_limit = rates
            .cores
            .filter(|_| limits.cpus > 0.0)
            .map(|c| c / limits.cpus);
        #[allow(clippy::cast_precision_loss)]
        let mem_share = l
            .mem_current_bytes
            .filter(|_| limits.mem_bytes > 0)
            .map(|m| m as f64 / limits.mem_bytes as f64);
        out.push(format!(
            "cpu       {} of a core, {} of its limit; user {} system {}; throttled {} ({} periods, {} of the time)",
            percent(rates.cores),
            percent(of_limit),
            seconds(l.cpu_user_ns),
            seconds(l.cpu_system_ns),
            seconds(l.cpu_throttled_ns),
            opt(l.cpu_nr_throttled),
            percent(rates.throttled),
        ));
        out.push(format!(
            "memory    {} ({} of its limit); anon {} file {} kernel {} swap {}; peak {}; oom kills {}",
            bytes(l.mem_current_bytes),
            percent(mem_share),
            bytes(l.mem_anon_bytes),
            bytes(l.mem_file_bytes),
            bytes(l.mem_kernel_bytes),
            bytes(l.mem_swap_bytes),
            bytes(l.mem_peak_bytes),
            opt(l.oom_kills),
        ));
        out.push(format!(
            "io        read {} ({} ops/s), write {} ({} ops/s); total read {} write {}",
            bytes_per_second(rates.read_bytes),
            rates.read_ops.map_or("-".into(), |r| format!("{r:.0}")),
            bytes_per_second(rates.write_bytes),
            rates.write_ops.map_or("-".into(), |r| format!("{r:.0}")),
            bytes(l.io_read_bytes),
            bytes(l.io_write_bytes),
        ));
        out.push(format!(
            "pids      {}   disk {}",
            opt(l.pids_current),
            bytes(l.disk_used_bytes)
        ));
        out.push(format!(
            "pressure  cpu {}; memory {}; io {}",
            pressure(l.cpu_pressure),
            pressure(l.memory_pressure),
            pressure(l.io_pressure)
        ));
    } else {
        out.push("no usage sample yet".into());
    }
    if u.history.len() >= 2 {
        let step = u.history.len().div_ceil(WIDTH);
        let points: Vec<&api::Usage> = u.history.iter().step_by(step).collect();
        let cpu: Vec<f64> = points
            .windows(2)
            .map(|w| Rates::between(w[0], w[1]).cores.unwrap_or(0.0))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let mem: Vec<f64> = points
            .iter()
            .map(|p| p.mem_current_bytes.unwrap_or(0) as f64)
            .collect();
        out.push(format!("history   {} samples", u.history.len()));
        out.push(format!("  cpu     {}", sparkline(&cpu)));
        out.push(format!("  memory  {}", sparkline(&mem)));
    }
    if let Some(s) = &u.summary {
        out.push(format!(
            "summary   {}: cpu user {} system {} throttled {}; memory peak {} (sampled: anon {} swap {}); pids peak {}; read {} ({} ops) write {} ({} ops); disk peak {}; oom kills {}",
            if s.is_final { "final" } else { "so far" },
            seconds(s.cpu_user_ns),
            seconds(s.cpu_system_ns),
            seconds(s.cpu_throttled_ns),
            bytes(s.mem_peak_bytes),
            bytes(s.mem_anon_peak_sampled_bytes),
            bytes(s.mem_swap_peak_sampled_bytes),
            opt(s.pids_peak_sampled),
            bytes(s.io_read_bytes),
            opt(s.io_read_ops),
            bytes(s.io_write_bytes),
            opt(s.io_write_ops),
            bytes(s.disk_peak_sampled_bytes),
            opt(s.oom_kills),
        ));
    }
    out.join("\n")
}
