//! Fault tests of recovery: `cella-agent`, `cella-master` and `cella dev` killed with
//! SIGKILL at random moments while launches are in flight, started again on the same
//! directories, and the whole cluster then checked against what the scheduler was
//! told:
//!
//! - every task the scheduler launched is running, or has exactly one terminal state
//!   (the master's and the scheduler's agree), with the real exit code where it ran
//!   to its end;
//! - no task ran twice (each task appends a line to a marker file on a shared volume
//!   when it starts);
//! - no shim, cgroup, run directory or mount exists that no running task owns;
//! - once everything is acknowledged, no update arrives again.
//!
//! The random choices print their seed; `CELLA_FAULT_SEED=N` replays them (the
//! machine's timing still varies).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cella_proto::api;
use cella_proto::v1::{self, event};
use cella_tests::{Cluster, DEADLINE, MASTER_FLAGS, Scheduler, framework, task};

const RES: &str = "cpus:16;mem:16GiB;disk:4GiB";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ------------------------------------------------------------------ randomness

/// xorshift64*: small, seedable, and good enough to pick delays and task kinds.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("CELLA_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 20)
                    | 1
            });
        eprintln!("{test}: seed {seed} (replay with CELLA_FAULT_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ------------------------------------------------------------------ workload

/// What a task does once started (after writing its start mark).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Runs until killed.
    Long,
    /// Exits with this code at once.
    Quick(i32),
    /// Exits with this code after 0.3 s: often while the agent or master is down.
    Delayed(i32),
}

/// Every task the scheduler launched, and where they mark their starts.
struct Workload {
    marks: PathBuf,
    kinds: BTreeMap<String, Kind>,
    /// Tasks the scheduler asked to kill.
    kills: BTreeSet<String>,
}

impl Workload {
    fn new(c: &Cluster) -> Workload {
        let marks = c.path().join("marks");
        std::fs::create_dir_all(&marks).expect("creating marks/");
        // Tasks may run as another user: anyone may append.
        std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .expect("chmod marks/");
        Workload {
            marks,
            kinds: BTreeMap::new(),
            kills: BTreeSet::new(),
        }
    }

    /// A batch of `n` tasks of random kinds, named `<prefix>-<i>`.
    fn batch(&mut self, rng: &mut Rng, prefix: &str, n: u64) -> Vec<v1::TaskInfo> {
        (0..n)
            .map(|i| {
                let code = i32::try_from(rng.below(4)).unwrap_or(0);
                let kind = match rng.below(10) {
                    0..=3 => Kind::Long,
                    4..=6 => Kind::Quick(code),
                    _ => Kind::Delayed(code),
                };
                self.task(&format!("{prefix}-{i}"), kind)
            })
            .collect()
    }

    fn task(&mut self, id: &str, kind: Kind) -> v1::TaskInfo {
        let mark = self.marks.join(id);
        let mark = mark.display();
        let script = match kind {
            Kind::Long => format!("echo started >> {mark}; exec sleep 3600"),
            Kind::Quick(code) => format!("echo started >> {mark}; exit {code}"),
            Kind::Delayed(code) => format!("echo started >> {mark}; sleep 0.3; exit {code}"),
        };
        let mut t = task(id, &["sh", "-c", &script], 0.1, 16);
        t.volumes = vec![v1::Volume {
            host_path: self.marks.display().to_string(),
            task_path: self.marks.display().to_string(),
            read_only: false,
        }];
        self.kinds.insert(id.to_string(), kind);
        t
    }

