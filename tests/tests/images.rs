//! Tasks from container images, end to end: a real registry (Debian's
//! `docker-registry`, TLS and basic authentication) on loopback, a busybox image
//! built by the test with `umoci` and pushed with `skopeo`, and `cella exec --image`
//! and `cella run --image` through a real master and agent.
//!
//! The image (see `busybox_layout`): three layers (a whiteout in the second, an
//! opaque directory in the third), entrypoint `/bin/sh -c`, command `echo hi`,
//! `GREETING=hello`, working directory `/data`, user `0:0`.

#[path = "../../image/tests/common/mod.rs"]
#[allow(unused_imports)]
mod image_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cella_tests::{Cluster, DEADLINE, bins};
use image_common::images::busybox_layout;
use image_common::registry::{PASSWORD, Registry, USER};

const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

/// A TLS registry with basic authentication holding the busybox image as
/// `busybox:1` (and `busybox:2`, the same image under another tag), and the test's
/// temporary directory, which holds the image's layout. Needs root.
fn registry_with_busybox() -> (tempfile::TempDir, Registry) {
    image_common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::secure();
    let layout = busybox_layout(dir.path(), "latest");
    registry.push(&layout, "latest", "library/busybox:1");
    (dir, registry)
}

/// `cella run` arguments that run `script` in `busybox:1` as nobody, `extra` options
/// first.
fn busybox_as_nobody<'a>(extra: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend(["--user", "nobody", "--image", "busybox:1", "--", script]);
    args
}

/// `cella exec --image` options that reach `registry` with a store in `store`.
fn exec_image_flags(registry: &Registry, store: &Path) -> Vec<String> {
    let ca = registry.ca_file.as_ref().expect("a TLS registry");
    vec![
        "--image-store".into(),
        store.display().to_string(),
        "--default-registry".into(),
        registry.host.clone(),
        "--registry-ca".into(),
        ca.display().to_string(),
    ]
}

fn cella_exec(flags: &[String], image: &str, command: &[&str]) -> std::process::Output {
    let b = bins();
    let cgroup = format!("cella-test-{}-images", std::process::id());
    let mut c = std::process::Command::new(&b.cella);
    c.arg("exec")
        .arg("--cgroup-root")
        .arg(&cgroup)
        .args(flags)
        .arg("--image")
        .arg(image)
        .env("CELLA_SHIM", &b.shim)
        .env("CELLA_REGISTRY_USER", USER)
        .env("CELLA_REGISTRY_PASSWORD", PASSWORD);
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    c.output().expect("run cella exec")
}

