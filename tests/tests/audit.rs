//! The master's audit log while `cella-master` is killed with SIGKILL at random
//! moments as tasks finish: afterwards every task whose terminal update the
//! scheduler acknowledged has exactly one record, and `cella audit verify` accepts
//! the chain and its signed checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::v1;
use cella_tests::{Cluster, DEADLINE, Scheduler, framework, task};

const ROUNDS: usize = 8;

/// A random number below `n` (the delays are printed, not replayable).
fn random_below(n: u64) -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n
}

/// Reads (and so acknowledges) events for `dur`.
async fn pump(s: &mut Scheduler, dur: Duration) {
    let deadline = Instant::now() + dur;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if s.next(left).await.is_none() {
            return;
        }
    }
}

async fn wait_agents_connected(c: &Cluster) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let agents: Vec<api::Agent> = c.api_get("/api/v1/agents").await;
        if agents.iter().all(|a| a.state == api::AgentState::Connected) && !agents.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not come back: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the tasks whose terminal update (one needing acknowledgement) the
/// scheduler read, and so acknowledged.
fn acknowledged_ends(history: &[v1::TaskStatus]) -> BTreeSet<String> {
    history
        .iter()
        .filter(|s| s.state().is_terminal() && !s.uuid.is_empty())
        .map(|s| s.task_id.clone())
        .collect()
}

