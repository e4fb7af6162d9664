//! The master's registry: agents, frameworks and tasks, and the JSON views the
//! operator API serves. Plain data; the logic that changes it is in [`crate::master`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cella_proto::v1;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::allocator::{AgentId, Attributes, FrameworkId, Resources};

/// Nanoseconds since the Unix epoch, for status timestamps.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

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

pub fn is_terminal(state: v1::TaskState) -> bool {
    state.is_terminal()
}

/// The name people and the API use for a state (`RUNNING`, `FAILED`…).
pub fn state_name(state: v1::TaskState) -> &'static str {
    state.name()
}

pub fn reason_name(reason: v1::Reason) -> &'static str {
    reason.name()
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
    pub principal: String,
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
}

impl Task {
    pub fn state(&self) -> v1::TaskState {
        self.status.state()
    }
}

/// An offer the master sent and still tracks.
pub struct OutstandingOffer {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Resources,
    pub expires: Instant,
}

// ------------------------------------------------------------ JSON views

#[derive(Serialize, Clone, Copy, Default)]
pub struct ResourcesJson {
    pub cpus: f64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

impl From<&Resources> for ResourcesJson {
    fn from(r: &Resources) -> Self {
        Self {
            cpus: r.cpus(),
            mem_bytes: r.mem_bytes,
            disk_bytes: r.disk_bytes,
        }
    }
}

#[derive(Serialize, Clone)]
pub struct AgentJson {
    pub id: String,
    pub hostname: String,
    pub state: &'static str,
    pub attributes: BTreeMap<String, String>,
    pub http_endpoint: String,
    pub total: ResourcesJson,
    pub allocated: ResourcesJson,
    pub used: UsedJson,
    pub tasks: usize,
}

/// What the agent's tasks really use, summed from their latest usage samples.
#[derive(Serialize, Clone, Default)]
pub struct UsedJson {
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

#[derive(Serialize, Clone)]
pub struct FrameworkJson {
    pub id: String,
    pub name: String,
    pub role: String,
    pub principal: String,
    pub connected: bool,
    pub suppressed: bool,
    pub tasks: usize,
}

#[derive(Serialize, Clone)]
pub struct TaskJson {
    pub id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    pub state: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub command: Vec<String>,
    pub resources: ResourcesJson,
    pub usage: Option<UsageJson>,
    pub updated_ns: u64,
}

#[derive(Serialize, Clone)]
pub struct UsageJson {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub mem_current_bytes: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
}

impl From<&v1::TaskUsage> for UsageJson {
    fn from(u: &v1::TaskUsage) -> Self {
        Self {
            cpu_user_ns: u.cpu_user_ns,
            cpu_system_ns: u.cpu_system_ns,
            mem_current_bytes: u.mem_current_bytes,
            mem_peak_bytes: u.mem_peak_bytes,
            mem_anon_bytes: u.mem_anon_bytes,
            mem_file_bytes: u.mem_file_bytes,
            disk_used_bytes: u.disk_used_bytes,
        }
    }
}

impl From<&Task> for TaskJson {
    fn from(t: &Task) -> Self {
        Self {
            id: t.info.task_id.clone(),
            name: t.info.name.clone(),
            framework_id: t.framework.to_string(),
            agent_id: t.agent.to_string(),
            state: state_name(t.state()),
            reason: reason_name(t.status.reason()),
            message: t.status.message.clone(),
            exit_code: t.status.exit_code,
            signal: t.status.signal,
            command: t.info.command.clone(),
            resources: ResourcesJson::from(&t.resources),
            usage: t.usage.as_ref().map(UsageJson::from),
            updated_ns: t.status.timestamp_ns,
        }
    }
}

#[derive(Serialize, Clone)]
pub struct StateJson {
    pub version: &'static str,
    pub agents: Vec<AgentJson>,
    pub frameworks: Vec<FrameworkJson>,
    pub tasks: Vec<TaskJson>,
}
