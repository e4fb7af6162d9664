//! End-to-end tests of the cluster: a real `cella-master`, real `cella-agent`s and the
//! `cella` CLI as separate processes over mutual TLS on 127.0.0.1, launching real
//! isolated tasks. Needs root and `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::v1::{self, call, event, scheduler_service_client::SchedulerServiceClient};
use cella_tests::{Cluster, DEADLINE, Scheduler, framework, task};

/// What each test agent offers.
const RES: &str = "cpus:2;mem:2GiB;disk:1GiB";

/// The task id `cella run` printed ("cella: launching ID on …").
fn launched_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("cella: launching "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("cella run did not say which task it launched:\n{stderr}"))
        .to_string()
}

fn offer_number(offer: &v1::Offer) -> u64 {
    offer
        .offer_id
        .strip_prefix("offer-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("offer id {:?} is not offer-N", offer.offer_id))
}

fn is_event(e: &v1::Event) -> Option<&event::Event> {
    e.event.as_ref()
}

// ------------------------------------------------------------------ 1. exit codes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_output_and_propagates_exit_code() {
    let c = Cluster::start(1, RES).await;
    let out = c
        .cella(&["run", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"])
        .await;
    assert_eq!(
        out.code,
        Some(3),
        "cella run must exit with the task's code 3; {}",
        out.describe()
    );
    assert_eq!(
        out.stdout,
        "hi\n",
        "the task's stdout, and only it, on stdout; {}",
        out.describe()
    );
    assert!(
        out.stderr.lines().any(|l| l == "oops"),
        "the task's stderr line on stderr; {}",
        out.describe()
    );
    let id = launched_id(&out.stderr);

    let list = c.cella(&["tasks", "--all", "--json"]).await;
    assert_eq!(
        list.code,
        Some(0),
        "cella tasks --all --json; {}",
        list.describe()
    );
    let tasks: Vec<api::Task> = serde_json::from_str(&list.stdout).unwrap_or_else(|e| {
        panic!(
            "cella tasks --json is not a JSON array of tasks ({e}): {}",
            list.stdout
        )
    });
    let t = tasks
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("task {id} missing from cella tasks --all: {tasks:?}"));
    assert_eq!(t.state.name(), "FAILED", "state of {id}: {t:?}");
    assert_eq!(t.exit_code, Some(3), "exit_code of {id}: {t:?}");
    assert_eq!(t.reason.name(), "COMMAND_EXITED", "reason of {id}: {t:?}");

    // Without --all, the ended task is not listed.
    let list = c.cella(&["tasks", "--json"]).await;
    assert_eq!(list.code, Some(0), "{}", list.describe());
    let running: Vec<api::Task> = serde_json::from_str(&list.stdout).expect("JSON");
    assert!(
        running.is_empty(),
        "cella tasks lists ended tasks without --all: {running:?}"
    );
    c.finish();
}

// ------------------------------------------------------------------ 2. memory limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_over_its_memory_limit_fails_with_memory_limit() {
    let c = Cluster::start(1, RES).await;
    let out = c
        .cella(&[
            "run",
            "--mem",
            "32MiB",
            "--",
            "sh",
            "-c",
            "head -c 100000000 /dev/zero | tail",
        ])
        .await;
    assert_eq!(
        out.code,
        Some(137),
        "an OOM-killed task exits 137 (128+SIGKILL); {}",
        out.describe()
    );
    let lower = out.stderr.to_lowercase();
    assert!(
        out.stderr.contains("MEMORY_LIMIT") || lower.contains("memory limit"),
        "cella run must say the memory limit was hit; {}",
        out.describe()
    );
    let id = launched_id(&out.stderr);
    let t = c
        .task(&id)
        .await
        .unwrap_or_else(|| panic!("the master does not know {id}"));
    assert_eq!(t.state.name(), "FAILED", "{t:?}");
    assert_eq!(t.reason.name(), "MEMORY_LIMIT", "{t:?}");
    c.finish();
}