/// The ids of the tasks of which the scheduler heard nothing but reconciliation's
/// answer that the master does not know them (LOST, reason RECONCILIATION, on no
/// agent; a task the master knows is answered with its agent): their ACCEPT died
/// with the master.
fn never_taken(history: &[v1::TaskStatus]) -> BTreeSet<String> {
    let unknown = |s: &v1::TaskStatus| {
        s.state() == v1::TaskState::TaskLost
            && s.reason() == v1::Reason::Reconciliation
            && s.agent_id.is_empty()
    };
    let heard_of: BTreeSet<&str> = history
        .iter()
        .filter(|s| !unknown(s))
        .map(|s| s.task_id.as_str())
        .collect();
    history
        .iter()
        .filter(|s| unknown(s) && !heard_of.contains(s.task_id.as_str()))
        .map(|s| s.task_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_while_tasks_finish_keeps_one_record_per_acknowledged_end() {
    let mut c = Cluster::new();
    // No agent is declared lost here: the master's restarts are what is tested.
    let i = c
        .master_flags
        .iter()
        .position(|f| f == "--agent-timeout")
        .expect("--agent-timeout among the test flags");
    c.master_flags[i + 1] = "60s".into();
    c.master_flags
        .extend(["--audit-checkpoint-interval".into(), "200ms".into()]);
    c.start_master().await;
    c.start_agent("cpus:16;mem:16GiB;disk:4GiB").await;
    let mut s = c.subscribe(framework("audit", "*", 3600.0)).await;
    let framework_id = s.framework_id.clone();
    let mut ids: Vec<String> = Vec::new();
    let mut history = Vec::new();
    for round in 0..ROUNDS {
        let offer = s.offers().await.remove(0);
        let commands: [&[&str]; 3] = [&["true"], &["sh", "-c", "exit 3"], &["sleep", "0.2"]];
        let tasks: Vec<v1::TaskInfo> = commands
            .iter()
            .enumerate()
            .map(|(k, cmd)| task(&format!("r{round}-{k}"), cmd, 0.1, 32))
            .collect();
        ids.extend(tasks.iter().map(|t| t.task_id.clone()));
        s.accept(&offer.offer_id, tasks);
        let (run, down) = (random_below(400), random_below(300));
        eprintln!("round {round}: SIGKILL after {run} ms, down {down} ms");
        pump(&mut s, Duration::from_millis(run)).await;
        c.restart_master_hard(Duration::from_millis(down)).await;
        history.append(&mut s.history);
        drop(s);
        let mut info = framework("audit", "*", 3600.0);
        info.framework_id = framework_id.clone();
        s = c.subscribe(info).await;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        s.reconcile(&refs);
        wait_agents_connected(&c).await;
    }

    // Every task the master took ends and its end is acknowledged; no update waits
    // on the agent. An ACCEPT the master was killed before reading launched nothing:
    // reconciliation answers that the master does not know those tasks.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pump(&mut s, Duration::from_millis(300)).await;
        history.append(&mut s.history);
        let acked = acknowledged_ends(&history);
        let never_taken = never_taken(&history);
        let pending = c
            .agent_metric(&c.agents[0], "status_updates_pending")
            .await
            .unwrap_or(0.0);
        if ids
            .iter()
            .all(|id| acked.contains(id) || never_taken.contains(id))
            && pending == 0.0
        {
            eprintln!("launches lost with the master: {never_taken:?}");
            // The agent (never restarted here) launched exactly the others.
            let launched = c
                .agent_metric(&c.agents[0], "task_launches_total{outcome=\"running\"}")
                .await;
            assert_eq!(
                launched,
                Some((ids.len() - never_taken.len()) as f64),
                "tasks the agent launched, against those the master took"
            );
            assert!(
                never_taken.len() < ids.len() / 2,
                "most launches were lost: {never_taken:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every end was acknowledged: {:?} of {ids:?}, {pending} pending\n{}",
            acked,
            c.log_tails()
        );
    }

    let audit = c.path().join("master").join("audit");
    let audit = audit.to_str().expect("a UTF-8 path");
    let export = c.cella(&["audit", "export", "--dir", audit]).await;
    assert_eq!(export.code, Some(0), "{}", export.describe());
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for line in export.stdout.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
        if r["kind"] == "task_end" {
            *ends
                .entry(r["task_id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    let wrong: Vec<String> = acknowledged_ends(&history)
        .into_iter()
        .filter(|id| ends.get(id) != Some(&1))
        .map(|id| format!("{id}: {} records", ends.get(&id).unwrap_or(&0)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}\n{}", export.stdout);
    assert!(ends.values().all(|n| *n == 1), "{ends:?}");
    let lost = never_taken(&history);
    assert!(
        lost.iter().all(|id| !ends.contains_key(id)),
        "a record of a task the master never took: {lost:?}\n{}",
        export.stdout
    );

    let ca = c.path().join("tls").join("ca.pem");
    let verify = c
        .cella(&[
            "audit",
            "verify",
            audit,
            "--ca",
            ca.to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(verify.code, Some(0), "{}", verify.describe());
    assert!(
        c.log_lines_with("does not match its last checkpoint")
            .is_empty(),
        "{}",
        c.log_tails()
    );

    // The figures for a spreadsheet: one CSV row and one summed task per end.
    let csv = c
        .cella(&["audit", "export", "--dir", audit, "--format", "csv"])
        .await;
    assert_eq!(
        csv.stdout.lines().count(),
        ends.len() + 1,
        "{}",
        csv.describe()
    );
    let summary = c
        .cella(&[
            "audit",
            "summary",
            "--dir",
            audit,
            "--by",
            "framework",
            "--json",
        ])
        .await;
    let totals: serde_json::Value = serde_json::from_str(&summary.stdout).expect("JSON");
    assert_eq!(
        totals[&framework_id]["tasks"].as_u64(),
        Some(ends.len() as u64),
        "{}",
        summary.describe()
    );

    // A copy without its second record: `cella audit verify` exits 1 and names it.
    let copy = c.path().join("audit-copy");
    std::fs::create_dir_all(&copy).expect("creating the copy");
    for entry in std::fs::read_dir(audit).expect("the audit directory") {
        let entry = entry.expect("an entry");
        let text = std::fs::read_to_string(entry.path()).expect("readable");
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("{\"seq\":2,"))
            .collect();
        std::fs::write(copy.join(entry.file_name()), kept).expect("writing the copy");
    }
    let copy = copy.to_str().expect("UTF-8");
    let tampered = c
        .cella(&["audit", "verify", copy, "--ca", ca.to_str().expect("UTF-8")])
        .await;
    assert_eq!(tampered.code, Some(1), "{}", tampered.describe());
    assert!(
        tampered.stderr.contains("record 2 is missing"),
        "{}",
        tampered.describe()
    );
    drop(s);
    c.finish();
}
