//! The audit log of a master: finished tasks, kills and denials are recorded once
//! (also when an agent sends an update again after a restart), the record is on
//! disk before the scheduler sees the update, the chain and its signed checkpoint
//! verify, and a changed, a removed and a cut-off record are each caught and named;
//! a master opens a long log by reading only its newest task ends.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cella_master::audit::checkpoint::{self, Checkpoint};
use cella_master::audit::record::line_hash;
use cella_master::audit::report::{self, GroupBy, Period};
use cella_master::audit::segment::Head;
use cella_master::audit::verify::{self, EXIT_CHECKPOINT, EXIT_RECORD};
use cella_master::audit::{AuditConfig, AuditLog, DEFAULT_ENDS_KEPT, Event, Record};
use cella_master::authz::Authorizer;
use cella_master::master::{self, MasterConfig, MasterHandle};
use cella_proto::tls::{Identity, Layout};
use cella_proto::v1::{self, agent_message, call};
use common::*;

const GIB: u64 = 1 << 30;

/// A work directory with the cluster's certificates in `tls/`.
struct Setup {
    dir: tempfile::TempDir,
    tls: Layout,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let tls = cella_proto::tls::init_dir(&dir.path().join("tls"), &[]).unwrap();
        Setup { dir, tls }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("master")
    }

    fn audit_dir(&self) -> PathBuf {
        self.work().join("audit")
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(&self.tls.ca_cert).unwrap()
    }

    /// The log's configuration: segments of `segment_bytes`, signed checkpoints.
    fn audit_config(&self, segment_bytes: u64) -> AuditConfig {
        AuditConfig {
            dir: self.audit_dir(),
            segment_bytes,
            checkpoint_interval: Duration::from_millis(50),
            signer: Some((self.tls.master_cert.clone(), self.tls.master_key.clone())),
            ends_kept: DEFAULT_ENDS_KEPT,
        }
    }

    /// A master whose audit log rotates at `segment_bytes`.
    fn master(
        &self,
        segment_bytes: u64,
        authorizer: Option<std::sync::Arc<Authorizer>>,
    ) -> MasterHandle {
        let log = AuditLog::open(&self.audit_config(segment_bytes)).unwrap();
        let mut config = MasterConfig {
            audit: Some(log),
            ..config(&self.work())
        };
        if let Some(a) = authorizer {
            config.authorizer = a;
        }
        master::try_spawn(config).unwrap()
    }

    fn records(&self) -> Vec<Record> {
        records(&self.audit_dir())
    }
}