// ------------------------------------------------------------------ 3. kill and logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_kill_and_logs() {
    let c = Cluster::start(1, RES).await;
    let out = c.cella(&["run", "--detach", "--", "sleep", "100"]).await;
    assert_eq!(
        out.code,
        Some(0),
        "cella run --detach exits 0 once RUNNING; {}",
        out.describe()
    );
    let id = out.stdout.trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "cella run --detach prints the task id alone on stdout; {}",
        out.describe()
    );
    c.wait_task_state(&id, "RUNNING").await;
    assert!(!c.shims().is_empty(), "a running task has a cella-shim");
    assert!(
        !c.cgroups().is_empty(),
        "a running task has cgroups named after the test's --cgroup-root"
    );

    let k = c.cella(&["kill", &id]).await;
    assert_eq!(k.code, Some(0), "cella kill {id}; {}", k.describe());
    let t = c.wait_task_state(&id, "KILLED").await;
    assert_eq!(t.reason.name(), "KILLED_BY_REQUEST", "{t:?}");

    // Killing it again is refused with a message.
    let again = c.cella(&["kill", &id]).await;
    assert_ne!(
        again.code,
        Some(0),
        "killing an ended task must fail; {}",
        again.describe()
    );
    assert!(again.stderr.contains("cella:"), "{}", again.describe());

    // Logs of a task that printed something, on stdout and stderr.
    let out = c
        .cella(&[
            "run",
            "--detach",
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; sleep 100",
        ])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id2 = out.stdout.trim().to_string();
    let deadline = Instant::now() + DEADLINE;
    let (mut stdout_log, mut stderr_log);
    loop {
        stdout_log = c.cella(&["logs", &id2]).await;
        stderr_log = c.cella(&["logs", &id2, "--stderr"]).await;
        if (stdout_log.stdout.contains("to-stdout") && stderr_log.stderr.contains("to-stderr"))
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stdout_log.code,
        Some(0),
        "cella logs {id2}; {}",
        stdout_log.describe()
    );
    assert_eq!(
        stdout_log.stdout,
        "to-stdout\n",
        "cella logs {id2}; {}",
        stdout_log.describe()
    );
    assert_eq!(
        stderr_log.code,
        Some(0),
        "cella logs --stderr; {}",
        stderr_log.describe()
    );
    // Like `docker logs`, the task's stderr goes to cella's stderr.
    assert!(
        stderr_log.stderr.lines().any(|l| l == "to-stderr")
            && !stderr_log.stdout.contains("to-stdout"),
        "cella logs {id2} --stderr shows the task's stderr only; {}",
        stderr_log.describe()
    );
    // Unknown task: a clear failure.
    let missing = c.cella(&["logs", "no-such-task"]).await;
    assert_ne!(missing.code, Some(0), "{}", missing.describe());

    let k = c.cella(&["kill", &id2]).await;
    assert_eq!(k.code, Some(0), "{}", k.describe());
    c.wait_task_state(&id2, "KILLED").await;
    c.finish();
}

