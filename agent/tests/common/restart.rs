//! What the agent-restart tests share: a master in this process, the `cella-agent`
//! binary started (and SIGKILLed) on one work directory, and what they look at on
//! the machine (processes, shims, cgroups, the checkpoint).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_agent::AgentConfig;
use cella_agent::paths;
use cella_agent::store::{Checkpoint, Store, Write};
use cella_containerizer::paths::RunDir;
use cella_proto::v1;

use super::{Master, Scheduler, WAIT, cleanup_cgroups, require_root, shim_path, task};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A master, a work directory and a test cgroup; the agent binary comes and goes.
pub struct Env {
    /// A filesystem of its own on the work directory, if any. Declared before `dir`,
    /// so it is unmounted before the directory is removed (a mount point cannot be).
    work_fs: Option<SmallFs>,
    pub dir: tempfile::TempDir,
    pub layout: cella_proto::tls::Layout,
    pub master: Option<Master>,
    pub cgroup: String,
}

/// A task launched by [`Env::launch_running`], RUNNING on `agent`.
pub struct Launched {
    pub agent: AgentProc,
    pub s: Scheduler,
    pub agent_id: String,
    /// The pid of the task's shim.
    pub shim: i32,
}

/// The agent binary, killed with SIGKILL on drop.
pub struct AgentProc {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl AgentProc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal the agent");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (it should); returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's `/health` (None while the API does not answer).
    pub async fn health(&self, tls: &rustls::ClientConfig) -> Option<serde_json::Value> {
        let url = format!("https://127.0.0.1:{}/health", self.port);
        cella_proto::tls::https_get_json(&url, tls).await.ok()
    }

