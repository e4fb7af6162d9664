//! Usage ingest benchmark: the master actor fed the usage reports of 1,000 agents ×
//! 100 running tasks every simulated second, through the same commands the gRPC
//! front end sends it (`Command::AgentRegister`, `Command::AgentMessage`; only the
//! protobuf decoding of the stream is left out). Delta reports (what agents send) and
//! full reports (every figure every time) side by side, with their wire sizes, the
//! master's memory, and the size of one day of one task's history.
//!
//! Run: `cargo bench -p cella-master --bench usage_ingest` (release profile).
//! `USAGE_BENCH_AGENTS`, `USAGE_BENCH_TASKS`, `USAGE_BENCH_SECONDS` change the sizes;
//! `USAGE_BENCH_TRACE=1` prints every simulated second (time, CPU, RSS).

use std::time::{Duration, Instant};

use cella_master::master::{Command, MasterHandle, UsageQuery};
use cella_master::usage::{History, Point, Tiers};
use cella_master::{MasterConfig, master};
use cella_proto::usage_delta::encode_report;
use cella_proto::v1::{self, agent_message};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A memory figure of this process (`VmRSS`, `VmHWM` of `/proc/self/status`), in
/// bytes; 0 where the kernel gives none.
fn memory(field: fn(&procfs::process::Status) -> Option<u64>) -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .ok()
        .as_ref()
        .and_then(field)
        .map_or(0, |kib| kib * 1024)
}

fn rss() -> u64 {
    memory(|s| s.vmrss)
}

/// CPU time (user + system) of this process so far, in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map_or(0, |s| s.utime + s.stime)
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn pressure(avg10: f64, total: u64) -> v1::Pressure {
    v1::Pressure {
        some_avg10: avg10,
        some_avg60: avg10,
        some_avg300: avg10,
        some_total_us: total,
        full_avg10: Some(avg10 / 2.0),
        full_avg60: Some(avg10 / 2.0),
        full_avg300: Some(avg10 / 2.0),
        full_total_us: Some(total / 2),
    }
}

/// The next second of one task: CPU always moves, memory in half the tasks, I/O in
/// a fifth, pressure in a tenth; the rest stays (as on a real node).
fn step(u: &mut v1::TaskUsage, t: u64, rng: &mut Rng) {
    u.timestamp_ns = 1_700_000_000_000_000_000 + t * 1_000_000_000;
    let add = |f: &mut Option<u64>, by: u64| *f = Some(f.unwrap_or(0) + by);
    add(&mut u.cpu_user_ns, rng.next() % 400_000_000);
    add(&mut u.cpu_system_ns, rng.next() % 50_000_000);
    if rng.chance(50) {
        u.mem_current_bytes = Some((64 << 20) + rng.next() % (64 << 20));
        u.mem_anon_bytes = Some((48 << 20) + rng.next() % (16 << 20));
    }
    if rng.chance(20) {
        add(&mut u.io_read_bytes, rng.next() % (1 << 20));
        add(&mut u.io_write_bytes, rng.next() % (1 << 20));
        add(&mut u.io_read_ops, rng.next() % 100);
        add(&mut u.io_write_ops, rng.next() % 100);
    }
    if rng.chance(10) {
        #[allow(clippy::cast_precision_loss)]
        let avg = (rng.next() % 1000) as f64 / 100.0;
        u.cpu_pressure = Some(pressure(avg, t * 1000));
    }
}

fn first_sample(task_id: String) -> v1::TaskUsage {
    v1::TaskUsage {
        task_id,
        cpu_throttled_ns: Some(0),
        mem_peak_bytes: Some(128 << 20),
        mem_file_bytes: Some(1 << 20),
        mem_kernel_bytes: Some(1 << 19),
        oom_kills: Some(0),
        pids_current: Some(4),
        disk_used_bytes: Some(10 << 20),
        mem_swap_bytes: Some(0),
        cpu_nr_throttled: Some(0),
        memory_pressure: Some(pressure(0.0, 0)),
        io_pressure: Some(pressure(0.0, 0)),
        ..Default::default()
    }
}

/// Returns once the actor has handled everything sent before.
async fn barrier(m: &MasterHandle) {
    let _ = m.task_usage(String::new(), UsageQuery::default()).await;
}

struct Run {
    per_second: Vec<Duration>,
    /// CPU time of the process while the master handled the reports (the timed part).
    cpu: Duration,
    wire_bytes_per_second: usize,
    rss_growth: u64,
}