    /// How many times task `id` started.
    fn starts(&self, id: &str) -> usize {
        std::fs::read_to_string(self.marks.join(id))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// A long task the scheduler was told is RUNNING and has not asked to kill yet.
    fn running_long(&self, history: &[v1::TaskStatus], rng: &mut Rng) -> Option<String> {
        let mut last: BTreeMap<&str, v1::TaskState> = BTreeMap::new();
        for s in history {
            last.insert(&s.task_id, s.state());
        }
        let candidates: Vec<&str> = last
            .iter()
            .filter(|(id, st)| {
                **st == v1::TaskState::TaskRunning
                    && self.kinds.get(**id) == Some(&Kind::Long)
                    && !self.kills.contains(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = usize::try_from(rng.below(candidates.len() as u64)).unwrap_or(0);
        Some(candidates[i].to_string())
    }
}

// ------------------------------------------------------------------ offers

/// The offers a scheduler holds: added by OFFERS, removed by RESCIND.
#[derive(Default)]
struct Offers(BTreeMap<String, v1::Offer>);

impl Offers {
    fn note(&mut self, e: &v1::Event) {
        match &e.event {
            Some(event::Event::Offers(o)) => {
                for offer in &o.offers {
                    self.0.insert(offer.offer_id.clone(), offer.clone());
                }
            }
            Some(event::Event::Rescind(r)) => {
                self.0.remove(&r.offer_id);
            }
            _ => {}
        }
    }
}

/// Reads events for `dur` (updates are acknowledged and kept in the history).
async fn pump(s: &mut Scheduler, offers: &mut Offers, dur: Duration) {
    let deadline = Instant::now() + dur;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match s.next(left).await {
            Some(e) => offers.note(&e),
            None => return,
        }
    }
}

/// Waits for an offer; returns it, no longer held.
async fn take_offer(s: &mut Scheduler, offers: &mut Offers) -> v1::Offer {
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Read what is queued first: a RESCIND of an offer held may be among it.
        pump(s, offers, ms(30)).await;
        if let Some(id) = offers.0.keys().next().cloned() {
            return offers.0.remove(&id).expect("the offer just seen");
        }
        assert!(
            Instant::now() < deadline,
            "no offer within {DEADLINE:?}; updates so far: {:?}",
            s.history.len()
        );
    }
}

// ------------------------------------------------------------------ checks

/// Waits until every launched task is RUNNING or ended at the master, the scheduler
/// was told about each end, and no agent holds an unacknowledged update.
async fn settle(
    c: &Cluster,
    s: &mut Scheduler,
    offers: &mut Offers,
    w: &Workload,
    history: &[v1::TaskStatus],
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pump(s, offers, ms(300)).await;
        let at_master: BTreeMap<String, v1::TaskState> = c
            .tasks()
            .await
            .into_iter()
            .map(|t| (t.id, t.state))
            .collect();
        let told_end: BTreeSet<&str> = history
            .iter()
            .chain(&s.history)
            .filter(|st| st.state().is_terminal())
            .map(|st| st.task_id.as_str())
            .collect();
        let unsettled: Vec<String> = w
            .kinds
            .keys()
            .filter(|id| match at_master.get(*id) {
                Some(v1::TaskState::TaskRunning) => false,
                Some(state) if state.is_terminal() => !told_end.contains(id.as_str()),
                Some(_) => true,
                None => !told_end.contains(id.as_str()),
            })
            .map(|id| format!("{id} ({:?})", at_master.get(id).map(|s| s.name())))
            .collect();
        let mut pending = 0.0;
        for a in &c.agents {
            pending += c
                .agent_metric(a, "status_updates_pending")
                .await
                .unwrap_or(0.0);
        }
        if unsettled.is_empty() && pending == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle: unsettled tasks {unsettled:?}, {pending} updates \
             pending on the agents\n{}",
            c.log_tails()
        );
    }
}

/// The ids of the tasks the master shows RUNNING.
async fn running_at_master(c: &Cluster) -> BTreeSet<String> {
    c.tasks()
        .await
        .into_iter()
        .filter(|t| t.state == v1::TaskState::TaskRunning)
        .map(|t| t.id)
        .collect()
}

/// What the agents have on the machine, by task id.
struct OnMachine {
    shims: BTreeMap<String, Vec<i32>>,
    cgroups: BTreeSet<String>,
    run_dirs: BTreeSet<String>,
}

impl OnMachine {
    fn scan(c: &Cluster) -> OnMachine {
        let mut found = OnMachine {
            shims: BTreeMap::new(),
            cgroups: BTreeSet::new(),
            run_dirs: BTreeSet::new(),
        };
        for k in 0..c.agents.len() {
            for (id, pids) in c.agent_shims(k) {
                found.shims.entry(id).or_default().extend(pids);
            }
            found.cgroups.extend(c.agent_task_cgroups(k));
            found.run_dirs.extend(c.agent_run_dirs(k));
        }
        found
    }

    /// (task id, what) of everything that belongs to no running task.
    fn not_running(&self, running: &BTreeSet<String>) -> Vec<(String, &'static str)> {
        let shims = self.shims.keys().map(|id| (id, "a shim"));
        let cgroups = self.cgroups.iter().map(|id| (id, "a cgroup"));
        let run_dirs = self.run_dirs.iter().map(|id| (id, "a run directory"));
        shims
            .chain(cgroups)
            .chain(run_dirs)
            .filter(|(id, _)| !running.contains(*id))
            .map(|(id, what)| (id.clone(), what))
            .collect()
    }
}

