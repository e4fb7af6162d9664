//! The audit log: one record per finished task (who, what, where, when, how it
//! ended, what it consumed), per kill request and per authorization denial, kept in
//! an append-only, hash-chained log under the master's work directory, with signed
//! checkpoints of its head. docs/audit.md describes the format and its checks.
//!
//! | module | concept |
//! |---|---|
//! | `record` | a record and its line; the hash of a line |
//! | `segment` | segment files, the appending writer, reading lines back |
//! | `ends` | the newest task ends recorded, that a resent update is checked against |
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
pub mod ends;
pub mod record;
pub mod report;
pub mod segment;
pub mod verify;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cella_proto::time::now_ns;

use checkpoint::{Checkpoint, Signer};
use ends::RecentEnds;
use record::line_hash;
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
    /// How many of the newest task ends are remembered (and read back when the log
    /// is opened) to keep a resent terminal update from being recorded twice:
    /// twice the ended tasks the master keeps (see `ends`).
    pub ends_kept: usize,
}

/// [`AuditConfig::ends_kept`] for a master that keeps the default 10,000 ended
/// tasks.
pub const DEFAULT_ENDS_KEPT: usize = ends::ends_to_keep(10_000);

impl AuditConfig {
    /// The defaults: `<work_dir>/audit`, 64 MiB segments, a checkpoint a minute,
    /// [`DEFAULT_ENDS_KEPT`] ends remembered.
    pub fn in_work_dir(work_dir: &Path) -> AuditConfig {
        AuditConfig {
            dir: work_dir.join("audit"),
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(60),
            signer: None,
            ends_kept: DEFAULT_ENDS_KEPT,
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
    /// The newest task ends recorded (task id, update uuid): a resent update (after
    /// a master or agent restart) is not recorded twice, and a state the master
    /// decides later (LOST, from a registry older than the log) is not a second end.
    ends: RecentEnds,
    /// Task ends written since the last sync (the newest of `ends`).
    unsynced_ends: usize,
    times: HashMap<String, Times>,
    signer: Option<Signer>,
    checkpointed: Head,
    last_checkpoint: Instant,
    interval: Duration,
}

/// The log of a running master; shared by its actor and its authorizer.
pub struct AuditLog {
    dir: PathBuf,
    /// How many records opening the log read.
    read_at_open: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log: finds its head, reads back the newest
    /// `ends_kept` task ends, checks the log against the last checkpoint and writes a
    /// new one. What it reads does not depend on the log's length: the records back
    /// to the oldest end kept, and the segment of the record the checkpoint names
    /// when that is older.
    pub fn open(config: &AuditConfig) -> Result<Arc<AuditLog>, String> {
        let context = |e: std::io::Error| format!("the audit log in {}: {e}", config.dir.display());
        let signer = match &config.signer {
            Some((cert, key)) => Some(Signer::load(cert, key)?),
            None => None,
        };
        let mut ends = RecentEnds::new(config.ends_kept);
        let mut newest_ends = Vec::new();
        let mut checkpointed_hash = None;
        let mut read_at_open = 0;
        let previous = Checkpoint::read(&config.dir.join(checkpoint::FILE)).ok();
        let writer = Writer::open(&config.dir, config.segment_bytes, |r, line| {
            read_at_open += 1;
            if r.is_task_end() {
                newest_ends.push((r.task_id.clone(), r.update_uuid.clone()));
            }
            if previous.as_ref().is_some_and(|c| c.records == r.seq) {
                checkpointed_hash = Some(line_hash(line));
            }
            if newest_ends.len() >= config.ends_kept.max(1) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(context)?;
        for (task, uuid) in newest_ends.iter().rev() {
            ends.push(task, uuid);
        }
        if let Some(c) = &previous
            && checkpointed_hash.is_none()
            && c.records > 0
            && c.records <= writer.head.seq
        {
            let (line, read) = segment::find_record(&config.dir, c.records).map_err(context)?;
            read_at_open += read;
            checkpointed_hash = line.map(|l| line_hash(&l));
        }
        if let Some(c) = previous
            && checkpointed_hash.as_ref() != Some(&c.head)
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
            read_at_open,
            inner: Mutex::new(Inner {
                checkpointed: Head {
                    seq: u64::MAX,
                    hash: String::new(),
                },
                writer,
                ends,
                unsynced_ends: 0,
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

    /// How many records opening the log read (the head, the newest task ends, and
    /// the record of the last checkpoint).
    pub fn records_read_at_open(&self) -> u64 {
        self.read_at_open
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
                inner.unsynced_ends = 0;
                inner.ends.trim();
                Ok(())
            }
            Err(e) => {
                tracing::error!("audit log: fdatasync failed, the newest records are dropped: {e}");
                let unsynced = std::mem::take(&mut inner.unsynced_ends);
                inner.ends.forget_newest(unsynced);
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
        let times = inner.times.get(&end.task_id).copied().unwrap_or_default();
        end.submitted_ns = end.submitted_ns.or(times.submitted_ns);
        end.started_ns = end.started_ns.or(times.started_ns);
        let (task_id, uuid) = (end.task_id.clone(), end.update_uuid.clone());
        append(&mut inner, Event::TaskEnd(Box::new(end)))?;
        inner.times.remove(&task_id);
        inner.ends.push(&task_id, &uuid);
        inner.unsynced_ends += 1;
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
        inner.ends.contains_task(task_id)
    } else {
        inner.ends.contains(task_id, uuid)
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
