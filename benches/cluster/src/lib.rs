//! Helpers shared by the cluster benchmarks: certificates, master and agent
//! processes (the `cluster-node` binary), a minimal scheduler over the real gRPC API,
//! statistics, and clean-up checks.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use cella_proto::v1::{self, call, event, scheduler_service_client::SchedulerServiceClient};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

mod one_node;
mod sim_agent;

pub use one_node::{Leftovers, OneNode};
pub use sim_agent::SimFleet;

/// Nanoseconds since the Unix epoch (the clock the agent stamps updates with).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The workspace root (two levels above this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("../.."))
}

/// Raises the soft open-file limit to the hard one (thousands of connections).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A directory removed on drop (unless `CELLA_BENCH_KEEP` is set).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$CELLA_BENCH_DIR` (default `/var/tmp`, on the root disk like
    /// `/var/lib/cella`) / `cella-bench-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<TempDir> {
        let base = std::env::var_os("CELLA_BENCH_DIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
        TempDir::new_in(&base, tag)
    }

    pub fn new_in(base: &Path, tag: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = base.join(format!(
            "cella-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        Ok(TempDir(dir))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CELLA_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The agent's runtime directory (shim run dirs, event FIFOs): `<scratch>/run`, or a
/// fresh directory under `$CELLA_BENCH_RUNTIME_DIR` (e.g. a tmpfs, like `/run` on most
/// systems). The second value removes it on drop.
pub fn runtime_dir(scratch: &TempDir) -> Result<(PathBuf, Option<TempDir>)> {
    match std::env::var_os("CELLA_BENCH_RUNTIME_DIR") {
        Some(base) => {
            let d = TempDir::new_in(Path::new(&base), "run")?;
            Ok((d.path().to_path_buf(), Some(d)))
        }
        None => Ok((scratch.path().join("run"), None)),
    }
}

/// CA, master, agent and client certificates in `dir`.
pub fn certs(dir: &Path) -> Result<()> {
    cella_proto::tls::init_dir(dir, &cella_proto::tls::default_master_sans())
        .context("creating certificates")?;
    Ok(())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A child process stopped with SIGTERM (then SIGKILL after 15 s) on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait (SIGKILL after `grace`). Returns the time it took.
    pub fn stop(&mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        if let Ok(Some(_)) = self.child.try_wait() {
            return Duration::ZERO;
        }
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop in {grace:?}: SIGKILL", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        started.elapsed()
    }
}

impl Proc {
    /// SIGKILL (a crash: no clean-up of any kind) and reap. Returns when it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TLS configuration of simulated agent `i`: every agent node has a certificate of
/// its own (`agent:sim-<i>`; the master binds an agent to its node and admits one live
/// agent per node), issued from the CA in `tls_dir` on first use.
pub fn sim_agent_tls(tls_dir: &Path, i: usize) -> Result<rustls::ClientConfig> {
    let identity = cella_proto::tls::Identity::agent(&format!("sim-{i}"))?;
    let ca = cella_proto::tls::CaDir::open(tls_dir).context("the CA")?;
    let bundle = ca.layout.bundle_dir(&identity);
    if !bundle.exists() {
        let issued = ca.issue(&identity, &[], cella_proto::tls::Validity::default())?;
        ca.write_bundle(&identity, &issued)?;
    }
    cella_proto::tls::client_config(
        &tls_dir.join("ca.pem"),
        &bundle.join("agent.pem"),
        &bundle.join("agent-key.pem"),
    )
    .context("simulated agent TLS")
}

/// The `client` certificate's TLS configuration (operator API, schedulers).
pub fn client_tls(tls_dir: &Path) -> Result<rustls::ClientConfig> {
    cella_proto::tls::client_config(
        &tls_dir.join("ca.pem"),
        &tls_dir.join("client.pem"),
        &tls_dir.join("client-key.pem"),
    )
    .context("client TLS")
}

/// GET `url` over mutual TLS, as JSON.
pub async fn get_json(url: &str, tls: &rustls::ClientConfig) -> Result<serde_json::Value> {
    cella_proto::tls::https_get_json::<serde_json::Value>(url, tls)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// Resident set size of a process in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS for {pid}")
}

fn wait_port(port: u16, child: &mut Child, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the process exited early: {status}");
        }
        if started.elapsed() > timeout {
            bail!("port {port} not open after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log_file(path: &Path) -> Result<Stdio> {
    Ok(std::fs::File::create(path)
        .with_context(|| path.display().to_string())?
        .into())
}

/// Starts `cluster-node master` on 127.0.0.1:`port`; returns once it listens.
pub fn spawn_master(node: &Path, tls_dir: &Path, port: u16, log: &Path) -> Result<Proc> {
    spawn_master_with(node, tls_dir, port, log, None)
}

/// [`spawn_master`] with an optional `--work-dir` (the registry persisted there).
pub fn spawn_master_with(
    node: &Path,
    tls_dir: &Path,
    port: u16,
    log: &Path,
    work_dir: Option<&Path>,
) -> Result<Proc> {
    let mut cmd = Command::new(node);
    cmd.arg("master");
    if let Some(w) = work_dir {
        cmd.arg("--work-dir").arg(w);
    }
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-dir")
        .arg(tls_dir)
        .stdin(Stdio::null())
        .stdout(log_file(log)?)
        .stderr(log_file(&log.with_extension("err"))?);
    if std::env::var_os("CELLA_LOG").is_none() {
        cmd.env("CELLA_LOG", "warn");
    }
    let mut child = cmd.spawn().context("starting the master")?;
    wait_port(port, &mut child, Duration::from_secs(20))?;
    Ok(Proc {
        child,
        name: "master",
    })
}

/// How to start an agent.
pub struct AgentOpts<'a> {
    pub master_url: &'a str,
    pub tls_dir: &'a Path,
    pub work_dir: &'a Path,
    pub runtime_dir: &'a Path,
    pub resources: &'a str,
    /// Absolute from each hierarchy's root, e.g. `/cella-bench-1234`.
    pub cgroup_root: &'a str,
    pub launch_concurrency: Option<usize>,
    pub shim: &'a Path,
    pub log: &'a Path,
}

/// Starts `cluster-node agent` (the real agent, containerizer and shim).
pub fn spawn_agent(node: &Path, o: &AgentOpts<'_>) -> Result<Proc> {
    spawn_agent_http(node, o, "127.0.0.1:0")
}

/// [`spawn_agent`] with its HTTPS API on `http_listen` (e.g. `127.0.0.1:<port>`).
pub fn spawn_agent_http(node: &Path, o: &AgentOpts<'_>, http_listen: &str) -> Result<Proc> {
    // Diagnosis: `CELLA_BENCH_AGENT_WRAP="strace -f -tt -T -o /tmp/agent.strace"` runs
    // the agent under that command. Diagnosis only: Proc::stop then signals the
    // wrapper, and the agent must be stopped by its own pid afterwards.
    let wrap: Vec<String> = std::env::var("CELLA_BENCH_AGENT_WRAP")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(node);
            c
        }
        None => Command::new(node),
    };
    cmd.arg("agent")
        .arg("--master")
        .arg(o.master_url)
        .arg("--tls-dir")
        .arg(o.tls_dir)
        .arg("--work-dir")
        .arg(o.work_dir)
        .arg("--runtime-dir")
        .arg(o.runtime_dir)
        .arg("--resources")
        .arg(o.resources)
        .arg("--cgroup-root")
        .arg(o.cgroup_root)
        .arg("--http-listen")
        .arg(http_listen)
        .arg("--kill-tasks-on-exit")
        .env("CELLA_SHIM", o.shim)
        .stdin(Stdio::null())
        .stdout(log_file(o.log)?)
        .stderr(log_file(&o.log.with_extension("err"))?);
    if let Some(n) = o.launch_concurrency {
        cmd.arg("--launch-concurrency").arg(n.to_string());
    }
    if std::env::var_os("CELLA_LOG").is_none() {
        cmd.env("CELLA_LOG", "warn");
    }
    let child = cmd.spawn().context("starting the agent")?;
    Ok(Proc {
        child,
        name: "agent",
    })
}

/// A scheduler on the real gRPC API.
pub struct Scheduler {
    tx: mpsc::UnboundedSender<v1::Call>,
    events: tonic::Streaming<v1::Event>,
    pub framework_id: String,
}

impl Scheduler {
    /// Connects with the `client` certificate and subscribes.
    pub async fn subscribe(url: &str, tls_dir: &Path, name: &str) -> Result<Scheduler> {
        let tls = cella_proto::tls::client_config(
            &tls_dir.join("ca.pem"),
            &tls_dir.join("client.pem"),
            &tls_dir.join("client-key.pem"),
        )?;
        let channel = cella_proto::tls::grpc_channel(url, &tls).await?;
        let mut client = SchedulerServiceClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(v1::Call::subscribe(v1::FrameworkInfo {
            name: name.into(),
            ..Default::default()
        }))?;
        let mut events = client
            .subscribe(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .context("no SUBSCRIBED")?;
            match e {
                Some(Ok(v1::Event {
                    event: Some(event::Event::Subscribed(s)),
                })) => {
                    return Ok(Scheduler {
                        tx,
                        events,
                        framework_id: s.framework_id,
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("subscribe: {e}"),
                None => bail!("subscribe: stream closed"),
            }
        }
    }

    pub fn call(&self, c: call::Call) -> Result<()> {
        self.tx
            .send(v1::Call { call: Some(c) })
            .map_err(|_| anyhow::anyhow!("scheduler stream closed"))
    }

    /// The next event (within `timeout`).
    pub async fn next(&mut self, timeout: Duration) -> Result<event::Event> {
        loop {
            match tokio::time::timeout(timeout, self.events.next()).await {
                Err(_) => bail!("no event within {timeout:?}"),
                Ok(None) => bail!("the master closed the scheduler stream"),
                Ok(Some(Err(e))) => bail!("scheduler stream: {e}"),
                Ok(Some(Ok(v1::Event { event: Some(e) }))) => return Ok(e),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub fn accept(&self, offer_id: &str, tasks: Vec<v1::TaskInfo>) -> Result<()> {
        self.call(call::Call::Accept(call::Accept {
            offer_ids: vec![offer_id.to_string()],
            tasks,
            refuse_seconds: Some(0.0),
        }))
    }

    /// Acknowledges an update that needs it.
    pub fn ack(&self, s: &v1::TaskStatus) -> Result<()> {
        if s.uuid.is_empty() {
            return Ok(());
        }
        self.call(call::Call::Acknowledge(call::Acknowledge {
            agent_id: s.agent_id.clone(),
            task_id: s.task_id.clone(),
            uuid: s.uuid.clone(),
        }))
    }

    pub fn kill(&self, task_id: &str) -> Result<()> {
        self.call(call::Call::Kill(call::Kill {
            task_id: task_id.to_string(),
            kill_policy: None,
        }))
    }

    /// KILLs every task of `ids` and acknowledges updates until all have ended;
    /// `ended` of them already had (a KILL brings them no further update). Each
    /// update must come within `timeout`.
    pub async fn kill_all(&mut self, ids: &[String], mut ended: usize, timeout: Duration) -> Result<()> {
        for id in ids {
            self.kill(id)?;
        }
        while ended < ids.len() {
            if let event::Event::Update(u) = self.next(timeout).await?
                && let Some(s) = u.status
            {
                self.ack(&s)?;
                if s.state().is_terminal() {
                    ended += 1;
                }
            }
        }
        Ok(())
    }

    /// Waits for an offer (acknowledging updates meanwhile).
    pub async fn wait_offer(&mut self, timeout: Duration) -> Result<v1::Offer> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await? {
                event::Event::Offers(o) if !o.offers.is_empty() => {
                    return Ok(o.offers.into_iter().next().unwrap_or_default());
                }
                event::Event::Update(u) => {
                    if let Some(s) = u.status {
                        self.ack(&s)?;
                    }
                }
                event::Event::Error(e) => bail!("master error: {}", e.message),
                _ => {}
            }
        }
    }
}

/// A tiny sleeping task.
pub fn sleep_task(id: &str, cpus: f64, mem_bytes: u64) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: id.to_string(),
        name: id.to_string(),
        command: vec!["sleep".into(), "1000".into()],
        resources: Some(v1::Resources {
            cpus,
            mem_bytes,
            disk_bytes: 0,
        }),
        ..Default::default()
    }
}

/// Sorted-sample statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn stats(samples: &[f64]) -> Stats {
    if samples.is_empty() {
        return Stats::default();
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    Stats {
        n: v.len(),
        min: v[0],
        median: q(0.5),
        p90: q(0.9),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

pub fn median(samples: &[f64]) -> f64 {
    stats(samples).median
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle` (e.g. a runtime directory).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("cluster-node") && !cmd.contains("--bench") {
                out.push(pid);
            }
        }
    }
    out
}

/// Cgroup directories left under `/sys/fs/cgroup/*/<root>` (the root excluded), then
/// removes the (empty) roots. Returns the leftovers.
pub fn cgroup_leftovers_and_remove(root: &str) -> Vec<PathBuf> {
    let root = root.trim_start_matches('/');
    let mut left = Vec::new();
    let mut roots = Vec::new();
    if let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hier.flatten() {
            let r = h.path().join(root);
            if r.is_dir() {
                collect_dirs(&r, &mut left);
                roots.push(r);
            }
        }
    }
    // Deepest first.
    let mut all = left.clone();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in all.iter().chain(roots.iter()) {
        let _ = std::fs::remove_dir(d);
    }
    left
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Appends one JSON line to `$CELLA_BENCH_OUT` (if set) and prints it.
pub fn emit(value: &serde_json::Value) {
    println!("RESULT {value}");
    if let Some(path) = std::env::var_os("CELLA_BENCH_OUT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{value}");
    }
}

/// `--name value` from the arguments (after cargo's own `--bench`).
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `--name value` from the arguments, parsed; `default` when it is missing or does not
/// parse.
pub fn arg_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    arg(name).and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Samples as a table cell: comma-separated, with `decimals` decimals.
pub fn samples_cell(samples: &[f64], decimals: usize) -> String {
    samples
        .iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints a Markdown table of timings in seconds: a row a measure, with its median
/// and every run's value.
pub fn print_timings(rows: &[(String, &[f64])]) {
    println!("| | median s | runs s |");
    println!("|---|---:|---|");
    for (what, samples) in rows {
        println!("| {what} | {:.3} | {} |", median(samples), samples_cell(samples, 3));
    }
}

/// Runs `one` `runs` times, one after another; reports each result on stderr as
/// `describe` puts it, with the load average at its start. Returns the results and
/// those load averages.
pub async fn repeat_runs<R>(
    runs: usize,
    mut one: impl AsyncFnMut() -> Result<R>,
    describe: impl Fn(&R) -> String,
) -> Result<(Vec<R>, Vec<String>)> {
    let mut results = Vec::new();
    let mut loads = Vec::new();
    for i in 0..runs {
        let load = loadavg();
        let r = one().await?;
        eprintln!("run {i}: {}, load {load}", describe(&r));
        loads.push(load);
        results.push(r);
    }
    Ok((results, loads))
}

/// The shim: `$CELLA_SHIM` or the workspace's `target/release/cella-shim`.
pub fn shim_path() -> PathBuf {
    std::env::var_os("CELLA_SHIM")
        .map_or_else(|| workspace_root().join("target/release/cella-shim"), PathBuf::from)
}