// ------------------------------------------------------------------ 4. DRF

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_go_to_the_framework_with_the_lower_dominant_share() {
    let c = Cluster::start(2, RES).await;
    let agents: Vec<String> = c.agents.iter().map(|a| a.id.clone()).collect();

    // A alone: it gets both agents and launches, on each, 60% of the agent's cpus,
    // memory and disk. Its dominant share is then ~0.6; all that is left (0.4 of
    // everything) cannot lift another framework above it.
    let mut a = c.subscribe(framework("drf-a", "*", 30.0)).await;
    let mut launched = Vec::new();
    while launched.len() < agents.len() {
        for offer in a.offers().await {
            if launched.contains(&offer.agent_id) {
                a.decline(&offer.offer_id);
                continue;
            }
            let mut t = task(
                &format!("drf-a-{}", launched.len()),
                &["sleep", "100"],
                1.2,
                1236,
            );
            if let Some(r) = t.resources.as_mut() {
                r.disk_bytes = 620 << 20;
            }
            a.accept(&offer.offer_id, vec![t]);
            launched.push(offer.agent_id.clone());
        }
    }
    for i in 0..agents.len() {
        a.update(&format!("drf-a-{i}"), v1::TaskState::TaskRunning)
            .await;
    }

    // B subscribes: from its first offer on, every offer must go to B (share ≤ 0.4)
    // and none to A (share ~0.6). Offer ids grow with each allocation, so an offer
    // made to A after B's first one shows in its number.
    let mut b = c.subscribe(framework("drf-b", "*", 0.0)).await;
    let mut first_b: Option<u64> = None;
    let mut a_after: Vec<v1::Offer> = Vec::new();
    let mut b_offers: Vec<v1::Offer> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut window_end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if window_end.is_some_and(|w| now >= w) {
            break;
        }
        assert!(
            now < deadline,
            "B received no offers within {DEADLINE:?}\n{}",
            c.log_tails()
        );
        tokio::select! {
            e = a.next(Duration::from_millis(50)) => {
                if let Some(event::Event::Offers(o)) = e.as_ref().and_then(is_event) {
                    for offer in &o.offers {
                        if first_b.is_some_and(|n| offer_number(offer) > n) {
                            a_after.push(offer.clone());
                        }
                        a.decline(&offer.offer_id);
                    }
                }
            }
            e = b.next(Duration::from_millis(50)) => {
                if let Some(event::Event::Offers(o)) = e.as_ref().and_then(is_event) {
                    for offer in &o.offers {
                        if first_b.is_none() {
                            first_b = Some(offer_number(offer));
                            // Observe for 1.5 s (about 15 allocation cycles).
                            window_end = Some(Instant::now() + Duration::from_millis(1500));
                        }
                        b_offers.push(offer.clone());
                        b.decline(&offer.offer_id);
                    }
                }
            }
        }
    }
    assert!(
        a_after.is_empty(),
        "framework A (dominant share ~0.6) got offers after B (share ≤ 0.4) got its first \
         (offer-{}): {a_after:?}",
        first_b.unwrap_or_default()
    );
    assert!(
        b_offers.len() >= 4,
        "framework B should be offered both agents again and again over ~15 allocation cycles, \
         got {} offers: {b_offers:?}",
        b_offers.len()
    );
    for agent in &agents {
        assert!(
            b_offers.iter().any(|o| &o.agent_id == agent),
            "B was never offered agent {agent}: {b_offers:?}"
        );
    }
    // What B is offered is total − allocated of each agent.
    for o in &b_offers {
        let r = o.resources.unwrap_or_default();
        assert!(
            (r.cpus - 0.8).abs() < 1e-6
                && r.mem_bytes == (2048 - 1236) << 20
                && r.disk_bytes == (1024 - 620) << 20,
            "an offer to B should hold the agent's unallocated 0.8 cpus, 812 MiB and 404 MiB: {o:?}"
        );
    }

    // Once B leaves, A (which declined with refuse 0 all along) is offered again.
    b.send(call::Call::Teardown(call::Teardown {}));
    let after = first_b.unwrap_or_default();
    let offer = a
        .wait_for(
            "an offer after B's teardown",
            DEADLINE,
            |e| match is_event(e) {
                Some(event::Event::Offers(o)) => {
                    o.offers.iter().find(|o| offer_number(o) > after).cloned()
                }
                _ => None,
            },
        )
        .await;
    assert!(agents.contains(&offer.agent_id), "{offer:?}");
    for i in 0..agents.len() {
        a.kill(&format!("drf-a-{i}"));
    }
    for i in 0..agents.len() {
        a.update(&format!("drf-a-{i}"), v1::TaskState::TaskKilled)
            .await;
    }
    drop((a, b));
    c.finish();
}

