//! What `cella audit export` and `cella audit summary` print: the records of a
//! period (a record belongs to the period in which the master wrote it, for a task
//! its end) as JSON lines or CSV, and totals per role, framework or user.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::record::{Event, Record, TaskEnd};
use super::segment::{read_lines, segments};

const GIB: f64 = (1u64 << 30) as f64;

/// A period: records written at or after `since` and before `until` (ns).
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Period {
    fn holds(&self, t: u64) -> bool {
        self.since_ns.is_none_or(|s| t >= s) && self.until_ns.is_none_or(|u| t < u)
    }
}

/// Every complete record of the log in `dir` in `period`, with its line.
pub fn records(dir: &Path, period: Period) -> Result<Vec<(Record, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for (_, path) in segments(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        for line in read_lines(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            if !line.complete {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<Record>(&line.bytes) else {
                continue;
            };
            if period.holds(r.time_ns) {
                out.push((r, line.bytes));
            }
        }
    }
    Ok(out)
}

/// A time given on the command line: RFC 3339 (`2026-12-01T00:00:00Z`), a date
/// (`2026-12-01`, UTC), seconds since the epoch, or a duration ago (`24h`, `7d`).
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    let ns = |t: time::OffsetDateTime| u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0);
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1_000_000_000));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(ns(t));
    }
    if let Ok(t) = time::OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &Rfc3339) {
        return Ok(ns(t));
    }
    if let Ok(d) = cella_proto::time::parse_duration(s) {
        let ago = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        return Ok(now_ns.saturating_sub(ago));
    }
    Err(format!(
        "{s:?} is not a time: give RFC 3339 (2026-12-01T00:00:00Z), a date (2026-12-01), \
         seconds since the epoch, or a duration ago (24h, 7d)"
    ))
}

/// RFC 3339 in UTC, for CSV cells.
pub fn rfc3339(ns: u64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

const CSV_HEADER: &str = "seq,ended,task_id,framework_id,principal,role,user,state,reason,\
exit_code,signal,agent_id,hostname,image,image_digest,submitted,started,wall_seconds,\
cpus,mem_bytes,disk_bytes,cpu_user_seconds,cpu_system_seconds,mem_peak_bytes,\
io_read_bytes,io_write_bytes,oom_kills,message";

/// A CSV cell: quoted when it holds a comma, a quote or a line break.
fn cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

#[allow(clippy::cast_precision_loss)]
fn secs(ns: Option<u64>) -> String {
    opt(ns.map(|n| n as f64 / 1e9))
}

fn csv_row(seq: u64, t: &TaskEnd) -> String {
    let s = t.summary.as_ref();
    let cells = [
        seq.to_string(),
        rfc3339(t.ended_ns),
        cell(&t.task_id),
        cell(&t.framework_id),
        cell(&t.principal),
        cell(&t.role),
        cell(&t.user),
        t.state.clone(),
        t.reason.clone(),
        opt(t.exit_code),
        opt(t.signal),
        cell(&t.agent_id),
        cell(&t.hostname),
        cell(&t.image),
        cell(&t.image_digest),
        opt(t.submitted_ns.map(rfc3339)),
        opt(t.started_ns.map(rfc3339)),
        t.wall_secs().to_string(),
        t.resources.cpus.to_string(),
        t.resources.mem_bytes.to_string(),
        t.resources.disk_bytes.to_string(),
        secs(s.and_then(|s| s.cpu_user_ns)),
        secs(s.and_then(|s| s.cpu_system_ns)),
        opt(s.and_then(|s| s.mem_peak_bytes)),
        opt(s.and_then(|s| s.io_read_bytes)),
        opt(s.and_then(|s| s.io_write_bytes)),
        opt(s.and_then(|s| s.oom_kills)),
        cell(&t.message),
    ];
    cells.join(",")
}

/// Writes the records of `period`: `jsonl` every record as its line in the log
/// (hashes still match), `csv` one row per finished task.
pub fn export(dir: &Path, period: Period, csv: bool, out: &mut dyn Write) -> Result<usize, String> {
    let io = |e: std::io::Error| format!("writing the export: {e}");
    let mut n = 0;
    if csv {
        writeln!(out, "{CSV_HEADER}").map_err(io)?;
    }
    for (r, line) in records(dir, period)? {
        match (&r.event, csv) {
            (_, false) => {
                out.write_all(&line).map_err(io)?;
                out.write_all(b"\n").map_err(io)?;
            }
            (Event::TaskEnd(t), true) => writeln!(out, "{}", csv_row(r.seq, t)).map_err(io)?,
            _ => continue,
        }
        n += 1;
    }
    Ok(n)
}

/// How `summary` groups tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Role,
    Framework,
    /// The principal that registered the task's framework.
    User,
}

/// The totals of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub tasks: u64,
    /// Tasks whose record has no summary (their measured figures count as 0).
    pub without_summary: u64,
    /// CPU time used, user + system.
    pub cpu_seconds: f64,
    /// Requested CPUs × wall time.
    pub cpu_requested_seconds: f64,
    /// Requested memory (GiB) × wall time (hours).
    pub mem_requested_gib_hours: f64,
    /// Peak memory (GiB) × wall time (hours).
    pub mem_peak_gib_hours: f64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

impl Totals {
    #[allow(clippy::cast_precision_loss)]
    fn add(&mut self, t: &TaskEnd) {
        let wall = t.wall_secs();
        self.tasks += 1;
        self.cpu_requested_seconds += t.resources.cpus * wall;
        self.mem_requested_gib_hours += t.resources.mem_bytes as f64 / GIB * wall / 3600.0;
        let Some(s) = t.summary.as_ref() else {
            self.without_summary += 1;
            return;
        };
        let cpu_ns = s.cpu_user_ns.unwrap_or(0) + s.cpu_system_ns.unwrap_or(0);
        self.cpu_seconds += cpu_ns as f64 / 1e9;
        self.mem_peak_gib_hours += s.mem_peak_bytes.unwrap_or(0) as f64 / GIB * wall / 3600.0;
        self.io_read_bytes += s.io_read_bytes.unwrap_or(0);
        self.io_write_bytes += s.io_write_bytes.unwrap_or(0);
    }
}

/// Totals of the tasks that ended in `period`, per group.
pub fn summary(
    dir: &Path,
    period: Period,
    by: GroupBy,
) -> Result<BTreeMap<String, Totals>, String> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for (r, _) in records(dir, period)? {
        let Event::TaskEnd(t) = &r.event else {
            continue;
        };
        let key = match by {
            GroupBy::Role => t.role.clone(),
            GroupBy::Framework => t.framework_id.clone(),
            GroupBy::User => t.principal.clone(),
        };
        groups.entry(key).or_default().add(t);
    }
    Ok(groups)
}