async fn run(agents: usize, tasks: usize, seconds: usize, delta: bool) -> Run {
    let m = master::spawn(MasterConfig::default());
    let rss_before = rss();
    let mut conns = Vec::new();
    let mut outbound = Vec::new();
    for a in 0..agents {
        let register = agent_message::Register {
            agent_id: format!("agent-{a}"),
            hostname: format!("node-{a}"),
            total: Some(v1::Resources {
                cpus: 64.0,
                mem_bytes: 256 << 30,
                disk_bytes: 1 << 40,
            }),
            tasks: (0..tasks)
                .map(|i| v1::RunningTask {
                    framework_id: "fw-bench".into(),
                    task: Some(v1::TaskInfo {
                        task_id: format!("t-{a}-{i}"),
                        name: "bench".into(),
                        command: vec!["sleep".into()],
                        resources: Some(v1::Resources {
                            cpus: 0.5,
                            mem_bytes: 256 << 20,
                            disk_bytes: 0,
                        }),
                        ..Default::default()
                    }),
                    state: v1::TaskState::TaskRunning as i32,
                })
                .collect(),
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        m.send(Command::AgentRegister {
            register,
            node: format!("node-{a}"),
            tx,
            reply,
        });
        let (id, conn) = answer.await.unwrap().expect("registered");
        conns.push((id, conn));
        outbound.push(rx);
    }
    let mut rng = Rng(0x5eed);
    let mut samples: Vec<Vec<v1::TaskUsage>> = (0..agents)
        .map(|a| {
            (0..tasks)
                .map(|i| first_sample(format!("t-{a}-{i}")))
                .collect()
        })
        .collect();
    let mut sent: Vec<Option<agent_message::UsageReport>> = vec![None; agents];
    let mut per_second = Vec::new();
    let mut cpu_ticks_spent = 0;
    let trace = std::env::var_os("USAGE_BENCH_TRACE").is_some();
    let mut wire = 0;
    for t in 0..seconds as u64 {
        // The agents' side, outside the measurement.
        let mut reports = Vec::with_capacity(agents);
        wire = 0;
        for (a, tasks) in samples.iter_mut().enumerate() {
            for u in tasks.iter_mut() {
                step(u, t, &mut rng);
            }
            let full = agent_message::UsageReport {
                tasks: tasks.clone(),
                node: Some(Box::new(v1::NodeUsage {
                    timestamp_ns: t,
                    tasks_running: 100,
                    ..Default::default()
                })),
                delta: false,
            };
            let report = if delta {
                encode_report(sent[a].as_ref(), &full)
            } else {
                full.clone()
            };
            sent[a] = Some(full);
            wire += report.encoded_len();
            reports.push(report);
        }
        let started = Instant::now();
        let cpu_before = cpu_ticks();
        for ((id, conn), report) in conns.iter().zip(reports) {
            m.send(Command::AgentMessage {
                agent: id.clone(),
                conn: *conn,
                message: agent_message::Message::Usage(report),
            });
        }
        barrier(&m).await;
        per_second.push(started.elapsed());
        let cpu = cpu_ticks() - cpu_before;
        cpu_ticks_spent += cpu;
        if trace {
            println!(
                "  second {t}: {:.1} ms, CPU {} ms, RSS {} MiB",
                started.elapsed().as_secs_f64() * 1e3,
                cpu * 10,
                rss() >> 20
            );
        }
        // Drain what the master sent the agents (nothing expected but pings).
        for rx in &mut outbound {
            while rx.try_recv().is_ok() {}
        }
    }
    let rss_growth = rss().saturating_sub(rss_before);
    m.stop().await;
    Run {
        per_second,
        cpu: Duration::from_millis(cpu_ticks_spent * 10),
        wire_bytes_per_second: wire,
        rss_growth,
    }
}

fn one_day_of_history() -> (usize, usize, Duration) {
    let tiers = Tiers::default();
    let mut h = History::default();
    let mut u = first_sample("t".into());
    let mut rng = Rng(7);
    let started = Instant::now();
    for t in 0..86_400 {
        step(&mut u, t, &mut rng);
        h.push(&tiers, Point::from_wire(&u));
    }
    (h.len(), h.bytes(), started.elapsed() / 86_400)
}

fn main() {
    let agents = env("USAGE_BENCH_AGENTS", 1000);
    let tasks = env("USAGE_BENCH_TASKS", 100);
    let seconds = env("USAGE_BENCH_SECONDS", 30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "usage ingest: {agents} agents x {tasks} tasks, {seconds} simulated seconds (1 report per agent per second)"
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "reports",
        "median ms/s",
        "p95 ms/s",
        "max ms/s",
        "CPU ms/s",
        "wire MB/s",
        "RSS growth",
        "peak RSS"
    );
    for delta in [true, false] {
        let r = runtime.block_on(run(agents, tasks, seconds, delta));
        let mut sorted = r.per_second.clone();
        // The first second registers the histories; the rest is steady state.
        sorted.remove(0);
        sorted.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        #[allow(clippy::cast_precision_loss)]
        let mb = r.wire_bytes_per_second as f64 / 1e6;
        #[allow(clippy::cast_precision_loss)]
        let growth = r.rss_growth as f64 / (1 << 20) as f64;
        // The peak so far: the delta run comes first, so its line holds its own peak.
        let peak = memory(|s| s.vmhwm) >> 20;
        let cpu_per_second = r.cpu / u32::try_from(r.per_second.len()).unwrap_or(u32::MAX);
        println!(
            "{:<8} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>14.2} {:>9.0} MiB {:>8} MiB",
            if delta { "delta" } else { "full" },
            ms(sorted[sorted.len() / 2]),
            ms(sorted[sorted.len() * 95 / 100]),
            ms(*sorted.last().unwrap()),
            ms(cpu_per_second),
            mb,
            growth,
            peak
        );
    }
    let (points, bytes, per_push) = one_day_of_history();
    println!(
        "one day of one task's history (default tiers {:?}): {points} points, {bytes} bytes \
         ({} unpacked; bound {} bytes); {per_push:?} per sample",
        Tiers::default()
            .tiers()
            .iter()
            .map(|t| format!("{:?}:{:?}", t.resolution, t.span))
            .collect::<Vec<_>>(),
        points * std::mem::size_of::<Point>(),
        Tiers::default().max_bytes()
    );
}