// ------------------------------------------------------------------ 5. failover

/// Subscribes, launches `sleep 100` as `task_id` and waits until it is RUNNING.
async fn launch_sleep(c: &Cluster, s: &mut Scheduler, task_id: &str) {
    s.accept_next_offer(vec![task(task_id, &["sleep", "100"], 0.1, 32)])
        .await;
    s.update(task_id, v1::TaskState::TaskRunning).await;
    c.wait_task_state(task_id, "RUNNING").await;
}

/// A one-agent cluster where framework `name` (failover timeout `failover_secs`)
/// launched `sleep 100` as `task_id` and then closed its stream; the framework's id.
async fn left_after_launch(name: &str, failover_secs: f64, task_id: &str) -> (Cluster, String) {
    let c = Cluster::start(1, RES).await;
    let mut s = c.subscribe(framework(name, "*", failover_secs)).await;
    let fid = s.framework_id.clone();
    launch_sleep(&c, &mut s, task_id).await;
    drop(s);
    (c, fid)
}

async fn wait_framework(c: &Cluster, id: &str, connected: Option<bool>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let frameworks: Vec<api::Framework> = c.api_get("/api/v1/frameworks").await;
        let f = frameworks.into_iter().find(|f| f.id == id);
        let ok = match connected {
            Some(want) => f.as_ref().is_some_and(|f| f.connected == want),
            None => f.is_none(),
        };
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "framework {id}: expected {}, the master shows {f:?}",
            match connected {
                Some(true) => "connected",
                Some(false) => "disconnected",
                None => "removed",
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_that_reconnects_within_its_failover_timeout_keeps_its_tasks() {
    let (c, fid) = left_after_launch("failover", 30.0, "fo-keep").await;
    wait_framework(&c, &fid, Some(false)).await;
    let t = c.task("fo-keep").await.expect("task");
    assert_eq!(
        t.state.name(),
        "RUNNING",
        "the task of a disconnected framework keeps running: {t:?}"
    );

    let mut info = framework("failover", "*", 30.0);
    info.framework_id = fid.clone();
    let mut s = c.subscribe(info).await;
    assert_eq!(s.framework_id, fid, "re-subscribing keeps the framework id");
    wait_framework(&c, &fid, Some(true)).await;

    s.reconcile(&["fo-keep"]);
    let status = s
        .wait_for(
            "a RECONCILE answer for fo-keep",
            DEADLINE,
            |e| match is_event(e) {
                Some(event::Event::Update(u)) => u
                    .status
                    .clone()
                    .filter(|st| st.task_id == "fo-keep" && st.uuid.is_empty()),
                _ => None,
            },
        )
        .await;
    assert_eq!(
        status.state(),
        v1::TaskState::TaskRunning,
        "explicit reconciliation after failover: {status:?}"
    );
    assert_eq!(status.framework_id, fid, "{status:?}");

    s.kill("fo-keep");
    let killed = s.update("fo-keep", v1::TaskState::TaskKilled).await;
    assert_eq!(killed.reason(), v1::Reason::KilledByRequest, "{killed:?}");
    let t = c.wait_task_state("fo-keep", "KILLED").await;
    assert_eq!(t.reason.name(), "KILLED_BY_REQUEST", "{t:?}");
    // An open scheduler stream would hold the master's shutdown for its drain timeout.
    drop(s);
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_killed_when_the_failover_timeout_passes() {
    let (c, fid) = left_after_launch("failover-short", 1.0, "fo-short").await;
    let dropped = Instant::now();
    let t = c.wait_task_state("fo-short", "KILLED").await;
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "the task was killed {:?} after the disconnect, before the 1 s failover timeout: {t:?}",
        dropped.elapsed()
    );
    wait_framework(&c, &fid, None).await;
    c.finish();
}

/// Waits up to 10 s for the agent's `status_updates_pending` to be `want`.
async fn wait_pending(c: &Cluster, agent: &cella_tests::AgentInfo, want: f64, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = None;
    while Instant::now() < deadline {
        pending = c.agent_metric(agent, "status_updates_pending").await;
        if pending == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "status updates pending on agent {}: {pending:?}, expected {want} {when}\n{}",
        agent.hostname,
        c.log_tails()
    );
}

/// TEARDOWN kills the framework's tasks and removes it; the terminal updates of its
/// tasks can then reach no scheduler, so they must not stay pending on the agent
/// (re-sent to the master forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_a_removed_framework_do_not_stay_pending_on_the_agent() {
    let c = Cluster::start(1, RES).await;
    let mut s = c.subscribe(framework("teardown", "*", 30.0)).await;
    let fid = s.framework_id.clone();
    launch_sleep(&c, &mut s, "td-task").await;
    let agent = c.agents[0].clone();
    // Once the scheduler acknowledged STARTING and RUNNING, nothing is pending.
    wait_pending(&c, &agent, 0.0, "after RUNNING was acknowledged").await;
    s.send(call::Call::Teardown(call::Teardown {}));
    let t = c.wait_task_state("td-task", "KILLED").await;
    assert_eq!(t.framework_id, fid, "{t:?}");
    wait_framework(&c, &fid, None).await;

    // The KILLED update of the removed framework cannot reach a scheduler any more.
    wait_pending(
        &c,
        &agent,
        0.0,
        &format!("after the framework {fid} was removed (nobody will ever acknowledge them)"),
    )
    .await;
    drop(s);
    c.finish();
}

// ------------------------------------------------------------------ 6. invalid calls

fn error_status(status: &v1::TaskStatus, what: &str) {
    assert_eq!(
        status.state(),
        v1::TaskState::TaskError,
        "{what}: expected TASK_ERROR, got {status:?}"
    );
    assert_eq!(
        status.reason(),
        v1::Reason::InvalidTask,
        "{what}: expected INVALID_TASK, got {status:?}"
    );
    assert!(
        !status.message.trim().is_empty(),
        "{what}: the error needs a message: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_accepts_get_invalid_task_and_launch_nothing() {
    let c = Cluster::start(1, RES).await;
    let agent = c.agents[0].clone();
    let mut s = c.subscribe(framework("invalid", "*", 0.0)).await;
    let sleep = |id: &str| task(id, &["sleep", "100"], 0.1, 32);

    // Unknown offer.
    let offer = s.offers().await.remove(0);
    s.accept("offer-999999999", vec![sleep("bad-offer")]);
    let st = s.any_update("bad-offer").await;
    error_status(&st, "ACCEPT of an unknown offer");

    // Resources beyond the offer (the real offer, still outstanding).
    s.accept(
        &offer.offer_id,
        vec![task("too-big", &["sleep", "100"], 64.0, 32)],
    );
    let st = s.any_update("too-big").await;
    error_status(&st, "a task needing 64 cpus on an offer of 2");

    // Empty command, and a malformed task id.
    s.accept_next_offer(vec![
        task("empty-command", &[], 0.1, 32),
        sleep("../escape"),
    ])
    .await;
    error_status(&s.any_update("empty-command").await, "an empty command");
    error_status(&s.any_update("../escape").await, "task id ../escape");

    // Nothing launched anywhere.
    // What the agent runs and what the master knows, a moment after the answers.
    let settled = async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        (c.agent_containers(&agent).await, c.tasks().await)
    };
    let (containers, tasks) = settled().await;
    assert!(
        containers.is_empty(),
        "invalid tasks reached the agent: {containers:?}"
    );
    assert!(
        tasks.is_empty(),
        "the master keeps invalid tasks as if launched: {tasks:?}"
    );

    // A valid task, then the same id again.
    s.accept_next_offer(vec![sleep("t-ok")]).await;
    s.update("t-ok", v1::TaskState::TaskRunning).await;
    // Forget t-ok's earlier updates: the next one answers the duplicate.
    s.forget_updates("t-ok");
    s.accept_next_offer(vec![task("t-ok", &["sh", "-c", "echo second"], 0.1, 32)])
        .await;
    error_status(&s.any_update("t-ok").await, "a duplicate task id");

    let (containers, tasks) = settled().await;
    assert_eq!(
        containers.len(),
        1,
        "exactly t-ok runs on the agent: {containers:?}"
    );
    assert_eq!(containers[0]["task_id"], "t-ok", "{containers:?}");
    assert_eq!(tasks.len(), 1, "the master knows only t-ok: {tasks:?}");
    assert_eq!(tasks[0].state.name(), "RUNNING", "{tasks:?}");
    assert_eq!(tasks[0].command, ["sleep", "100"], "{tasks:?}");

    s.kill("t-ok");
    s.update("t-ok", v1::TaskState::TaskKilled).await;
    // An open scheduler stream would hold the master's shutdown for its drain timeout.
    drop(s);
    c.finish();
}

// ------------------------------------------------------------------ 7. certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused() {
    let c = Cluster::start(0, RES).await;
    let get = tonic::codegen::http::Method::GET;
    let anonymous =
        cella_proto::tls::client_config_anonymous(&c.tls_dir.join("ca.pem")).expect("CA");

    let get_path = async |path: &str, tls: &rustls::ClientConfig| {
        cella_proto::tls::https_request(get.clone(), &format!("{}{path}", c.master_url), None, tls)
            .await
    };

    // Only /health answers without a certificate.
    for (path, status) in [
        ("/health", 200),
        ("/api/v1/state", 401),
        ("/api/v1/tasks", 401),
        ("/metrics", 401),
    ] {
        let r = get_path(path, &anonymous)
            .await
            .unwrap_or_else(|e| panic!("GET {path} without a certificate: {e}"));
        assert_eq!(
            r.status.as_u16(),
            status,
            "GET {path} without a certificate"
        );
    }

    // The scheduler API without a certificate.
    let channel = cella_proto::tls::grpc_channel(&c.master_url, &anonymous)
        .await
        .expect("TLS without a client certificate is allowed; the API refuses");
    let mut client = SchedulerServiceClient::new(channel);
    let subscribe = v1::Call::subscribe(framework("anonymous", "*", 0.0));
    let result = client
        .subscribe(tokio_stream::iter(vec![subscribe.clone()]))
        .await;
    match result {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "SUBSCRIBE without a certificate: {status:?}"
        ),
        Ok(mut stream) => {
            let first = stream.get_mut().message().await;
            match first {
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}")
                }
                Ok(m) => panic!("SUBSCRIBE without a certificate was answered: {m:?}"),
            }
        }
    }

    // A client certificate of another CA.
    let other = c.path().join("other-tls");
    cella_tests::certs_init(&c.bins, &other);
    let foreign = cella_proto::tls::client_config(
        &c.tls_dir.join("ca.pem"),
        &other.join("client.pem"),
        &other.join("client-key.pem"),
    )
    .expect("config");
    match get_path("/api/v1/state", &foreign).await {
        Err(_) => {}
        Ok(r) => panic!(
            "a certificate of another CA was accepted: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
    }
    let grpc = async {
        let channel = cella_proto::tls::grpc_channel(&c.master_url, &foreign)
            .await
            .map_err(|e| e.to_string())?;
        let mut client = SchedulerServiceClient::new(channel);
        let mut stream = client
            .subscribe(tokio_stream::iter(vec![subscribe.clone()]))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        stream.message().await.map_err(|e| e.to_string())
    };
    if let Ok(m) = grpc.await {
        panic!("SUBSCRIBE with a certificate of another CA was answered: {m:?}");
    }

    // The CLI with the wrong certificates: a clear message, a non-zero status.
    let tasks_with = async |tls_dir: &std::path::Path| {
        let tls_dir = tls_dir.to_str().expect("utf-8");
        c.cella(&["tasks", "--master", &c.master_url, "--tls-dir", tls_dir])
            .await
    };
    let wrong = tasks_with(&other).await;
    assert_ne!(
        wrong.code,
        Some(0),
        "cella tasks with another CA's certificates; {}",
        wrong.describe()
    );
    assert!(
        wrong.stderr.starts_with("cella: ") && wrong.stderr.to_lowercase().contains("certificate"),
        "cella tasks with another CA's certificates should say it is a certificate problem; {}",
        wrong.describe()
    );
    let missing = c.path().join("no-such-dir");
    let none = tasks_with(&missing).await;
    assert_ne!(none.code, Some(0), "{}", none.describe());
    assert!(
        none.stderr.contains(missing.to_str().expect("utf-8")),
        "the message should name the missing directory; {}",
        none.describe()
    );
    // And the right ones work.
    let ok = c.cella(&["tasks"]).await;
    assert_eq!(ok.code, Some(0), "{}", ok.describe());
    c.finish();
}

