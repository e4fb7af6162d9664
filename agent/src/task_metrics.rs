//! Per-task series of the agent's `/metrics` (`cella_task_*`), from the latest usage
//! sample of each running task. The usage loop replaces the whole set every round and
//! a task's monitor drops its series when the task ends, so the label values are
//! bounded by the tasks running on the agent.

use std::sync::{Arc, Mutex};

use cella_proto::v1;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The samples even if a thread panicked while holding them (they are replaced
/// whole, so they are never half-written).
fn lock(m: &Mutex<Vec<TaskSample>>) -> std::sync::MutexGuard<'_, Vec<TaskSample>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One running task's latest sample and the labels it is shown with.
#[derive(Debug, Clone)]
pub struct TaskSample {
    pub framework: String,
    pub role: String,
    pub usage: v1::TaskUsage,
}

/// The latest samples, shared between the usage loop and the scrape.
#[derive(Debug, Clone, Default)]
pub struct TaskSeries(Arc<Mutex<Vec<TaskSample>>>);

impl TaskSeries {
    /// The samples of the tasks running now (the series of any other task go).
    pub fn replace(&self, samples: Vec<TaskSample>) {
        *lock(&self.0) = samples;
    }

    /// Drops the series of task `id` (it ended).
    pub fn forget(&self, id: &str) {
        lock(&self.0).retain(|s| s.usage.task_id != id);
    }
}

const NS_PER_SECOND: f64 = 1e9;
const US_PER_SECOND: f64 = 1e6;

fn seconds(ns: u64) -> f64 {
    ns as f64 / NS_PER_SECOND
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// One metric family: its descriptor once, then a sample per task (and per value of
/// the extra label) for which `value` gives a figure.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    /// The extra label's name and values, e.g. `mode` = user, system.
    extra: Option<(&'a str, &'a [&'a str])>,
}

impl Family<'_> {
    fn encode<M: EncodeMetric>(
        &self,
        encoder: &mut DescriptorEncoder,
        samples: &[TaskSample],
        value: impl Fn(&v1::TaskUsage, &str) -> Option<M>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        let (extra_name, extra_values) = self.extra.unwrap_or(("", &[""]));
        for s in samples {
            for extra in extra_values {
                let Some(metric) = value(&s.usage, extra) else {
                    continue;
                };
                let mut labels = vec![
                    ("task", s.usage.task_id.as_str()),
                    ("framework", s.framework.as_str()),
                    ("role", s.role.as_str()),
                ];
                if !extra_name.is_empty() {
                    labels.push((extra_name, extra));
                }
                metric.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn pressure<'u>(u: &'u v1::TaskUsage, resource: &str) -> Option<&'u v1::Pressure> {
    match resource {
        "cpu" => u.cpu_pressure.as_ref(),
        "memory" => u.memory_pressure.as_ref(),
        "io" => u.io_pressure.as_ref(),
        _ => None,
    }
}

impl Collector for TaskSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = lock(&self.0).clone();
        let e = &mut encoder;
        let counter = |v: Option<u64>| v.map(|v| ConstCounter::new(seconds(v)));
        Family {
            name: "cella_task_cpu_seconds",
            help: "CPU time the task used, by mode (user, system)",
            kind: MetricType::Counter,
            extra: Some(("mode", &["user", "system"])),
        }
        .encode(e, &samples, |u, mode| match mode {
            "user" => counter(u.cpu_user_ns),
            _ => counter(u.cpu_system_ns),
        })?;
        Family {
            name: "cella_task_cpu_throttled_seconds",
            help: "Time the task was throttled at its CPU limit",
            kind: MetricType::Counter,
            extra: None,
        }
        .encode(e, &samples, |u, _| counter(u.cpu_throttled_ns))?;
        Family {
            name: "cella_task_memory_bytes",
            help: "Memory charged to the task, by kind (current: all; anon, file: page cache, kernel, swap)",
            kind: MetricType::Gauge,
            extra: Some(("kind", &["current", "anon", "file", "kernel", "swap"])),
        }
        .encode(e, &samples, |u, kind| {
            match kind {
                "current" => u.mem_current_bytes,
                "anon" => u.mem_anon_bytes,
                "file" => u.mem_file_bytes,
                "kernel" => u.mem_kernel_bytes,
                _ => u.mem_swap_bytes,
            }
            .map(gauge)
        })?;
        Family {
            name: "cella_task_oom_kills",
            help: "Processes of the task the kernel's OOM killer killed",
            kind: MetricType::Counter,
            extra: None,
        }
        .encode(e, &samples, |u, _| u.oom_kills.map(ConstCounter::new))?;
        Family {
            name: "cella_task_pids",
            help: "Processes and threads of the task",
            kind: MetricType::Gauge,
            extra: None,
        }
        .encode(e, &samples, |u, _| u.pids_current.map(gauge))?;
        // Block device traffic in bytes and in operations, by direction.
        type ReadWrite = fn(&v1::TaskUsage) -> [Option<u64>; 2];
        let io: [(&str, &str, ReadWrite); 2] = [
            (
                "cella_task_io_bytes",
                "Bytes the task read from and wrote to block devices, by direction (read, write)",
                |u| [u.io_read_bytes, u.io_write_bytes],
            ),
            (
                "cella_task_io_operations",
                "Block device operations of the task, by direction (read, write)",
                |u| [u.io_read_ops, u.io_write_ops],
            ),
        ];
        for (name, help, read_write) in io {
            Family {
                name,
                help,
                kind: MetricType::Counter,
                extra: Some(("direction", &["read", "write"])),
            }
            .encode(e, &samples, |u, direction| {
                let [read, write] = read_write(u);
                if direction == "read" { read } else { write }.map(ConstCounter::new)
            })?;
        }
        Family {
            name: "cella_task_disk_bytes",
            help: "Disk space used under the task's sandbox (and its private /tmp)",
            kind: MetricType::Gauge,
            extra: None,
        }
        .encode(e, &samples, |u, _| u.disk_used_bytes.map(gauge))?;
        // Two label dimensions: one family per kind, the resource as the extra label.
        let resources: &[&str] = &["cpu", "memory", "io"];
        let mut family = e.encode_descriptor(
            "cella_task_pressure_seconds",
            "Time in which some (or all) of the task's runnable work stalled on a resource (cgroup v2)",
            None,
            MetricType::Counter,
        )?;
        for s in &samples {
            for resource in resources {
                let Some(p) = pressure(&s.usage, resource) else {
                    continue;
                };
                let kinds = [("some", Some(p.some_total_us)), ("full", p.full_total_us)];
                for (kind, total) in kinds {
                    let Some(total) = total else { continue };
                    let labels = [
                        ("task", s.usage.task_id.as_str()),
                        ("framework", s.framework.as_str()),
                        ("role", s.role.as_str()),
                        ("resource", resource),
                        ("kind", kind),
                    ];
                    ConstCounter::new(total as f64 / US_PER_SECOND)
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn sample(id: &str) -> TaskSample {
        let psi = v1::Pressure {
            some_total_us: 1_500_000,
            full_total_us: Some(500_000),
            ..Default::default()
        };
        TaskSample {
            framework: "fw".into(),
            role: "batch".into(),
            usage: v1::TaskUsage {
                task_id: id.into(),
                cpu_user_ns: Some(2_500_000_000),
                cpu_system_ns: Some(500_000_000),
                cpu_throttled_ns: Some(0),
                mem_current_bytes: Some(4096),
                mem_anon_bytes: Some(1024),
                oom_kills: Some(0),
                pids_current: Some(3),
                io_read_bytes: Some(10),
                io_write_ops: Some(2),
                cpu_pressure: Some(psi),
                ..Default::default()
            },
        }
    }

    fn text(series: &TaskSeries) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(series.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        cella_proto::exposition::to_prometheus_text(&out)
    }

    #[test]
    fn series_follow_the_running_tasks_and_pass_promtool() {
        let series = TaskSeries::default();
        series.replace(vec![sample("t1"), sample("t2")]);
        let text = text(&series);
        for line in [
            r#"cella_task_cpu_seconds_total{task="t1",framework="fw",role="batch",mode="user"} 2.5"#,
            r#"cella_task_memory_bytes{task="t2",framework="fw",role="batch",kind="anon"} 1024"#,
            r#"cella_task_pressure_seconds_total{task="t1",framework="fw",role="batch",resource="cpu",kind="full"} 0.5"#,
            r#"cella_task_io_operations_total{task="t1",framework="fw",role="batch",direction="write"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // A figure the kernel does not offer has no series (not a 0).
        assert!(!text.contains(r#"kind="swap""#), "{text}");

        let out = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(text.as_bytes())?;
                child.wait_with_output()
            })
            .expect("promtool (Debian's prometheus package; see scripts/install-test-deps.sh)");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );

        series.forget("t1");
        let text = self::text(&series);
        assert!(!text.contains(r#"task="t1""#), "{text}");
        assert!(text.contains(r#"task="t2""#), "{text}");
    }
}
