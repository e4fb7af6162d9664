//! Prometheus metrics of the master (`GET /metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use cella_proto::auth::Authenticator;
use cella_proto::tls::ConnectionStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use cella_proto::v1::TaskState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The security figures kept elsewhere (the server's connection table, the HTTP
/// authenticator), read at every scrape.
struct SecurityCollector {
    connections: Arc<ConnectionStats>,
    auth: Arc<Authenticator>,
}

impl std::fmt::Debug for SecurityCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecurityCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(ConnectionStats::get(value));
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for SecurityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.connections;
        let open =
            ConstGauge::new(i64::try_from(ConnectionStats::get(&s.open)).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "connections_open",
            "Open connections to the master's port",
            None,
            open.metric_type(),
        )?)?;
        counter(
            &mut encoder,
            "connections_refused",
            "Connections refused at a connection cap",
            &s.refused,
        )?;
        counter(
            &mut encoder,
            "connections_evicted",
            "Idle anonymous connections closed to make room for newer ones",
            &s.evicted,
        )?;
        counter(
            &mut encoder,
            "connections_idle_closed",
            "Connections closed after the idle timeout",
            &s.idle_closed,
        )?;
        counter(
            &mut encoder,
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            &s.handshake_failed,
        )?;
        counter(
            &mut encoder,
            "auth_token_failures",
            "HTTP requests with an invalid bearer token",
            &self.auth.stats.token_failures,
        )?;
        counter(
            &mut encoder,
            "auth_password_failures",
            "HTTP requests with invalid basic credentials",
            &self.auth.stats.password_failures,
        )?;
        Ok(())
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    agents: Family<StateLabel, Gauge>,
    frameworks: Family<StateLabel, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    offers_outstanding: Gauge,
    pub offers_sent: Counter,
    pub offers_rescinded: Counter,
    pub tasks_launched: Counter,
    pub tasks_invalid: Counter,
    pub status_updates: Counter,
    pub agents_lost: Counter,
    pub allocation_seconds: Histogram,
    /// Write transactions of the registry store, and their duration.
    pub registry_write_seconds: Histogram,
    pub registry_write_errors: Counter,
    /// What agents said that was refused, by reason (see `authz::agents`).
    pub agent_refusals: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// The master's metrics, with the authorizer's denials, the connection counters of
    /// its port and the authenticator's failures.
    pub fn new(
        authz: &crate::authz::Authorizer,
        auth: Arc<Authenticator>,
        connections: Arc<ConnectionStats>,
    ) -> Self {
        let mut registry = Registry::with_prefix("cella_master");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            agents: Family::default(),
            frameworks: Family::default(),
            tasks: Family::default(),
            offers_outstanding: Gauge::default(),
            offers_sent: Counter::default(),
            offers_rescinded: Counter::default(),
            tasks_launched: Counter::default(),
            tasks_invalid: Counter::default(),
            status_updates: Counter::default(),
            agents_lost: Counter::default(),
            // 10 µs … ~5 s
            allocation_seconds: Histogram::new(exponential_buckets(1e-5, 2.5, 15)),
            registry_write_seconds: Histogram::new(exponential_buckets(1e-5, 2.5, 15)),
            registry_write_errors: Counter::default(),
            agent_refusals: Family::default(),
        };
        registry.register(
            "authz_denied",
            "Requests denied by the ACL, by the permission that was missing",
            authz.denials().clone(),
        );
        registry.register(
            "agent_refusals",
            "Registrations, status updates and reports of agents refused, by reason",
            m.agent_refusals.clone(),
        );
        registry.register_collector(Box::new(SecurityCollector { connections, auth }));
        registry.register("agents", "Registered agents by state", m.agents.clone());
        registry.register(
            "frameworks",
            "Frameworks by state (connected, disconnected)",
            m.frameworks.clone(),
        );
        registry.register(
            "tasks",
            "Tasks known to the master by state",
            m.tasks.clone(),
        );
        registry.register(
            "offers_outstanding",
            "Offers sent and not yet answered",
            m.offers_outstanding.clone(),
        );
        registry.register(
            "offers_sent",
            "Offers sent to frameworks",
            m.offers_sent.clone(),
        );
        registry.register(
            "offers_rescinded",
            "Offers rescinded",
            m.offers_rescinded.clone(),
        );
        registry.register(
            "tasks_launched",
            "Tasks sent to agents",
            m.tasks_launched.clone(),
        );
        registry.register(
            "tasks_invalid",
            "Tasks refused with INVALID_TASK",
            m.tasks_invalid.clone(),
        );
        registry.register(
            "status_updates",
            "Status updates received from agents",
            m.status_updates.clone(),
        );
        registry.register("agents_lost", "Agents marked lost", m.agents_lost.clone());
        registry.register(
            "allocation_cycle_seconds",
            "Duration of one allocation cycle",
            m.allocation_seconds.clone(),
        );
        registry.register(
            "registry_write_seconds",
            "Duration of one write transaction of the persisted registry",
            m.registry_write_seconds.clone(),
        );
        registry.register(
            "registry_write_errors",
            "Failed writes of the persisted registry (retried)",
            m.registry_write_errors.clone(),
        );
        *m.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        m
    }

    fn set_family(family: &Family<StateLabel, Gauge>, values: &[(&str, usize)]) {
        for (state, n) in values {
            family
                .get_or_create(&StateLabel {
                    state: (*state).to_string(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Counts something an agent said that was refused.
    pub fn agent_refused(&self, reason: &str) {
        self.agent_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn set_agents(&self, connected: usize, unreachable: usize) {
        Self::set_family(
            &self.agents,
            &[("connected", connected), ("unreachable", unreachable)],
        );
    }

    pub fn set_frameworks(&self, connected: usize, total: usize) {
        Self::set_family(
            &self.frameworks,
            &[
                ("connected", connected),
                ("disconnected", total - connected),
            ],
        );
    }

    pub fn set_offers(&self, n: usize) {
        self.offers_outstanding
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Tasks by state; every state is exported, 0 when no task is in it.
    pub fn set_tasks(&self, by_state: &BTreeMap<TaskState, usize>) {
        for state in TaskState::all().filter(|s| *s != TaskState::Unspecified) {
            Self::set_family(
                &self.tasks,
                &[(state.name(), by_state.get(&state).copied().unwrap_or(0))],
            );
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
