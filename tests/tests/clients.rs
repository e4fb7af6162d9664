//! What outside clients find, end to end (a real master, a real agent and the `cella`
//! CLI over mutual TLS): kills with a grace period (SIGTERM, then SIGKILL), the
//! master's view of a task whose scheduler never acknowledges, the agent's API errors
//! and both `/metrics` through `promtool`, and every CLI command into a closed pipe.
//! Needs root, `promtool` (Debian's `prometheus`) and `cargo build --workspace --bins`.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use cella_proto::v1;
use cella_tests::{Cluster, DEADLINE, Scheduler, closed_pipe, framework, task};
use serde_json::Value;

/// What each test agent offers.
const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

fn with_grace(mut t: v1::TaskInfo, secs: f64) -> v1::TaskInfo {
    t.kill_policy = Some(v1::KillPolicy {
        grace_period_secs: Some(secs),
    });
    t
}

/// Waits until the task's stdout (read through its agent's API) contains `text`.
async fn wait_stdout(c: &Cluster, task_id: &str, text: &str) -> String {
    let url = format!(
        "https://{}/api/v1/tasks/{task_id}/files/stdout",
        c.agents[0].http
    );
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(chunk) = cella_proto::tls::https_get_json::<Value>(&url, &c.agent_tls).await {
            last = chunk["data"].as_str().unwrap_or_default().to_string();
            if last.contains(text) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{task_id}: {text:?} not in its stdout within {DEADLINE:?}: {last:?}");
}

/// A cluster of one agent, and framework `name` that has accepted its first offer
/// with `tasks`.
async fn launched(name: &str, tasks: Vec<v1::TaskInfo>) -> (Cluster, Scheduler) {
    let c = Cluster::start(1, RES).await;
    let mut s = c.subscribe(framework(name, "*", 0.0)).await;
    s.accept_next_offer(tasks).await;
    (c, s)
}

/// Kills `task_id` and returns its end and how long it took.
async fn kill_and_time(s: &mut Scheduler, task_id: &str) -> (v1::TaskStatus, Duration) {
    let asked = Instant::now();
    s.kill(task_id);
    let end = s.update(task_id, v1::TaskState::TaskKilled).await;
    (end, asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_sends_sigterm_then_sigkill_after_the_grace_period() {
    let traps = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let ignores = "trap '' TERM; echo ready; sleep 1000";
    let (c, mut s) = launched(
        "grace",
        vec![
            with_grace(task("traps", &["sh", "-c", traps], 0.1, 32), 30.0),
            with_grace(task("ignores", &["sh", "-c", ignores], 0.1, 32), 2.0),
            // No kill policy: the cluster's default (5 s); but `sleep` has no handler
            // for SIGTERM, which would have ended it: killed at once.
            task("plain", &["sleep", "1000"], 0.1, 32),
            with_grace(task("by-cli", &["sh", "-c", traps], 0.1, 32), 30.0),
        ],
    )
    .await;
    for id in ["traps", "ignores", "by-cli"] {
        wait_stdout(&c, id, "ready").await;
    }
    s.update("plain", v1::TaskState::TaskRunning).await;

    // Traps SIGTERM and exits 0: well within its 30 s grace, having run its handler;
    // a clean exit is FINISHED.
    let asked = Instant::now();
    s.kill("traps");
    let end = s.update("traps", v1::TaskState::TaskFinished).await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}: {end:?}");
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    wait_stdout(&c, "traps", "got TERM").await;

    // Ignores SIGTERM: SIGKILL once its 2 s have passed.
    let (end, took) = kill_and_time(&mut s, "ignores").await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}: {end:?}"
    );
    assert_eq!(end.signal, Some(9), "{end:?}");

    // No handler as PID 1 of its namespace: killed at once.
    let (end, took) = kill_and_time(&mut s, "plain").await;
    assert!(took < Duration::from_secs(3), "took {took:?}: {end:?}");

    // `cella kill --grace-period 0` overrides the task's 30 s: SIGKILL at once.
    let asked = Instant::now();
    let out = c.cella(&["kill", "--grace-period", "0", "by-cli"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let end = s.update("by-cli", v1::TaskState::TaskKilled).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "{end:?}");
    assert_eq!(end.signal, Some(9), "{end:?}");
    drop(s);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_view_follows_a_task_whose_scheduler_never_acknowledges() {
    let (c, mut s) = launched(
        "never-acks",
        vec![task("no-ack", &["sleep", "1000"], 0.1, 32)],
    )
    .await;
    // Set before the first update is read: none is ever acknowledged.
    s.acknowledge = false;
    let starting = s.update("no-ack", v1::TaskState::TaskStarting).await;
    let sent = Instant::now();
    // STARTING is never acknowledged, so RUNNING never reaches the scheduler; the
    // master shows it all the same.
    c.wait_task_state("no-ack", "RUNNING").await;

    // The agent re-sends STARTING 1 s, 3 s and 7 s after the first send: a kill 3.5 s
    // in must show in the master's view long before the 7 s re-send.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(sent.elapsed())).await;
    let out = c.cella(&["kill", "no-ack"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let asked = Instant::now();
    let killed = c.wait_task_state("no-ack", "KILLED").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the master showed KILLED {:?} after the kill: {killed:?}",
        asked.elapsed()
    );
    // The scheduler has seen nothing but STARTING (again and again).
    assert!(
        s.history
            .iter()
            .all(|u| u.state() == v1::TaskState::TaskStarting && u.uuid == starting.uuid),
        "{:?}",
        s.history
    );
    drop(s);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_errors_are_json_and_both_metrics_pass_promtool() {
    // A task, so that labelled families have samples.
    let (c, mut s) = launched("metrics", vec![task("m1", &["true"], 0.1, 32)]).await;
    s.update("m1", v1::TaskState::TaskFinished).await;

    let agent = format!("https://{}", c.agents[0].http);
    for (method, path, status) in [
        (Method::GET, "/nope", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/api/v1/containers",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::DELETE, "/metrics", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let r = cella_proto::tls::https_request(
            method.clone(),
            &format!("{agent}{path}"),
            None,
            &c.agent_tls,
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{method} {path}");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(&r.body)
            )
        });
        assert!(v["error"].as_str().is_some_and(|e| e.contains(path)), "{v}");
    }

    for (url, tls) in [
        (format!("{agent}/metrics"), &c.agent_tls),
        (format!("{}/metrics", c.master_url), &c.client_tls),
    ] {
        let r = cella_proto::tls::https_request(Method::GET, &url, None, tls)
            .await
            .unwrap();
        assert!(r.status.is_success(), "{url}: {}", r.status);
        let text = String::from_utf8_lossy(&r.body);
        if let Err(said) = cella_tests::promtool::promtool_check(&text) {
            panic!("promtool check metrics on {url}: {said}\n{text}");
        }
    }
    drop(s);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_panics_on_a_closed_stdout() {
    let c = Cluster::start(1, RES).await;
    let runs: &[&[&str]] = &[
        &["run", "--detach", "--name", "piped", "--", "sleep", "100"],
        &["tasks"],
        &["agents"],
        &["--help"],
        &["exec", "--help"],
        &["auth", "--help"],
    ];
    for args in runs {
        let mut command = c.cella_command();
        command.args(*args).stdout(Stdio::from(closed_pipe()));
        let out = cella_tests::run_cli(command, args).await;
        assert!(
            !out.stderr.contains("panicked"),
            "cella {args:?} panicked on a closed stdout: {}",
            out.describe()
        );
        assert_eq!(out.code, Some(0), "cella {args:?}: {}", out.describe());
    }
    // The detached task was launched all the same.
    let tasks = c.tasks().await;
    assert!(
        tasks
            .iter()
            .any(|t| t.name == "piped" && t.state.name() == "RUNNING"),
        "{tasks:?}"
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_says_at_once_when_no_agent_could_fit_the_task() {
    let c = Cluster::start(1, RES).await;
    let started = Instant::now();
    let out = c.cella(&["run", "--cpus", "100", "--", "true"]).await;
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains("no agent of the cluster has 100 cpus"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An agent could fit it, but not now: --wait gives up after its limit.
    let out = c
        .cella(&["run", "--detach", "--cpus", "1.5", "--", "sleep", "100"])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = c
        .cella(&["run", "--cpus", "1", "--wait", "1s", "--", "true"])
        .await;
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(out.stderr.contains("--wait"), "{}", out.describe());

    // A master URL without https:// says how to write it.
    let out = c.cella(&["tasks", "--master", "127.0.0.1:5050"]).await;
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("https://HOST:PORT"),
        "{}",
        out.describe()
    );
    c.finish();
}

/// Runs a plain HTTP server on a free port that answers 400 to anything (as one does
/// to a TLS handshake); returns its address.
fn plain_http_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_what_is_wrong() {
    let c = Cluster::start(1, RES).await;
    // Another cluster's TLS directory: the master's certificate is of a CA it does
    // not know.
    let other = tempfile::tempdir().unwrap();
    cella_tests::certs_init(&c.bins, other.path());
    let other_dir = other.path().to_str().unwrap();
    let plain = format!("https://{}", plain_http_server());
    let agent = format!("https://{}", c.agents[0].http);
    for (args, says) in [
        (
            vec!["tasks", "--tls-dir", other_dir],
            "UnknownIssuer".to_string(),
        ),
        (
            vec!["tasks", "--tls-dir", other_dir],
            format!("not signed by the CA in {other_dir}"),
        ),
        (
            vec!["tasks", "--master", agent.as_str()],
            format!("{agent} is not the master"),
        ),
        (
            vec!["tasks", "--master", plain.as_str()],
            format!("{plain} does not speak TLS"),
        ),
    ] {
        let out = c.cella(&args).await;
        assert_ne!(out.code, Some(0), "{}", out.describe());
        assert!(out.stderr.contains(&says), "{says:?}: {}", out.describe());
    }
    c.finish();
}
