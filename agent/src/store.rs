//! The agent's checkpoint: a redb database at `<work-dir>/meta/agent.redb`.
//!
//! | table     | key            | value                                         |
//! |-----------|----------------|-----------------------------------------------|
//! | `meta`    | `agent_id`, `boot_id`, `format`, `acl` | UTF-8 text            |
//! | `tasks`   | task id        | [`TaskRecord`] (protobuf)                     |
//! | `updates` | sequence (u64) | [`cella_proto::v1::TaskStatus`] (protobuf)    |
//!
//! Writes go through one writer thread that commits everything queued in one
//! transaction (group commit), so a burst of 1,000 launches costs a handful of fsyncs
//! rather than thousands. [`Store::write`] resolves once its changes are durable:
//! a status update is written before it is sent (at-least-once delivery).
//!
//! Recovery ([`crate::recovery`]) reads everything back with [`Store::open`]'s
//! [`Checkpoint`]: the agent id to re-register with, the boot id to detect a reboot,
//! every task with its info, state, sandbox and task pid, and the unacknowledged
//! updates in their original order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use cella_proto::v1;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::paths;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const UPDATES: TableDefinition<u64, &[u8]> = TableDefinition::new("updates");

/// The version of this layout, stored under `meta/format`.
pub const FORMAT: &str = "1";

/// Errors of the checkpoint; each names the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("checkpoint {}: {message}", path.display())]
    Db { path: PathBuf, message: String },
    #[error("checkpoint {}: the writer stopped (the agent is shutting down)", path.display())]
    Closed { path: PathBuf },
}

impl StoreError {
    /// The database file (or directory) concerned.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Db { path, .. }
            | StoreError::Closed { path } => path,
        }
    }
}

/// One task as checkpointed.
#[derive(Clone, PartialEq, Message)]
pub struct TaskRecord {
    #[prost(string, tag = "1")]
    pub framework_id: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<v1::TaskInfo>,
    /// The latest state the agent generated for the task.
    #[prost(enumeration = "v1::TaskState", tag = "3")]
    pub state: i32,
    #[prost(string, tag = "4")]
    pub sandbox: String,
    /// The task's pid (0 until it runs); recovery checks it with its start time.
    #[prost(int32, tag = "5")]
    pub pid: i32,
    /// When the launch was received, nanoseconds since the epoch.
    #[prost(uint64, tag = "6")]
    pub launched_ns: u64,
    /// The shim's pid once the task runs (recovery identifies the shim by the pid
    /// **and** start time in its run directory's `shim.pid`, which must match these).
    #[prost(int32, tag = "7")]
    pub shim_pid: i32,
    /// When the task ended (its terminal state was generated), nanoseconds since the
    /// epoch; 0 while it runs. Drives the sandbox garbage collection.
    #[prost(uint64, tag = "8")]
    pub ended_ns: u64,
    /// A kill was requested: recorded before the kill is delivered, so that an agent
    /// restarted in between kills the task again (if it still runs) and reports its
    /// end as KILLED, not as a failure.
    #[prost(bool, tag = "9")]
    pub kill_requested: bool,
    /// The shim's start time (clock ticks since boot) with `shim_pid`: recovery
    /// re-attaches only to the shim whose run directory names the same pair.
    #[prost(uint64, tag = "10")]
    pub shim_start_time: u64,
    /// The framework's role and owning principal (who may read the sandbox).
    #[prost(string, tag = "11")]
    pub role: String,
    #[prost(string, tag = "12")]
    pub principal: String,
    /// The manifest digest ("sha256:…") an image task's image resolved to; empty
    /// before that and for tasks without an image.
    #[prost(string, tag = "13")]
    pub image_digest: String,
}

/// A change to the checkpoint.
#[derive(Debug, Clone)]
pub enum Write {
    AgentId(String),
    BootId(String),
    /// The master's access policy: its ACL text, or `None` when it enforces none.
    AccessPolicy(Option<String>),
    PutTask(String, Box<TaskRecord>),
    DeleteTask(String),
    PutUpdate(u64, v1::TaskStatus),
    DeleteUpdate(u64),
}

/// Everything read back at open.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub agent_id: Option<String>,
    pub boot_id: Option<String>,
    /// The master's last access policy (`Some(None)`: it enforced none); a restarted
    /// agent applies it until the master says again.
    pub access_policy: Option<Option<String>>,
    pub tasks: Vec<(String, TaskRecord)>,
    /// In sequence order.
    pub updates: Vec<(u64, v1::TaskStatus)>,
    /// What could not be read (only without `strict`): each names the record and why.
    pub errors: Vec<String>,
}

