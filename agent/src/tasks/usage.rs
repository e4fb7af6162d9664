//! Usage sampling: every `--usage-interval` each running task is sampled through the
//! containerizer (which also enforces disk limits), the latest sample is kept with
//! the task (for `GET /api/v1/containers`) and one report of them all is published
//! for the connection to send to the master. Samples are stamped and put in the
//! wire's `TaskUsage` here (the figures convert in [`cella_proto::usage`]).

use std::sync::Arc;

use cella_containerizer::usage::Pressure;
use cella_containerizer::{Termination, Usage};
use cella_proto::time::now_ns;
use cella_proto::v1::{self, agent_message::UsageReport};
use tokio::sync::watch;

use crate::periodic::Periodic;
use crate::state::{RunningSlot, Shared, lock};
use crate::task_metrics::TaskSample;

/// The wire form of a task's measured usage, stamped now.
pub fn usage_to_wire(task_id: &str, u: &Usage) -> v1::TaskUsage {
    u.to_wire(task_id, now_ns())
}

/// What a task used over its life, from its last sample (taken after it ended,
/// before its cgroups were removed: the CPU, I/O and OOM counters are final) and the
/// largest figures sampled while it ran.
pub fn summary_to_wire(t: &Termination) -> v1::TaskSummary {
    let (u, p) = (&t.usage, &t.peaks);
    v1::TaskSummary {
        started_ns: t.started_ns,
        ended_ns: t.ended_ns,
        cpu_user_ns: u.cpu_user_ns,
        cpu_system_ns: u.cpu_system_ns,
        cpu_throttled_ns: u.cpu_throttled_ns,
        // The kernel's peak; where it keeps none (v2 before 5.19), the sampled one.
        mem_peak_bytes: u.mem_peak_bytes.or(p.mem_peak_bytes),
        mem_anon_peak_sampled_bytes: p.mem_anon_bytes,
        mem_file_peak_sampled_bytes: p.mem_file_bytes,
        mem_kernel_peak_sampled_bytes: p.mem_kernel_bytes,
        mem_swap_peak_sampled_bytes: p.mem_swap_bytes,
        oom_kills: u.oom_kills,
        pids_peak_sampled: p.pids_peak,
        io_read_bytes: u.io_read_bytes,
        io_write_bytes: u.io_write_bytes,
        io_read_ops: u.io_read_ops,
        io_write_ops: u.io_write_ops,
        disk_peak_sampled_bytes: p.disk_peak_bytes,
    }
}

/// Test only: the file whose appearance hangs the usage loop (see [`usage_loop`]).
pub const TEST_HANG_ENV: &str = "CELLA_AGENT_TEST_HANG_WORK_LOOP";

/// Samples every running task each `--usage-interval` and publishes the report on
/// `reports` (the connection sends the latest one while registered), until `stop`.
///
/// This is the agent's work loop: each round pings systemd's watchdog
/// ([`cella_proto::service::watchdog`]), so a stuck loop gets the agent restarted;
/// under a watchdog it comes round at least every third of its interval.
///
/// For tests of that watchdog only: when `$CELLA_AGENT_TEST_HANG_WORK_LOOP` names a
/// file and the file appears, the loop removes it and hangs for good.
pub async fn usage_loop(
    shared: Arc<Shared>,
    reports: watch::Sender<Option<UsageReport>>,
    stop: watch::Receiver<bool>,
) {
    let period = cella_proto::service::watchdog_period()
        .map_or(shared.config.usage_interval, |w| {
            w.min(shared.config.usage_interval)
        });
    let hang_trigger = std::env::var_os(TEST_HANG_ENV).map(std::path::PathBuf::from);
    let mut timer = Periodic::new(period, stop);
    while timer.next().await {
        if let Some(trigger) = &hang_trigger
            && std::fs::remove_file(trigger).is_ok()
        {
            tracing::warn!(
                "{} appeared: the work loop hangs now (a test of the watchdog)",
                trigger.display()
            );
            std::future::pending::<()>().await;
        }
        cella_proto::service::watchdog();
        shared.update_task_gauges();
        let slots: Vec<(String, RunningSlot)> = lock(&shared.tasks)
            .iter()
            .filter_map(|(id, t)| t.running.clone().map(|s| (id.clone(), s)))
            .collect();
        let mut series = Vec::with_capacity(slots.len());
        let c = shared.containerizer.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(slots.len());
            for (id, slot) in slots {
                if let Some(running) = lock(&slot).as_mut() {
                    let usage = c.sample(running);
                    out.push(usage_to_wire(&id, &usage));
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        {
            let mut tasks = lock(&shared.tasks);
            for u in &samples {
                if let Some(t) = tasks.get_mut(&u.task_id) {
                    t.usage = Some(u.clone());
                    if t.running.is_some() {
                        series.push(TaskSample {
                            framework: t.framework_id.clone(),
                            role: t.role.clone(),
                            usage: u.clone(),
                        });
                    }
                }
            }
        }
        shared.metrics.task_series.replace(series);
        let node = node_usage(u32::try_from(samples.len()).unwrap_or(u32::MAX));
        reports.send_replace(Some(UsageReport {
            tasks: samples,
            node: Some(Box::new(node)),
            ..Default::default()
        }));
    }
}

/// The node's totals: CPU time of all CPUs (/proc/stat), memory (/proc/meminfo) and
/// pressure (/proc/pressure/*, absent without PSI). A figure that cannot be read is
/// unset.
pub fn node_usage(tasks_running: u32) -> v1::NodeUsage {
    use procfs::{Current, CurrentSI};
    let ns_per_tick = 1_000_000_000 / procfs::ticks_per_second().max(1);
    let cpu = procfs::KernelStats::current().ok().map(|k| k.total);
    let mem = procfs::Meminfo::current().ok();
    let pressure = |name: &str| {
        std::fs::read_to_string(format!("/proc/pressure/{name}"))
            .ok()
            .and_then(|text| Pressure::parse(&text))
    };
    v1::NodeUsage {
        timestamp_ns: now_ns(),
        cpu_user_ns: cpu
            .as_ref()
            .map(|c| c.user.saturating_add(c.nice).saturating_mul(ns_per_tick)),
        cpu_system_ns: cpu.as_ref().map(|c| c.system.saturating_mul(ns_per_tick)),
        mem_total_bytes: mem.as_ref().map(|m| m.mem_total),
        mem_available_bytes: mem.as_ref().and_then(|m| m.mem_available),
        tasks_running,
        cpu_pressure: pressure("cpu"),
        memory_pressure: pressure("memory"),
        io_pressure: pressure("io"),
    }
}