/// Checks the invariants of the module documentation; returns the violations and
/// prints how the tasks ended.
async fn violations(c: &Cluster, w: &Workload, history: &[v1::TaskStatus]) -> Vec<String> {
    let mut bad = Vec::new();
    // A task's run directory and cgroups go right after its end is checkpointed,
    // which may be just after the scheduler acknowledged it: a moment's grace.
    let running_at_master = running_at_master(c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let on_machine = loop {
        let scan = OnMachine::scan(c);
        if scan.not_running(&running_at_master).is_empty() || Instant::now() > deadline {
            break scan;
        }
        tokio::time::sleep(ms(100)).await;
    };
    for (id, what) in on_machine.not_running(&running_at_master) {
        bad.push(format!(
            "{what} of {id} exists, which is not running\n{}",
            c.log_lines_with(&id)
        ));
    }
    let OnMachine {
        shims,
        cgroups,
        run_dirs,
    } = on_machine;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (id, kind) in &w.kinds {
        let master = c.task(id).await;
        let master_state = master.as_ref().map(|t| t.state);
        let updates: Vec<&v1::TaskStatus> = history.iter().filter(|s| &s.task_id == id).collect();
        let ends: BTreeSet<&str> = updates
            .iter()
            .filter(|s| s.state().is_terminal())
            .map(|s| s.state().name())
            .collect();
        let starts = w.starts(id);
        let pids = shims.get(id).cloned().unwrap_or_default();
        let outcome = master_state.map_or_else(
            || format!("unknown, told {ends:?}"),
            |state| state.name().to_string(),
        );
        *outcomes
            .entry(format!("{kind:?} -> {outcome}").replace(|ch: char| ch.is_ascii_digit(), "N"))
            .or_default() += 1;
        if starts > 1 {
            bad.push(format!("{id} started {starts} times"));
        }
        match master_state {
            Some(v1::TaskState::TaskRunning) => {
                if !ends.is_empty() {
                    bad.push(format!(
                        "{id} is RUNNING but the scheduler was told {ends:?}"
                    ));
                }
                if pids.len() != 1 {
                    bad.push(format!("{id} is RUNNING with shims {pids:?}"));
                }
                if starts != 1 {
                    bad.push(format!("{id} is RUNNING but started {starts} times"));
                }
                if !cgroups.contains(id) || !run_dirs.contains(id) {
                    bad.push(format!(
                        "{id} is RUNNING without its cgroup or run directory"
                    ));
                }
            }
            Some(state) if state.is_terminal() => {
                if ends.len() != 1 || !ends.contains(state.name()) {
                    bad.push(format!(
                        "{id} ended {} at the master; the scheduler was told {ends:?}",
                        state.name()
                    ));
                }
            }
            Some(state) => bad.push(format!("{id} is still {}", state.name())),
            None => {
                // A task refused at ACCEPT (ERROR) never reached the master's books:
                // reconciling it later rightly answers LOST ("unknown").
                let refused = updates
                    .iter()
                    .find(|u| u.state().is_terminal())
                    .is_some_and(|u| u.state() == v1::TaskState::TaskError);
                let refused_then_unknown =
                    refused && ends.iter().all(|e| matches!(*e, "ERROR" | "LOST"));
                if ends.len() != 1 && !refused_then_unknown {
                    let told: Vec<String> = updates
                        .iter()
                        .map(|u| format!("{} ({})", u.state().name(), u.message))
                        .collect();
                    bad.push(format!(
                        "{id} is unknown to the master; the scheduler was told {told:?}"
                    ));
                }
            }
        }
        if master_state != Some(v1::TaskState::TaskRunning) && !pids.is_empty() {
            bad.push(format!("{id} ended but its shims {pids:?} run"));
        }
        // How it ended, from the last terminal update the scheduler got.
        let last_end = updates.iter().rev().find(|s| s.state().is_terminal());
        if let Some(end) = last_end {
            let state = end.state();
            let exited = matches!(
                state,
                v1::TaskState::TaskFinished | v1::TaskState::TaskFailed
            );
            match kind {
                Kind::Quick(code) | Kind::Delayed(code)
                    if exited && end.exit_code != Some(*code) =>
                {
                    bad.push(format!(
                        "{id} should exit with {code}; reported {} exit code {:?} ({})",
                        state.name(),
                        end.exit_code,
                        end.message
                    ));
                }
                Kind::Long if exited => bad.push(format!(
                    "{id} runs until killed but was reported {} ({})",
                    state.name(),
                    end.message
                )),
                _ => {}
            }
            if state == v1::TaskState::TaskKilled && !w.kills.contains(id) {
                bad.push(format!(
                    "{id} was KILLED without a kill request ({})",
                    end.message
                ));
            }
            // LOST is for a task whose outcome cannot be known; with the run
            // directory kept until the end is checkpointed, and the shim's lock
            // telling a starting shim from a gone one, that is only a task that
            // never started.
            if matches!(state, v1::TaskState::TaskLost | v1::TaskState::TaskError) && starts > 0 {
                bad.push(format!(
                    "{id} ran but was reported {}: {}\n{}",
                    state.name(),
                    end.message,
                    c.log_lines_with(id)
                ));
            }
        }
    }
    let mounts = c.mounts();
    if !mounts.is_empty() {
        bad.push(format!(
            "mounts left in the cluster's directory: {mounts:?}"
        ));
    }
    eprintln!("outcomes: {outcomes:#?}");
    bad.sort();
    bad.dedup();
    bad
}

/// Settles the cluster, checks the invariants, checks that nothing is re-sent, kills
/// what still runs and stops the cluster, asserting it left nothing behind.
async fn check_and_finish(
    c: Cluster,
    mut s: Scheduler,
    mut offers: Offers,
    w: Workload,
    mut history: Vec<v1::TaskStatus>,
) {
    settle(&c, &mut s, &mut offers, &w, &history).await;
    history.append(&mut s.history);
    let bad = violations(&c, &w, &history).await;
    assert!(
        bad.is_empty(),
        "{} violations:\n  {}\n{}",
        bad.len(),
        bad.join("\n  "),
        c.log_tails()
    );

    // Everything was acknowledged: nothing may come again (the agents re-send
    // unacknowledged updates after 1 s).
    pump(&mut s, &mut offers, ms(1500)).await;
    let again: Vec<String> = s
        .history
        .drain(..)
        .map(|st| format!("{} {}", st.task_id, st.state().name()))
        .collect();
    assert!(
        again.is_empty(),
        "updates sent again after acknowledgement: {again:?}"
    );

    let running = running_at_master(&c).await;
    for id in &running {
        s.kill(id);
    }
    for id in &running {
        s.update(id, v1::TaskState::TaskKilled).await;
    }
    drop(s);
    c.finish();
}

/// A master, `agents` agents and a subscribed scheduler (failover timeout 1 h). No
/// agent is ever declared lost here: restarts are what is tested.
async fn chaos_cluster(agents: usize) -> (Cluster, Workload, Scheduler) {
    let mut c = Cluster::new();
    set_flag(&mut c, "--agent-timeout", "60s");
    c.start_master().await;
    for _ in 0..agents {
        c.start_agent(RES).await;
    }
    let w = Workload::new(&c);
    let s = c.subscribe(framework("chaos", "*", 3600.0)).await;
    (c, w, s)
}

/// Accepts the next offer with 1–3 tasks of random kinds, named `<prefix>-<i>`.
async fn launch_batch(
    s: &mut Scheduler,
    offers: &mut Offers,
    w: &mut Workload,
    rng: &mut Rng,
    prefix: &str,
) {
    let offer = take_offer(s, offers).await;
    let n = 1 + rng.below(3);
    let tasks = w.batch(rng, prefix, n);
    s.accept(&offer.offer_id, tasks);
}

/// With `percent` chance, asks to kill a long task the scheduler knows is running.
fn maybe_kill_one(s: &mut Scheduler, w: &mut Workload, rng: &mut Rng, percent: u64) {
    if rng.chance(percent)
        && let Some(id) = w.running_long(&s.history, rng)
    {
        s.kill(&id);
        w.kills.insert(id);
    }
}

// ------------------------------------------------------------------ agent kill -9

const AGENT_ROUNDS: usize = 50;

/// 50 rounds: launches in flight (and sometimes a kill request), the agent killed
/// with SIGKILL after a random delay, down for a random time, started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_moments_loses_no_task_and_runs_none_twice() {
    let mut rng = Rng::from_env("agent kill -9 loop");
    let (mut c, mut w, mut s) = chaos_cluster(1).await;
    let mut offers = Offers::default();
    for round in 0..AGENT_ROUNDS {
        launch_batch(&mut s, &mut offers, &mut w, &mut rng, &format!("r{round}")).await;
        maybe_kill_one(&mut s, &mut w, &mut rng, 30);
        tokio::time::sleep(ms(rng.below(150))).await;
        let down = ms(rng.below(400));
        c.restart_agent_hard(0, down).await;
    }
    check_and_finish(c, s, offers, w, Vec::new()).await;
}

