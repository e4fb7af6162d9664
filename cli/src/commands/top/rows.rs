//! What `cella top` shows of each running task: its row (rates from the task's last
//! two samples), the sort orders, the filter and the plain-text snapshot.

use std::collections::HashMap;

use cella_containerizer::units::format_bytes;
use cella_proto::api;

use crate::commands::rates::{Rates, bytes_per_second, percent};

/// One running task.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub agent: String,
    pub cpu_limit: f64,
    pub mem_limit: u64,
    pub rates: Rates,
    pub mem_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Pressure "some" avg10 of cpu, memory and io, in percent.
    pub pressure: [Option<f64>; 3],
}

impl Row {
    /// CPU use as a share of the task's CPU limit.
    pub fn cpu_of_limit(&self) -> Option<f64> {
        self.rates
            .cores
            .filter(|_| self.cpu_limit > 0.0)
            .map(|c| c / self.cpu_limit)
    }

    /// Memory in use as a share of the task's memory limit.
    #[allow(clippy::cast_precision_loss)]
    pub fn mem_of_limit(&self) -> Option<f64> {
        self.mem_bytes
            .filter(|_| self.mem_limit > 0)
            .map(|m| m as f64 / self.mem_limit as f64)
    }

    /// The largest of the pressure figures.
    pub fn worst_pressure(&self) -> Option<f64> {
        self.pressure.iter().flatten().copied().reduce(f64::max)
    }

    /// The row's cells, in [`HEADER`] order.
    pub fn cells(&self) -> Vec<String> {
        let pressure = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.1}"));
        vec![
            self.id.clone(),
            self.agent.clone(),
            percent(self.rates.cores),
            percent(self.cpu_of_limit()),
            percent(self.rates.throttled),
            self.mem_bytes.map_or("-".into(), format_bytes),
            percent(self.mem_of_limit()),
            bytes_per_second(self.rates.read_bytes),
            bytes_per_second(self.rates.write_bytes),
            self.pids.map_or("-".into(), |p| p.to_string()),
            format!(
                "{}/{}/{}",
                pressure(self.pressure[0]),
                pressure(self.pressure[1]),
                pressure(self.pressure[2])
            ),
        ]
    }
}

/// The column titles.
pub const HEADER: [&str; 11] = [
    "TASK",
    "AGENT",
    "CPU%CORE",
    "CPU%LIM",
    "THROTTLED",
    "MEM",
    "MEM%LIM",
    "READ/S",
    "WRITE/S",
    "PIDS",
    "PSI C/M/I",
];

/// The orders rows can be sorted in, each with its key in the interactive view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// CPU per core (key c).
    Cpu,
    /// Memory against its limit (key m).
    Mem,
    /// Read plus write bytes per second (key i).
    Io,
    /// Share of time throttled (key t).
    Throttled,
    /// The largest pressure figure (key p).
    Pressure,
    /// Task id (key n).
    Name,
    /// Agent, then task id (key a).
    Agent,
}

