//! Usage sampling: every `--usage-interval` each running task is sampled through the
//! containerizer (which also enforces disk limits), the latest sample is kept with
//! the task (for `GET /api/v1/containers`) and one report of them all is published
//! for the connection to send to the master. The conversion of the containerizer's
//! `Usage` to the wire's `TaskUsage` is here, once.

use std::sync::Arc;

use cella_containerizer::Usage;
use cella_proto::time::now_ns;
use cella_proto::v1::{self, agent_message::UsageReport};
use tokio::sync::watch;

use crate::periodic::Periodic;
use crate::state::{RunningSlot, Shared, lock};

/// The wire form of a task's measured usage, stamped now.
pub fn usage_to_wire(task_id: &str, u: &Usage) -> v1::TaskUsage {
    v1::TaskUsage {
        task_id: task_id.to_string(),
        timestamp_ns: now_ns(),
        cpu_user_ns: u.cpu_user_ns,
        cpu_system_ns: u.cpu_system_ns,
        cpu_throttled_ns: u.cpu_throttled_ns,
        mem_current_bytes: u.mem_current_bytes,
        mem_peak_bytes: u.mem_peak_bytes,
        mem_anon_bytes: u.mem_anon_bytes,
        mem_file_bytes: u.mem_file_bytes,
        mem_kernel_bytes: u.mem_kernel_bytes,
        oom_kills: u.oom_kills,
        pids_current: u.pids_current,
        io_read_bytes: u.io_read_bytes,
        io_write_bytes: u.io_write_bytes,
        disk_used_bytes: u.disk_used_bytes,
        mem_swap_bytes: u.mem_swap_bytes,
        cpu_nr_throttled: u.cpu_nr_throttled,
        ..Default::default()
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
        if slots.is_empty() {
            continue;
        }
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
                }
            }
        }
        reports.send_replace(Some(UsageReport {
            tasks: samples,
            ..Default::default()
        }));
    }
}