struct Batch {
    writes: Vec<Write>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What the writer thread receives.
enum Request {
    Batch(Batch),
    /// Apply what was queued before, then stop.
    Close,
}

/// A handle on the checkpoint; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Request>,
    path: PathBuf,
    transactions: Arc<AtomicU64>,
}

/// Owns the writer thread; [`StoreOwner::close`] stops it (so that the database file
/// lock is released, e.g. before the agent is started again).
pub struct StoreOwner {
    tx: mpsc::UnboundedSender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl StoreOwner {
    /// Applies every write queued so far, stops the writer and waits for it. Writes
    /// queued afterwards through a [`Store`] that is still around fail with
    /// [`StoreError::Closed`].
    pub fn close(mut self) {
        let _ = self.tx.send(Request::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens (or creates) `<work_dir>/meta/agent.redb` and reads it back, strictly:
    /// any damage is an error.
    pub fn open(work_dir: &Path) -> Result<(Store, StoreOwner, Checkpoint), StoreError> {
        Self::open_with(work_dir, true)
    }

    /// Like [`Store::open`]. Without `strict`, records that cannot be decoded are
    /// skipped, and a database that cannot be opened at all is moved aside
    /// (`agent.redb.damaged-<unix seconds>`) and replaced by an empty one; each
    /// problem is listed in [`Checkpoint::errors`].
    pub fn open_with(
        work_dir: &Path,
        strict: bool,
    ) -> Result<(Store, StoreOwner, Checkpoint), StoreError> {
        let meta = paths::meta_dir(work_dir);
        std::fs::create_dir_all(&meta).map_err(|e| StoreError::Io {
            path: meta.clone(),
            message: e.to_string(),
        })?;
        let path = paths::checkpoint_file(work_dir);
        let existed = path.exists();
        let opened = Database::create(&path)
            .map_err(|e| {
                db_err(
                    &path,
                    format!("{e} (is another agent using this work directory?)"),
                )
            })
            .and_then(|db| read_all(&db, &path, strict).map(|cp| (db, cp)));
        let (db, checkpoint) = match opened {
            Ok(ok) => ok,
            Err(e) if strict || matches!(e, StoreError::Io { .. }) => return Err(e),
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = paths::damaged_checkpoint_file(work_dir, secs);
                std::fs::rename(&path, &aside).map_err(|re| StoreError::Io {
                    path: path.clone(),
                    message: format!("{e}; moving it aside to {} failed: {re}", aside.display()),
                })?;
                let db = Database::create(&path).map_err(|e| db_err(&path, e))?;
                let mut cp = read_all(&db, &path, strict)?;
                cp.errors.push(format!(
                    "{e}: moved aside to {} and started with an empty checkpoint \
                     (the tasks it recorded are no longer tracked)",
                    aside.display()
                ));
                (db, cp)
            }
        };
        // Tasks' command lines and environments are in it: private, in a private
        // directory (a looser mode left by an older agent is fixed and logged).
        for (p, mode) in [(&meta, 0o700), (&path, 0o600)] {
            match cella_proto::perms::set_mode(p, mode) {
                Ok(Some(warning)) if existed => tracing::warn!("{warning}"),
                Ok(Some(_)) => {}
                Ok(None) => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        path: p.to_path_buf(),
                        message: e.to_string(),
                    });
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let thread_path = path.clone();
        let transactions = Arc::new(AtomicU64::new(0));
        let counted = transactions.clone();
        let thread = std::thread::Builder::new()
            .name("cella-checkpoint".into())
            .spawn(move || writer(db, rx, &thread_path, &counted))
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                message: format!("starting the checkpoint writer: {e}"),
            })?;
        Ok((
            Store {
                tx: tx.clone(),
                path,
                transactions,
            },
            StoreOwner {
                tx,
                thread: Some(thread),
            },
            checkpoint,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions (each one fsync) have been committed since open.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Applies `writes` atomically; resolves once they are durable.
    pub async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.submit(writes).await
    }

    /// Queues `writes` at once (batches are applied in the order they are queued) and
    /// returns a future that resolves once they are durable. Queue while holding the
    /// lock of the state the writes copy, so that the checkpoint never goes back to
    /// an older copy.
    pub fn submit(
        &self,
        writes: Vec<Write>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Request::Batch(Batch {
            writes,
            done: Some(done),
        }));
        let path = self.path.clone();
        async move {
            sent.map_err(|_| StoreError::Closed { path: path.clone() })?;
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(StoreError::Db { path, message }),
                Err(_) => Err(StoreError::Closed { path }),
            }
        }
    }

