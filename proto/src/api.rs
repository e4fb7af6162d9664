//! The JSON of the master's operator API (`GET /api/v1/state`, `/agents`,
//! `/frameworks`, `/tasks`, `/tasks/{id}`): one set of types the master serializes and
//! the CLI (and anyone else in Rust) deserializes. `docs/api.md` documents the fields.
//!
//! States and reasons travel by name (`"RUNNING"`, `"MEMORY_LIMIT"`), resources as
//! cpus (decimal) and bytes, times in nanoseconds since the Unix epoch. A figure the
//! agent's kernel does not offer is `null`, never 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::usage::Usage as Figures;
use crate::v1;

mod usage;
pub use crate::usage::Pressure;
pub use usage::{NodeUsage, Summary, TaskUsage};

/// `GET /api/v1/state`: everything the master knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The master's version.
    pub version: String,
    pub agents: Vec<Agent>,
    pub frameworks: Vec<Framework>,
    /// Sorted by id.
    pub tasks: Vec<Task>,
}

/// One agent (`GET /api/v1/agents` lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    /// The node its certificate names (`agent:<node>`).
    #[serde(default)]
    pub node: String,
    pub hostname: String,
    pub state: AgentState,
    pub attributes: BTreeMap<String, String>,
    /// The agent's HTTP API (task output, containers), e.g. `https://10.0.0.5:5051`.
    pub http_endpoint: String,
    pub total: v1::Resources,
    /// What its live tasks hold.
    pub allocated: v1::Resources,
    pub used: Used,
    /// How many live tasks it runs.
    pub tasks: usize,
    /// The node's totals from the agent's latest usage report.
    #[serde(default)]
    pub node_usage: Option<NodeUsage>,
}

/// Whether the master hears from an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentState {
    Connected,
    /// Its stream broke or it stopped answering pings; its tasks are lost when it
    /// does not come back within the agent timeout.
    Unreachable,
}

impl AgentState {
    /// The name the API uses: `CONNECTED`, `UNREACHABLE`.
    pub fn name(self) -> &'static str {
        match self {
            AgentState::Connected => "CONNECTED",
            AgentState::Unreachable => "UNREACHABLE",
        }
    }
}

/// What an agent's live tasks really use, summed from their latest usage samples
/// (a figure a task's sample lacks counts as 0 here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

impl Used {
    /// Adds one task's latest sample.
    pub fn add(&mut self, u: &v1::TaskUsage) {
        let add = |sum: &mut u64, figure: Option<u64>| {
            *sum = sum.saturating_add(figure.unwrap_or(0));
        };
        add(&mut self.cpu_user_ns, u.cpu_user_ns);
        add(&mut self.cpu_system_ns, u.cpu_system_ns);
        add(&mut self.mem_bytes, u.mem_current_bytes);
        add(&mut self.disk_bytes, u.disk_used_bytes);
    }
}

/// One framework (`GET /api/v1/frameworks` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Framework {
    pub id: String,
    pub name: String,
    pub role: String,
    /// The principal that registered it (`user:<name>`); only it may subscribe to it
    /// again.
    pub principal: String,
    /// Whether its scheduler is subscribed now (otherwise it waits for failover).
    pub connected: bool,
    /// Whether it asked for no offers (SUPPRESS).
    pub suppressed: bool,
    /// How many live tasks it has.
    pub tasks: usize,
}

/// One task (`GET /api/v1/tasks`, `GET /api/v1/tasks/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    /// `STAGING`, `STARTING`, `RUNNING`, `FINISHED`, `FAILED`, `KILLED`, `LOST`, `ERROR`.
    #[serde(with = "by_name")]
    pub state: v1::TaskState,
    /// Why it is in that state (`MEMORY_LIMIT`…), `""` when there is nothing to say.
    #[serde(with = "by_name")]
    pub reason: v1::Reason,
    /// What happened and what to do about it, for people.
    pub message: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub command: Vec<String>,
    /// The names of its secret environment variables (never their values).
    #[serde(default)]
    pub secrets: Vec<String>,
    pub resources: v1::Resources,
    /// Its agent's HTTP API, where its sandbox (output) can be read; empty when the
    /// agent is gone.
    #[serde(default)]
    pub agent_endpoint: String,
    /// The latest sample from its agent, if one arrived (`null` too when the caller
    /// may not see usage).
    pub usage: Option<Usage>,
    /// When its status last changed.
    pub updated_ns: u64,
    /// The manifest digest (`sha256:…`) its image resolved to on the agent; empty for
    /// a task without an image and before the image is resolved.
    #[serde(default)]
    pub image_digest: String,
}

