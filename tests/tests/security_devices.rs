//! Host devices for cluster tasks, with a real master, agent and task: a device
//! reaches a task only when the task asks for it, the master's ACL grants it
//! (`use_device`) and the agent allows it (`--allow-device`); without the request the
//! task's /dev does not have it.

use std::path::Path;

use cella_proto::v1;
use cella_tests::security::launch_one;
use cella_tests::{Cluster, Scheduler, framework, task};

const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

/// A harmless character device that is not in a task's minimal /dev: anyone may open
/// it, and opening it does nothing until a filesystem is mounted through it.
const DEVICE: &str = "/dev/fuse";
/// One the ACL grants and the agent does not allow.
const NOT_ON_AGENT: &str = "/dev/net/tun";

fn acl() -> String {
    cella_tests::security::acl_with(
        r#""group:fuse" = ["fuse"]
"group:plain" = ["plain"]
"#,
        r#"[roles.fuse]
subscribe = ["batch"]
run_task = [{ role = "batch", as_user = ["*"] }]
use_device = ["/dev/fuse", "/dev/net/tun"]

[roles.plain]
subscribe = ["batch"]
run_task = [{ role = "batch", as_user = ["*"] }]
"#,
    )
}

/// Whether `path` is a character device on this host; if not, the test cannot run
/// (a failure under `CELLA_TEST_STRICT=1`).
fn have_char_device(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let ok = std::fs::metadata(Path::new(path)).is_ok_and(|m| m.file_type().is_char_device());
    if !ok {
        let why = format!("{path} is not a character device on this host (load the module)");
        assert!(
            std::env::var_os("CELLA_TEST_STRICT").is_none_or(|v| v != "1"),
            "{why} (CELLA_TEST_STRICT=1: a test that cannot run fails instead of skipping)"
        );
        eprintln!("not run: {why}");
    }
    ok
}

fn error_of(status: &v1::TaskStatus) -> String {
    assert_eq!(status.state(), v1::TaskState::TaskError, "{status:?}");
    status.message.clone()
}

/// Launches `t` and waits for its end; returns its exit code and stdout.
async fn finished(c: &Cluster, s: &mut Scheduler, t: v1::TaskInfo) -> (Option<i32>, String) {
    let id = t.task_id.clone();
    let first = launch_one(s, t).await;
    assert!(
        first.state() == v1::TaskState::TaskRunning
            || first.state() == v1::TaskState::TaskFinished
            || first.state() == v1::TaskState::TaskFailed,
        "{first:?}"
    );
    let end = if first.state().is_terminal() {
        first
    } else {
        loop {
            let u = s.any_update(&id).await;
            if u.state().is_terminal() {
                break u;
            }
        }
    };
    let out = c.cella(&["logs", &id]).await;
    (end.exit_code, out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_a_task_only_when_asked_granted_and_allowed() {
    if !have_char_device(DEVICE) || !have_char_device(NOT_ON_AGENT) {
        return;
    }
    let mut c = Cluster::new();
    c.use_acl(&acl());
    c.agent_flags.push(format!("--allow-device={DEVICE}"));
    c.start_master().await;
    let agent = c.start_agent(RES).await;
    let alice = c.user("alice", &["fuse"]);
    let bob = c.user("bob", &["plain"]);
    let url = c.master_url.clone();
    // `cella run --device` asks for it the same way (run first: the schedulers
    // below hold the offers).
    let out = c
        .cella(&[
            "run",
            "--role",
            "batch",
            "--device",
            DEVICE,
            "--",
            "sh",
            "-c",
            &format!("test -c {DEVICE} && echo cli-opened"),
        ])
        .await;
    assert!(out.stdout.contains("cli-opened"), "{}", out.describe());

    let mut s = Scheduler::subscribe(&url, &alice.master, framework("a", "batch", 60.0))
        .await
        .expect("alice may subscribe in batch");

    // Asked for, granted and allowed: the node is there and opens (read and write),
    // as the agent's unprivileged task user.
    let script = format!("test -c {DEVICE} && exec 3<>{DEVICE} && echo opened");
    let mut with = task("with", &["sh", "-c", &script], 0.1, 16);
    with.devices = vec![DEVICE.into()];
    let (code, out) = finished(&c, &mut s, with).await;
    assert_eq!((code, out.trim()), (Some(0), "opened"), "{out}");

    // Not asked for: the task's /dev does not have it.
    let script = format!("test -e {DEVICE} && echo present || echo absent");
    let without = task("without", &["sh", "-c", &script], 0.1, 16);
    let (code, out) = finished(&c, &mut s, without).await;
    assert_eq!((code, out.trim()), (Some(0), "absent"), "{out}");

    // Granted by the ACL, not allowed by the agent: refused there, naming the device.
    let mut tun = task("tun", &["true"], 0.1, 16);
    tun.devices = vec![NOT_ON_AGENT.into()];
    let m = error_of(&launch_one(&mut s, tun).await);
    assert!(
        m.contains(&format!(
            "refused by this agent: device {NOT_ON_AGENT} is not one this agent allows \
             (its allow_devices: {DEVICE})"
        )),
        "{m}"
    );
    assert!(
        c.agent_metric(&agent, "launches_refused_total{reason=\"device\"}")
            .await
            >= Some(1.0)
    );

    // A principal without use_device: denied by the master, logged and counted.
    let mut sb = Scheduler::subscribe(&url, &bob.master, framework("b", "batch", 60.0))
        .await
        .expect("bob may subscribe in batch");
    let mut denied = task("b-fuse", &["true"], 0.1, 16);
    denied.devices = vec![DEVICE.into()];
    let m = error_of(&launch_one(&mut sb, denied).await);
    assert!(
        m.contains(&format!("user:bob lacks use_device({DEVICE})")),
        "{m}"
    );
    let metrics = c
        .request(&c.client_tls, "GET", "/metrics", &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("cella_master_authz_denied_total{permission=\"use_device\"} 1"),
        "{text}"
    );

    drop((s, sb));
    c.finish();
}