    /// Queues `writes` without waiting for them (acknowledgements: losing one only
    /// means an update is re-sent).
    pub fn write_later(&self, writes: Vec<Write>) {
        let _ = self.tx.send(Request::Batch(Batch { writes, done: None }));
    }
}

fn read_all(db: &Database, path: &Path, strict: bool) -> Result<Checkpoint, StoreError> {
    // Create the tables so that readers never meet a missing one.
    let txn = db.begin_write().map_err(|e| db_err(path, e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
        txn.open_table(TASKS).map_err(|e| db_err(path, e))?;
        txn.open_table(UPDATES).map_err(|e| db_err(path, e))?;
        let format = meta
            .get("format")
            .map_err(|e| db_err(path, e))?
            .map(|v| v.value().to_string());
        match format.as_deref() {
            None => {
                meta.insert("format", FORMAT).map_err(|e| db_err(path, e))?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(db_err(
                    path,
                    format!(
                        "written in checkpoint format {other}, this agent reads format {FORMAT}: \
                         use the agent version that wrote it, or move the work directory aside"
                    ),
                ));
            }
        }
    }
    txn.commit().map_err(|e| db_err(path, e))?;

    let txn = db.begin_read().map_err(|e| db_err(path, e))?;
    let meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
    let get = |key: &str| -> Result<Option<String>, StoreError> {
        Ok(meta
            .get(key)
            .map_err(|e| db_err(path, e))?
            .map(|v| v.value().to_string()))
    };
    let access_policy = match get("acl_enforced")?.as_deref() {
        Some("true") => Some(Some(get("acl")?.unwrap_or_default())),
        Some(_) => Some(None),
        None => None,
    };
    let mut checkpoint = Checkpoint {
        agent_id: get("agent_id")?,
        boot_id: get("boot_id")?,
        access_policy,
        ..Default::default()
    };
    let tasks = txn.open_table(TASKS).map_err(|e| db_err(path, e))?;
    for entry in tasks.iter().map_err(|e| db_err(path, e))? {
        let (k, v) = entry.map_err(|e| db_err(path, e))?;
        match TaskRecord::decode(v.value()) {
            Ok(record) => checkpoint.tasks.push((k.value().to_string(), record)),
            Err(e) if strict => {
                return Err(db_err(path, format!("task {}: {e}", k.value())));
            }
            Err(e) => checkpoint
                .errors
                .push(format!("task {}: undecodable record: {e}", k.value())),
        }
    }
    let updates = txn.open_table(UPDATES).map_err(|e| db_err(path, e))?;
    for entry in updates.iter().map_err(|e| db_err(path, e))? {
        let (k, v) = entry.map_err(|e| db_err(path, e))?;
        match v1::TaskStatus::decode(v.value()) {
            Ok(status) => checkpoint.updates.push((k.value(), status)),
            Err(e) if strict => {
                return Err(db_err(path, format!("status update {}: {e}", k.value())));
            }
            Err(e) => checkpoint.errors.push(format!(
                "status update {}: undecodable record: {e}",
                k.value()
            )),
        }
    }
    Ok(checkpoint)
}

/// Commits everything queued in one transaction (group commit) until
/// [`StoreOwner::close`] (or until every handle is gone).
fn writer(
    db: Database,
    mut rx: mpsc::UnboundedReceiver<Request>,
    path: &Path,
    transactions: &AtomicU64,
) {
    let mut closing = false;
    while !closing {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut batches = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next {
            match request {
                Request::Batch(batch) => batches.push(batch),
                Request::Close => {
                    closing = true;
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        if batches.is_empty() {
            continue;
        }
        let result = commit(&db, &batches).map_err(|e| {
            tracing::error!(path = %path.display(), "checkpoint write failed: {e}");
            e
        });
        transactions.fetch_add(1, Ordering::Relaxed);
        for batch in batches {
            if let Some(done) = batch.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn commit(db: &Database, batches: &[Batch]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let mut tasks = txn.open_table(TASKS).map_err(|e| e.to_string())?;
        let mut updates = txn.open_table(UPDATES).map_err(|e| e.to_string())?;
        for write in batches.iter().flat_map(|b| &b.writes) {
            let r = match write {
                Write::AgentId(id) => meta.insert("agent_id", id.as_str()).map(drop),
                Write::BootId(id) => meta.insert("boot_id", id.as_str()).map(drop),
                Write::AccessPolicy(acl) => {
                    let enforced = if acl.is_some() { "true" } else { "false" };
                    let first = meta.insert("acl_enforced", enforced).map(drop);
                    first.and_then(|()| meta.insert("acl", acl.as_deref().unwrap_or("")).map(drop))
                }
                Write::PutTask(id, record) => {
                    let bytes = record.encode_to_vec();
                    tasks.insert(id.as_str(), bytes.as_slice()).map(drop)
                }
                Write::DeleteTask(id) => tasks.remove(id.as_str()).map(drop),
                Write::PutUpdate(seq, status) => {
                    let bytes = status.encode_to_vec();
                    updates.insert(*seq, bytes.as_slice()).map(drop)
                }
                Write::DeleteUpdate(seq) => updates.remove(*seq).map(drop),
            };
            r.map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_updates::queue::tests::status;

    #[tokio::test]
    async fn round_trip_and_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, owner, cp) = Store::open(dir.path()).unwrap();
        assert!(cp.agent_id.is_none() && cp.tasks.is_empty() && cp.updates.is_empty());
        let record = TaskRecord {
            framework_id: "fw-1".into(),
            info: Some(v1::TaskInfo {
                task_id: "t1".into(),
                command: vec!["sleep".into(), "1".into()],
                ..Default::default()
            }),
            state: v1::TaskState::TaskRunning as i32,
            sandbox: "/x/t1".into(),
            pid: 42,
            launched_ns: 1,
            shim_pid: 41,
            ended_ns: 0,
            kill_requested: true,
            shim_start_time: 7,
            role: "web".into(),
            principal: "user:alice".into(),
            image_digest: format!("sha256:{}", "ab".repeat(32)),
        };
        store
            .write(vec![
                Write::AgentId("agent-1".into()),
                Write::BootId("boot".into()),
                Write::PutTask("t1".into(), Box::new(record.clone())),
            ])
            .await
            .unwrap();
        // Many concurrent writers: all durable, in order of their sequence numbers,
        // in fewer transactions than writers (their batches are committed together).
        let before = store.transactions();
        let mut joins = Vec::new();
        for seq in (1..=200u64).rev() {
            let store = store.clone();
            joins.push(tokio::spawn(async move {
                store
                    .write(vec![Write::PutUpdate(
                        seq,
                        status(&format!("t{seq}"), v1::TaskState::TaskStarting),
                    )])
                    .await
            }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        let transactions = store.transactions() - before;
        assert!(
            transactions < 200,
            "200 concurrent writes took {transactions} transactions: not grouped"
        );
        store.write_later(vec![Write::DeleteUpdate(7)]);
        store
            .write(vec![Write::DeleteTask("nope".into())])
            .await
            .unwrap();
        drop(store);
        owner.close();

        let (_store, _owner, cp) = Store::open(dir.path()).unwrap();
        assert_eq!(cp.agent_id.as_deref(), Some("agent-1"));
        assert_eq!(cp.boot_id.as_deref(), Some("boot"));
        assert_eq!(cp.tasks, vec![("t1".to_string(), record)]);
        let seqs: Vec<u64> = cp.updates.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (1..=200).filter(|s| *s != 7).collect();
        assert_eq!(seqs, expected);
        assert_eq!(cp.updates[0].1.task_id, "t1");
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(paths::meta_dir(dir.path())).unwrap();
        std::fs::write(paths::checkpoint_file(dir.path()), b"not a database at all").unwrap();
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("agent.redb"), "{err}");
        // Not strict: moved aside, an empty checkpoint, one error.
        let (_s, _o, cp) = Store::open_with(dir.path(), false).unwrap();
        assert_eq!(cp.errors.len(), 1, "{:?}", cp.errors);
        assert!(cp.tasks.is_empty());
        let aside = std::fs::read_dir(paths::meta_dir(dir.path()))
            .unwrap()
            .flatten()
            .any(|e| paths::is_damaged_checkpoint(&e.file_name().to_string_lossy()));
        assert!(aside);
    }

    #[test]
    fn undecodable_records_are_skipped_when_not_strict() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_s, owner, _) = Store::open(dir.path()).unwrap();
            drop(_s);
            owner.close();
        }
        {
            let db = Database::create(paths::checkpoint_file(dir.path())).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(TASKS).unwrap();
                t.insert("bad", [0xffu8, 0xff, 0xff].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("task bad"), "{err}");
        let (_s, _o, cp) = Store::open_with(dir.path(), false).unwrap();
        assert_eq!(cp.errors.len(), 1, "{:?}", cp.errors);
    }
}
