//! Authorization, with real processes and real mutual TLS: every permission of an ACL
//! allowed for a principal that has it and denied for one that does not (the ACL
//! reloaded on change and on SIGHUP); agents that speak only for themselves; and the
//! agent's own allowlist holding when the master allows more.

use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::tls::HttpResponse;
use cella_proto::v1::{self, agent_message};
use cella_tests::security::{launch_one, registration};
use cella_tests::{AgentInfo, Cluster, DEADLINE, Scheduler, framework, issue_agent, task};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

/// `none1` and `none2` have the same length: swapping them changes the ACL without
/// changing the file's size.
fn acl() -> String {
    cella_tests::security::acl_with(
        r#""group:batch" = ["batch"]
"user:carol" = ["viewer"]
"user:erin" = ["none1"]
"#,
        r#"[roles.batch]
subscribe = ["batch"]
run_task = [{ role = "batch", as_user = ["*"], max_cpus = 0.5 }]
use_volume = [{ prefix = "DATA", mode = "ro" }]
kill_task = "own"
teardown_framework = "own"

[roles.viewer]
view = ["state", "tasks"]

[roles.none1]

[roles.none2]
subscribe = ["batch"]
"#,
    )
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn error_of(status: &v1::TaskStatus) -> String {
    assert_eq!(status.state(), v1::TaskState::TaskError, "{status:?}");
    assert_eq!(status.reason(), v1::Reason::InvalidTask, "{status:?}");
    status.message.clone()
}

fn body(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A cluster of one agent (returned too) and a framework `f` in any role.
async fn one_agent_and_a_framework() -> (Cluster, AgentInfo, Scheduler) {
    let c = Cluster::start(1, RES).await;
    let agent = c.agents[0].clone();
    let s = c.subscribe(framework("f", "*", 60.0)).await;
    (c, agent, s)
}

/// The error with which the master refuses the agent stream that the certificate in
/// `dir` opens with `register`; it must have `code`. `what` names the attempt.
async fn refused_agent_stream(
    c: &Cluster,
    dir: &std::path::Path,
    register: agent_message::Register,
    code: tonic::Code,
    what: &str,
) -> tonic::Status {
    let err = c
        .agent_stream(dir, register)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}"));
    assert_eq!(err.code(), code, "{err:?}");
    err
}

/// The master's answer to `method path` for the client with `tls`.
async fn ask(c: &Cluster, tls: &rustls::ClientConfig, method: &str, path: &str) -> HttpResponse {
    c.request(tls, method, path, &[]).await.unwrap()
}

/// Asserts that `r` is a refusal (403) that says `says`.
fn assert_refused(r: &HttpResponse, says: &str) {
    assert_eq!(r.status.as_u16(), 403, "{}", body(r));
    assert!(body(r).contains(says), "{}", body(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permission_is_allowed_with_it_and_denied_without() {
    let mut c = Cluster::new();
    let data = c.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let acl = c.use_acl(&acl().replace("DATA", data.to_str().unwrap()));
    c.start_master().await;
    let agent = c.start_agent(RES).await;
    let alice = c.user("alice", &["batch"]);
    let bob = c.user("bob", &["batch"]);
    let carol = c.user("carol", &[]);
    let dave = c.user("dave", &[]);
    let erin = c.user("erin", &[]);
    let url = c.master_url.clone();

    // subscribe(role)
    let mut s = Scheduler::subscribe(&url, &alice.master, framework("a", "batch", 60.0))
        .await
        .expect("alice may subscribe in batch");
    for (who, role) in [(&alice, "prod"), (&dave, "batch"), (&carol, "batch")] {
        let err = Scheduler::subscribe(&url, &who.master, framework("x", role, 0.0))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} subscribed in {role}", who.principal));
        assert!(
            err.contains("PermissionDenied")
                && err.contains(&format!("{} lacks subscribe(role={role})", who.principal)),
            "{err}"
        );
    }

    // run_task(role, as_user) with its ceiling, use_volume(prefix, mode)
    let mut t = task("a-ok", &["sleep", "100"], 0.1, 16);
    t.volumes = vec![v1::Volume {
        host_path: data.display().to_string(),
        task_path: "/mnt".into(),
        read_only: true,
    }];
    let ok = launch_one(&mut s, t).await;
    assert_eq!(ok.state(), v1::TaskState::TaskRunning, "{ok:?}");
    let mut root = task("a-root", &["true"], 0.1, 16);
    root.user = "root".into();
    let m = error_of(&launch_one(&mut s, root).await);
    assert!(
        m.contains("lacks run_task(role=batch, as_user=root)"),
        "{m}"
    );
    let m = error_of(&launch_one(&mut s, task("a-big", &["true"], 0.8, 16)).await);
    assert!(m.contains("0.8 cpus is over the limit of 0.5"), "{m}");
    for (path, read_only) in [
        (data.display().to_string(), false),
        ("/etc".to_string(), true),
    ] {
        let mut v = task("a-vol", &["true"], 0.1, 16);
        v.task_id = format!("a-vol-{}", if read_only { "etc" } else { "rw" });
        v.volumes = vec![v1::Volume {
            host_path: path.clone(),
            task_path: "/mnt".into(),
            read_only,
        }];
        let m = error_of(&launch_one(&mut s, v).await);
        let mode = if read_only { "ro" } else { "rw" };
        assert!(
            m.contains(&format!("lacks use_volume({path}, {mode})")),
            "{m}"
        );
    }

    // A framework belongs to its principal: bob cannot take alice's over.
    let mut takeover = framework("a", "batch", 60.0);
    takeover.framework_id = s.framework_id.clone();
    let err = Scheduler::subscribe(&url, &bob.master, takeover)
        .await
        .err()
        .expect("bob took alice's framework over");
    assert!(err.contains("belongs to principal \"user:alice\""), "{err}");

    // view(state), view(tasks): alice sees her own tasks only, carol all of them but
    // not their usage, alice her own usage.
    let mut sb = Scheduler::subscribe(&url, &bob.master, framework("b", "batch", 60.0))
        .await
        .unwrap();
    let b = launch_one(&mut sb, task("b-ok", &["sleep", "100"], 0.1, 16)).await;
    assert_eq!(b.state(), v1::TaskState::TaskRunning);
    let r = ask(&c, &alice.master, "GET", "/api/v1/state").await;
    assert_refused(&r, "user:alice lacks view(state)");
    let r = ask(&c, &carol.master, "GET", "/api/v1/state").await;
    assert_eq!(r.status.as_u16(), 200, "{}", body(&r));
    let ids = |r: &HttpResponse| -> Vec<String> {
        let tasks: Vec<api::Task> = serde_json::from_slice(&r.body).unwrap();
        tasks.into_iter().map(|t| t.id).collect()
    };
    let r = ask(&c, &alice.master, "GET", "/api/v1/tasks?state=RUNNING").await;
    assert_eq!(ids(&r), ["a-ok"]);
    let r = ask(&c, &bob.master, "GET", "/api/v1/tasks?state=RUNNING").await;
    assert_eq!(ids(&r), ["b-ok"]);
    let r = ask(&c, &alice.master, "GET", "/api/v1/tasks/b-ok").await;
    assert_eq!(r.status.as_u16(), 403, "{}", body(&r));
    wait_until("alice to see her task's usage", async || {
        let r = ask(&c, &alice.master, "GET", "/api/v1/tasks/a-ok").await;
        serde_json::from_slice::<api::Task>(&r.body).is_ok_and(|t| t.usage.is_some())
    })
    .await;
    // A task's usage is authorized as the task and its usage: others get the refusal
    // of any view they lack, an unknown task a 404.
    let r = ask(&c, &alice.master, "GET", "/api/v1/tasks/a-ok/usage").await;
    assert_eq!(r.status.as_u16(), 200, "{}", body(&r));
    let u: api::TaskUsage = serde_json::from_slice(&r.body).unwrap();
    assert!(u.latest.is_some() && !u.history.is_empty(), "{u:?}");
    assert!(u.summary.is_some_and(|s| !s.is_final), "{u:?}");
    let r = ask(&c, &alice.master, "GET", "/api/v1/tasks/b-ok/usage").await;
    assert_refused(&r, "user:alice lacks view(tasks");
    let r = ask(&c, &carol.master, "GET", "/api/v1/tasks/a-ok/usage").await;
    assert_refused(&r, "user:carol lacks view(usage");
    let r = ask(&c, &alice.master, "GET", "/api/v1/tasks/unknown/usage").await;
    assert_eq!(r.status.as_u16(), 404, "{}", body(&r));
    let r = ask(&c, &carol.master, "GET", "/api/v1/tasks?state=RUNNING").await;
    let tasks: Vec<api::Task> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.iter().all(|t| t.usage.is_none()),
        "carol has no view(usage)"
    );

    // view(sandbox) on the agent: the owner reads, others are refused.
    let stdout = format!("https://{}/api/v1/tasks/a-ok/files/stdout", agent.http);
    let get = |tls: &rustls::ClientConfig| {
        let (url, tls) = (stdout.clone(), tls.clone());
        async move {
            cella_proto::tls::https_request("GET".parse().unwrap(), &url, None, &tls)
                .await
                .unwrap()
        }
    };
    assert_eq!(get(&alice.agents).await.status.as_u16(), 200);
    for who in [&bob, &carol] {
        let r = get(&who.agents).await;
        assert_refused(&r, "lacks view(sandbox:batch)");
    }

    // kill_task(own), teardown_framework(own); the operator (admin) may do anything.
    let r = ask(&c, &bob.master, "POST", "/api/v1/tasks/a-ok/kill").await;
    assert_refused(&r, "user:bob lacks kill_task(role)");
    let r = ask(&c, &alice.master, "POST", "/api/v1/tasks/a-ok/kill").await;
    assert_eq!(r.status.as_u16(), 202, "{}", body(&r));
    s.update("a-ok", v1::TaskState::TaskKilled).await;
    let teardown = format!("/api/v1/frameworks/{}/teardown", sb.framework_id);
    let r = ask(&c, &alice.master, "POST", &teardown).await;
    assert_refused(&r, "lacks teardown_framework(role)");
    let r = ask(&c, &c.client_tls, "POST", &teardown).await;
    assert_eq!(r.status.as_u16(), 202, "{}", body(&r));
    c.wait_task_state("b-ok", "KILLED").await;

    // The ACL is re-read when the file changes...
    let may_subscribe = |who: &cella_tests::security::User| {
        let (url, tls) = (url.clone(), who.master.clone());
        async move {
            Scheduler::subscribe(&url, &tls, framework("late", "batch", 0.0))
                .await
                .is_ok()
        }
    };
    assert!(!may_subscribe(&dave).await);
    let text = std::fs::read_to_string(&acl).unwrap();
    std::fs::write(
        &acl,
        text.replace(
            "\"user:carol\"",
            "\"user:dave\" = [\"batch\"]\n\"user:carol\"",
        ),
    )
    .unwrap();
    wait_until("dave's new grant", async || may_subscribe(&dave).await).await;

    // ... and on SIGHUP, even when the file looks unchanged (same size and time).
    assert!(!may_subscribe(&erin).await);
    let before = std::fs::metadata(&acl).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&acl).unwrap();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&acl).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(text.replace("[\"none1\"]", "[\"none2\"]").as_bytes())
            .unwrap();
        f.set_modified(before).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !may_subscribe(&erin).await,
        "an unchanged-looking file is not re-read by itself"
    );
    let master = c
        .procs
        .iter()
        .rev()
        .find(|p| p.name.starts_with("master"))
        .unwrap()
        .pid();
    kill(Pid::from_raw(master), Signal::SIGHUP).unwrap();
    wait_until("erin's grant after SIGHUP", async || {
        may_subscribe(&erin).await
    })
    .await;

    // Denials are counted by permission.
    let metrics = ask(&c, &c.client_tls, "GET", "/metrics").await;
    let text = body(&metrics);
    for permission in [
        "subscribe",
        "run_task",
        "use_volume",
        "view",
        "kill_task",
        "teardown_framework",
    ] {
        assert!(
            text.contains(&format!(
                "cella_master_authz_denied_total{{permission=\"{permission}\"}}"
            )),
            "{permission}: {text}"
        );
    }
    drop((s, sb));
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_speak_only_for_themselves() {
    let (c, agent, mut s) = one_agent_and_a_framework().await;
    let running = launch_one(&mut s, task("victim", &["sleep", "100"], 0.1, 16)).await;
    assert_eq!(running.state(), v1::TaskState::TaskRunning);

    // A user's certificate cannot open the agent stream, an agent's cannot subscribe.
    let err = refused_agent_stream(
        &c,
        &c.tls_dir.clone(),
        registration("", "fake"),
        tonic::Code::PermissionDenied,
        "a user certificate registered an agent",
    )
    .await;
    assert!(
        err.message().contains("only an agent's certificate"),
        "{err:?}"
    );
    let own_dir = c.tls_dir.join("agents").join(&agent.hostname);
    let agent_tls = cella_tests::security::tls_of(
        &c.tls_dir,
        &own_dir.join("agent.pem"),
        &own_dir.join("agent-key.pem"),
        cella_proto::tls::ExpectedServer::Master,
    );
    let err = Scheduler::subscribe(&c.master_url, &agent_tls, framework("a", "*", 0.0))
        .await
        .err()
        .expect("an agent certificate subscribed");
    assert!(err.contains("only a user's certificate"), "{err}");

    // Another node cannot take the live agent's id; nor can a second live
    // registration of it, even from its own node.
    let rogue_dir = issue_agent(&c.bins, &c.tls_dir, "rogue");
    let err = refused_agent_stream(
        &c,
        &rogue_dir,
        registration(&agent.id, "rogue"),
        tonic::Code::PermissionDenied,
        "the rogue took the agent's id",
    )
    .await;
    assert!(err.message().contains("cannot register as it"), "{err:?}");
    refused_agent_stream(
        &c,
        &own_dir,
        registration(&agent.id, "again"),
        tonic::Code::AlreadyExists,
        "a second live registration",
    )
    .await;

    // As itself, the rogue registers, but cannot speak for the live agent's task:
    // not in its registration, not with a status update, not with usage.
    let mut reg = registration("", "rogue");
    reg.tasks = vec![v1::RunningTask {
        framework_id: running.framework_id.clone(),
        task: Some(task("victim", &["sleep", "100"], 0.1, 16)),
        state: v1::TaskState::TaskRunning as i32,
    }];
    let rogue = c
        .agent_stream(&rogue_dir, reg)
        .await
        .expect("the rogue registers as itself");
    rogue.send(agent_message::Message::StatusUpdate(
        agent_message::StatusUpdate {
            status: Some(v1::TaskStatus {
                task_id: "victim".into(),
                framework_id: running.framework_id.clone(),
                state: v1::TaskState::TaskFailed as i32,
                uuid: "forged-uuid".into(),
                message: "forged".into(),
                ..Default::default()
            }),
            latest_state: v1::TaskState::TaskFailed as i32,
        },
    ));
    rogue.send(agent_message::Message::Usage(agent_message::UsageReport {
        tasks: vec![v1::TaskUsage {
            task_id: "victim".into(),
            mem_current_bytes: Some(1 << 40),
            ..Default::default()
        }],
        ..Default::default()
    }));
    // The forged update is refused (and counted); the task stays RUNNING on its agent.
    wait_until("the refusals to be counted", async || {
        let m = ask(&c, &c.client_tls, "GET", "/metrics").await;
        let text = body(&m);
        [
            "not_an_agent",
            "node_mismatch",
            "already_connected",
            "not_its_task",
            "usage_not_its_task",
            "new_agent_with_tasks",
        ]
        .iter()
        .all(|r| {
            text.contains(&format!(
                "cella_master_agent_refusals_total{{reason=\"{r}\"}}"
            ))
        })
    })
    .await;
    let victim = c.task("victim").await.expect("the task");
    assert_eq!(victim.state, v1::TaskState::TaskRunning, "{victim:?}");
    assert_eq!(victim.agent_id, agent.id);
    assert!(
        victim
            .usage
            .is_none_or(|u| u.mem_current_bytes != Some(1 << 40))
    );
    while let Some(e) = s.next(Duration::from_millis(500)).await {
        if let Some(v1::event::Event::Update(u)) = &e.event {
            assert_ne!(
                u.status.as_ref().map(|s| s.state()),
                Some(v1::TaskState::TaskFailed),
                "{e:?}"
            );
        }
    }
    assert!(
        c.log_lines_with("refused").contains("runs on agent"),
        "{}",
        c.log_tails()
    );
    drop((rogue, s));
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_allowlist_holds_when_the_master_allows_more() {
    // A permissive master (no ACL); the agent allows volumes under the cluster's
    // directory only, no rootfs and no root task.
    let (c, agent, mut s) = one_agent_and_a_framework().await;
    let mut outside = task("etc", &["true"], 0.1, 16);
    outside.volumes = vec![v1::Volume {
        host_path: "/etc".into(),
        task_path: "/mnt".into(),
        read_only: true,
    }];
    let m = error_of(&launch_one(&mut s, outside).await);
    assert!(
        m.contains("refused by this agent: volume /etc (ro) is outside"),
        "{m}"
    );
    let mut root = task("root", &["true"], 0.1, 16);
    root.user = "0".into();
    let m = error_of(&launch_one(&mut s, root).await);
    assert!(m.contains("does not run root tasks"), "{m}");
    let mut rootfs = task("rootfs", &["true"], 0.1, 16);
    rootfs.rootfs = "/".into();
    let m = error_of(&launch_one(&mut s, rootfs).await);
    assert!(m.contains("rootfs / is outside"), "{m}");

    // Inside the allowlist, as the agent's unprivileged task user.
    let inside = c.path().join("shared");
    std::fs::create_dir_all(&inside).unwrap();
    let mut ok = task(
        "inside",
        &["sh", "-c", "id -u; ls /mnt >/dev/null"],
        0.1,
        16,
    );
    ok.volumes = vec![v1::Volume {
        host_path: inside.display().to_string(),
        task_path: "/mnt".into(),
        read_only: true,
    }];
    launch_one(&mut s, ok).await;
    let end = s.update("inside", v1::TaskState::TaskFinished).await;
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    let out = c.cella(&["logs", "inside"]).await;
    assert_eq!(out.stdout.trim(), "65534", "{}", out.describe());

    assert!(
        c.agent_metric(&agent, "launches_refused_total{reason=\"volume\"}")
            .await
            >= Some(1.0)
    );
    assert!(
        c.agent_metric(&agent, "launches_refused_total{reason=\"root\"}")
            .await
            >= Some(1.0)
    );
    drop(s);
    c.finish();
}
