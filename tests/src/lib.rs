//! Shared helpers of the integration tests.
//!
//! [`Cluster`] runs a real `cella-master` and `cella-agent`s (or a `cella dev`) as
//! separate processes on 127.0.0.1 with ephemeral ports, in a temporary directory of
//! their own (certificates from `cella certs init`, work and runtime dirs, a client
//! profile for `CELLA_CONFIG`), with a cgroup root named `cella-test-<pid>-<n>-…`.
//! Dropping it kills everything it started, every task shim of its runtime dirs and
//! every process in its cgroups, and removes those cgroups, also when a test fails.
//! [`Cluster::finish`] stops the processes gracefully first and asserts that they left
//! nothing behind.
//!
//! [`Scheduler`] is a small scheduler on the gRPC scheduler API for tests that speak the
//! protocol directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::v1::{self, call, event, scheduler_service_client::SchedulerServiceClient};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

pub mod promtool;
pub mod security;

/// Generous deadline for anything the cluster should do "soon".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Short timeouts of the test masters.
pub const MASTER_FLAGS: &[&str] = &[
    "--ping-interval",
    "200ms",
    "--agent-unreachable-after",
    "1s",
    "--agent-timeout",
    "2s",
    "--allocation-interval",
    "100ms",
    "--offer-timeout",
    "5s",
];

// ------------------------------------------------------------------ binaries

/// Paths of the workspace binaries the tests run.
#[derive(Clone, Debug)]
pub struct Bins {
    pub cella: PathBuf,
    pub master: PathBuf,
    pub agent: PathBuf,
    pub shim: PathBuf,
}

/// Finds the binaries next to the test executable (`target/debug/deps/..`).
///
/// # Panics
/// If one is missing, saying how to build them.
pub fn bins() -> Bins {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe
        .parent()
        .expect("the test executable's directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bins = Bins {
        cella: dir.join("cella"),
        master: dir.join("cella-master"),
        agent: dir.join("cella-agent"),
        shim: dir.join("cella-shim"),
    };
    for path in [&bins.cella, &bins.master, &bins.agent, &bins.shim] {
        assert!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    bins
}

/// A port that was free a moment ago (bind port 0 and release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

// ------------------------------------------------------------------ processes

/// A process a [`Cluster`] started.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&mut self, signal: Signal) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// An agent process of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// Index into the cluster's processes.
    pub proc: usize,
    pub hostname: String,
    /// The id the master gave it.
    pub id: String,
    pub http: SocketAddr,
    pub cgroup_root: String,
    /// Its `--resources`.
    pub resources: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's processes, files and cgroups; see the module documentation.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Every cgroup root of this cluster is this or starts with it and `-`:
    /// `cella-test-<pid>-<n>-<random>`.
    pub name: String,
    pub bins: Bins,
    pub tls_dir: PathBuf,
    /// The client profile (`CELLA_CONFIG`).
    pub profile: PathBuf,
    /// `https://127.0.0.1:PORT`, once a master runs.
    pub master_url: String,
    pub procs: Vec<Proc>,
    pub agents: Vec<AgentInfo>,
    /// The test user's TLS configuration for the master, and for the agents.
    pub client_tls: rustls::ClientConfig,
    pub agent_tls: rustls::ClientConfig,
    /// Extra flags of the agents [`Cluster::start_agent`] starts.
    pub agent_flags: Vec<String>,
    /// Environment of every process the cluster starts (e.g. `CELLA_LOG=debug`).
    pub env: Vec<(String, String)>,
    /// Flags of the masters [`Cluster::start_master`] starts ([`MASTER_FLAGS`] unless a
    /// test changes them first).
    pub master_flags: Vec<String>,
    master_proc: Option<usize>,
}

fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The user every [`Cluster`] acts as (its certificate is `client.pem` of the
/// cluster's TLS directory).
pub const TEST_USER: &str = "test";

/// Runs `cella ARGS` and panics with its output unless it succeeds; returns stdout.
pub fn cella_ok(bins: &Bins, args: &[&str]) -> String {
    let out = Command::new(&bins.cella)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running cella {args:?}: {e}"));
    assert!(
        out.status.success(),
        "cella {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cella certs init DIR` and `cella certs issue user test`, and puts the user's
/// certificate beside the master's as `client.pem`, so that DIR serves the master and
/// the test's client alike.
pub fn certs_init(bins: &Bins, dir: &Path) {
    let d = dir.to_str().expect("a UTF-8 path");
    cella_ok(bins, &["certs", "init", d]);
    cella_ok(bins, &["certs", "issue", "user", TEST_USER, "--dir", d]);
    for file in ["client.pem", "client-key.pem"] {
        std::fs::copy(dir.join("users").join(TEST_USER).join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
}

/// Issues the certificate of agent node `node` (also valid for 127.0.0.1) from the
/// CA directory `ca`; returns its bundle directory (the agent's `--tls-dir`).
pub fn issue_agent(bins: &Bins, ca: &Path, node: &str) -> PathBuf {
    let bundle = ca.join("agents").join(node);
    if !bundle.exists() {
        let d = ca.to_str().expect("a UTF-8 path");
        cella_ok(
            bins,
            &[
                "certs",
                "issue",
                "agent",
                node,
                "--name",
                "127.0.0.1",
                "--dir",
                d,
            ],
        );
    }
    bundle
}

/// The client TLS configuration of a TLS directory made by [`certs_init`], for the
/// master.
pub fn client_tls(dir: &Path) -> rustls::ClientConfig {
    client_tls_for(dir, cella_proto::tls::ExpectedServer::Master)
}

/// The same, for the agents' APIs.
pub fn agent_client_tls(dir: &Path) -> rustls::ClientConfig {
    client_tls_for(dir, cella_proto::tls::ExpectedServer::Agent)
}

fn client_tls_for(dir: &Path, expected: cella_proto::tls::ExpectedServer) -> rustls::ClientConfig {
    ensure_crypto_provider();
    cella_proto::tls::client_config_for(
        &dir.join("ca.pem"),
        &dir.join("client.pem"),
        &dir.join("client-key.pem"),
        expected,
    )
    .expect("loading the client certificate")
}

impl Cluster {
    /// A temporary directory with certificates and nothing running yet.
    pub fn new() -> Cluster {
        ensure_crypto_provider();
        let bins = bins();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // A random tag too: other test processes (maybe in other pid namespaces,
        // sharing the host's cgroups) must never match this name.
        let tag = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(n);
            h.finish() & 0xff_ffff
        };
        let name = format!("cella-test-{}-{n}-{tag:06x}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir()
            .expect("creating a temporary directory");
        // Tasks run as an unprivileged user and must reach their sandboxes beneath it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the cluster directory");
        let tls_dir = dir.path().join("tls");
        certs_init(&bins, &tls_dir);
        std::fs::create_dir_all(dir.path().join("logs")).expect("creating logs/");
        let client_tls = client_tls(&tls_dir);
        let agent_tls = agent_client_tls(&tls_dir);
        // The fault tests' tasks append to files of the cluster's directory.
        let agent_flags = vec![format!("--allow-volume={}:rw", dir.path().display())];
        let profile = dir.path().join("profile.toml");
        Cluster {
            dir,
            name,
            bins,
            tls_dir,
            profile,
            master_url: String::new(),
            procs: Vec::new(),
            agents: Vec::new(),
            client_tls,
            agent_tls,
            agent_flags,
            env: Vec::new(),
            master_flags: MASTER_FLAGS.iter().map(|f| (*f).to_string()).collect(),
            master_proc: None,
        }
    }

    /// A master and `agents` agents, each offering `resources`.
    pub async fn start(agents: usize, resources: &str) -> Cluster {
        let mut cluster = Cluster::new();
        cluster.start_master().await;
        for _ in 0..agents {
            cluster.start_agent(resources).await;
        }
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// [`Cluster::spawn`] named `prefix` and the number of processes started under
    /// that prefix before (`master-0`, `master-1` after a restart, ...).
    fn spawn_numbered(&mut self, prefix: &str, command: &mut Command) -> usize {
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .count();
        self.spawn(&format!("{prefix}{n}"), command)
    }

    /// Starts a process with its stdout and stderr in `logs/<name>.log`.
    pub fn spawn(&mut self, name: &str, command: &mut Command) -> usize {
        let log = self.path().join("logs").join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating a log file");
        let child = command
            .env_remove("CELLA_MASTER")
            .env_remove("CELLA_TLS_DIR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("CELLA_CONFIG", &self.profile)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
        self.procs.len() - 1
    }

    /// Starts `cella-master` with [`Cluster::master_flags`] and waits for `/health`;
    /// writes the client profile.
    pub async fn start_master(&mut self) {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            if self.spawn_master(&addr).await {
                return;
            }
            // Most likely the port was taken in between: try another one.
        }
        panic!(
            "cella-master did not become healthy; its log:\n{}",
            self.procs
                .last()
                .map(|p| p.log_tail(40))
                .unwrap_or_default()
        );
    }

    /// Kills the master with SIGKILL, waits `down`, and starts it again on the same
    /// address and work directory (its registry); waits for `/health`.
    pub async fn restart_master_hard(&mut self, down: Duration) {
        let idx = self.master_proc.expect("a master was started");
        self.kill_hard(idx);
        tokio::time::sleep(down).await;
        let addr = self
            .master_url
            .strip_prefix("https://")
            .expect("https master URL")
            .to_string();
        // The port was ours a moment ago; another process may take it in between,
        // which is reported rather than retried elsewhere (the agents know this one).
        for _ in 0..10 {
            if self.spawn_master(&addr).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "cella-master did not come back on {addr}; its log:\n{}",
            self.procs
                .last()
                .map(|p| p.log_tail(40))
                .unwrap_or_default()
        );
    }

    /// Starts a master listening on `addr`; true once it is healthy.
    async fn spawn_master(&mut self, addr: &str) -> bool {
        let mut command = Command::new(&self.bins.master);
        command
            .arg("--listen")
            .arg(addr)
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            // Its own registry: never the machine's /var/lib/cella/master.
            .arg("--work-dir")
            .arg(self.path().join("master"))
            .args(&self.master_flags);
        let idx = self.spawn_numbered("master-", &mut command);
        let url = format!("https://{addr}");
        if !self
            .wait_healthy(idx, &url, cella_proto::tls::ExpectedServer::Master)
            .await
        {
            return false;
        }
        self.master_url = url;
        self.master_proc = Some(idx);
        std::fs::write(
            &self.profile,
            format!(
                "master = \"{}\"\ntls_dir = \"{}\"\n",
                self.master_url,
                self.tls_dir.display()
            ),
        )
        .expect("writing the profile");
        true
    }

    /// Polls `GET url/health` until it answers 200 (true) or the process exits (false);
    /// the server must present a certificate of the `expected` kind.
    async fn wait_healthy(
        &mut self,
        idx: usize,
        url: &str,
        expected: cella_proto::tls::ExpectedServer,
    ) -> bool {
        let anonymous =
            cella_proto::tls::client_config_anonymous_for(&self.tls_dir.join("ca.pem"), expected)
                .expect("CA");
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.procs[idx].exited().is_some() {
                return false;
            }
            if let Ok(r) = cella_proto::tls::https_request(
                cella_proto_method_get(),
                &format!("{url}/health"),
                None,
                &anonymous,
            )
            .await
            {
                if r.status.is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.procs[idx].child.kill();
        false
    }

    /// Starts a `cella-agent` offering `resources` (e.g. `cpus:2;mem:2GiB;disk:1GiB`)
    /// and waits until the master lists it as connected.
    pub async fn start_agent(&mut self, resources: &str) -> AgentInfo {
        let k = self.agents.len();
        let info = self.spawn_agent(k, resources).await;
        self.agents.push(info.clone());
        info
    }

    /// Kills agent `k` with SIGKILL (its tasks keep running), waits `down`, and starts
    /// it again on the same work and runtime directories; waits until the master lists
    /// the new process as connected, with the same agent id.
    pub async fn restart_agent_hard(&mut self, k: usize, down: Duration) -> AgentInfo {
        let old = self.agents[k].clone();
        self.kill_hard(old.proc);
        tokio::time::sleep(down).await;
        let info = self.spawn_agent(k, &old.resources).await;
        assert_eq!(
            info.id,
            old.id,
            "agent {k} re-registered under another id\n{}",
            self.log_tails()
        );
        self.agents[k] = info.clone();
        info
    }

    /// Starts agent number `k` (its directories are `agent<k>/`) and waits until the
    /// master lists it as connected at its new HTTP address.
    async fn spawn_agent(&mut self, k: usize, resources: &str) -> AgentInfo {
        let hostname = format!("{}-a{k}", self.name);
        let cgroup_root = hostname.clone();
        let base = self.path().join(format!("agent{k}"));
        // Each agent node has its own certificate.
        let agent_tls_dir = issue_agent(&self.bins, &self.tls_dir, &hostname);
        for _ in 0..5 {
            let http: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("address");
            let mut command = Command::new(&self.bins.agent);
            command
                .arg("--master")
                .arg(&self.master_url)
                .arg("--tls-dir")
                .arg(&agent_tls_dir)
                .arg("--work-dir")
                .arg(base.join("work"))
                .arg("--runtime-dir")
                .arg(base.join("run"))
                .arg("--resources")
                .arg(resources)
                .arg("--hostname")
                .arg(&hostname)
                .arg("--http-listen")
                .arg(http.to_string())
                .arg("--cgroup-root")
                .arg(&cgroup_root)
                .arg("--kill-tasks-on-exit")
                .args(&self.agent_flags);
            let idx = self.spawn_numbered(&format!("agent{k}-"), &mut command);
            if !self
                .wait_healthy(
                    idx,
                    &format!("https://{http}"),
                    cella_proto::tls::ExpectedServer::Agent,
                )
                .await
            {
                continue;
            }
            // The new process is the one connected once the master shows its address.
            let endpoint = http.to_string();
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                assert!(
                    self.procs[idx].exited().is_none(),
                    "agent {hostname} exited; its log:\n{}",
                    self.procs[idx].log_tail(40)
                );
                let agents: Vec<api::Agent> = self.api_get("/api/v1/agents").await;
                let found = agents.into_iter().find(|a| {
                    a.hostname == hostname
                        && a.state == api::AgentState::Connected
                        && a.http_endpoint.ends_with(&endpoint)
                });
                // Registered, and the master's access policy arrived: its API answers.
                let api_ready = found.is_some() && {
                    let url = format!("https://{http}/metrics");
                    cella_proto::tls::https_request(
                        cella_proto_method_get(),
                        &url,
                        None,
                        &self.agent_tls,
                    )
                    .await
                    .is_ok_and(|r| r.status.is_success())
                };
                if let (Some(a), true) = (found, api_ready) {
                    return AgentInfo {
                        proc: idx,
                        hostname,
                        id: a.id,
                        http,
                        cgroup_root,
                        resources: resources.to_string(),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!(
                "agent {hostname} did not register with the master; its log:\n{}",
                self.procs[idx].log_tail(40)
            );
        }
        panic!(
            "cella-agent did not become healthy; its log:\n{}",
            self.procs
                .last()
                .map(|p| p.log_tail(40))
                .unwrap_or_default()
        );
    }

    /// Starts `cella dev --work-dir WORK` (on `ports` = (master, agent HTTP), or free
    /// ones) and waits until it says its cluster runs; points this cluster's client
    /// at it. Returns the process index and the ports.
    pub async fn start_dev(
        &mut self,
        work: &Path,
        ports: Option<(u16, u16)>,
    ) -> (usize, (u16, u16)) {
        for attempt in 0..5 {
            let (listen, agent_listen) = ports.unwrap_or_else(|| (free_port(), free_port()));
            let mut command = Command::new(&self.bins.cella);
            command
                .arg("dev")
                .arg("--work-dir")
                .arg(work)
                .arg("--listen")
                .arg(format!("127.0.0.1:{listen}"))
                .arg("--agent-listen")
                .arg(format!("127.0.0.1:{agent_listen}"))
                .arg("--cgroup-root")
                .arg(format!("{}-dev", self.name));
            let idx = self.spawn_numbered("dev-", &mut command);
            let deadline = Instant::now() + DEADLINE;
            loop {
                if std::fs::read_to_string(&self.procs[idx].log)
                    .unwrap_or_default()
                    .contains("are running")
                {
                    self.master_url = format!("https://127.0.0.1:{listen}");
                    self.client_tls = client_tls(&work.join("tls"));
                    self.agent_tls = agent_client_tls(&work.join("tls"));
                    self.master_proc = Some(idx);
                    return (idx, (listen, agent_listen));
                }
                if self.procs[idx].exited().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cella dev did not say it is running:\n{}",
                    self.procs[idx].log_tail(40)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Ports chosen by the test are not retried elsewhere.
            if ports.is_some() && attempt >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cella dev did not start:\n{}", self.log_tails());
    }

    // -------------------------------------------------------------- the CLI

    /// A `cella` command using this cluster's profile (through `CELLA_CONFIG`).
    pub fn cella_command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bins.cella);
        command
            .env_remove("CELLA_MASTER")
            .env_remove("CELLA_TLS_DIR")
            .env("CELLA_CONFIG", &self.profile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `cella ARGS` to completion (killed after [`DEADLINE`]).
    pub async fn cella(&self, args: &[&str]) -> CliOutput {
        let mut command = self.cella_command();
        command.args(args);
        run_cli(command, args).await
    }

    // -------------------------------------------------------------- the API

    /// `GET master_url + path` as the cluster's client, decoded as `T` (the types of
    /// `cella_proto::api`); panics unless the answer is 2xx JSON of that shape.
    pub async fn api_get<T: DeserializeOwned>(&self, path: &str) -> T {
        let url = format!("{}{path}", self.master_url);
        cella_proto::tls::https_get_json(&url, &self.client_tls)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The master's view of a task, if it knows it.
    pub async fn task(&self, id: &str) -> Option<api::Task> {
        let url = format!("{}/api/v1/tasks/{id}", self.master_url);
        let r =
            cella_proto::tls::https_request(cella_proto_method_get(), &url, None, &self.client_tls)
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        if r.status.as_u16() == 404 {
            return None;
        }
        assert!(r.status.is_success(), "GET {url}: {}", r.status);
        Some(serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "GET {url}: not a task ({e}): {}",
                String::from_utf8_lossy(&r.body)
            )
        }))
    }

    /// Polls the master until task `id` is in `state` (a name: `RUNNING`…); returns
    /// the master's view of it.
    pub async fn wait_task_state(&self, id: &str, state: &str) -> api::Task {
        let deadline = Instant::now() + DEADLINE;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.task(id).await;
            if let Some(t) = last.take_if(|t| t.state.name() == state) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "task {id} did not become {state} within {DEADLINE:?}; last seen: {}\n{}",
            last.map_or("unknown to the master".into(), |t| format!("{t:?}")),
            self.log_tails()
        );
    }

    /// Every task the master knows.
    pub async fn tasks(&self) -> Vec<api::Task> {
        self.api_get("/api/v1/tasks").await
    }

    /// `GET /api/v1/containers` of an agent.
    pub async fn agent_containers(&self, agent: &AgentInfo) -> Vec<Value> {
        let url = format!("https://{}/api/v1/containers", agent.http);
        match cella_proto::tls::https_get_json(&url, &self.agent_tls).await {
            Ok(Value::Array(a)) => a,
            Ok(other) => panic!("{url} is not an array: {other}"),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }

    /// The value of the agent's Prometheus metric whose name ends with `suffix`
    /// (e.g. `status_updates_pending`), if it exports one.
    pub async fn agent_metric(&self, agent: &AgentInfo, suffix: &str) -> Option<f64> {
        let url = format!("https://{}/metrics", agent.http);
        let r =
            cella_proto::tls::https_request(cella_proto_method_get(), &url, None, &self.agent_tls)
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status.is_success(), "GET {url}: {}", r.status);
        String::from_utf8_lossy(&r.body).lines().find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            if line.starts_with('#') || !name.ends_with(suffix) {
                return None;
            }
            value.trim().parse().ok()
        })
    }

    /// Opens a scheduler stream to the master.
    pub async fn subscribe(&self, info: v1::FrameworkInfo) -> Scheduler {
        Scheduler::subscribe(&self.master_url, &self.client_tls, info)
            .await
            .unwrap_or_else(|e| panic!("SUBSCRIBE: {e}"))
    }

    // -------------------------------------------------------------- leftovers

    /// Pids of `cella-shim` processes whose run directory is in this cluster's
    /// directory.
    pub fn shims(&self) -> Vec<i32> {
        processes_under(self.path())
            .into_iter()
            .filter(|(_, argv)| {
                argv.first().is_some_and(|a| {
                    a.ends_with("cella-shim") || a.ends_with("cella-shim (deleted)")
                })
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Stops the `cella dev` process `idx` with SIGINT (Ctrl-C) and checks that it
    /// exits with status 0 and leaves no task shim running.
    pub fn interrupt_dev(&mut self, idx: usize) {
        kill(Pid::from_raw(self.procs[idx].pid()), Signal::SIGINT).expect("SIGINT to cella dev");
        let status = self.procs[idx].wait_timeout(DEADLINE);
        let log = self.procs[idx].log_tail(40);
        let status = status.unwrap_or_else(|| panic!("cella dev did not stop on SIGINT:\n{log}"));
        assert_eq!(
            status.code(),
            Some(0),
            "cella dev exit status after SIGINT:\n{log}"
        );
        assert!(
            self.shims().is_empty(),
            "Ctrl-C leaves no task shim of cella dev running:\n{log}"
        );
    }

    /// Task id → pids of the `cella-shim`s running for it on agent `k` (a shim's
    /// argument is its run directory, `agent<k>/run/tasks/<task id>`).
    pub fn agent_shims(&self, k: usize) -> BTreeMap<String, Vec<i32>> {
        let tasks_dir = self.path().join(format!("agent{k}/run/tasks"));
        let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (pid, argv) in processes_under(&tasks_dir) {
            if !argv.first().is_some_and(|a| a.contains("cella-shim")) {
                continue;
            }
            if let Some(id) = argv
                .get(1)
                .and_then(|a| Path::new(a).strip_prefix(&tasks_dir).ok())
                .and_then(|rel| rel.components().next())
            {
                let id = id.as_os_str().to_string_lossy().into_owned();
                out.entry(id).or_default().push(pid);
            }
        }
        out
    }

    /// Names of the task cgroups of agent `k`: the children of its cgroup root, in
    /// every hierarchy.
    pub fn agent_task_cgroups(&self, k: usize) -> BTreeSet<String> {
        let mut roots = Vec::new();
        find_cgroups(
            Path::new("/sys/fs/cgroup"),
            &self.agents[k].cgroup_root,
            &mut roots,
            0,
        );
        let mut names = BTreeSet::new();
        for root in roots.iter().filter(|r| {
            r.file_name()
                .is_some_and(|n| n == self.agents[k].cgroup_root.as_str())
        }) {
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names
    }

    /// Task run directories (`agent<k>/run/tasks/*`) of agent `k`.
    pub fn agent_run_dirs(&self, k: usize) -> BTreeSet<String> {
        let dir = self.path().join(format!("agent{k}/run/tasks"));
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Mount points inside this cluster's directory, as this process sees them (a
    /// task's mounts live in its own mount namespace; none may leak out here).
    pub fn mounts(&self) -> Vec<String> {
        let me = self.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(cella_containerizer::cgroups::unescape_mountinfo)
            .filter(|m| m.starts_with(&me))
            .collect()
    }

    /// Cgroup directories anywhere under /sys/fs/cgroup named after this cluster
    /// (its name, or its name followed by `-`).
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        find_cgroups(Path::new("/sys/fs/cgroup"), &self.name, &mut found, 0);
        found
    }

    /// SIGKILLs the shims and every process in this cluster's cgroups, then removes
    /// the cgroups (deepest first).
    pub fn kill_tasks_and_cgroups(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in self.shims() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let mut dirs = Vec::new();
            for root in self.cgroups() {
                collect_dirs(&root, &mut dirs);
            }
            for dir in &dirs {
                let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
                for pid in read_pids(dir) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in &dirs {
                let _ = std::fs::remove_dir(dir);
            }
            if (self.cgroups().is_empty() && self.shims().is_empty()) || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs process `idx` and waits for it.
    pub fn kill_hard(&mut self, idx: usize) {
        let p = &mut self.procs[idx];
        p.signal(Signal::SIGKILL);
        let _ = p.wait_timeout(Duration::from_secs(10));
    }

    /// Stops every process: SIGTERM (SIGINT for `cella dev`), then SIGKILL after
    /// 15 s. Agents first (they kill their tasks), the master last.
    pub fn stop_all(&mut self) -> Vec<(String, Option<ExitStatus>)> {
        let master = self.master_proc;
        let order: Vec<usize> = (0..self.procs.len())
            .filter(|i| Some(*i) != master)
            .chain(master)
            .collect();
        let mut statuses = Vec::new();
        for i in order {
            let p = &mut self.procs[i];
            if p.exited().is_none() {
                p.signal(if p.name.starts_with("dev") {
                    Signal::SIGINT
                } else {
                    Signal::SIGTERM
                });
            }
            let status = p.wait_timeout(Duration::from_secs(15));
            if status.is_none() {
                p.signal(Signal::SIGKILL);
                let _ = p.wait_timeout(Duration::from_secs(5));
            }
            statuses.push((p.name.clone(), status));
        }
        statuses
    }

    /// Stops everything gracefully and asserts that no shim and no cgroup of this
    /// cluster is left (waiting up to 10 s for them to go).
    pub fn finish(mut self) {
        self.stop_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !(self.shims().is_empty() && self.cgroups().is_empty()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let shims = self.shims();
        let cgroups = self.cgroups();
        let logs = self.log_tails();
        assert!(
            shims.is_empty() && cgroups.is_empty(),
            "left behind after stopping the cluster: cella-shim pids {shims:?}, cgroups {cgroups:?}\n{logs}"
        );
    }

    /// Every log line (of every process) that mentions `needle`, prefixed with the
    /// process name: the story of one task across restarts.
    pub fn log_lines_with(&self, needle: &str) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains(needle)) {
                out.push_str(&format!("{}: {line}\n", p.name));
            }
        }
        out
    }

    /// The ends of every process log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!(
                "---- {} ({})\n{}\n",
                p.name,
                p.log.display(),
                p.log_tail(30)
            ));
        }
        out
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster {} at {}:\n{}",
                self.name,
                self.path().display(),
                self.log_tails()
            );
        }
        for p in &mut self.procs {
            p.signal(Signal::SIGKILL);
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
        self.kill_tasks_and_cgroups();
    }
}

fn cella_proto_method_get() -> cella_proto_http::Method {
    cella_proto_http::Method::GET
}

/// The `http` crate as `cella_proto`'s helpers take it.
mod cella_proto_http {
    pub use tonic::codegen::http::Method;
}

/// `(pid, argv)` of processes with an argument inside `dir`.
fn processes_under(dir: &Path) -> Vec<(i32, Vec<String>)> {
    let needle = dir.to_string_lossy().to_string();
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    // A process that exits meanwhile, or whose command line is not UTF-8 (no path
    // of ours is), is left out.
    processes
        .flatten()
        .filter_map(|p| Some((p.pid(), p.cmdline().ok()?)))
        .filter(|(_, argv)| argv.iter().skip(1).any(|a| a.starts_with(&needle)))
        .collect()
}

fn find_cgroups(dir: &Path, prefix: &str, found: &mut Vec<PathBuf>, depth: usize) {
    if depth > 12 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_dir() || ft.is_symlink() {
            continue;
        }
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name == prefix
            || file_name
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
        {
            found.push(path);
        } else {
            find_cgroups(&path, prefix, found, depth + 1);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry
                .file_type()
                .is_ok_and(|t| t.is_dir() && !t.is_symlink())
            {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

// ------------------------------------------------------------------ CLI runs

/// The result of a `cella` run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for CliOutput {
    fn from(o: Output) -> Self {
        CliOutput {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The write end of a pipe whose read end is already closed: writes to it fail with
/// EPIPE, as a command's output into `| head` does once `head` has gone.
pub fn closed_pipe() -> std::os::fd::OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

/// Runs a prepared `cella` command with a [`DEADLINE`] (it is killed after it).
pub async fn run_cli(mut command: tokio::process::Command, args: &[&str]) -> CliOutput {
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting cella {args:?}: {e}"));
    match tokio::time::timeout(DEADLINE, child.wait_with_output()).await {
        Ok(Ok(out)) => out.into(),
        Ok(Err(e)) => panic!("waiting for cella {args:?}: {e}"),
        Err(_) => panic!("cella {args:?} did not finish within {DEADLINE:?}"),
    }
}

// ------------------------------------------------------------------ scheduler

/// A scheduler stream, driven by the test.
pub struct Scheduler {
    pub framework_id: String,
    calls: mpsc::UnboundedSender<v1::Call>,
    events: tonic::Streaming<v1::Event>,
    /// Events read while looking for something else, in order.
    backlog: std::collections::VecDeque<v1::Event>,
    /// Every status update received, in order (including duplicates), for tests that
    /// check what a scheduler was told over a whole run.
    pub history: Vec<v1::TaskStatus>,
    /// Whether updates are acknowledged as they are read (true unless a test turns it
    /// off to play a scheduler that never acknowledges).
    pub acknowledge: bool,
}

/// A framework description.
pub fn framework(name: &str, role: &str, failover_secs: f64) -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        framework_id: String::new(),
        name: name.into(),
        role: role.into(),
        failover_timeout_secs: failover_secs,
    }
}

/// A task running `command` with `cpus` and `mem_mib`.
pub fn task(id: &str, command: &[&str], cpus: f64, mem_mib: u64) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: id.into(),
        name: id.into(),
        command: command.iter().map(|s| (*s).to_string()).collect(),
        resources: Some(v1::Resources {
            cpus,
            mem_bytes: mem_mib << 20,
            disk_bytes: 0,
        }),
        ..Default::default()
    }
}

impl Scheduler {
    /// Connects, sends SUBSCRIBE and waits for SUBSCRIBED.
    pub async fn subscribe(
        url: &str,
        tls: &rustls::ClientConfig,
        info: v1::FrameworkInfo,
    ) -> Result<Scheduler, String> {
        let channel = cella_proto::tls::grpc_channel(url, tls)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let mut client = SchedulerServiceClient::new(channel);
        let (calls, rx) = mpsc::unbounded_channel();
        let _ = calls.send(v1::Call::subscribe(info));
        let mut events = client
            .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| format!("status {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, events.next())
            .await
            .map_err(|_| "no SUBSCRIBED within the deadline".to_string())?
            .ok_or("the stream ended before SUBSCRIBED")?
            .map_err(|s| format!("status {:?}: {}", s.code(), s.message()))?;
        match first.event {
            Some(event::Event::Subscribed(s)) => Ok(Scheduler {
                framework_id: s.framework_id,
                calls,
                events,
                backlog: Default::default(),
                history: Vec::new(),
                acknowledge: true,
            }),
            other => Err(format!("expected SUBSCRIBED first, got {other:?}")),
        }
    }

    pub fn send(&self, c: call::Call) {
        self.calls
            .send(v1::Call { call: Some(c) })
            .expect("the scheduler stream is closed");
    }

    /// ACCEPT of one offer, refusing nothing (refuse_seconds 0).
    pub fn accept(&self, offer_id: &str, tasks: Vec<v1::TaskInfo>) {
        self.send(call::Call::Accept(call::Accept {
            offer_ids: vec![offer_id.to_string()],
            tasks,
            refuse_seconds: Some(0.0),
        }));
    }

    /// DECLINE of one offer, refusing nothing (refuse_seconds 0).
    pub fn decline(&self, offer_id: &str) {
        self.send(call::Call::Decline(call::Decline {
            offer_ids: vec![offer_id.to_string()],
            refuse_seconds: Some(0.0),
        }));
    }

    pub fn kill(&self, task_id: &str) {
        self.send(call::Call::Kill(call::Kill {
            task_id: task_id.into(),
            kill_policy: None,
        }));
    }

    pub fn reconcile(&self, task_ids: &[&str]) {
        self.send(call::Call::Reconcile(call::Reconcile {
            task_ids: task_ids.iter().map(|s| (*s).to_string()).collect(),
        }));
    }

    /// The next event (heartbeats skipped), or `None` after `timeout` or at the end
    /// of the stream. Status updates that carry a uuid are acknowledged.
    pub async fn next(&mut self, timeout: Duration) -> Option<v1::Event> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .ok()??
                .ok()?;
            match &e.event {
                Some(event::Event::Heartbeat(_)) | None => continue,
                Some(event::Event::Update(u)) => {
                    if let Some(s) = &u.status {
                        self.history.push(s.clone());
                    }
                    if let Some(s) = u
                        .status
                        .as_ref()
                        .filter(|s| self.acknowledge && !s.uuid.is_empty())
                    {
                        let _ = self.calls.send(v1::Call {
                            call: Some(call::Call::Acknowledge(call::Acknowledge {
                                agent_id: s.agent_id.clone(),
                                task_id: s.task_id.clone(),
                                uuid: s.uuid.clone(),
                            })),
                        });
                    }
                }
                _ => {}
            }
            return Some(e);
        }
    }

    /// Waits for an event `pick` accepts; other events are kept for later.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&v1::Event) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        // Look at the backlog first.
        let mut i = 0;
        while i < self.backlog.len() {
            if let Some(t) = pick(&self.backlog[i]) {
                self.backlog.remove(i);
                return t;
            }
            i += 1;
        }
        let backlog = std::mem::take(&mut self.backlog);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self.next(left).await else {
                self.backlog = backlog;
                self.backlog.extend(skipped);
                panic!(
                    "framework {}: no {what} within {timeout:?}; events meanwhile: {:?}",
                    self.framework_id, self.backlog
                );
            };
            if let Some(t) = pick(&e) {
                self.backlog = backlog;
                self.backlog.extend(skipped);
                return t;
            }
            skipped.push(e);
        }
    }

    /// Waits for OFFERS (any), returning them.
    pub async fn offers(&mut self) -> Vec<v1::Offer> {
        self.wait_for("OFFERS", DEADLINE, |e| match &e.event {
            Some(event::Event::Offers(o)) => Some(o.offers.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for OFFERS and accepts the first of them with `tasks`, declining the
    /// others (with one agent there are none).
    pub async fn accept_next_offer(&mut self, tasks: Vec<v1::TaskInfo>) {
        let offers = self.offers().await;
        let (first, rest) = offers.split_first().expect("OFFERS with no offer");
        self.accept(&first.offer_id, tasks);
        for offer in rest {
            self.decline(&offer.offer_id);
        }
    }

    /// Waits for an UPDATE of `task_id` with `state`.
    pub async fn update(&mut self, task_id: &str, state: v1::TaskState) -> v1::TaskStatus {
        self.wait_for(
            &format!("UPDATE {task_id} {}", state.as_str_name()),
            DEADLINE,
            |e| match &e.event {
                Some(event::Event::Update(u))
                    if u.status
                        .as_ref()
                        .is_some_and(|s| s.task_id == task_id && s.state == state as i32) =>
                {
                    u.status.clone()
                }
                _ => None,
            },
        )
        .await
    }

    /// Waits for the first UPDATE of `task_id`.
    pub async fn any_update(&mut self, task_id: &str) -> v1::TaskStatus {
        self.wait_for(&format!("UPDATE {task_id}"), DEADLINE, |e| match &e.event {
            Some(event::Event::Update(u))
                if u.status.as_ref().is_some_and(|s| s.task_id == task_id) =>
            {
                u.status.clone()
            }
            _ => None,
        })
        .await
    }

    /// Drops every event read so far but not consumed.
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    /// Drops the updates of `task_id` read so far but not consumed.
    pub fn forget_updates(&mut self, task_id: &str) {
        self.backlog.retain(|e| {
            !matches!(&e.event, Some(event::Event::Update(u))
                if u.status.as_ref().is_some_and(|s| s.task_id == task_id))
        });
    }
}
