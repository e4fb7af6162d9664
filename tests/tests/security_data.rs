//! Protected data, with real processes: a secret reaches its task and no API, log or
//! file another user can read; keys and state are private (a readable key stops a
//! daemon); the registry is backed up while the master runs and restored.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cella_proto::v1;
use cella_tests::security::launch_one;
use cella_tests::{Cluster, Scheduler, framework, task};

const RES: &str = "cpus:1;mem:1GiB;disk:1GiB";

/// Subscribes framework `name` (any role, failover timeout `failover_s`) and launches
/// task `id` (`sleep 100`), which must be RUNNING.
async fn framework_with_a_sleeper(c: &Cluster, name: &str, failover_s: f64, id: &str) -> Scheduler {
    let mut s = c.subscribe(framework(name, "*", failover_s)).await;
    let t = launch_one(&mut s, task(id, &["sleep", "100"], 0.1, 16)).await;
    assert_eq!(t.state(), v1::TaskState::TaskRunning);
    s
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Files under `dir` whose content holds `needle`, found by `grep` running as `uid`.
fn files_holding(dir: &Path, needle: &str, uid: Option<u32>) -> Vec<PathBuf> {
    let mut grep = Command::new("grep");
    grep.args(["-r", "-l", "-F", "-a", needle]).arg(dir);
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        grep.uid(uid).gid(uid);
    }
    let out = grep.output().expect("running grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The uid of `nobody` on this machine.
const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_task_and_nothing_else() {
    let mut c = Cluster::new();
    // The most talkative logs: the secret must not be in them either.
    c.env.push(("CELLA_LOG".into(), "debug".into()));
    c.start_master().await;
    let agent = c.start_agent(RES).await;
    let secret = format!("s3cret-{}-{}", std::process::id(), c.name);
    let digest = {
        let out = Command::new("sh")
            .args(["-c", "printf %s \"$1\" | sha256sum", "sh", &secret])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let mut s = c.subscribe(framework("sec", "*", 60.0)).await;
    let mut t = task(
        "with-secret",
        &[
            "sh",
            "-c",
            "printf %s \"$DB_PASSWORD\" | sha256sum; exec sleep 100",
        ],
        0.1,
        16,
    );
    t.secrets = vec![v1::SecretEnv {
        name: "DB_PASSWORD".into(),
        value: secret.clone(),
    }];
    let running = launch_one(&mut s, t).await;
    assert_eq!(running.state(), v1::TaskState::TaskRunning, "{running:?}");
    // The task got it (its digest is in its output).
    let deadline = std::time::Instant::now() + cella_tests::DEADLINE;
    loop {
        let out = c.cella(&["logs", "with-secret"]).await;
        if out.stdout == digest {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", out.describe());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No API shows it (the name, yes).
    let task: serde_json::Value = c.api_get("/api/v1/tasks/with-secret").await;
    assert_eq!(task["secrets"], serde_json::json!(["DB_PASSWORD"]));
    for path in ["/api/v1/state", "/api/v1/tasks", "/metrics"] {
        let r = c.request(&c.client_tls, "GET", path, &[]).await.unwrap();
        assert!(r.status.is_success());
        assert!(
            !String::from_utf8_lossy(&r.body).contains(&secret),
            "{path}"
        );
    }
    for path in ["/api/v1/containers", "/metrics"] {
        let url = format!("https://{}{path}", agent.http);
        let r = cella_proto::tls::https_request("GET".parse().unwrap(), &url, None, &c.agent_tls)
            .await
            .unwrap();
        assert!(r.status.is_success());
        assert!(
            !String::from_utf8_lossy(&r.body).contains(&secret),
            "agent {path}"
        );
    }

    // Another user finds it in no file of the cluster (logs, the master's registry,
    // the agent's checkpoint, sandboxes, run directories).
    let dir = c.path().to_path_buf();
    assert_eq!(
        files_holding(&dir, &secret, Some(NOBODY)),
        Vec::<PathBuf>::new()
    );
    // Even root finds it only in the launch spec, in a run directory only root enters.
    let held = files_holding(&dir, &secret, None);
    let spec = dir.join("agent0/run/tasks/with-secret/spec.json");
    assert_eq!(
        held,
        std::slice::from_ref(&spec),
        "the secret is in {held:?}"
    );
    assert_eq!(mode(&dir.join("agent0/run")), 0o700);
    assert_eq!(mode(&dir.join("agent0/run/tasks")), 0o700);
    assert_eq!(std::fs::metadata(&spec).unwrap().uid(), 0);
    assert_eq!(mode(&spec), 0o600, "the launch spec holds the secret");

    // Once the task ended, nothing holds it.
    s.kill("with-secret");
    s.update("with-secret", v1::TaskState::TaskKilled).await;
    c.wait_task_state("with-secret", "KILLED").await;
    let deadline = std::time::Instant::now() + cella_tests::DEADLINE;
    while !files_holding(&dir, &secret, None).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            files_holding(&dir, &secret, None)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.log_lines_with("DB_PASSWORD")
            .lines()
            .all(|l| !l.contains(&secret)),
        "logged"
    );

    // `cella run --secret-env NAME` takes the value from its own environment.
    let mut run = c.cella_command();
    run.env("API_TOKEN", &secret).args([
        "run",
        "--secret-env",
        "API_TOKEN",
        "--",
        "sh",
        "-c",
        "printf %s \"$API_TOKEN\" | sha256sum",
    ]);
    let out = cella_tests::run_cli(run, &["run", "--secret-env"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, digest, "{}", out.describe());
    assert!(files_holding(&dir, &secret, None).is_empty());
    drop(s);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_state_are_private() {
    let mut c = Cluster::start(1, RES).await;
    let s = framework_with_a_sleeper(&c, "modes", 60.0, "modes").await;
    let dir = c.path().to_path_buf();
    let agent = dir.join("agent0");
    for (path, want) in [
        (dir.join("master"), 0o700),
        (dir.join("master/registry.redb"), 0o600),
        (agent.join("work"), 0o711),
        (agent.join("work/meta"), 0o700),
        (agent.join("work/meta/agent.redb"), 0o600),
        (agent.join("work/sandboxes"), 0o711),
        (agent.join("work/sandboxes/modes"), 0o700),
        (agent.join("run"), 0o700),
        (agent.join("run/tasks"), 0o700),
        (c.tls_dir.clone(), 0o700),
        (c.tls_dir.join("ca-key.pem"), 0o600),
        (c.tls_dir.join("master-key.pem"), 0o600),
        (c.tls_dir.join("users/test/client-key.pem"), 0o600),
        (
            c.tls_dir
                .join("agents")
                .join(&c.agents[0].hostname)
                .join("agent-key.pem"),
            0o600,
        ),
    ] {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    // The sandbox belongs to the task's (unprivileged) user.
    assert_eq!(
        std::fs::metadata(agent.join("work/sandboxes/modes"))
            .unwrap()
            .uid(),
        65534
    );
    drop(s);

    // A key others can read stops the daemon, with the fix in the message.
    let master_key = c.tls_dir.join("master-key.pem");
    std::fs::set_permissions(&master_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(&c.bins.master)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(&c.tls_dir)
        .arg("--work-dir")
        .arg(dir.join("other-master"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&master_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bundle = c.tls_dir.join("agents").join(&c.agents[0].hostname);
    std::fs::set_permissions(
        bundle.join("agent-key.pem"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let out = Command::new(&c.bins.agent)
        .args(["--master", &c.master_url, "--tls-dir"])
        .arg(&bundle)
        .arg("--work-dir")
        .arg(dir.join("other-agent"))
        .arg("--runtime-dir")
        .arg(dir.join("other-run"))
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(
        bundle.join("agent-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // A state directory left looser is tightened at start, with a warning.
    std::fs::set_permissions(dir.join("master"), std::fs::Permissions::from_mode(0o755)).unwrap();
    c.restart_master_hard(Duration::ZERO).await;
    assert_eq!(mode(&dir.join("master")), 0o700);
    assert!(
        c.log_lines_with("mode was 0755").contains("master"),
        "{}",
        c.log_tails()
    );
    c.finish();
}

fn master_cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(&c.bins.master)
        .args(args)
        .arg("--work-dir")
        .arg(c.path().join("master"))
        .output()
        .unwrap()
}

/// Runs `cella-master` with `args`, which must succeed.
fn master_cli_succeeds(c: &Cluster, args: &[&str]) {
    let out = master_cli(c, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_backed_up_online_and_restored() {
    let mut c = Cluster::start(1, RES).await;
    let s = framework_with_a_sleeper(&c, "keep", 3600.0, "kept").await;
    let framework_id = s.framework_id.clone();

    // Online: the running master writes it (it holds the registry).
    let online = c.path().join("online.redb");
    master_cli_succeeds(&c, &["backup", online.to_str().unwrap()]);
    assert_eq!(mode(&online), 0o600);
    let out = master_cli(&c, &["restore", online.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by a running cella-master"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The registry is lost while the master is down; the backup brings it back.
    let master = c
        .procs
        .iter()
        .rposition(|p| p.name.starts_with("master"))
        .unwrap();
    c.kill_hard(master);
    let offline = c.path().join("offline.redb");
    master_cli_succeeds(&c, &["backup", offline.to_str().unwrap()]);
    std::fs::remove_file(c.path().join("master/registry.redb")).unwrap();
    master_cli_succeeds(&c, &["restore", online.to_str().unwrap()]);
    assert_eq!(mode(&c.path().join("master/registry.redb")), 0o600);
    c.restart_master_hard(Duration::ZERO).await;
    let frameworks: Vec<cella_proto::api::Framework> = c.api_get("/api/v1/frameworks").await;
    assert!(
        frameworks.iter().any(|f| f.id == framework_id),
        "{frameworks:?}"
    );
    c.wait_task_state("kept", "RUNNING").await;

    // A file that is no registry is refused, and the registry stays.
    let junk = c.path().join("junk.redb");
    std::fs::write(&junk, b"not a registry").unwrap();
    let out = master_cli(&c, &["restore", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    drop(s);
    c.finish();
}
