//! The audit log: one record per finished task (who, what, where, when, how it
//! ended, what it consumed), per kill request and per authorization denial, kept in
//! an append-only, hash-chained log under the master's work directory, with signed
//! checkpoints of its head. docs/audit.md describes the format and its checks.
//!
//! | module | concept |
//! |---|---|
//! | `record` | a record and its line; the hash of a line |
//! | `segment` | segment files, the appending writer, reading lines back |
//! | `checkpoint` | the signed checkpoint of the head |
//! | `verify` | checking a log: chain, segment links, checkpoints |
//! | `report` | export (JSON lines, CSV) and totals by role, framework or user |
//!
//! A record is durable when `task_end`/`record` return, or, for
//! [`AuditLog::task_end_unsynced`], after the next [`AuditLog::sync`] (one
//! `fdatasync` for every record of a batch): the master holds back what a batch of
//! commands would send to schedulers and agents until then, so that nothing that
//! lets an agent drop a terminal update leaves before its record is on disk.

pub mod checkpoint;
pub mod record;
pub mod report;
pub mod segment;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cella_proto::time::now_ns;

use checkpoint::{Checkpoint, Signer};
pub use record::{Event, Record, TaskEnd};
use segment::{Head, Writer};

/// Where the log lives and how it is kept.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A segment past this size is closed; the next record starts a new one.
    pub segment_bytes: u64,
    /// How often the head is checkpointed (when it moved).
    pub checkpoint_interval: Duration,
    /// The master's certificate and key (PEM) the checkpoints are signed with;
    /// `None`: unsigned checkpoints (which `cella audit verify` refuses).
    pub signer: Option<(PathBuf, PathBuf)>,
}

impl AuditConfig {
    /// The defaults: `<work_dir>/audit`, 64 MiB segments, a checkpoint a minute.
    pub fn in_work_dir(work_dir: &Path) -> AuditConfig {
        AuditConfig {
            dir: work_dir.join("audit"),
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(60),
            signer: None,
        }
    }
}

/// Submission and start times of live tasks, to put on their end's record.
#[derive(Default, Clone, Copy)]
struct Times {
    submitted_ns: Option<u64>,
    started_ns: Option<u64>,
}

struct Inner {
    writer: Writer,
    /// (task id, update uuid) of every task end recorded: a resent update (after
    /// a master or agent restart) is not recorded twice.
    ended: HashSet<(String, String)>,
    /// The tasks with an end recorded: a state the master decides later (LOST, from
    /// a registry older than the log) is not a second end.
    ended_tasks: HashSet<String>,
    /// Task ends written since the last sync.
    unsynced_ends: Vec<(String, String)>,
    times: HashMap<String, Times>,
    signer: Option<Signer>,
    checkpointed: Head,
    last_checkpoint: Instant,
    interval: Duration,
}