// ------------------------------------------------------------------ master kill -9

const MASTER_ROUNDS: usize = 12;

/// Rounds of: launches on two agents in flight, the master killed with SIGKILL after
/// a random delay, started again on its registry; the agents re-register by
/// themselves, the scheduler re-subscribes (failover) and reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_at_random_moments_loses_no_task() {
    let mut rng = Rng::from_env("master kill -9 loop");
    let (mut c, mut w, mut s) = chaos_cluster(2).await;
    let framework_id = s.framework_id.clone();
    let mut offers = Offers::default();
    let mut history = Vec::new();
    for round in 0..MASTER_ROUNDS {
        for j in 0..2 {
            launch_batch(
                &mut s,
                &mut offers,
                &mut w,
                &mut rng,
                &format!("r{round}{j}"),
            )
            .await;
        }
        maybe_kill_one(&mut s, &mut w, &mut rng, 40);
        tokio::time::sleep(ms(rng.below(150))).await;
        c.restart_master_hard(ms(rng.below(400))).await;
        history.append(&mut s.history);
        drop(s);
        // Re-subscribed and reconciled at once, while the agents may still be on
        // their way back: the answers must be true all the same.
        let mut info = framework("chaos", "*", 3600.0);
        info.framework_id = framework_id.clone();
        s = c.subscribe(info).await;
        assert_eq!(
            s.framework_id, framework_id,
            "failover keeps the framework id"
        );
        offers = Offers::default();
        let ids: Vec<&str> = w.kinds.keys().map(String::as_str).collect();
        s.reconcile(&ids);
        wait_agents_connected(&c).await;
    }
    check_and_finish(c, s, offers, w, history).await;
}