    /// `cella_agent_status_updates_pending` from the agent's `/metrics` (None while
    /// the API does not answer).
    pub async fn pending_updates(&self, tls: &rustls::ClientConfig) -> Option<u64> {
        let url = format!("https://127.0.0.1:{}/metrics", self.port);
        let r = cella_proto::tls::https_request(axum::http::Method::GET, &url, None, tls)
            .await
            .ok()?;
        String::from_utf8_lossy(&r.body).lines().find_map(|l| {
            l.strip_prefix("cella_agent_status_updates_pending ")
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Env {
    pub async fn new() -> Env {
        require_root();
        let dir = super::tempdir();
        let layout =
            cella_proto::tls::init_dir(&dir.path().join("tls"), &[]).expect("certificates");
        let master = Master::start(&layout, "127.0.0.1:0".parse().expect("addr")).await;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Env {
            work_fs: None,
            dir,
            layout,
            master: Some(master),
            cgroup: format!("cella-rtest-{}-{n}", std::process::id()),
        }
    }

    /// [`Env::new`] with the work directory on a tmpfs of `size`: what the agent
    /// keeps there, not the host's disk, decides how full it is.
    pub async fn on_small_work_fs(size: &str) -> Env {
        let mut env = Env::new().await;
        env.work_fs = Some(SmallFs::mount(&env.work_dir(), size));
        env
    }

    /// The share of the work directory's tmpfs in use.
    pub fn work_fs_used_share(&self) -> f64 {
        self.work_fs
            .as_ref()
            .expect("an environment made by on_small_work_fs")
            .used_share()
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The containerizer's run directory of `task`.
    pub fn run_dir(&self, task: &str) -> RunDir {
        RunDir::new(&self.runtime_dir(), task)
    }

    pub fn sandbox(&self, task: &str) -> PathBuf {
        paths::sandbox_dir(&self.work_dir(), task)
    }

    /// Waits (up to [`WAIT`]) until the garbage collector has removed `task`'s sandbox.
    pub async fn wait_sandbox_gone(&self, task: &str) {
        let what = format!("the sandbox of {task} to go");
        wait_until(&what, async || !self.sandbox(task).exists()).await;
    }

    pub fn master_url(&self) -> String {
        self.master.as_ref().expect("master").url()
    }

    /// Starts `cella-agent` on this environment's directories, with `extra` flags.
    pub fn spawn(&self, extra: &[&str]) -> AgentProc {
        let port = free_port();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_cella-agent"))
            .arg("--master")
            .arg(self.master_url())
            .arg("--tls-dir")
            .arg(&self.layout.dir)
            .arg("--work-dir")
            .arg(self.work_dir())
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .args(["--resources", "cpus:4;mem:4GiB;disk:10GiB"])
            .args(["--http-listen", &format!("127.0.0.1:{port}")])
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .args(["--usage-interval", "300ms", "--hostname", "test-agent"])
            .args(extra)
            .env("CELLA_SHIM", shim_path())
            .env("CELLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cella-agent");
        AgentProc { child, port, log }
    }

    /// Starts the agent (with `extra` flags) and a scheduler, and waits for the
    /// agent's first offer; returns them with the agent's id.
    pub async fn start_with_scheduler(&self, extra: &[&str]) -> (AgentProc, Scheduler, String) {
        let agent = self.spawn(extra);
        let mut s = self.scheduler().await;
        let agent_id = s.any_offer_agent().await;
        (agent, s, agent_id)
    }

    /// Starts the agent, launches task `id` running `cmd` and waits until it is
    /// RUNNING.
    pub async fn launch_running(&self, id: &str, cmd: &[&str]) -> Launched {
        let (agent, mut s, agent_id) = self.start_with_scheduler(&[]).await;
        s.launch(&agent_id, vec![task(id, cmd, 16 << 20)]).await;
        s.wait_for(id, WAIT, |st| st.state() == v1::TaskState::TaskRunning)
            .await;
        let shim = shim_pid(&self.run_dir(id));
        Launched {
            agent,
            s,
            agent_id,
            shim,
        }
    }

    /// [`Env::launch_running`], then kills the agent with SIGKILL (the task runs on).
    pub async fn launch_running_then_kill9(&self, id: &str, cmd: &[&str]) -> Launched {
        let mut launched = self.launch_running(id, cmd).await;
        launched.agent.kill9();
        launched
    }

    /// Starts the agent again and waits for the final status of task `id`, which
    /// must be `state`; returns the agent and that status.
    pub async fn respawn_until_end(
        &self,
        s: &mut Scheduler,
        id: &str,
        state: v1::TaskState,
    ) -> (AgentProc, v1::TaskStatus) {
        let agent = self.spawn(&[]);
        let end = s.wait_terminal(id).await;
        assert_eq!(end.state(), state, "{end:?}\n{}", agent.log());
        (agent, end)
    }

    pub fn client_tls(&self) -> rustls::ClientConfig {
        super::client_tls(&self.layout)
    }

    pub fn agent_tls(&self) -> rustls::ClientConfig {
        super::agent_tls(&self.layout)
    }

    pub async fn scheduler(&self) -> Scheduler {
        Scheduler::subscribe(&self.master_url(), &self.client_tls(), "").await
    }

    pub async fn master_task(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/api/v1/tasks/{id}", self.master_url());
        cella_proto::tls::https_get_json(&url, &self.client_tls())
            .await
            .expect("master task")
    }

    /// Reads `s`'s events until `agent` has no unacknowledged update left (the
    /// scheduler acknowledges what it reads): every update the agent had to say has
    /// then been seen.
    pub async fn settle(&self, agent: &AgentProc, s: &mut Scheduler) {
        let tls = self.agent_tls();
        let deadline = Instant::now() + WAIT;
        loop {
            s.drain_for(Duration::from_millis(100)).await;
            if agent.pending_updates(&tls).await == Some(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "updates still unacknowledged: {}",
                agent.log()
            );
        }
    }

    /// The checkpoint as a restarted agent would read it (no agent may run).
    pub async fn checkpoint(&self) -> Checkpoint {
        self.edit_checkpoint(|_| Vec::new()).await
    }

    /// Applies the writes `edit` returns for the checkpoint as it is (no agent may
    /// run); returns the checkpoint as it was before.
    pub async fn edit_checkpoint(
        &self,
        edit: impl FnOnce(&Checkpoint) -> Vec<Write>,
    ) -> Checkpoint {
        let (store, owner, cp) = Store::open(&self.work_dir()).expect("checkpoint");
        let writes = edit(&cp);
        if !writes.is_empty() {
            store.write(writes).await.expect("write the checkpoint");
        }
        drop(store);
        owner.close();
        cp
    }

    /// Whether a damaged checkpoint was moved aside (and kept) in `meta/`.
    pub fn damaged_checkpoint_kept(&self) -> bool {
        std::fs::read_dir(paths::meta_dir(&self.work_dir()))
            .expect("meta/")
            .flatten()
            .any(|e| paths::is_damaged_checkpoint(&e.file_name().to_string_lossy()))
    }

    /// Waits until nothing of task `id` runs any more: its shim is gone, no process
    /// runs `cmd`, and its cgroups are removed.
    pub async fn assert_task_gone(&self, id: &str, cmd: &[&str], shim: i32) {
        wait_until("the task's shim to be gone", async || !alive(shim)).await;
        assert!(processes(cmd).is_empty(), "{id}: {cmd:?} still runs");
        // The cgroups are removed just after the shim exits, not before.
        wait_until("the task's cgroups to be removed", async || {
            task_cgroups(&self.cgroup, id).is_empty()
        })
        .await;
        assert!(
            task_cgroups(&self.cgroup, id).is_empty(),
            "{id}: cgroups left {:?}",
            task_cgroups(&self.cgroup, id)
        );
    }

    /// Ends a test: waits until nothing of task `id` is left (as
    /// [`Env::assert_task_gone`]), then stops the agent and the master.
    pub async fn stop_once_task_gone(self, agent: AgentProc, id: &str, cmd: &[&str], shim: i32) {
        self.assert_task_gone(id, cmd, shim).await;
        drop(agent);
        self.stop().await;
    }

    /// The configuration of an agent in this process on the same directories.
    pub fn in_process_config(&self) -> AgentConfig {
        AgentConfig {
            master: self.master_url(),
            tls_dir: self.layout.dir.clone(),
            work_dir: self.work_dir(),
            runtime_dir: self.runtime_dir(),
            resources: cella_agent::config::parse_resources("cpus:4;mem:4GiB;disk:10GiB", false)
                .expect("resources"),
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            cgroup_root: Some(PathBuf::from(&self.cgroup)),
            shim_path: Some(shim_path()),
            hostname: Some("test-agent".into()),
            ..Default::default()
        }
    }

    pub async fn stop(mut self) {
        if let Some(m) = self.master.take() {
            m.stop().await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        cleanup_cgroups(&self.cgroup);
    }
}

/// Processes whose command line is exactly `args`.
pub fn processes(args: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` runs (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The shim's pid, from its run directory.
pub fn shim_pid(run_dir: &RunDir) -> i32 {
    let text = std::fs::read_to_string(run_dir.shim_pid()).expect("shim.pid");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in shim.pid")
}

/// Cgroup directories named `task` below any directory named `cgroup`.
pub fn task_cgroups(cgroup: &str, task: &str) -> Vec<PathBuf> {
    super::cgroup_dirs(6, &|p| {
        p.file_name().is_some_and(|n| n == task)
            && p.parent()
                .is_some_and(|parent| parent.iter().any(|c| c == cgroup))
    })
}

/// Waits (up to [`WAIT`]) until `f` is true.
pub async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tmpfs mounted for one test, lazily unmounted on drop (also when it fails).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mounting a tmpfs (needs root)");
        SmallFs(at.to_path_buf())
    }

    fn used_share(&self) -> f64 {
        let st = nix::sys::statvfs::statvfs(&self.0).expect("statvfs");
        #[allow(clippy::cast_precision_loss)]
        let (used, avail) = (
            (st.blocks() - st.blocks_free()) as f64,
            st.blocks_available() as f64,
        );
        used / (used + avail)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