impl SortBy {
    pub fn from_key(key: char) -> Option<SortBy> {
        Some(match key {
            'c' => SortBy::Cpu,
            'm' => SortBy::Mem,
            'i' => SortBy::Io,
            't' => SortBy::Throttled,
            'p' => SortBy::Pressure,
            'n' => SortBy::Name,
            'a' => SortBy::Agent,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Cpu => "cpu",
            SortBy::Mem => "memory",
            SortBy::Io => "io",
            SortBy::Throttled => "throttled",
            SortBy::Pressure => "pressure",
            SortBy::Name => "name",
            SortBy::Agent => "agent",
        }
    }
}

/// Sorts the rows: figures largest first (missing ones last), names A to Z.
pub fn sort(rows: &mut [Row], by: SortBy) {
    let figure = |r: &Row| -> f64 {
        match by {
            SortBy::Cpu => r.rates.cores,
            SortBy::Mem => r.mem_of_limit().or_else(|| r.mem_bytes.map(|_| 0.0)),
            SortBy::Io => r.rates.io_bytes(),
            SortBy::Throttled => r.rates.throttled,
            SortBy::Pressure => r.worst_pressure(),
            SortBy::Name | SortBy::Agent => None,
        }
        .unwrap_or(-1.0)
    };
    match by {
        SortBy::Name => rows.sort_by(|a, b| a.id.cmp(&b.id)),
        SortBy::Agent => rows.sort_by(|a, b| (&a.agent, &a.id).cmp(&(&b.agent, &b.id))),
        _ => rows.sort_by(|a, b| {
            figure(b)
                .total_cmp(&figure(a))
                .then_with(|| a.id.cmp(&b.id))
        }),
    }
}

/// Rows whose task id or agent contain `filter` (all when it is empty).
pub fn matches(row: &Row, filter: &str) -> bool {
    filter.is_empty() || row.id.contains(filter) || row.agent.contains(filter)
}

/// The running tasks' latest samples, and the sample before each (for the rates).
#[derive(Debug, Default)]
pub struct Samples {
    latest: HashMap<String, api::Usage>,
    before: HashMap<String, api::Usage>,
}

impl Samples {
    /// Takes a new list of tasks from the master; a task whose sample is new moves
    /// its previous one to `before`.
    pub fn update(&mut self, tasks: &[api::Task]) {
        let mut latest = HashMap::with_capacity(tasks.len());
        for t in tasks {
            let Some(u) = &t.usage else { continue };
            match self.latest.remove(&t.id) {
                Some(old) if old.timestamp_ns < u.timestamp_ns => {
                    self.before.insert(t.id.clone(), old);
                }
                _ => {}
            }
            latest.insert(t.id.clone(), u.clone());
        }
        self.before.retain(|id, _| latest.contains_key(id));
        self.latest = latest;
    }

    /// The rows of the running tasks among `tasks`.
    pub fn rows(&self, tasks: &[api::Task]) -> Vec<Row> {
        tasks
            .iter()
            .filter(|t| t.state == cella_proto::v1::TaskState::TaskRunning)
            .map(|t| {
                let latest = self.latest.get(&t.id);
                let rates = match (self.before.get(&t.id), latest) {
                    (Some(b), Some(l)) => Rates::between(b, l),
                    _ => Rates::default(),
                };
                let some = |p: Option<api::Pressure>| p.map(|p| p.some_avg10);
                Row {
                    id: t.id.clone(),
                    agent: t.agent_id.clone(),
                    cpu_limit: t.resources.cpus,
                    mem_limit: t.resources.mem_bytes,
                    rates,
                    mem_bytes: latest.and_then(|l| l.mem_current_bytes),
                    pids: latest.and_then(|l| l.pids_current),
                    pressure: [
                        some(latest.and_then(|l| l.cpu_pressure)),
                        some(latest.and_then(|l| l.memory_pressure)),
                        some(latest.and_then(|l| l.io_pressure)),
                    ],
                }
            })
            .collect()
    }
}

/// The plain-text snapshot of `cella top --once`.
pub fn plain(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(&widths) {
            l.push_str(&format!("{c:<w$}  "));
        }
        l.trim_end().to_string()
    };
    let header: Vec<String> = HEADER.iter().map(|h| (*h).to_string()).collect();
    let mut out = vec![line(&header)];
    out.extend(cells.iter().map(|c| line(c)));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, cores: Option<f64>, mem: Option<u64>) -> Row {
        Row {
            id: id.into(),
            agent: "a".into(),
            cpu_limit: 0.5,
            mem_limit: 100,
            rates: Rates {
                cores,
                ..Default::default()
            },
            mem_bytes: mem,
            pids: None,
            pressure: [None; 3],
        }
    }

    #[test]
    fn sorting_puts_the_largest_first_and_missing_figures_last() {
        let mut rows = vec![
            row("x", None, Some(10)),
            row("y", Some(0.25), Some(90)),
            row("z", Some(0.5), None),
        ];
        sort(&mut rows, SortBy::Cpu);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["z", "y", "x"]);
        sort(&mut rows, SortBy::Mem);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["y", "x", "z"]);
        assert_eq!(rows[0].cells()[3], "50.0%");
        assert!(matches(&rows[0], "y") && !matches(&rows[0], "q"));
    }
}