/// A task's measured usage: every figure of the agent's latest sample
/// ([`v1::TaskUsage`]), `null` when the agent's kernel does not offer it, and when
/// the sample was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(flatten)]
    pub figures: Figures,
    /// When the agent took the sample.
    #[serde(default)]
    pub timestamp_ns: u64,
}

impl From<&v1::TaskUsage> for Usage {
    fn from(u: &v1::TaskUsage) -> Self {
        Self {
            figures: Figures::from(u),
            timestamp_ns: u.timestamp_ns,
        }
    }
}

/// The figures read as fields of the sample (`usage.cpu_user_ns`), as in its JSON.
impl std::ops::Deref for Usage {
    type Target = Figures;
    fn deref(&self) -> &Figures {
        &self.figures
    }
}

/// The body of every error answer: `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}

/// What travels by name in the API: task states and reasons.
trait Named: Sized + Copy {
    /// What it is, for errors (`task state`).
    const KIND: &'static str;
    fn name(self) -> &'static str;
    fn from_name(name: &str) -> Option<Self>;
}

impl Named for v1::TaskState {
    const KIND: &'static str = "task state";
    fn name(self) -> &'static str {
        v1::TaskState::name(self)
    }
    fn from_name(name: &str) -> Option<Self> {
        v1::TaskState::from_name(name)
    }
}

impl Named for v1::Reason {
    const KIND: &'static str = "reason";
    fn name(self) -> &'static str {
        v1::Reason::name(self)
    }
    fn from_name(name: &str) -> Option<Self> {
        v1::Reason::from_name(name)
    }
}