/// The log of a running master; shared by its actor and its authorizer.
pub struct AuditLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log, rebuilds the set of recorded task ends from it,
    /// checks it against the last checkpoint and writes a new one.
    pub fn open(config: &AuditConfig) -> Result<Arc<AuditLog>, String> {
        let context = |e: std::io::Error| format!("the audit log in {}: {e}", config.dir.display());
        let signer = match &config.signer {
            Some((cert, key)) => Some(Signer::load(cert, key)?),
            None => None,
        };
        let mut ended = HashSet::new();
        let mut ended_tasks = HashSet::new();
        let mut hashes = HashMap::new();
        let previous = Checkpoint::read(&config.dir.join(checkpoint::FILE)).ok();
        let writer = Writer::open(&config.dir, config.segment_bytes, |r, hash| {
            if let Event::TaskEnd(end) = &r.event {
                ended.insert((end.task_id.clone(), end.update_uuid.clone()));
                ended_tasks.insert(end.task_id.clone());
            }
            if previous.as_ref().is_some_and(|c| c.records == r.seq) {
                hashes.insert(r.seq, hash.to_string());
            }
        })
        .map_err(context)?;
        if let Some(c) = previous
            && hashes.get(&c.records) != Some(&c.head)
            && c.records > 0
        {
            // Keep the evidence: `cella audit verify` checks every checkpoint file.
            let kept = format!("checkpoint-mismatch-{}.json", now_ns());
            tracing::error!(
                records = c.records,
                head = writer.head.seq,
                kept = %kept,
                "the audit log does not match its last checkpoint (records were changed \
                 or removed while the master was down); the checkpoint is kept as {kept}"
            );
            c.write(&config.dir, &kept).map_err(context)?;
        }
        let log = AuditLog {
            dir: config.dir.clone(),
            inner: Mutex::new(Inner {
                checkpointed: Head {
                    seq: u64::MAX,
                    hash: String::new(),
                },
                writer,
                ended,
                ended_tasks,
                unsynced_ends: Vec::new(),
                times: HashMap::new(),
                signer,
                last_checkpoint: Instant::now(),
                interval: config.checkpoint_interval,
            }),
        };
        log.checkpoint()?;
        Ok(Arc::new(log))
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the writer consistent (every append
        // either finished or is cut off when the log is next opened).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The number of records and the hash of the newest.
    pub fn head(&self) -> (u64, String) {
        let inner = self.lock();
        (inner.writer.head.seq, inner.writer.head.hash.clone())
    }

    /// The master launched `task_id` now.
    pub fn launched(&self, task_id: &str) {
        self.lock().times.insert(
            task_id.to_string(),
            Times {
                submitted_ns: Some(now_ns()),
                started_ns: None,
            },
        );
    }

    /// `task_id` was reported running at `at_ns` (the first report counts).
    pub fn running(&self, task_id: &str, at_ns: u64) {
        let mut inner = self.lock();
        let t = inner.times.entry(task_id.to_string()).or_default();
        t.started_ns.get_or_insert(at_ns);
    }

    /// Whether the end of `task_id` with update `uuid` is recorded already (for a
    /// state the master decided, `uuid` empty: whether any end of it is).
    pub fn has_ended(&self, task_id: &str, uuid: &str) -> bool {
        has_ended(&self.lock(), task_id, uuid)
    }

    /// Records a task's end (once per task id and update uuid), fsynced. The times
    /// the log noted fill `submitted_ns` and `started_ns` where they are unset.
    pub fn task_end(&self, end: TaskEnd) -> std::io::Result<()> {
        self.task_end_unsynced(end)?;
        self.sync()
    }

    /// Whether records were written that the next [`AuditLog::sync`] makes durable.
    pub fn unsynced(&self) -> bool {
        self.lock().writer.unsynced()
    }

    /// Makes every record written durable. On failure they are gone again (as are
    /// their task ends from the set of recorded ones).
    pub fn sync(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        match inner.writer.sync() {
            Ok(()) => {
                inner.unsynced_ends.clear();
                Ok(())
            }
            Err(e) => {
                tracing::error!("audit log: fdatasync failed, the newest records are dropped: {e}");
                for (task, uuid) in std::mem::take(&mut inner.unsynced_ends) {
                    inner.ended.remove(&(task.clone(), uuid));
                    inner.ended_tasks.remove(&task);
                }
                Err(e)
            }
        }
    }

    /// [`AuditLog::task_end`] without the sync: durable after the next
    /// [`AuditLog::sync`].
    pub fn task_end_unsynced(&self, mut end: TaskEnd) -> std::io::Result<()> {
        let mut inner = self.lock();
        if has_ended(&inner, &end.task_id, &end.update_uuid) {
            return Ok(());
        }
        let key = (end.task_id.clone(), end.update_uuid.clone());
        let times = inner.times.get(&end.task_id).copied().unwrap_or_default();
        end.submitted_ns = end.submitted_ns.or(times.submitted_ns);
        end.started_ns = end.started_ns.or(times.started_ns);
        let task_id = end.task_id.clone();
        append(&mut inner, Event::TaskEnd(Box::new(end)))?;
        inner.times.remove(&task_id);
        inner.ended.insert(key.clone());
        inner.unsynced_ends.push(key);
        inner.ended_tasks.insert(task_id);
        Ok(())
    }

    /// Records a kill or a denial, fsynced.
    pub fn record(&self, event: Event) -> std::io::Result<()> {
        append(&mut self.lock(), event)?;
        self.sync()
    }

    /// Writes a checkpoint if the interval has passed and the head moved.
    pub fn checkpoint_if_due(&self) {
        let due = {
            let inner = self.lock();
            inner.last_checkpoint.elapsed() >= inner.interval
                && inner.checkpointed != inner.writer.synced_head
        };
        if due && let Err(e) = self.checkpoint() {
            tracing::error!("audit log: {e}");
        }
    }

    /// Writes a checkpoint of the head now (signed when a key is configured).
    pub fn checkpoint(&self) -> Result<(), String> {
        let mut inner = self.lock();
        // Only what is on disk is covered.
        let head = inner.writer.synced_head.clone();
        let c = match &inner.signer {
            Some(s) => s.checkpoint(&head, now_ns())?,
            None => checkpoint::unsigned(&head, now_ns()),
        };
        c.write(&self.dir, checkpoint::FILE).map_err(|e| {
            format!(
                "writing the audit checkpoint in {}: {e}",
                self.dir.display()
            )
        })?;
        inner.checkpointed = head;
        inner.last_checkpoint = Instant::now();
        Ok(())
    }
}

fn has_ended(inner: &Inner, task_id: &str, uuid: &str) -> bool {
    if uuid.is_empty() {
        inner.ended_tasks.contains(task_id)
    } else {
        inner
            .ended
            .contains(&(task_id.to_string(), uuid.to_string()))
    }
}

fn append(inner: &mut Inner, event: Event) -> std::io::Result<()> {
    inner
        .writer
        .append(Record {
            seq: 0,
            prev: String::new(),
            time_ns: now_ns(),
            event,
        })
        .map(drop)
        .inspect_err(|e| tracing::error!("audit log: writing a record failed: {e}"))
}
