//! Agent restarts: the `cella-agent` binary killed with SIGKILL and started again on
//! the same work directory, with a real in-process master, real shims and cgroups.
//! Needs root and `cella-shim` (`cargo build --workspace --bins`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_agent::store::{Store, Write};
use cella_agent::{Agent, AgentConfig, AgentError};
use cella_proto::v1::{self, call};
use common::{Master, Scheduler, WAIT, cleanup_cgroups, shim_path, task};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A task launched by [`Env::launch_running`], RUNNING on `agent`.
struct Launched {
    agent: AgentProc,
    s: Scheduler,
    agent_id: String,
    /// The pid of the task's shim.
    shim: i32,
}

struct Env {
    dir: tempfile::TempDir,
    layout: cella_proto::tls::Layout,
    master: Option<Master>,
    cgroup: String,
}

/// The agent binary, killed with SIGKILL on drop.
struct AgentProc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl AgentProc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (it should); returns its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
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
    async fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout =
            cella_proto::tls::init_dir(&dir.path().join("tls"), &[]).expect("certificates");
        let master = Master::start(&layout, "127.0.0.1:0".parse().expect("addr")).await;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Env {
            dir,
            layout,
            master: Some(master),
            cgroup: format!("cella-rtest-{}-{n}", std::process::id()),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn master_url(&self) -> String {
        self.master.as_ref().expect("master").url()
    }

    fn spawn(&self, extra: &[&str]) -> AgentProc {
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

    /// Starts the agent, launches task `id` running `cmd` and waits until it is
    /// RUNNING.
    async fn launch_running(&self, id: &str, cmd: &[&str]) -> Launched {
        let agent = self.spawn(&[]);
        let mut s = self.scheduler().await;
        let agent_id = s.any_offer_agent().await;
        s.launch(&agent_id, vec![task(id, cmd, 16 << 20)]).await;
        s.wait_for(id, WAIT, |st| st.state() == v1::TaskState::TaskRunning)
            .await;
        let shim = shim_pid(&self.runtime_dir(), id);
        Launched {
            agent,
            s,
            agent_id,
            shim,
        }
    }

    fn client_tls(&self) -> rustls::ClientConfig {
        cella_proto::tls::client_config(
            &self.layout.ca_cert,
            &self.layout.client_cert,
            &self.layout.client_key,
        )
        .expect("client tls")
    }

    async fn scheduler(&self) -> Scheduler {
        Scheduler::subscribe(&self.master_url(), &self.client_tls(), "").await
    }

    async fn master_task(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/api/v1/tasks/{id}", self.master_url());
        cella_proto::tls::https_get_json(&url, &self.client_tls())
            .await
            .expect("master task")
    }

    fn in_process_config(&self) -> AgentConfig {
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

    async fn stop(mut self) {
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
fn processes(args: &[&str]) -> Vec<i32> {
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

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

fn shim_pid(runtime: &Path, task: &str) -> i32 {
    let text = std::fs::read_to_string(runtime.join("tasks").join(task).join("shim.pid"))
        .expect("shim.pid");
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in shim.pid")
}

/// Cgroup directories named `task` below any directory named `cgroup`.
fn task_cgroups(cgroup: &str, task: &str) -> Vec<PathBuf> {
    fn walk(
        dir: &Path,
        cgroup: &str,
        task: &str,
        inside: bool,
        depth: usize,
        out: &mut Vec<PathBuf>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            let name = e.file_name();
            if inside && name == task {
                out.push(p.clone());
            }
            if depth > 0 {
                walk(&p, cgroup, task, inside || name == cgroup, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        cgroup,
        task,
        false,
        6,
        &mut out,
    );
    out
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_reattaches_to_its_running_task() {
    let env = Env::new().await;
    let cmd = ["sleep", "1001"];
    let Launched {
        mut agent,
        mut s,
        agent_id,
        shim,
    } = env.launch_running("sleeper", &cmd).await;
    assert_eq!(processes(&cmd).len(), 1);

    agent.kill9();
    assert!(alive(shim), "the task's shim died with the agent");
    let agent = env.spawn(&[]);

    // The new agent re-attached: it samples the task (its own API shows usage).
    let url = format!("https://127.0.0.1:{}/api/v1/containers", agent.port);
    let tls = env.client_tls();
    wait_until("usage of the recovered task", async || {
        let Ok(list) = cella_proto::tls::https_get_json::<serde_json::Value>(&url, &tls).await
        else {
            return false;
        };
        list.as_array().is_some_and(|l| {
            l.iter().any(|c| {
                c["task_id"] == "sleeper"
                    && c["state"] == "RUNNING"
                    && c["usage"]["mem_current_bytes"].is_u64()
            })
        })
    })
    .await;
    // The master shows it RUNNING, with usage, on the same agent.
    wait_until("the task RUNNING at the master with usage", async || {
        let t = env.master_task("sleeper").await;
        t["state"] == "RUNNING" && t["agent_id"] == agent_id.as_str() && t["usage"].is_object()
    })
    .await;
    assert_eq!(shim_pid(&env.runtime_dir(), "sleeper"), shim);
    assert!(alive(shim));
    assert_eq!(processes(&cmd).len(), 1, "a second copy runs");
    // Nothing but STARTING and RUNNING was ever reported.
    s.drain_for(Duration::from_millis(500)).await;
    assert!(
        s.states("sleeper")
            .iter()
            .all(|st| matches!(st, v1::TaskState::TaskStarting | v1::TaskState::TaskRunning)),
        "{:?}\n{}",
        s.states("sleeper"),
        agent.log()
    );

    // The recovered task is monitored as usual: a kill ends it with KILLED.
    s.send(call::Call::Kill(call::Kill {
        task_id: "sleeper".into(),
    }));
    let end = s.wait_terminal("sleeper").await;
    assert_eq!(end.state(), v1::TaskState::TaskKilled, "{end:?}");
    wait_until("the shim to end", async || !alive(shim)).await;
    assert!(processes(&cmd).is_empty());
    drop(agent);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ended_while_the_agent_was_down_reports_its_exit_code_once() {
    let env = Env::new().await;
    let mut agent = env.spawn(&[]);
    let mut s = env.scheduler().await;
    let agent_id = s.any_offer_agent().await;
    s.launch(
        &agent_id,
        vec![task("exit3", &["sh", "-c", "sleep 1; exit 3"], 16 << 20)],
    )
    .await;
    s.wait_for("exit3", WAIT, |st| st.state() == v1::TaskState::TaskRunning)
        .await;
    agent.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent = env.spawn(&[]);

    let end = s.wait_terminal("exit3").await;
    assert_eq!(
        end.state(),
        v1::TaskState::TaskFailed,
        "{end:?}\n{}",
        agent.log()
    );
    assert_eq!(end.exit_code, Some(3), "{end:?}");
    assert_eq!(end.reason(), v1::Reason::CommandExited);
    assert_eq!(end.message, "exited with code 3");
    // Acknowledged (auto_ack): no further re-send.
    s.drain_for(Duration::from_millis(1500)).await;
    let after_ack = s.updates["exit3"].len();
    s.drain_for(Duration::from_secs(3)).await;
    let terminal: Vec<&v1::TaskStatus> = s.updates["exit3"]
        .iter()
        .filter(|u| u.state() == v1::TaskState::TaskFailed)
        .collect();
    assert_eq!(
        s.updates["exit3"].len(),
        after_ack,
        "re-sent after acknowledgement"
    );
    assert!(terminal.iter().all(|u| u.uuid == end.uuid), "{terminal:?}");
    assert!(terminal.len() <= 2, "{terminal:?}");
    let t = env.master_task("exit3").await;
    assert_eq!(t["state"], "FAILED", "{t}");
    assert_eq!(t["exit_code"], 3, "{t}");
    // Nothing is left of it but its sandbox.
    assert!(task_cgroups(&env.cgroup, "exit3").is_empty());
    assert!(!env.runtime_dir().join("tasks/exit3").exists());
    drop(agent);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_reboot_reports_lost_and_leaves_nothing_behind() {
    let env = Env::new().await;
    let cmd = ["sleep", "1003"];
    let Launched {
        mut agent,
        mut s,
        shim,
        ..
    } = env.launch_running("rebooted", &cmd).await;
    agent.kill9();

    // "Reboot": another boot id in the checkpoint, an empty runtime dir.
    {
        let (store, owner, cp) = Store::open(&env.work_dir()).expect("checkpoint");
        assert!(cp.boot_id.is_some());
        store
            .write(vec![Write::BootId("a-previous-boot".into())])
            .await
            .expect("write");
        drop(store);
        owner.close();
    }
    std::fs::remove_dir_all(env.runtime_dir()).expect("empty the runtime dir");
    std::fs::create_dir_all(env.runtime_dir()).expect("runtime dir");

    let agent = env.spawn(&[]);
    let end = s.wait_terminal("rebooted").await;
    assert_eq!(
        end.state(),
        v1::TaskState::TaskLost,
        "{end:?}\n{}",
        agent.log()
    );
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert_eq!(end.message, "the machine rebooted");
    wait_until("the old shim to be gone", async || !alive(shim)).await;
    assert!(processes(&cmd).is_empty(), "the old task still runs");
    assert!(task_cgroups(&env.cgroup, "rebooted").is_empty());
    drop(agent);
    // The new boot id is stored.
    let (_s, _o, cp) = Store::open(&env.work_dir()).expect("checkpoint");
    assert_eq!(cp.boot_id, cella_agent::store::boot_id());
    drop((_s, _o));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_stops_a_strict_agent() {
    let env = Env::new().await;
    let meta = env.work_dir().join("meta");
    std::fs::create_dir_all(&meta).unwrap();
    let file = meta.join("agent.redb");
    std::fs::write(&file, vec![0x5a_u8; 8192]).unwrap();

    let err = Agent::start(env.in_process_config())
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(
        text.contains("--strict=false") && text.contains("aside"),
        "{text}"
    );
    assert_eq!(err.exit_code(), 1);

    // The binary says the same and exits with 1.
    let mut p = env.spawn(&[]);
    assert_eq!(p.wait_exit(WAIT), Some(1));
    assert!(p.log().contains("agent.redb"), "{}", p.log());

    let config = AgentConfig {
        strict: false,
        ..env.in_process_config()
    };
    let agent = Agent::start(config)
        .await
        .expect("starts with --strict=false");
    let url = format!("https://{}/metrics", agent.http_addr());
    let metrics =
        cella_proto::tls::https_request(axum::http::Method::GET, &url, None, &env.client_tls())
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("cella_agent_recovery_errors_total 1"),
        "{text}"
    );
    agent.shutdown(true).await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_work_dir_refuses_to_start() {
    let env = Env::new().await;
    let first = Agent::start(env.in_process_config()).await.expect("first");
    let err = Agent::start(env.in_process_config())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, AgentError::Locked { pid: Some(p), .. } if *p == i32::try_from(std::process::id()).unwrap()),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&env.work_dir().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // The binary too.
    let mut p = env.spawn(&[]);
    assert_eq!(p.wait_exit(WAIT), Some(1));
    assert!(
        p.log().contains("is in use by another agent"),
        "{}",
        p.log()
    );
    first.shutdown(true).await.unwrap();
    // Free again.
    let again = Agent::start(env.in_process_config())
        .await
        .expect("after the first stopped");
    again.shutdown(true).await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cleanup_kills_the_tasks_reports_them_and_exits() {
    let env = Env::new().await;
    let cmd = ["sleep", "1006"];
    let Launched {
        mut agent, mut s, ..
    } = env.launch_running("doomed", &cmd).await;
    agent.kill9();
    let mut cleanup = env.spawn(&["--recover", "cleanup"]);
    let end = tokio::time::timeout(WAIT, s.wait_terminal("doomed"))
        .await
        .unwrap_or_else(|_| panic!("no end: {}", cleanup.log()));
    assert_eq!(
        end.state(),
        v1::TaskState::TaskKilled,
        "{end:?}\n{}",
        cleanup.log()
    );
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert_eq!(cleanup.wait_exit(WAIT), Some(0), "{}", cleanup.log());
    assert!(processes(&cmd).is_empty());
    assert!(task_cgroups(&env.cgroup, "doomed").is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_of_ended_tasks_are_collected_after_the_delay() {
    let env = Env::new().await;
    let agent = env.spawn(&["--gc-delay", "1s"]);
    let mut s = env.scheduler().await;
    let agent_id = s.any_offer_agent().await;
    s.launch(
        &agent_id,
        vec![
            task("quick", &["true"], 16 << 20),
            task("stays", &["sleep", "1007"], 16 << 20),
        ],
    )
    .await;
    s.wait_terminal("quick").await;
    s.wait_for("stays", WAIT, |st| st.state() == v1::TaskState::TaskRunning)
        .await;
    let sandboxes = env.work_dir().join("sandboxes");
    wait_until("the ended task's sandbox to go", async || {
        !sandboxes.join("quick").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sandboxes.join("stays").exists(), "{}", agent.log());
    s.send(call::Call::Kill(call::Kill {
        task_id: "stays".into(),
    }));
    s.wait_terminal("stays").await;
    drop(agent);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_run_directory_is_reported_lost_and_cleaned() {
    let env = Env::new().await;
    let cmd = ["sleep", "1008"];
    let Launched {
        mut agent,
        mut s,
        shim,
        ..
    } = env.launch_running("no-rundir", &cmd).await;
    agent.kill9();
    std::fs::remove_dir_all(env.runtime_dir().join("tasks/no-rundir")).expect("remove run dir");

    let agent = env.spawn(&[]);
    let end = s.wait_terminal("no-rundir").await;
    assert_eq!(
        end.state(),
        v1::TaskState::TaskLost,
        "{end:?}\n{}",
        agent.log()
    );
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert!(end.message.contains("run directory"), "{}", end.message);
    wait_until("the old shim to be gone", async || !alive(shim)).await;
    assert!(processes(&cmd).is_empty(), "the task still runs");
    assert!(task_cgroups(&env.cgroup, "no-rundir").is_empty());
    drop(agent);
    env.stop().await;
}

/// A kill is checkpointed before it is delivered. Here the agent crashed in between
/// (the checkpoint says "kill requested", the task still runs): the restarted agent
/// kills it and reports KILLED by request, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_requested_before_a_crash_is_carried_out_after_it() {
    let env = Env::new().await;
    let cmd = ["sleep", "1005"];
    let Launched {
        mut agent,
        mut s,
        shim,
        ..
    } = env.launch_running("doomed", &cmd).await;
    agent.kill9();
    {
        let (store, owner, cp) = Store::open(&env.work_dir()).expect("checkpoint");
        let (id, mut record) = cp
            .tasks
            .into_iter()
            .find(|(id, _)| id == "doomed")
            .expect("the task's record");
        assert!(!record.kill_requested);
        record.kill_requested = true;
        store
            .write(vec![Write::PutTask(id, record)])
            .await
            .expect("write");
        drop(store);
        owner.close();
    }
    assert!(alive(shim), "the task still runs");

    let agent = env.spawn(&[]);
    let end = s.wait_terminal("doomed").await;
    assert_eq!(
        (end.state(), end.reason()),
        (v1::TaskState::TaskKilled, v1::Reason::KilledByRequest),
        "{end:?}\n{}",
        agent.log()
    );
    wait_until("the shim to end", async || !alive(shim)).await;
    assert!(processes(&cmd).is_empty(), "the task still runs");
    assert!(task_cgroups(&env.cgroup, "doomed").is_empty());
    drop(agent);
    env.stop().await;
}

/// A checkpoint cut short (a disk that filled up, a bad copy): a strict agent stops
/// and touches nothing; `--strict=false` sets it aside and starts afresh, and the
/// task it can no longer account for is removed and reported LOST by the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_checkpoint_is_refused_or_set_aside() {
    let env = Env::new().await;
    let cmd = ["sleep", "1006"];
    let Launched {
        mut agent, shim, ..
    } = env.launch_running("cut", &cmd).await;
    agent.kill9();
    let file = env.work_dir().join("meta/agent.redb");
    let len = std::fs::metadata(&file).expect("agent.redb").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncating agent.redb");

    let mut strict = env.spawn(&[]);
    assert_eq!(strict.wait_exit(WAIT), Some(1), "{}", strict.log());
    assert!(strict.log().contains("agent.redb"), "{}", strict.log());
    assert!(alive(shim), "a refused start touches no task");

    // Set aside, the agent starts afresh (under a new agent id: the master reports
    // the old one's tasks LOST when its agent timeout passes) and removes the task
    // it can no longer account for.
    let lenient = env.spawn(&["--strict=false"]);
    wait_until("the unaccounted task to be removed", async || !alive(shim)).await;
    assert!(processes(&cmd).is_empty(), "the task still runs");
    assert!(task_cgroups(&env.cgroup, "cut").is_empty());
    assert!(lenient.log().contains("moved aside"), "{}", lenient.log());
    let aside = std::fs::read_dir(env.work_dir().join("meta"))
        .expect("meta/")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("agent.redb.damaged-")
        });
    assert!(aside, "the damaged checkpoint is kept for inspection");
    drop(lenient);
    env.stop().await;
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
        let (total, avail) = (st.blocks() as f64, st.blocks_available() as f64);
        1.0 - avail / total
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The work directory's filesystem more than 90% full: sandboxes of ended tasks go
/// before their `--gc-delay`, oldest first, until it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_go_early_when_the_disk_is_almost_full() {
    let env = Env::new().await;
    // 16 MiB for the checkpoint (~0.1 MiB) and three sandboxes of 5 MiB of output
    // each: ~94% full.
    let fs = SmallFs::mount(&env.work_dir(), "16m");
    let agent = env.spawn(&["--gc-delay", "1h"]);
    let mut s = env.scheduler().await;
    let agent_id = s.any_offer_agent().await;
    for id in ["fill-1", "fill-2", "fill-3"] {
        let cmd = ["head", "-c", "5242880", "/dev/zero"];
        s.launch(&agent_id, vec![task(id, &cmd, 32 << 20)]).await;
        let end = s.wait_terminal(id).await;
        assert_eq!(end.state(), v1::TaskState::TaskFinished, "{end:?}");
    }
    let sandboxes = env.work_dir().join("sandboxes");
    eprintln!("work directory {:.1}% full", fs.used_share() * 100.0);
    wait_until("the oldest sandbox to go early", async || {
        !sandboxes.join("fill-1").exists()
    })
    .await;
    assert!(
        sandboxes.join("fill-2").exists() && sandboxes.join("fill-3").exists(),
        "only as many as needed go, oldest first\n{}",
        agent.log()
    );
    assert!(fs.used_share() <= 0.9, "{}", fs.used_share());
    assert!(
        agent.log().contains("more than 90% full"),
        "the agent says why:\n{}",
        agent.log()
    );
    drop(agent);
    env.stop().await;
    drop(fs);
}