/// Runs `true` in `image` with `cella exec`, which must exit with `code`; its stderr.
fn exec_refused(flags: &[String], image: &str, code: i32) -> String {
    let out = cella_exec(flags, image, &["true"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    err
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_runs_an_image_with_its_config_and_overrides() {
    let (dir, registry) = registry_with_busybox();
    let flags = exec_image_flags(&registry, &dir.path().join("store"));

    // The image's own entrypoint and command.
    let out = cella_exec(&flags, "busybox:1", &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(
        text(&out.stderr).contains("ready"),
        "the pull's progress on stderr: {}",
        text(&out.stderr)
    );

    // `-- CMD` replaces the command, keeps the entrypoint; env, working dir and the
    // layers (whiteout, opaque directory) as the image says.
    let script = "echo $GREETING from $(pwd) as $(id -u); ls /data; test -e /etc/removed-later || echo whiteout-applied; cat /etc/added";
    let out = cella_exec(&flags, "busybox:1", &[script]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello from /data as 0\nnew\nwhiteout-applied\nadded in layer 2\n"
    );
    // The second run used the stored image: no second pull.
    assert!(
        !text(&out.stderr).contains("pulled"),
        "{}",
        text(&out.stderr)
    );

    // The root is writable by default, and not with --read-only.
    let out = cella_exec(&flags, "busybox:1", &["echo x > /written && cat /written"]);
    assert_eq!(text(&out.stdout), "x\n", "stderr: {}", text(&out.stderr));
    let mut read_only = flags.clone();
    read_only.push("--read-only".into());
    let out = cella_exec(
        &read_only,
        "busybox:1",
        &["echo x > /written || echo refused; echo y > /tmp/t && cat /tmp/t"],
    );
    assert_eq!(
        text(&out.stdout),
        "refused\ny\n",
        "stderr: {}",
        text(&out.stderr)
    );
    // Nothing of the image is leased once the tasks ended.
    let leases = std::fs::read_dir(dir.path().join("store/leases"))
        .unwrap()
        .count();
    assert_eq!(leases, 0, "leases left after cella exec ended");
}

#[test]
fn exec_names_the_image_that_cannot_be_pulled() {
    let (dir, registry) = registry_with_busybox();
    let flags = exec_image_flags(&registry, &dir.path().join("store"));
    let err = exec_refused(&flags, "busybox:no-such-tag", 125);
    assert!(err.contains("library/busybox:no-such-tag"), "{err}");
    // A port nothing listens on.
    let err = exec_refused(&flags, "127.0.0.1:1/library/busybox:1", 125);
    assert!(err.contains("127.0.0.1:1/library/busybox:1"), "{err}");
    // A reference that names no image is a usage error.
    exec_refused(&flags, "Upper/Case:tag", 2);
}

/// A cluster whose agent reaches `registry` (its CA, credentials in a Docker
/// config.json) with `extra` agent flags.
async fn cluster_for(registry: &Registry, extra: &[&str]) -> Cluster {
    cluster_with_acl(registry, extra, None).await
}

/// [`cluster_for`], with the master enforcing `acl` when given.
async fn cluster_with_acl(registry: &Registry, extra: &[&str], acl: Option<&str>) -> Cluster {
    let mut cluster = Cluster::new();
    if let Some(acl) = acl {
        cluster.use_acl(acl);
    }
    let auth = cluster.path().join("registry-auth.json");
    let token = base64_of(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{token}"}}}}}}"#,
            registry.host
        ),
    )
    .unwrap();
    let ca = registry.ca_file.as_ref().expect("a TLS registry");
    cluster.agent_flags.extend([
        format!("--default-registry={}", registry.host),
        format!("--registry-ca={}", ca.display()),
        format!("--registry-auth={}", auth.display()),
    ]);
    cluster
        .agent_flags
        .extend(extra.iter().map(|f| (*f).to_string()));
    cluster.start_master().await;
    cluster.start_agent(RES).await;
    cluster
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn image_store(cluster: &Cluster) -> PathBuf {
    cluster.path().join("agent0/work/images")
}

fn stored_images(cluster: &Cluster) -> usize {
    std::fs::read_dir(image_store(cluster).join("images"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits up to [`DEADLINE`] for the agent's store to hold no image; `what` says why
/// it should be empty.
async fn wait_no_images(cluster: &Cluster, what: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while stored_images(cluster) != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored_images(cluster), 0, "{what}");
}

/// Waits up to [`DEADLINE`] for the images API of the agent at `agent` to answer,
/// then pulls `busybox:1` through it into the (empty) store.
async fn pull_busybox_through(cluster: &Cluster, agent: &str) {
    let list = ["images", "--agent", agent];
    let deadline = std::time::Instant::now() + DEADLINE;
    while cluster.cella(&list).await.code != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            cluster.cella(&list).await.describe()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pull (three layers unpacked by a debug build on a shared machine) may take
    // longer than other commands.
    let mut pull = cluster.cella_command();
    pull.args(["images", "--agent", agent, "pull", "busybox:1"]);
    let out = tokio::time::timeout(Duration::from_secs(300), pull.output())
        .await
        .expect("the pull through the agent ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("library/busybox:1 sha256:"),
        "{out:?}"
    );
    assert_eq!(stored_images(cluster), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_from_an_image_through_the_agent() {
    let (_dir, registry) = registry_with_busybox();
    let cluster = cluster_for(&registry, &[]).await;

    // The image's user is root, which this agent refuses: the error says so.
    let out = cluster.cella(&["run", "--image", "busybox:1"]).await;
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(out.stderr.contains("root"), "{}", out.describe());

    // As nobody: the image's entrypoint with the command given, its env and working dir.
    let script = "echo $GREETING from $(pwd) as $(id -u); cat /etc/added";
    let out = cluster.cella(&busybox_as_nobody(&[], script)).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from /data as 65534\nadded in layer 2\n");

    // A reference that cannot be pulled: FAILED (reason IMAGE_FAILED), naming the image.
    let out = cluster
        .cella(&["run", "--image", "busybox:missing", "--", "true"])
        .await;
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!(
            "FAILED: image {}/library/busybox:missing",
            registry.host
        )),
        "{}",
        out.describe()
    );
    cluster.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writable_layer_is_in_the_sandbox_and_counted() {
    let (_dir, registry) = registry_with_busybox();
    // The image runs as root, which may write its / (nobody may not).
    let cluster = cluster_for(&registry, &["--allow-root-tasks"]).await;
    let out = cluster
        .cella(&[
            "run",
            "--disk",
            "4MiB",
            "--image",
            "busybox:1",
            "--",
            "head -c 8388608 /dev/zero > /big && echo written && sleep 30",
        ])
        .await;
    assert!(
        out.stderr.contains("FAILED: disk limit of 4 MiB reached"),
        "the task's writes to its root count against --disk: {}",
        out.describe()
    );
    // The writable layer is the sandbox's, on the host.
    let sandboxes = cluster.path().join("agent0/work/sandboxes");
    let big: Vec<PathBuf> = std::fs::read_dir(&sandboxes)
        .unwrap()
        .flatten()
        .map(|e| e.path().join(".rootfs/upper/big"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(big.len(), 1, "the task's /big in its sandbox's upper layer");
    cluster.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_share_one_pull_and_gc_follows_their_end() {
    let (_dir, registry) = registry_with_busybox();
    // A store budget of one byte: an image goes as soon as no task uses it.
    let cluster = cluster_for(&registry, &["--image-store-size=1"]).await;
    let run = |name: &'static str| {
        let mut command = cluster.cella_command();
        async move {
            let args = busybox_as_nobody(&["--name", name], "sleep 2; echo done");
            command.args(&args);
            cella_tests::run_cli(command, &args).await
        }
    };
    let watcher = async {
        // While the tasks run, the image is kept.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if cluster
                .tasks()
                .await
                .iter()
                .filter(|t| t.state == cella_proto::v1::TaskState::TaskRunning)
                .count()
                == 2
            {
                return stored_images(&cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the two tasks did not run together");
    };
    let (a, b, during) = tokio::join!(run("one"), run("two"), watcher);
    assert_eq!(a.code, Some(0), "{}", a.describe());
    assert_eq!(b.code, Some(0), "{}", b.describe());
    assert_eq!(a.stdout, "done\n");
    assert_eq!(during, 1, "the image is stored while its tasks run");

    // Every blob was fetched once.
    let mut blob_gets: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET" && r.uri.contains("/blobs/") && (200..300).contains(&r.status)
        })
        .map(|r| r.uri)
        .collect();
    let all = blob_gets.len();
    blob_gets.sort();
    blob_gets.dedup();
    assert!(
        all > 0,
        "the image was pulled from the registry: {:?}",
        registry.requests()
    );
    assert_eq!(
        all,
        blob_gets.len(),
        "a blob was fetched twice: {blob_gets:?}"
    );
    eprintln!("{} blobs fetched once each", all);

    // Both ended: the leases are released and GC removes the image.
    wait_no_images(&cluster, "the unused image was collected").await;
    cluster.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_task_survives_an_agent_restart_with_its_image() {
    let (_dir, registry) = registry_with_busybox();
    let mut cluster = cluster_for(&registry, &["--image-store-size=1"]).await;
    let out = cluster
        .cella(&busybox_as_nobody(&["--detach"], "sleep 300"))
        .await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_string();
    cluster.wait_task_state(&id, "RUNNING").await;
    // The task carries the digest of the image it runs: the one stored. (The master
    // may show RUNNING before the update itself arrives: wait for it.)
    let deadline = std::time::Instant::now() + DEADLINE;
    let running = loop {
        let task = cluster.wait_task_state(&id, "RUNNING").await;
        if !task.image_digest.is_empty() || std::time::Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stored: Vec<String> = std::fs::read_dir(image_store(&cluster).join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().replace(".json", ""))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let digest = format!("sha256:{}", stored[0]);
    assert_eq!(running.image_digest, digest);

    // The agent dies and comes back: the task is recovered, and the image it runs
    // from stays (its lease survived), however small the store's budget.
    cluster
        .restart_agent_hard(0, Duration::from_millis(200))
        .await;
    cluster.wait_task_state(&id, "RUNNING").await;
    assert_eq!(
        stored_images(&cluster),
        1,
        "the running task's image was kept"
    );

    let kill = cluster.cella(&["kill", &id]).await;
    assert_eq!(kill.code, Some(0), "{}", kill.describe());
    // The recovered agent's terminal update still names the image's digest.
    let killed = cluster.wait_task_state(&id, "KILLED").await;
    assert_eq!(killed.image_digest, digest, "{killed:?}");
    wait_no_images(&cluster, "collected once the task ended").await;
    cluster.finish();
}

/// `cella images --agent URL`: the agent's store through its API, for the cluster's
/// operator; a viewer may list but not change it, a principal without permissions
/// may do neither, and each refusal is logged by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_through_the_agents_api_with_permissions() {
    let acl = cella_tests::security::acl_with(
        r#""user:carol" = ["viewer"]
"user:erin" = ["nobody"]
"#,
        r#"[roles.viewer]
view = ["state"]

[roles.nobody]
"#,
    );
    let (_dir, registry) = registry_with_busybox();
    let cluster = cluster_with_acl(&registry, &[], Some(&acl)).await;
    let agent = format!("https://{}", cluster.agents[0].http);
    let images = async |tls_dir: Option<&Path>, args: &[&str]| {
        let mut all = vec!["images", "--agent", &agent];
        let tls = tls_dir.map(|d| d.display().to_string());
        if let Some(tls) = &tls {
            all.extend(["--tls-dir", tls]);
        }
        all.extend(args);
        cluster.cella(&all).await
    };
    // The agent enforces the ACL once the master sent it.
    pull_busybox_through(&cluster, &agent).await;
    let out = images(None, &["ls"]).await;
    assert!(
        out.stdout.contains("library/busybox:1"),
        "{}",
        out.describe()
    );

    // Certificate directories of two more users (their own key, the cluster's CA).
    let user_dir = |name: &str| {
        let user = cluster.user(name, &[]);
        std::fs::copy(cluster.tls_dir.join("ca.pem"), user.dir.join("ca.pem")).ok();
        user.dir
    };
    let carol = user_dir("carol");
    let erin = user_dir("erin");
    let out = images(Some(&carol), &["ls"]).await;
    assert_eq!(out.code, Some(0), "a viewer may list: {}", out.describe());
    assert!(
        out.stdout.contains("library/busybox:1"),
        "{}",
        out.describe()
    );
    for args in [&["gc"][..], &["rm", "busybox:1"], &["pull", "busybox:1"]] {
        let out = images(Some(&carol), args).await;
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(
            out.stderr.contains("403") && out.stderr.contains("user:carol lacks admin"),
            "{}",
            out.describe()
        );
    }
    let out = images(Some(&erin), &["ls"]).await;
    assert!(
        out.code == Some(1) && out.stderr.contains("user:erin lacks view(state)"),
        "{}",
        out.describe()
    );
    assert_eq!(
        stored_images(&cluster),
        1,
        "the refused calls changed nothing"
    );
    let logged = cluster.log_lines_with("denied: POST /api/v1/images/gc");
    assert!(
        logged.contains("user:carol"),
        "the agent logs the denial: {logged}"
    );

    let out = images(None, &["rm", "busybox:1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("deleted sha256:"), "{}", out.describe());
    let out = images(None, &["gc"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(stored_images(&cluster), 0);
    cluster.finish();
}

/// GC through the API without a size keeps the store within the agent's
/// `--image-store-size`, as the agent's own GC does; a size given (1 byte) removes
/// every unused image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_through_the_api_defaults_to_the_agents_store_size() {
    let (_dir, registry) = registry_with_busybox();
    let cluster = cluster_for(&registry, &["--image-store-size=1GiB"]).await;
    let agent = format!("https://{}", cluster.agents[0].http);
    let images = async |args: &[&str]| {
        let mut all = vec!["images", "--agent", &agent];
        all.extend(args);
        cluster.cella(&all).await
    };
    pull_busybox_through(&cluster, &agent).await;

    let out = images(&["gc"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        stored_images(&cluster),
        1,
        "within the agent's 1 GiB, the unused image stays: {}",
        out.describe()
    );
    let out = images(&["gc", "--max-size", "1"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        stored_images(&cluster),
        0,
        "a size of 1 byte removes it: {}",
        out.describe()
    );
    cluster.finish();
}