/// Serde of a [`Named`] value as its name (`#[serde(with = "by_name")]`).
mod by_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Named;

    pub fn serialize<T: Named, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.name())
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown {} {name:?}: this program is older than the master; upgrade it",
                T::KIND
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            id: "t1".into(),
            name: "web".into(),
            framework_id: "fw-1".into(),
            agent_id: "agent-1".into(),
            state: v1::TaskState::TaskFailed,
            reason: v1::Reason::MemoryLimit,
            message: "memory limit of 64 MiB reached".into(),
            exit_code: None,
            signal: Some(9),
            command: vec!["sh".into(), "-c".into(), "x".into()],
            secrets: vec!["DB_PASSWORD".into()],
            resources: v1::Resources {
                cpus: 0.5,
                mem_bytes: 64 << 20,
                disk_bytes: 0,
            },
            agent_endpoint: "https://10.0.0.5:5051".into(),
            usage: Some(Usage {
                figures: Figures {
                    cpu_user_ns: Some(5),
                    mem_peak_bytes: Some(64 << 20),
                    oom_kills: Some(1),
                    ..Figures::default()
                },
                timestamp_ns: 7,
            }),
            updated_ns: 1_700_000_000_000_000_000,
            image_digest: String::new(),
        }
    }

    #[test]
    fn states_and_reasons_travel_by_name() {
        let json = serde_json::to_value(task()).unwrap();
        assert_eq!(json["state"], "FAILED");
        assert_eq!(json["reason"], "MEMORY_LIMIT");
        assert_eq!(json["resources"]["cpus"], 0.5);
        assert_eq!(json["usage"]["mem_current_bytes"], serde_json::Value::Null);
        let unspecified = Task {
            reason: v1::Reason::Unspecified,
            ..task()
        };
        assert_eq!(serde_json::to_value(unspecified).unwrap()["reason"], "");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, task());
    }

    #[test]
    fn unknown_names_are_refused_with_a_hint() {
        let mut json = serde_json::to_value(task()).unwrap();
        json["state"] = "PAUSED".into();
        let e = serde_json::from_value::<Task>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown task state \"PAUSED\""), "{e}");
    }

    #[test]
    fn agent_states_travel_by_name() {
        for state in [AgentState::Connected, AgentState::Unreachable] {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.name());
            assert_eq!(serde_json::from_value::<AgentState>(json).unwrap(), state);
        }
        assert_eq!(AgentState::Unreachable.name(), "UNREACHABLE");
    }

    #[test]
    fn usage_json_keeps_its_fields_in_order() {
        // The figures are flattened from `usage::Usage`; the node-only ones (pids peak,
        // pids limit hits) never appear, the timestamp comes last.
        let expected = concat!(
            r#"{"cpu_user_ns":1,"cpu_system_ns":null,"mem_current_bytes":null,"#,
            r#""mem_peak_bytes":null,"mem_anon_bytes":null,"mem_file_bytes":null,"#,
            r#""disk_used_bytes":null,"cpu_throttled_ns":null,"mem_kernel_bytes":null,"#,
            r#""oom_kills":null,"pids_current":null,"io_read_bytes":null,"#,
            r#""io_write_bytes":null,"mem_swap_bytes":null,"cpu_nr_throttled":null,"#,
            r#""io_read_ops":null,"io_write_ops":null,"cpu_pressure":null,"#,
            r#""memory_pressure":null,"io_pressure":null,"timestamp_ns":7}"#
        );
        let usage = Usage {
            figures: Figures {
                cpu_user_ns: Some(1),
                ..Figures::default()
            },
            timestamp_ns: 7,
        };
        assert_eq!(serde_json::to_string(&usage).unwrap(), expected);
        assert_eq!(serde_json::from_str::<Usage>(expected).unwrap(), usage);
    }

    #[test]
    fn usage_keeps_every_figure_of_the_sample() {
        let sample = v1::TaskUsage {
            task_id: "t1".into(),
            timestamp_ns: 42,
            cpu_user_ns: Some(1),
            cpu_system_ns: Some(2),
            cpu_throttled_ns: Some(3),
            mem_current_bytes: Some(4),
            mem_peak_bytes: Some(5),
            mem_anon_bytes: Some(6),
            mem_file_bytes: Some(7),
            mem_kernel_bytes: Some(8),
            oom_kills: Some(9),
            pids_current: Some(10),
            io_read_bytes: Some(11),
            io_write_bytes: Some(12),
            disk_used_bytes: Some(13),
            mem_swap_bytes: Some(14),
            cpu_nr_throttled: Some(15),
            io_read_ops: Some(16),
            io_write_ops: Some(17),
            cpu_pressure: Some(v1::Pressure {
                some_avg10: 1.5,
                some_total_us: 18,
                ..Default::default()
            }),
            memory_pressure: Some(v1::Pressure {
                some_avg60: 2.5,
                full_avg60: Some(0.5),
                full_total_us: Some(19),
                ..Default::default()
            }),
            io_pressure: None,
        };
        let usage = Usage::from(&sample);
        let json = serde_json::to_value(usage).unwrap();
        let figures = json.as_object().unwrap();
        // Every field of the sample but its task id is in the view, by the same name.
        let sample_json = serde_json::to_value(&sample).unwrap();
        for (name, value) in sample_json.as_object().unwrap() {
            if name != "task_id" {
                assert_eq!(figures.get(name), Some(value), "{name}");
            }
        }
        assert_eq!(figures.len(), sample_json.as_object().unwrap().len() - 1);
        let mut used = Used::default();
        used.add(&sample);
        used.add(&v1::TaskUsage::default());
        assert_eq!(
            used,
            Used {
                cpu_user_ns: 1,
                cpu_system_ns: 2,
                mem_bytes: 4,
                disk_bytes: 13,
            }
        );
    }
}