fn records(dir: &Path) -> Vec<Record> {
    report::records(dir, Period::default())
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// The events of one kind (`Event::Kill`, say) among `records`, in order.
macro_rules! events_of {
    ($records:expr, $kind:path) => {
        $records
            .iter()
            .filter_map(|r| match &r.event {
                $kind(e) => Some(e),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

fn task_ends(records: &[Record]) -> Vec<&cella_master::audit::TaskEnd> {
    events_of!(records, Event::TaskEnd)
        .into_iter()
        .map(|t| &**t)
        .collect()
}

/// A terminal update as an agent sends it, with what the task consumed.
fn terminal(
    agent: &str,
    fw: &str,
    task: &str,
    state: v1::TaskState,
    uuid: &str,
    summary: Option<v1::TaskSummary>,
) -> agent_message::Message {
    let mut update = status_update(agent, fw, task, state, uuid);
    if let Some(s) = update.status.as_mut() {
        s.summary = summary.map(Box::new);
        s.exit_code = Some(if state == v1::TaskState::TaskFinished {
            0
        } else {
            3
        });
        s.image_digest = "sha256:abc".into();
    }
    agent_message::Message::StatusUpdate(update)
}

/// One hour of a task: 2 s user + 1 s system CPU, 1 GiB peak, 100 B read, 200 B written.
fn hour_summary() -> v1::TaskSummary {
    v1::TaskSummary {
        started_ns: 1_000_000_000,
        ended_ns: 3_601_000_000_000,
        cpu_user_ns: Some(2_000_000_000),
        cpu_system_ns: Some(1_000_000_000),
        mem_peak_bytes: Some(GIB),
        io_read_bytes: Some(100),
        io_write_bytes: Some(200),
        ..Default::default()
    }
}

/// `task` ends on agent-a as `state` (update uuid `<task>-end`); the scheduler gets
/// the update and acknowledges it.
async fn end(
    m: &MasterHandle,
    s: &mut Scheduler,
    a: &Agent,
    task: &str,
    state: v1::TaskState,
    summary: Option<v1::TaskSummary>,
) -> v1::TaskStatus {
    let fw = s.id.clone();
    a.send(
        m,
        terminal("agent-a", &fw, task, state, &format!("{task}-end"), summary),
    );
    let u = s.update_for(task).await;
    ack(s, m, &u);
    u
}

/// t1 ends after an hour (see [`hour_summary`]).
async fn finish_t1(m: &MasterHandle, s: &mut Scheduler, a: &Agent) {
    let summary = Some(hour_summary());
    end(m, s, a, "t1", v1::TaskState::TaskFinished, summary).await;
}

fn ack(s: &Scheduler, m: &MasterHandle, status: &v1::TaskStatus) {
    s.call(
        m,
        call::Call::Acknowledge(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }),
    );
}

/// alice's framework launches `ids` on agent-a; each reports RUNNING (acknowledged).
async fn launch(m: &MasterHandle, ids: &[&str]) -> (Scheduler, Agent) {
    let mut s = subscribe(m, "", "alice").await.unwrap();
    let mut a = register_agent(m, "agent-a", vec![]).await;
    let offers = s.next_offers().await;
    s.accept(
        m,
        offers[0].offer_id.clone(),
        ids.iter().map(|id| task_info(id)).collect(),
    );
    for id in ids {
        assert_eq!(a.next_launch().await.task_id, *id);
        a.status(
            m,
            &s.id,
            id,
            v1::TaskState::TaskRunning,
            &format!("{id}-run"),
        );
        let u = s.update_for(id).await;
        ack(&s, m, &u);
    }
    (s, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_recorded_once_before_the_scheduler_sees_them() {
    let setup = Setup::new();
    let m = setup.master(64 << 20, None);
    let (mut s, a) = launch(&m, &["t1", "t2", "t3"]).await;
    let fw = s.id.clone();

    finish_t1(&m, &mut s, &a).await;
    // The scheduler has the update: its record is on disk already.
    let ends = task_ends(&setup.records()).len();
    assert_eq!(ends, 1, "{:?}", setup.records());
    end(&m, &mut s, &a, "t2", v1::TaskState::TaskFailed, None).await;

    // An operator's kill, then the task's end.
    m.kill("t3".into(), None, Identity::user("bob", &[]).unwrap())
        .await
        .unwrap();
    end(&m, &mut s, &a, "t3", v1::TaskState::TaskKilled, None).await;
    // The agent sends t1's end again (it missed the acknowledgement).
    finish_t1(&m, &mut s, &a).await;
    m.stop().await;
    drop((s, a));

    // A new master on the same directory: the agent sends t1's end once more.
    let m = setup.master(64 << 20, None);
    let mut s = subscribe(&m, &fw, "alice").await.unwrap();
    let a = register_agent(&m, "agent-a", vec![]).await;
    finish_t1(&m, &mut s, &a).await;
    handled(&m).await;
    m.stop().await;

    let records = setup.records();
    let ends = task_ends(&records);
    let ids: Vec<&str> = ends.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["t1", "t2", "t3"], "each end once: {records:?}");
    let t1 = ends[0];
    assert_eq!(
        (
            t1.principal.as_str(),
            t1.role.as_str(),
            t1.framework_id.as_str()
        ),
        ("user:alice", "web", fw.as_str())
    );
    assert_eq!(t1.command, ["sleep", "1000"]);
    assert_eq!((t1.resources.cpus, t1.resources.mem_bytes), (0.5, 64 << 20));
    assert_eq!(
        (t1.agent_id.as_str(), t1.hostname.as_str()),
        ("agent-a", "agent-a.example")
    );
    assert_eq!((t1.state.as_str(), t1.exit_code), ("FINISHED", Some(0)));
    assert_eq!(t1.image_digest, "sha256:abc");
    assert!(t1.submitted_ns.is_some(), "{t1:?}");
    assert_eq!(t1.started_ns, Some(1_000_000_000));
    assert_eq!(
        t1.summary.as_ref().and_then(|s| s.cpu_user_ns),
        Some(2_000_000_000)
    );
    assert_eq!(
        (ends[1].state.as_str(), ends[1].exit_code),
        ("FAILED", Some(3))
    );
    assert!(ends[1].started_ns.is_some(), "from the RUNNING update");
    let kills = events_of!(records, Event::Kill);
    assert_eq!(kills.len(), 1, "{records:?}");
    assert_eq!(
        (
            kills[0].task_id.as_str(),
            kills[0].by.as_str(),
            kills[0].via.as_str()
        ),
        ("t3", "user:bob", "operator")
    );

    let v = verify::verify(&setup.audit_dir(), &setup.ca()).expect("the log verifies");
    assert_eq!(v.records, 4);
    assert!(v.checkpoints.iter().any(|(_, n)| *n == 4), "{v:?}");

    // Figures: t1 ran one hour.
    let by_fw = report::summary(&setup.audit_dir(), Period::default(), GroupBy::Framework).unwrap();
    let t = &by_fw[&fw];
    assert_eq!((t.tasks, t.without_summary), (3, 2));
    assert!((t.cpu_seconds - 3.0).abs() < 1e-9, "{t:?}");
    assert!((t.mem_peak_gib_hours - 1.0).abs() < 1e-9, "{t:?}");
    assert!(t.mem_requested_gib_hours >= 0.0625, "{t:?}");
    assert_eq!((t.io_read_bytes, t.io_write_bytes), (100, 200));
    let mut csv = Vec::new();
    let n = report::export(&setup.audit_dir(), Period::default(), true, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(n, 3, "{csv}");
    let row = csv.lines().nth(1).unwrap();
    assert!(
        row.contains(",t1,") && row.contains(",3600,") && row.contains(",1073741824,"),
        "{row}"
    );
    let mut jsonl = Vec::new();
    let until_epoch = Period {
        since_ns: None,
        until_ns: Some(1),
    };
    assert_eq!(
        report::export(&setup.audit_dir(), until_epoch, false, &mut jsonl).unwrap(),
        0
    );
}

/// Writes `n` task ends (each in a small segment); returns the directory.
async fn log_of(setup: &Setup, n: usize) -> PathBuf {
    let m = setup.master(2500, None);
    let ids: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (mut s, a) = launch(&m, &refs).await;
    for id in &ids {
        end(
            &m,
            &mut s,
            &a,
            id,
            v1::TaskState::TaskFinished,
            Some(hour_summary()),
        )
        .await;
    }
    m.stop().await;
    setup.audit_dir()
}

/// How many files in `dir` have names starting with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .count()
}

/// A copy of the audit directory `from`, changed by `change` (seq → line).
fn tampered(from: &Path, to: &Path, change: impl Fn(u64, String) -> Option<String>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if !name.starts_with("segment-") {
            std::fs::write(to.join(&name), text).unwrap();
            continue;
        }
        let mut out = String::new();
        for line in text.lines() {
            let r: Record = serde_json::from_str(line).unwrap();
            if let Some(l) = change(r.seq, line.to_string()) {
                out.push_str(&l);
                out.push('\n');
            }
        }
        std::fs::write(to.join(&name), out).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_removed_or_cut_off_record_is_named() {
    let setup = Setup::new();
    let dir = log_of(&setup, 6).await;
    let segments = files_named(&dir, "segment-");
    assert!(segments >= 3, "the log rotated: {segments} segments");
    let v = verify::verify(&dir, &setup.ca()).expect("the rotated log verifies");
    assert_eq!(v.records, 6);

    let scratch = setup.dir.path().join("copies");
    // A byte changed in record 3 (the JSON stays valid).
    let flipped = scratch.join("flipped");
    tampered(&dir, &flipped, |seq, line| {
        Some(if seq == 3 {
            line.replace("task-2", "task-9")
        } else {
            line
        })
    });
    let f = verify::verify(&flipped, &setup.ca()).unwrap_err();
    assert_eq!((f.code, f.record), (EXIT_RECORD, Some(3)), "{f}");
    assert!(
        f.message.contains("record 3") && f.message.contains("changed"),
        "{f}"
    );

    // Record 3 removed.
    let removed = scratch.join("removed");
    tampered(&dir, &removed, |seq, line| (seq != 3).then_some(line));
    let f = verify::verify(&removed, &setup.ca()).unwrap_err();
    assert_eq!((f.code, f.record), (EXIT_RECORD, Some(3)), "{f}");
    assert!(f.message.contains("record 3 is missing"), "{f}");

    // The two newest records removed: only the checkpoint tells.
    let cut = scratch.join("cut");
    tampered(&dir, &cut, |seq, line| (seq <= 4).then_some(line));
    let f = verify::verify(&cut, &setup.ca()).unwrap_err();
    assert_eq!((f.code, f.record), (EXIT_RECORD, Some(5)), "{f}");
    assert!(f.message.contains("record 5 is missing"), "{f}");

    // A checkpoint checked against another cluster's CA.
    let other = cella_proto::tls::init_cluster_dir(&scratch.join("other-tls"), &[]).unwrap();
    let f = verify::verify(&dir, &std::fs::read(&other.ca_cert).unwrap()).unwrap_err();
    assert_eq!(f.code, EXIT_CHECKPOINT, "{f}");

    // A master started on the cut log keeps the checkpoint it contradicts.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&cut, &dir).unwrap();
    let m = setup.master(2500, None);
    m.stop().await;
    let f = verify::verify(&dir, &setup.ca()).unwrap_err();
    assert_eq!(f.record, Some(5), "{f}");
}

/// An authorizer whose ACL lets alice subscribe in role web, and nobody else.
fn alice_may_subscribe(setup: &Setup) -> Arc<Authorizer> {
    let acl = setup.dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[principals]\n\"user:alice\" = [\"web\"]\n\n[roles.web]\nsubscribe = [\"web\"]\n",
    )
    .unwrap();
    Authorizer::from_file(&acl).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_recorded() {
    let setup = Setup::new();
    let m = setup.master(64 << 20, Some(alice_may_subscribe(&setup)));
    assert!(subscribe(&m, "", "alice").await.is_ok());
    assert!(subscribe(&m, "", "mallory").await.is_err());
    m.stop().await;
    let records = setup.records();
    let denied = events_of!(records, Event::Denied);
    assert_eq!(denied.len(), 1, "{records:?}");
    assert_eq!(denied[0].principal, "user:mallory");
    assert!(
        denied[0].permission.contains("subscribe"),
        "{:?}",
        denied[0]
    );
    verify::verify(&setup.audit_dir(), &setup.ca()).expect("verifies");
}

#[tokio::test]
async fn a_principal_refused_in_a_loop_has_a_bounded_share_of_the_log() {
    let setup = Setup::new();
    let authorizer = alice_may_subscribe(&setup);
    let m = setup.master(64 << 20, Some(Arc::clone(&authorizer)));
    let flood = 200;
    for _ in 0..flood - 1 {
        assert!(subscribe(&m, "", "mallory").await.is_err());
    }
    // Once the budget has regained a record, the next denial is recorded again.
    tokio::time::sleep(Duration::from_secs_f64(
        1.0 / f64::from(cella_master::authz::denial_budget::PER_SECOND),
    ))
    .await;
    assert!(subscribe(&m, "", "mallory").await.is_err());
    m.stop().await;
    let records = setup.records();
    let denied = events_of!(records, Event::Denied);
    let burst: usize = usize::try_from(cella_master::authz::denial_budget::BURST).unwrap();
    // The burst, and what the budget regained while the flood went on.
    assert!(
        denied.len() >= burst && denied.len() < flood / 2,
        "{} of {flood} denials recorded",
        denied.len()
    );
    let left_out: u64 = denied.iter().map(|d| d.left_out).sum();
    assert!(
        denied.last().unwrap().left_out > 0,
        "the record after the pause names the denials left out: {denied:?}"
    );
    assert_eq!(
        usize::try_from(left_out).unwrap() + denied.len(),
        flood,
        "every denial is recorded or named as left out"
    );
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode_registry(&mut metrics, &{
        let mut r = prometheus_client::registry::Registry::default();
        r.register("denied", "", authorizer.denials().clone());
        r
    })
    .unwrap();
    assert!(
        metrics.contains(&format!("}} {flood}")),
        "every denial is counted: {metrics}"
    );
    verify::verify(&setup.audit_dir(), &setup.ca()).expect("verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_serves_the_records_as_stored() {
    let setup = Setup::new();
    let dir = log_of(&setup, 2).await;
    let m = setup.master(2500, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = &setup.tls;
    let server = cella_proto::tls::server_config(&tls.ca_cert, &tls.master_cert, &tls.master_key);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(cella_master::serve(
        listener,
        std::sync::Arc::new(server.unwrap()),
        m,
        async {
            let _ = stopped.await;
        },
    ));
    let client =
        cella_proto::tls::client_config(&tls.ca_cert, &tls.client_cert, &tls.client_key).unwrap();
    let get = |path: String| {
        let client = client.clone();
        async move {
            cella_proto::tls::https_request(axum::http::Method::GET, &path, None, &client)
                .await
                .unwrap()
        }
    };
    let all = get(format!("{url}/api/v1/audit")).await;
    assert!(all.status.is_success(), "{all:?}");
    let mut stored = Vec::new();
    report::export(&dir, Period::default(), false, &mut stored).unwrap();
    assert_eq!(all.body.as_ref(), stored.as_slice());
    assert_eq!(String::from_utf8_lossy(&all.body).lines().count(), 2);
    let none = get(format!("{url}/api/v1/audit?until=1")).await;
    assert!(none.status.is_success() && none.body.is_empty(), "{none:?}");
    let bad = get(format!("{url}/api/v1/audit?since=yesterday")).await;
    assert_eq!(bad.status.as_u16(), 400, "{bad:?}");
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_opens_by_reading_its_newest_ends_and_still_records_each_end_once() {
    let setup = Setup::new();
    // 8 ends, two per segment; the master will track the 3 newest ended tasks and
    // remember twice as many ends.
    let dir = log_of(&setup, 8).await;
    let fw = task_ends(&setup.records())[0].framework_id.clone();
    let kept = 3;
    let log = AuditLog::open(&AuditConfig {
        ends_kept: 2 * kept,
        ..setup.audit_config(2500)
    })
    .unwrap();
    assert_eq!(log.head().0, 8);
    // The newest 6 records hold the ends kept, and the head the checkpoint names.
    assert_eq!(log.records_read_at_open(), 6);
    let m = master::try_spawn(MasterConfig {
        audit: Some(Arc::clone(&log)),
        completed_tasks_kept: kept,
        ..config(&setup.work())
    })
    .unwrap();
    let mut s = subscribe(&m, &fw, "alice").await.unwrap();
    let a = register_agent(&m, "agent-a", vec![]).await;
    // task-5's end (record 6) is in a segment older than the newest: the master
    // still tracks the task, and its end is among those read back.
    end(&m, &mut s, &a, "task-5", v1::TaskState::TaskFinished, None).await;
    // task-0's end (record 1) was not read back: the master no longer tracks the
    // task either, so the update is refused, not recorded.
    a.send(
        &m,
        terminal(
            "agent-a",
            &fw,
            "task-0",
            v1::TaskState::TaskFinished,
            "task-0-end",
            None,
        ),
    );
    handled(&m).await;
    m.stop().await;
    drop((s, a));

    let records = setup.records();
    let ids: Vec<&str> = task_ends(&records)
        .iter()
        .map(|t| t.task_id.as_str())
        .collect();
    let expected: Vec<String> = (0..8).map(|i| format!("task-{i}")).collect();
    assert_eq!(ids, expected, "each end once: {records:?}");
    verify::verify(&dir, &setup.ca()).expect("the log verifies");
}

#[test]
fn a_checkpoint_older_than_the_ends_read_back_is_checked_against_its_record() {
    let setup = Setup::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = runtime.block_on(log_of(&setup, 8));
    let lines = report::records(&dir, report::Period::default()).unwrap();
    let third = Head {
        seq: 3,
        hash: line_hash(&lines[2].1),
    };
    let open = || {
        AuditLog::open(&AuditConfig {
            ends_kept: 1,
            ..setup.audit_config(2500)
        })
        .unwrap()
    };
    checkpoint::unsigned(&third, 1)
        .write(&dir, checkpoint::FILE)
        .unwrap();
    let log = open();
    assert_eq!(
        files_named(&dir, "checkpoint-mismatch-"),
        0,
        "record 3 is what the checkpoint says"
    );
    // The head, then the first record of each segment back to record 3's, and that
    // segment's records (two per segment).
    assert!(
        log.records_read_at_open() < 8,
        "{}",
        log.records_read_at_open()
    );
    drop(log);

    let wrong = Checkpoint {
        head: line_hash(b"something else"),
        ..checkpoint::unsigned(&third, 1)
    };
    wrong.write(&dir, checkpoint::FILE).unwrap();
    drop(open());
    assert_eq!(
        files_named(&dir, "checkpoint-mismatch-"),
        1,
        "record 3 is not what the checkpoint says"
    );
}

/// A tmpfs of `size` mounted on `dir` (made if missing), unmounted when dropped: a
/// file system that fills up for real.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("cella-audit-test")
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_record_that_finds_the_disk_full_leaves_a_log_that_verifies() {
    let setup = Setup::new();
    let fs = SmallFs::mount(&setup.audit_dir(), "96k");
    // Room to free later.
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; 32 << 10]).unwrap();
    let log = AuditLog::open(&setup.audit_config(64 << 20)).unwrap();
    let end = |i: usize| cella_master::audit::TaskEnd {
        task_id: format!("task-{i}"),
        update_uuid: format!("end-{i}"),
        command: vec!["x".repeat(1000)],
        ..Default::default()
    };
    // One batch: ends written until the disk is full, then one sync.
    let mut written = 0;
    while log.task_end_unsynced(end(written)).is_ok() {
        written += 1;
        assert!(written < 1000, "the tmpfs never filled up");
    }
    assert!(written > 0);
    log.sync()
        .expect("the ends written before the disk filled up are synced");
    assert!(log.has_ended(
        &format!("task-{}", written - 1),
        &format!("end-{}", written - 1)
    ));
    assert!(!log.has_ended(&format!("task-{written}"), &format!("end-{written}")));
    // With room again, the next end follows the synced ones.
    std::fs::remove_file(&filler).unwrap();
    log.task_end(end(written)).unwrap();
    drop(log);

    let records = setup.records();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=written as u64 + 1).collect();
    assert_eq!(seqs, expected, "every record once, in order");
    verify::verify(&setup.audit_dir(), &setup.ca()).expect("the log verifies");
    drop(fs);
}