fn set_flag(c: &mut Cluster, flag: &str, value: &str) {
    assert!(
        MASTER_FLAGS.contains(&flag),
        "{flag} is not a test master flag"
    );
    let i = c
        .master_flags
        .iter()
        .position(|f| f == flag)
        .expect("flag present");
    c.master_flags[i + 1] = value.to_string();
}

async fn wait_agents_connected(c: &Cluster) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let agents: Vec<api::Agent> = c.api_get("/api/v1/agents").await;
        let connected = agents
            .iter()
            .filter(|a| a.state == api::AgentState::Connected)
            .count();
        if connected == c.agents.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not re-register with the restarted master: {agents:?}\n{}",
            c.log_tails()
        );
        tokio::time::sleep(ms(50)).await;
    }
}

// ------------------------------------------------------------------ cella dev kill -9

/// `cella dev --work-dir DIR` killed with SIGKILL and started again on DIR: the task
/// that kept running is RUNNING again under the same shim; the one that ended
/// meanwhile reports its real exit code; Ctrl-C still stops everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cella_dev_killed_with_sigkill_recovers_its_tasks() {
    let mut c = Cluster::new();
    let work = c.path().join("dev");
    let (idx, ports) = c.start_dev(&work, None).await;

    let run_detached = async |c: &Cluster, script: &str| {
        let out = c
            .cella(&[
                "run", "--detach", "--mem", "32MiB", "--", "sh", "-c", script,
            ])
            .await;
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out.stdout.trim().to_string()
    };
    let long = run_detached(&c, "exec sleep 3600").await;
    let ends = run_detached(&c, "sleep 2; exit 7").await;
    c.wait_task_state(&long, "RUNNING").await;
    c.wait_task_state(&ends, "RUNNING").await;
    let shims = c.shims();
    assert_eq!(shims.len(), 2, "two tasks, two shims: {shims:?}");
    let long_shim = shims_of(&c, &long);

    c.kill_hard(idx);
    // The second task ends while nothing watches it.
    let deadline = Instant::now() + DEADLINE;
    while c.shims().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the task did not end: {:?}",
            c.shims()
        );
        tokio::time::sleep(ms(100)).await;
    }

    let (idx, _) = c.start_dev(&work, Some(ports)).await;
    let banner = c.procs[idx].log_tail(20);
    assert!(
        banner.contains("recovered   1 running task of the previous run"),
        "cella dev says what it recovered:\n{banner}"
    );
    let t = c.wait_task_state(&long, "RUNNING").await;
    assert_eq!(
        shims_of(&c, &long),
        long_shim,
        "the running task keeps its shim (it was not started again): {t:?}"
    );
    let t = c.wait_task_state(&ends, "FAILED").await;
    assert_eq!(
        t.exit_code,
        Some(7),
        "the real exit code of the task: {t:?}"
    );
    let out = c.cella(&["tasks", "--all"]).await;
    assert!(
        out.stdout.contains(&long) && out.stdout.contains(&ends),
        "{}",
        out.describe()
    );

    // Ctrl-C stops the recovered task too.
    c.interrupt_dev(idx);
    c.finish();
}

/// Pids of the shims whose run directory names task `id`.
fn shims_of(c: &Cluster, id: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = c
        .shims()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains(id))
        })
        .collect();
    pids.sort_unstable();
    pids
}
