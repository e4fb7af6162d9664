//! Usage reaches people, end to end (a real master, a real agent with real tasks,
//! the `cella` CLI over mutual TLS): `cella usage` and its JSON, `cella top --once`
//! sorted by CPU, into a closed pipe, and the live `cella top` driven by keys in a
//! tmux pane. Needs root, tmux and `cargo build --workspace --bins`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cella_proto::api;
use cella_tests::{Cluster, DEADLINE, closed_pipe};

const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

/// Starts `name` detached; returns its task id once it runs and its usage has at
/// least two samples at the master.
async fn start(c: &Cluster, name: &str, cpus: &str, command: &[&str]) -> String {
    let mut args = vec!["run", "--detach", "--name", name, "--cpus", cpus, "--"];
    args.extend_from_slice(command);
    let out = c.cella(&args).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let tasks = c.tasks().await;
        if let Some(t) = tasks.iter().find(|t| t.name == name) {
            let u: api::TaskUsage = c.api_get(&format!("/api/v1/tasks/{}/usage", t.id)).await;
            if u.history.len() >= 2 {
                return t.id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} has no usage history: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_top_show_real_tasks() {
    let c = Cluster::start(1, RES).await;
    let busy = start(&c, "busy", "0.5", &["sh", "-c", "while :; do :; done"]).await;
    let idle = start(&c, "idle", "0.1", &["sleep", "300"]).await;

    // cella usage: the figures people read, and the master's JSON for scripts.
    let out = c.cella(&["usage", &busy]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for word in [
        "RUNNING",
        "of a core",
        "memory",
        "pressure",
        "history",
        "summary   so far",
    ] {
        assert!(out.stdout.contains(word), "no {word:?} in:\n{}", out.stdout);
    }
    let out = c.cella(&["usage", &busy, "--json"]).await;
    let u: api::TaskUsage = serde_json::from_str(&out.stdout).expect("cella usage --json");
    assert!(u.latest.unwrap().cpu_user_ns.unwrap() > 0);
    let out = c.cella(&["usage", "no-such-task"]).await;
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(out.stderr.contains("unknown task"), "{}", out.describe());

    // cella top --once: both tasks, the busy one first with its CPU against its limit.
    let out = c.cella(&["top", "--once", "--interval", "1500ms"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("TASK"), "{}", out.stdout);
    assert!(
        lines[1].starts_with(&busy),
        "busy is not first:\n{}",
        out.stdout
    );
    assert!(lines.iter().any(|l| l.starts_with(&idle)), "{}", out.stdout);
    let cpu_of_limit = lines[1].split_whitespace().nth(3).unwrap();
    let share: f64 = cpu_of_limit
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("no CPU% of the limit for busy:\n{}", out.stdout));
    assert!(
        // Only a share: the machine may be busy with other work.
        share > 10.0,
        "busy uses {share}% of its limit:\n{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&idle) && l.contains(" 0.0% ")),
        "no rate of idle:\n{}",
        out.stdout
    );
    let out = c
        .cella(&["top", "--once", "--sort", "name", "--filter", "idle"])
        .await;
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);

    // Into a closed pipe: no panic.
    let mut command = c.cella_command();
    let args = ["top", "--once", "--interval", "100ms"];
    command.args(args).stdout(Stdio::from(closed_pipe()));
    let out = cella_tests::run_cli(command, &args).await;
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    assert_eq!(out.code, Some(0), "{}", out.describe());

    live_top_in_tmux(&c, &busy, &idle).await;
    c.finish();
}

/// The interactive view in a tmux pane: it shows the tasks, filters on `/`, and `q`
/// ends it with the terminal restored.
async fn live_top_in_tmux(c: &Cluster, busy: &str, idle: &str) {
    let session = format!("cella-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux runs (install it: apt-get install tmux)")
    };
    let command = format!(
        "CELLA_CONFIG={} {} top --interval 500ms; echo top-ended-$?; sleep 30",
        c.profile.display(),
        c.bins.cella.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "30",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = pane();
            if ok(&text) {
                return text;
            }
            if Instant::now() > deadline {
                tmux(&["kill-session", "-t", &session]);
                panic!("the live view never showed {what}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("both tasks", &|t| {
        t.contains(busy) && t.contains(idle) && t.contains("sorted by cpu")
    });
    tmux(&["send-keys", "-t", &session, "m"]);
    wait_for("the memory order", &|t| t.contains("sorted by memory"));
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "/",
        "i",
        "d",
        "l",
        "e",
        "Enter",
    ]);
    wait_for("the filter", &|t| {
        t.contains("1 shown") && !t.contains(busy)
    });
    tmux(&["send-keys", "-t", &session, "q"]);
    let text = wait_for("its end", &|t| t.contains("top-ended-"));
    tmux(&["kill-session", "-t", &session]);
    assert!(text.contains("top-ended-0"), "{text}");
}
