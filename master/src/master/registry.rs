//! Persistence of the registry: which records changed since the last write, and
//! writing them to the store in one transaction per loop iteration.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Instant, SystemTime};

use cella_proto::time::unix_ns;

use crate::allocator::{AgentId, FrameworkId};
use crate::metrics::Metrics;
use crate::state::{Agent, Framework, Task, duration_ms};
use crate::store::{AgentRecord, Batch, FrameworkRecord, Store, TaskRecord};

/// The store, if the registry is persisted, and what to write to it next.
pub struct Registry {
    store: Option<Store>,
    changed: Changed,
}

/// Records changed since the last write to the store.
#[derive(Default)]
struct Changed {
    agents: BTreeSet<AgentId>,
    frameworks: BTreeSet<FrameworkId>,
    tasks: HashSet<String>,
    next_offer_id: Option<u64>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.frameworks.is_empty()
            && self.tasks.is_empty()
            && self.next_offer_id.is_none()
    }
}

/// Milliseconds since the Unix epoch, as the store keeps wall-clock times.
/// The rows of the changed records `ids`: each as `record` makes it from the state
/// now, `None` where it is gone.
fn changed_rows<'a, K: ToString + 'a, R>(
    ids: impl IntoIterator<Item = &'a K>,
    record: impl Fn(&K) -> Option<R>,
) -> Vec<(String, Option<R>)> {
    ids.into_iter()
        .map(|id| (id.to_string(), record(id)))
        .collect()
}

fn agent_record(a: &Agent, now_wall: SystemTime) -> AgentRecord {
    AgentRecord {
        node: a.node.clone(),
        hostname: a.hostname.clone(),
        attributes: a.attributes.clone(),
        total: a.total,
        http_endpoint: a.http_endpoint.clone(),
        last_seen_ms: unix_ms(
            now_wall
                .checked_sub(a.last_seen.elapsed())
                .unwrap_or(now_wall),
        ),
        registered_ms: unix_ms(a.registered_at),
    }
}

fn framework_record(f: &Framework) -> FrameworkRecord {
    FrameworkRecord {
        name: f.name.clone(),
        role: f.role.clone(),
        principal: f.principal.clone(),
        failover_timeout_ms: duration_ms(f.failover_timeout),
        suppressed: f.suppressed,
    }
}

fn task_record(t: &Task) -> TaskRecord {
    TaskRecord {
        framework: t.framework.to_string(),
        agent: t.agent.to_string(),
        info: t.info.clone(),
        status: t.status.clone(),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    unix_ns(t) / 1_000_000
}

impl Registry {
    /// `None`: the registry is kept in memory only and nothing is tracked.
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            changed: Changed::default(),
        }
    }

    /// Where the registry is written, for messages.
    pub fn path(&self) -> String {
        self.store
            .as_ref()
            .map(|s| s.path().display().to_string())
            .unwrap_or_default()
    }

    pub fn agent_changed(&mut self, id: &AgentId) {
        if self.store.is_some() {
            self.changed.agents.insert(id.clone());
        }
    }

    pub fn framework_changed(&mut self, id: &FrameworkId) {
        if self.store.is_some() {
            self.changed.frameworks.insert(id.clone());
        }
    }

    pub fn task_changed(&mut self, id: &str) {
        if self.store.is_some() {
            self.changed.tasks.insert(id.to_string());
        }
    }

    /// Offer ids up to `next - 1` were used: a restarted master starts at `next`,
    /// so offer ids are never reused.
    pub fn offer_ids_used_before(&mut self, next: u64) {
        if self.store.is_some() {
            self.changed.next_offer_id = Some(next);
        }
    }

    /// Writes a consistent copy of the registry to `path`, on the blocking pool (a
    /// read transaction: the actor goes on writing meanwhile), and answers `reply`.
    pub fn backup(
        &self,
        path: std::path::PathBuf,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) {
        let Some(store) = &self.store else {
            let _ = reply.send(Err(
                "this master keeps its registry in memory only: there is nothing to back up".into(),
            ));
            return;
        };
        let db = store.database();
        tokio::task::spawn_blocking(move || {
            let _ = reply.send(crate::store::backup(&db, &path).map_err(|e| e.to_string()));
        });
    }

    /// Closes the store (a new master may then open it).
    pub fn close(&mut self) {
        self.store = None;
    }

    /// Writes every changed record as it is now in the maps (absent: deleted), in
    /// one transaction. On a failure the changes stay pending and are retried at the
    /// next call.
    pub fn flush(
        &mut self,
        agents: &BTreeMap<AgentId, Agent>,
        frameworks: &BTreeMap<FrameworkId, Framework>,
        tasks: &HashMap<String, Task>,
        metrics: &Metrics,
    ) {
        let Some(store) = &self.store else { return };
        if self.changed.is_empty() {
            return;
        }
        let now_wall = SystemTime::now();
        let batch = Batch {
            agents: changed_rows(&self.changed.agents, |id| {
                agents.get(id).map(|a| agent_record(a, now_wall))
            }),
            frameworks: changed_rows(&self.changed.frameworks, |id| {
                frameworks.get(id).map(framework_record)
            }),
            tasks: changed_rows(&self.changed.tasks, |id| tasks.get(id).map(task_record)),
            next_offer_id: self.changed.next_offer_id,
        };
        let started = Instant::now();
        match store.commit(&batch) {
            Ok(()) => {
                self.changed = Changed::default();
                metrics
                    .registry_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::trace!(
                    tasks = batch.tasks.len(),
                    elapsed = ?started.elapsed(),
                    "registry written"
                );
            }
            Err(e) => {
                metrics.registry_write_errors.inc();
                tracing::error!("{e}; retrying");
            }
        }
    }
}