// ------------------------------------------------------------------ 8. agent lost

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_agent_gets_its_tasks_lost_and_its_offers_rescinded() {
    let mut c = Cluster::start(1, RES).await;
    let agent = c.agents[0].clone();
    let mut s = c.subscribe(framework("lost", "*", 30.0)).await;
    launch_sleep(&c, &mut s, "lost-task").await;
    // Hold an offer for the agent's remaining resources without answering it.
    let held = s
        .wait_for("an offer of the agent", DEADLINE, |e| match is_event(e) {
            Some(event::Event::Offers(o)) => {
                o.offers.iter().find(|o| o.agent_id == agent.id).cloned()
            }
            _ => None,
        })
        .await;

    c.kill_hard(agent.proc);
    assert!(
        !c.shims().is_empty(),
        "the task should keep running under its shim when its agent dies"
    );
    let rescinded = s
        .wait_for("RESCIND of the held offer", DEADLINE, |e| {
            match is_event(e) {
                Some(event::Event::Rescind(r)) if r.offer_id == held.offer_id => Some(r.clone()),
                _ => None,
            }
        })
        .await;
    assert_eq!(rescinded.offer_id, held.offer_id);

    let lost = s.update("lost-task", v1::TaskState::TaskLost).await;
    assert_eq!(lost.reason(), v1::Reason::AgentLost, "{lost:?}");
    let t = c.wait_task_state("lost-task", "LOST").await;
    assert_eq!(t.reason.name(), "AGENT_LOST", "{t:?}");
    let agents: Vec<api::Agent> = c.api_get("/api/v1/agents").await;
    assert!(
        agents.iter().all(|a| a.id != agent.id),
        "a lost agent is removed: {agents:?}"
    );

    assert!(
        !c.cgroups().is_empty(),
        "the task of the killed agent keeps its cgroups"
    );
    // Nobody is left to kill the task: the test does.
    c.kill_tasks_and_cgroups();
    // An open scheduler stream would hold the master's shutdown for its drain timeout.
    drop(s);
    c.finish();
}

// ------------------------------------------------------------------ 9. cella dev

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cella_dev_runs_tasks_and_stops_cleanly() {
    let mut c = Cluster::new();
    let work = c.path().join("dev");
    let (idx, _) = c.start_dev(&work, None).await;
    let profile = std::fs::read_to_string(&c.profile).expect("cella dev writes the profile");
    assert!(profile.contains(&c.master_url), "profile: {profile}");

    let out = c
        .cella(&["run", "--mem", "64MiB", "--", "sh", "-c", "echo hi"])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hi\n", "{}", out.describe());

    let out = c.cella(&["run", "--detach", "--", "sleep", "100"]).await;
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_string();
    c.wait_task_state(&id, "RUNNING").await;
    assert!(!c.shims().is_empty(), "the detached task runs under a shim");

    c.interrupt_dev(idx);
    c.finish();
}
