//! Prometheus metrics of the agent (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::task_metrics::TaskSeries;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    /// Tasks the agent holds, by their latest state (set when scraped).
    pub tasks: Family<StateLabel, Gauge>,
    /// Launches by outcome: running, failed, error.
    pub launches: Family<OutcomeLabel, Counter>,
    /// From the Launch message to the task's exec (or its failure).
    pub launch_seconds: Histogram,
    /// Status updates written but not yet acknowledged.
    pub updates_pending: Gauge,
    pub updates_sent: Counter,
    pub updates_acknowledged: Counter,
    pub master_connected: Gauge,
    pub registrations: Counter,
    /// Checkpoint records that could not be recovered (`--strict=false`).
    pub recovery_errors: Counter,
    /// Launches refused by the agent's own allowlist, by reason (root, volume, rootfs).
    pub launches_refused: Family<ReasonLabel, Counter>,
    /// The running tasks' latest samples (`cella_task_*`).
    pub task_series: TaskSeries,
}

impl Metrics {
    /// The agent's metrics, with the API's denials (`denials`, from its access policy).
    pub fn new(denials: &Family<crate::policy::access::PermissionLabel, Counter>) -> Self {
        // The agent's own series are `cella_agent_*`, the tasks' `cella_task_*`.
        let mut root = Registry::default();
        let task_series = TaskSeries::default();
        root.register_collector(Box::new(task_series.clone()));
        let registry = root.sub_registry_with_prefix("cella_agent");
        let m = Self {
            registry: Registry::default(),
            tasks: Family::default(),
            launches: Family::default(),
            // 100 µs … ~30 s
            launch_seconds: Histogram::new(exponential_buckets(1e-4, 2.5, 14)),
            updates_pending: Gauge::default(),
            updates_sent: Counter::default(),
            updates_acknowledged: Counter::default(),
            master_connected: Gauge::default(),
            registrations: Counter::default(),
            recovery_errors: Counter::default(),
            launches_refused: Family::default(),
            task_series,
        };
        registry.register(
            "launches_refused",
            "Launches refused by the agent's own allowlist, by reason",
            m.launches_refused.clone(),
        );
        registry.register(
            "authz_denied",
            "Requests to the agent's API denied, by the permission that was missing",
            denials.clone(),
        );
        registry.register("tasks", "Tasks on this agent by state", m.tasks.clone());
        registry.register(
            "task_launches",
            "Task launches by outcome (running, failed, error)",
            m.launches.clone(),
        );
        registry.register(
            "launch_duration_seconds",
            "Time from the launch request to the task's exec",
            m.launch_seconds.clone(),
        );
        registry.register(
            "status_updates_pending",
            "Status updates checkpointed and not yet acknowledged",
            m.updates_pending.clone(),
        );
        registry.register(
            "status_updates_sent",
            "Status updates sent to the master, re-sends included",
            m.updates_sent.clone(),
        );
        registry.register(
            "status_updates_acknowledged",
            "Status updates acknowledged by schedulers",
            m.updates_acknowledged.clone(),
        );
        registry.register(
            "master_connected",
            "1 while the agent is registered with the master",
            m.master_connected.clone(),
        );
        registry.register(
            "registrations",
            "Registrations with the master (first and re-registrations)",
            m.registrations.clone(),
        );
        registry.register(
            "recovery_errors",
            "Checkpoint records that could not be recovered at start (--strict=false)",
            m.recovery_errors.clone(),
        );
        Self {
            registry: root,
            ..m
        }
    }

    /// Sets the per-state task gauges (every state is listed, zeros included).
    pub fn set_tasks(&self, counts: &[(&str, i64)]) {
        for (state, n) in counts {
            self.tasks
                .get_or_create(&StateLabel {
                    state: (*state).to_string(),
                })
                .set(*n);
        }
    }

    pub fn launched(&self, outcome: &str, seconds: f64) {
        self.launches
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        self.launch_seconds.observe(seconds);
    }

    pub fn launch_refused(&self, reason: &str) {
        self.launches_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
