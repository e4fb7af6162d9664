//! What a task used, in normalised units (nanoseconds, bytes). A figure the kernel
//! does not offer is `None` (JSON `null`), never 0.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A task is sampled every [`DENSE_SAMPLE_INTERVAL`] during its first
/// [`DENSE_SAMPLE_PERIOD`], so that a short task's memory is seen before it exits.
pub const DENSE_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
pub const DENSE_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// How long to wait for the next sample of a task launched `age` ago, which is
/// sampled every `regular` once its first second is over.
pub fn next_sample_in(age: Duration, regular: Duration) -> Duration {
    if age < DENSE_SAMPLE_PERIOD {
        DENSE_SAMPLE_INTERVAL.min(regular)
    } else {
        regular
    }
}

/// Why the containerizer or the kernel ended a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Limitation {
    /// The kernel's OOM killer killed a process of the task at its memory limit.
    MemoryLimit,
    /// The task wrote more than its disk limit under its sandbox; Cella killed it.
    DiskLimit,
    /// A fork or clone failed at the pids limit and the task then failed.
    PidsLimit,
}

impl Limitation {
    pub fn as_str(self) -> &'static str {
        match self {
            Limitation::MemoryLimit => "MEMORY_LIMIT",
            Limitation::DiskLimit => "DISK_LIMIT",
            Limitation::PidsLimit => "PIDS_LIMIT",
        }
    }
}

/// Pressure stall information of one resource, as the kernel's `*.pressure` files
/// give it: the share of wall time (percent) in which some (or all) runnable tasks
/// waited for the resource, over 10, 60 and 300 s, and the total stall time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub some_avg10: f64,
    pub some_avg60: f64,
    pub some_avg300: f64,
    pub some_total_us: u64,
    /// `None` where the kernel writes no `full` line (cpu before 5.13).
    pub full: Option<PressureLine>,
}

/// The `full` line of a pressure file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

impl Pressure {
    /// Parses a pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and
    /// the same for `full`); `None` without a `some` line.
    pub fn parse(text: &str) -> Option<Pressure> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let kind = fields.next();
            let mut l = PressureLine::default();
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                match key {
                    "avg10" => l.avg10 = value.parse().ok()?,
                    "avg60" => l.avg60 = value.parse().ok()?,
                    "avg300" => l.avg300 = value.parse().ok()?,
                    "total" => l.total_us = value.parse().ok()?,
                    _ => {}
                }
            }
            match kind {
                Some("some") => some = Some(l),
                Some("full") => full = Some(l),
                _ => {}
            }
        }
        let some = some?;
        Some(Pressure {
            some_avg10: some.avg10,
            some_avg60: some.avg60,
            some_avg300: some.avg300,
            some_total_us: some.total_us,
            full,
        })
    }
}

/// Measured statistics of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub mem_current_bytes: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_peak: Option<u64>,
    /// Times a fork failed at the pids limit.
    pub pids_limit_hits: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub io_read_ops: Option<u64>,
    pub io_write_ops: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    /// cgroup v2 only (`cpu.pressure`, `memory.pressure`, `io.pressure`).
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The largest figures seen over a task's life, for the values the kernel keeps no
/// peak of (anon, file, kernel, swap, pids, disk): the sampler folds every sample in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peaks {
    pub mem_peak_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_kernel_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub disk_peak_bytes: Option<u64>,
}

impl Peaks {
    pub fn observe(&mut self, u: &Usage) {
        // The kernel's own peak where it keeps one, else the largest current value seen.
        self.mem_peak_bytes = max_opt(
            self.mem_peak_bytes,
            max_opt(u.mem_peak_bytes, u.mem_current_bytes),
        );
        self.mem_anon_bytes = max_opt(self.mem_anon_bytes, u.mem_anon_bytes);
        self.mem_file_bytes = max_opt(self.mem_file_bytes, u.mem_file_bytes);
        self.mem_kernel_bytes = max_opt(self.mem_kernel_bytes, u.mem_kernel_bytes);
        self.mem_swap_bytes = max_opt(self.mem_swap_bytes, u.mem_swap_bytes);
        self.pids_peak = max_opt(self.pids_peak, max_opt(u.pids_peak, u.pids_current));
        self.disk_peak_bytes = max_opt(self.disk_peak_bytes, u.disk_used_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_keep_none_distinct_from_zero() {
        let mut p = Peaks::default();
        p.observe(&Usage {
            mem_anon_bytes: Some(10),
            ..Default::default()
        });
        p.observe(&Usage {
            mem_anon_bytes: Some(4),
            mem_current_bytes: Some(7),
            ..Default::default()
        });
        assert_eq!(p.mem_anon_bytes, Some(10));
        assert_eq!(p.mem_peak_bytes, Some(7));
        assert_eq!(p.mem_swap_bytes, None);
    }

    #[test]
    fn pressure_files() {
        let p = Pressure::parse(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n\
             full avg10=0.10 avg60=0.00 avg300=0.00 total=678\n",
        )
        .expect("pressure");
        assert_eq!((p.some_avg10, p.some_total_us), (1.5, 12345));
        assert_eq!(p.full.map(|f| f.total_us), Some(678));
        let cpu_before_5_13 = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n");
        assert_eq!(cpu_before_5_13.map(|p| p.full), Some(None));
        assert_eq!(Pressure::parse(""), None);
    }
}
