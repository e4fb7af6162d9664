//! One record of the audit log and its encoding: a JSON object on one line. The
//! hash of a record is the SHA-256 of its line's exact bytes (without the newline),
//! so a reader checks the chain without re-encoding anything.

use cella_proto::v1;
use serde::{Deserialize, Serialize};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1 for the first record ever written, then +1 per record, across segments.
    pub seq: u64,
    /// The hash of the previous record (the last one of the previous segment for a
    /// segment's first record); [`GENESIS`] for record 1.
    pub prev: String,
    /// When the master wrote the record (ns since the epoch).
    pub time_ns: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A task ended (its terminal update, or a state the master decided).
    TaskEnd(Box<TaskEnd>),
    /// Someone asked for a task to be killed.
    Kill(Kill),
    /// An authorization denial.
    Denied(Denied),
}

/// Requested resources, in the units of the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    pub cpus: f64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

/// A finished task: who, what, where, when, how it ended and what it consumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskEnd {
    pub task_id: String,
    /// The uuid of the terminal update (empty: a state the master decided, e.g.
    /// LOST); with the task id, what makes a record unique.
    pub update_uuid: String,
    pub framework_id: String,
    /// The principal that registered the framework (`user:NAME`).
    pub principal: String,
    pub role: String,
    /// The user the task asked to run as (empty: the agent's default).
    pub user: String,
    pub command: Vec<String>,
    /// The image reference asked for, and the digest the agent resolved it to.
    pub image: String,
    pub image_digest: String,
    pub rootfs: String,
    pub resources: Requested,
    pub agent_id: String,
    pub hostname: String,
    /// When the master launched it (unknown for tasks launched before a restart).
    pub submitted_ns: Option<u64>,
    /// When it started running (the summary's, else the RUNNING update's).
    pub started_ns: Option<u64>,
    pub ended_ns: u64,
    pub state: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    /// What the agent measured over the task's life (absent from agents that do
    /// not send one).
    pub summary: Option<v1::TaskSummary>,
}

/// A kill request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub task_id: String,
    pub framework_id: String,
    /// Who asked: a framework's scheduler (`framework:ID` plus its principal) or an
    /// operator's principal.
    pub by: String,
    /// `scheduler` or `operator`.
    pub via: String,
    /// The grace period asked for, if any.
    pub grace_period_secs: Option<f64>,
    /// Empty when the kill was sent on; otherwise why not.
    pub refused: String,
}

/// A request the ACL refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Denied {
    pub principal: String,
    /// The permission that was needed, e.g. `run_task(role=batch, as_user=root)`.
    pub permission: String,
    /// What was attempted.
    pub what: String,
    /// How many denials of the same principal were left out of the log since its
    /// record before this one (more than its budget of records: see
    /// `authz::denial_budget`); absent when none was.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What opening the log needs of a record: its number and, for a task end, whose
/// end and which update; the rest of the line is skipped, not kept.
#[derive(Debug, Deserialize)]
pub struct Glance {
    pub seq: u64,
    pub kind: String,
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub update_uuid: String,
}

impl Glance {
    /// Whether the record is a task's end.
    pub fn is_task_end(&self) -> bool {
        self.kind == "task_end"
    }
}

/// The hash of a line (its exact bytes, no newline), in lowercase hex.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line))
}

impl Record {
    /// The line of this record (no newline).
    pub fn encode(&self) -> String {
        // Serializing plain data (strings, numbers, options) cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl TaskEnd {
    /// Wall time from start (else submission) to end, in seconds.
    pub fn wall_secs(&self) -> f64 {
        let start = self
            .summary
            .as_ref()
            .map(|s| s.started_ns)
            .filter(|s| *s > 0)
            .or(self.started_ns)
            .or(self.submitted_ns);
        let end = self
            .summary
            .as_ref()
            .map(|s| s.ended_ns)
            .filter(|e| *e > 0)
            .unwrap_or(self.ended_ns);
        match start {
            #[allow(clippy::cast_precision_loss)]
            Some(s) if end > s => (end - s) as f64 / 1e9,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let r = Record {
            seq: 7,
            prev: GENESIS.into(),
            time_ns: 5,
            event: Event::TaskEnd(Box::new(TaskEnd {
                task_id: "t".into(),
                summary: Some(v1::TaskSummary {
                    cpu_user_ns: Some(3),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let line = r.encode();
        assert!(line.starts_with(r#"{"seq":7,"prev":"000"#), "{line}");
        assert!(line.contains(r#""kind":"task_end""#), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(line_hash(b"").len(), 64);
    }
}
