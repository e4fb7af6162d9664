//! The master's registry in memory: agents, frameworks, tasks and outstanding offers.
//! Plain data; the logic that changes it is in [`crate::master`], the JSON the API
//! serves of it in `cella_proto::api`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use cella_proto::tls::Identity;
use cella_proto::v1;
use tokio::sync::mpsc::UnboundedSender;

use crate::allocator::{AgentId, Attributes, FrameworkId, Resources};

/// Converts wire resources; negative or non-finite cpus are refused.
pub fn from_wire(r: Option<&v1::Resources>) -> Result<Resources, String> {
    let r = r.cloned().unwrap_or_default();
    Resources::from_cpus(r.cpus, r.mem_bytes, r.disk_bytes).map_err(|e| e.to_string())
}

pub fn to_wire(r: &Resources) -> v1::Resources {
    v1::Resources {
        cpus: r.cpus(),
        mem_bytes: r.mem_bytes,
        disk_bytes: r.disk_bytes,
    }
}

/// Whole milliseconds of `d` (saturating), as the wire and the store count them.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether an agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Connected,
    /// The stream broke or pings went unanswered; lost after the timeout.
    Unreachable {
        since: Instant,
    },
}

pub struct Agent {
    pub id: AgentId,
    /// The node its certificate names (`agent:<node>`): the id stays bound to it.
    pub node: String,
    pub hostname: String,
    pub attributes: Attributes,
    pub total: Resources,
    pub http_endpoint: String,
    pub state: AgentState,
    /// Outbound stream of the current connection, and its number (a disconnect of
    /// an older connection must not affect a newer one).
    pub conn: Option<(u64, UnboundedSender<v1::MasterToAgent>)>,
    pub last_seen: Instant,
    pub registered_at: SystemTime,
    pub tasks: BTreeSet<String>,
}

pub struct Framework {
    pub id: FrameworkId,
    pub name: String,
    pub role: String,
    /// The principal that registered it; only it may subscribe again (fail over).
    pub principal: String,
    /// The identity (with its groups) of the scheduler connected now: its calls are
    /// authorized with it.
    pub caller: Option<Identity>,
    pub failover_timeout: Duration,
    pub conn: Option<(u64, UnboundedSender<v1::Event>)>,
    /// Set while disconnected: removed when it passes.
    pub failover_deadline: Option<Instant>,
    pub suppressed: bool,
    pub tasks: BTreeSet<String>,
}

pub struct Task {
    pub info: v1::TaskInfo,
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Resources,
    pub status: v1::TaskStatus,
    pub usage: Option<v1::TaskUsage>,
    /// The updates passed on to the scheduler and what it has acknowledged of them
    /// (not persisted: after a restart the agents send again what is unacknowledged).
    pub acks: Acknowledgements,
}

/// The uuids of a task's updates the master passed on to its scheduler.
#[derive(Debug, Default, Clone)]
pub struct Acknowledgements {
    /// The newest uuids passed on (the last [`Self::KEPT`]), to tell a duplicate
    /// acknowledgement from one of an update that never existed.
    passed: Vec<String>,
    /// The update passed on and not acknowledged yet (the agent sends a task's
    /// updates one at a time, so there is at most one).
    pub waiting: Option<String>,
}

impl Acknowledgements {
    const KEPT: usize = 16;

    /// An update with `uuid` was passed on to the scheduler.
    pub fn passed_on(&mut self, uuid: &str) {
        if uuid.is_empty() {
            return;
        }
        if !self.passed.iter().any(|u| u == uuid) {
            if self.passed.len() == Self::KEPT {
                self.passed.remove(0);
            }
            self.passed.push(uuid.to_string());
        }
        self.waiting = Some(uuid.to_string());
    }

    /// Whether the master ever passed an update with `uuid` on (`None`: it has passed
    /// nothing on since it started, so it cannot tell).
    pub fn knows(&self, uuid: &str) -> Option<bool> {
        (!self.passed.is_empty()).then(|| self.passed.iter().any(|u| u == uuid))
    }

    /// The scheduler acknowledged `uuid`.
    pub fn acknowledged(&mut self, uuid: &str) {
        if self.waiting.as_deref() == Some(uuid) {
            self.waiting = None;
        }
    }
}

impl Task {
    pub fn state(&self) -> v1::TaskState {
        self.status.state()
    }

    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }
}

/// An offer the master sent and still tracks.
pub struct OutstandingOffer {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Resources,
    pub expires: Instant,
}
