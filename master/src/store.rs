//! The master's registry on disk: agents admitted, frameworks, tasks with their
//! latest status, and the next offer id, in one redb file (`<work-dir>/registry.redb`).
//!
//! The master actor writes through: every record it changes during one loop
//! iteration is written in one write transaction ([`Store::commit`]), so a storm of
//! status updates costs one commit per batch, not one per update.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cella_proto::v1;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::allocator::{Attributes, Resources};

/// The file name of the registry inside the work dir.
pub const FILE_NAME: &str = "registry.redb";

/// Bumped when the layout of a record changes incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// agent id → JSON [`AgentRecord`].
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
/// framework id → JSON [`FrameworkRecord`].
const FRAMEWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("frameworks");
/// (framework id, agent id, prost TaskInfo, prost latest TaskStatus).
type TaskValue = (&'static str, &'static str, &'static [u8], &'static [u8]);
/// task id → [`TaskValue`].
const TASKS: TableDefinition<&str, TaskValue> = TableDefinition::new("tasks");

const META_SCHEMA: &str = "schema_version";
const META_NEXT_OFFER: &str = "next_offer_id";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The node its certificate names (absent in registries written before agents
    /// were bound to nodes: bound at the next registration).
    #[serde(default)]
    pub node: String,
    pub hostname: String,
    pub attributes: Attributes,
    pub total: Resources,
    pub http_endpoint: String,
    /// Wall clock, milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    pub name: String,
    pub role: String,
    pub principal: String,
    pub failover_timeout_ms: u64,
    /// SUPPRESS was called and no REVIVE since (absent in registries written before
    /// it was recorded: not suppressed).
    #[serde(default)]
    pub suppressed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub framework: String,
    pub agent: String,
    pub info: v1::TaskInfo,
    pub status: v1::TaskStatus,
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub agents: BTreeMap<String, AgentRecord>,
    pub frameworks: BTreeMap<String, FrameworkRecord>,
    pub tasks: Vec<(String, TaskRecord)>,
    /// The first offer id this master may use (0: none stored).
    pub next_offer_id: u64,
}

/// The changes of one actor loop iteration: `None` deletes the record.
#[derive(Debug, Default)]
pub struct Batch {
    pub agents: Vec<(String, Option<AgentRecord>)>,
    pub frameworks: Vec<(String, Option<FrameworkRecord>)>,
    pub tasks: Vec<(String, Option<TaskRecord>)>,
    pub next_offer_id: Option<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.frameworks.is_empty()
            && self.tasks.is_empty()
            && self.next_offer_id.is_none()
    }
}

/// A store error; its message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError(format!(
        "the master's registry {p} is damaged ({what}). Move it aside (e.g. `mv {p} {p}.damaged`) \
         and start the master again: it starts with an empty registry, agents re-register with \
         their running tasks and schedulers re-subscribe; tasks of agents that do not come back \
         are forgotten",
        p = path.display()
    ))
}

impl Store {
    /// Opens (or creates) `<dir>/registry.redb` and reads everything in it. The
    /// directory is made 0700 and the file 0600 (a looser mode is fixed and logged):
    /// the registry holds every task's command line and environment.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let warning = cella_proto::perms::ensure_dir(dir, 0o700).map_err(|e| {
            StoreError(format!(
                "cannot prepare the master's work dir: {e} (choose another with --work-dir)"
            ))
        })?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "{} is in use by another cella-master: only one master may use a work dir",
                path.display()
            )),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() != std::io::ErrorKind::InvalidData =>
            {
                StoreError(format!(
                    "cannot open the master's registry {}: {io}",
                    path.display()
                ))
            }
            other => damaged(&path, other),
        })?;
        if let Some(w) = cella_proto::perms::set_mode(&path, 0o600)
            .map_err(|e| StoreError(e.to_string()))?
            .filter(|_| existed)
        {
            tracing::warn!("{w}");
        }
        let store = Store {
            db: Arc::new(db),
            path,
        };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let bad = |e: &dyn std::fmt::Display| damaged(&self.path, e);
        // Create the tables (and the schema version) of a new store.
        let txn = self.db.begin_write().map_err(|e| bad(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| bad(&e))?;
            let version = meta
                .get(META_SCHEMA)
                .map_err(|e| bad(&e))?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)
                        .map_err(|e| bad(&e))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError(format!(
                        "the master's registry {} has schema version {other}; this cella-master \
                         reads version {SCHEMA_VERSION}. Run the cella-master version that wrote \
                         it, or move the file aside to start with an empty registry",
                        self.path.display()
                    )));
                }
            }
            txn.open_table(AGENTS).map_err(|e| bad(&e))?;
            txn.open_table(FRAMEWORKS).map_err(|e| bad(&e))?;
            txn.open_table(TASKS).map_err(|e| bad(&e))?;
        }
        txn.commit().map_err(|e| bad(&e))?;
        self.read_all()
    }

    /// Reads every record.
    fn read_all(&self) -> Result<Loaded, StoreError> {
        let bad = |e: &dyn std::fmt::Display| damaged(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| bad(&e))?;
        let mut loaded = Loaded::default();
        let meta = txn.open_table(META).map_err(|e| bad(&e))?;
        loaded.next_offer_id = meta
            .get(META_NEXT_OFFER)
            .map_err(|e| bad(&e))?
            .map_or(0, |v| v.value());
        loaded.agents = read_json_rows(&txn, AGENTS, "agent").map_err(|e| bad(&e))?;
        loaded.frameworks = read_json_rows(&txn, FRAMEWORKS, "framework").map_err(|e| bad(&e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| bad(&e))?;
        loaded
            .tasks
            .reserve(usize::try_from(tasks.len().map_err(|e| bad(&e))?).unwrap_or(0));
        for row in tasks.iter().map_err(|e| bad(&e))? {
            let (k, v) = row.map_err(|e| bad(&e))?;
            let id = k.value();
            let (framework, agent, info, status) = v.value();
            let info = v1::TaskInfo::decode(info)
                .map_err(|e| bad(&format!("task {id}: task info: {e}")))?;
            let status = v1::TaskStatus::decode(status)
                .map_err(|e| bad(&format!("task {id}: status: {e}")))?;
            loaded.tasks.push((
                id.to_string(),
                TaskRecord {
                    framework: framework.to_string(),
                    agent: agent.to_string(),
                    info,
                    status,
                },
            ));
        }
        Ok(loaded)
    }

    /// Writes one batch in one transaction.
    pub fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "writing the master's registry {}: {e}",
                self.path.display()
            ))
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            if let Some(next) = batch.next_offer_id {
                let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
                meta.insert(META_NEXT_OFFER, next).map_err(|e| err(&e))?;
            }
            write_json_rows(&txn, AGENTS, &batch.agents).map_err(|e| err(&e))?;
            write_json_rows(&txn, FRAMEWORKS, &batch.frameworks).map_err(|e| err(&e))?;
            if !batch.tasks.is_empty() {
                let mut table = txn.open_table(TASKS).map_err(|e| err(&e))?;
                let (mut info, mut status) = (Vec::new(), Vec::new());
                for (id, record) in &batch.tasks {
                    match record {
                        Some(r) => {
                            info.clear();
                            status.clear();
                            r.info.encode(&mut info).map_err(|e| err(&e))?;
                            r.status.encode(&mut status).map_err(|e| err(&e))?;
                            table
                                .insert(
                                    id.as_str(),
                                    (
                                        r.framework.as_str(),
                                        r.agent.as_str(),
                                        info.as_slice(),
                                        status.as_slice(),
                                    ),
                                )
                                .map(|_| ())
                        }
                        None => table.remove(id.as_str()).map(|_| ()),
                    }
                    .map_err(|e| err(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

impl Store {
    /// The database, shared with a backup running beside the actor.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }
}

/// Writes a consistent copy of `db` (one read transaction, while writers go on) to
/// `dest`: a new registry file, written beside it first, mode 0600, then renamed.
pub fn backup(db: &Database, dest: &Path) -> Result<(), StoreError> {
    let err = |e: &dyn std::fmt::Display| {
        StoreError(format!(
            "backing the registry up to {}: {e}",
            dest.display()
        ))
    };
    let tmp = dest.with_file_name(format!(
        ".{}.partial",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("registry-backup")
    ));
    let _ = std::fs::remove_file(&tmp);
    let read = db.begin_read().map_err(|e| err(&e))?;
    {
        let copy = Database::create(&tmp).map_err(|e| err(&e))?;
        cella_proto::perms::set_mode(&tmp, 0o600).map_err(|e| err(&e))?;
        let write = copy.begin_write().map_err(|e| err(&e))?;
        {
            let from = read.open_table(META).map_err(|e| err(&e))?;
            let mut to = write.open_table(META).map_err(|e| err(&e))?;
            for row in from.iter().map_err(|e| err(&e))? {
                let (k, v) = row.map_err(|e| err(&e))?;
                to.insert(k.value(), v.value()).map_err(|e| err(&e))?;
            }
            for table in [AGENTS, FRAMEWORKS] {
                let from = read.open_table(table).map_err(|e| err(&e))?;
                let mut to = write.open_table(table).map_err(|e| err(&e))?;
                for row in from.iter().map_err(|e| err(&e))? {
                    let (k, v) = row.map_err(|e| err(&e))?;
                    to.insert(k.value(), v.value()).map_err(|e| err(&e))?;
                }
            }
            let from = read.open_table(TASKS).map_err(|e| err(&e))?;
            let mut to = write.open_table(TASKS).map_err(|e| err(&e))?;
            for row in from.iter().map_err(|e| err(&e))? {
                let (k, v) = row.map_err(|e| err(&e))?;
                to.insert(k.value(), v.value()).map_err(|e| err(&e))?;
            }
        }
        write.commit().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, dest).map_err(|e| err(&e))?;
    if let Some(dir) = dest.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Backs up the registry of a work dir that no master is using.
pub fn backup_offline(work_dir: &Path, dest: &Path) -> Result<(), StoreError> {
    let path = work_dir.join(FILE_NAME);
    let db = Database::open(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
            "{} is in use by a running cella-master; ask it for the backup through its \
             control socket (cella-master backup finds it in the work dir)",
            path.display()
        )),
        other => StoreError(format!(
            "cannot open the registry {}: {other}",
            path.display()
        )),
    })?;
    backup(&db, dest)
}

/// Replaces the registry of `work_dir` (no master may be running on it) with the
/// backup `from`, after checking that `from` is a registry this master reads. The
/// registry it replaces is kept as `registry.redb.before-restore-<unix seconds>`;
/// returns that path (if there was one).
pub fn restore(work_dir: &Path, from: &Path) -> Result<Option<PathBuf>, StoreError> {
    let err = |e: &dyn std::fmt::Display| {
        StoreError(format!(
            "restoring the registry from {}: {e}",
            from.display()
        ))
    };
    {
        let db = Database::open(from).map_err(|e| err(&e))?;
        let store = Store {
            db: Arc::new(db),
            path: from.to_path_buf(),
        };
        store.check_backup()?;
    }
    if let Some(w) = cella_proto::perms::ensure_dir(work_dir, 0o700).map_err(|e| err(&e))? {
        tracing::warn!("{w}");
    }
    let dest = work_dir.join(FILE_NAME);
    if dest.exists() {
        // Refused while a master holds it.
        if let Err(redb::DatabaseError::DatabaseAlreadyOpen) = Database::open(&dest) {
            return Err(StoreError(format!(
                "{} is in use by a running cella-master: stop it before restoring",
                dest.display()
            )));
        }
    }
    let tmp = work_dir.join(format!(".{FILE_NAME}.restoring"));
    std::fs::copy(from, &tmp).map_err(|e| err(&e))?;
    cella_proto::perms::set_mode(&tmp, 0o600).map_err(|e| err(&e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(&e))?;
    let kept = if dest.exists() {
        let secs = cella_proto::time::now_secs();
        let aside = work_dir.join(format!("{FILE_NAME}.before-restore-{secs}"));
        std::fs::rename(&dest, &aside).map_err(|e| err(&e))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&tmp, &dest).map_err(|e| err(&e))?;
    if let Ok(dir) = std::fs::File::open(work_dir) {
        let _ = dir.sync_all();
    }
    Ok(kept)
}

impl Store {
    /// Reads a backup through, as the master would at start: its schema and every
    /// record.
    fn check_backup(&self) -> Result<(), StoreError> {
        let bad = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "{} is not a usable registry backup: {e}",
                self.path.display()
            ))
        };
        let txn = self.db.begin_read().map_err(|e| bad(&e))?;
        let meta = txn.open_table(META).map_err(|e| bad(&e))?;
        match meta
            .get(META_SCHEMA)
            .map_err(|e| bad(&e))?
            .map(|v| v.value())
        {
            Some(SCHEMA_VERSION) => {}
            other => {
                return Err(bad(&format!(
                    "schema version {other:?}; this cella-master reads version {SCHEMA_VERSION}"
                )));
            }
        }
        drop(meta);
        drop(txn);
        self.read_all().map(|_| ())
    }
}

/// Puts (`Some`) or removes (`None`) JSON records of a `id → JSON` table.
/// Every row of a table of JSON records by id; an error names the `kind` of record
/// and its id when one does not parse.
fn read_json_rows<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    definition: TableDefinition<&str, &[u8]>,
    kind: &str,
) -> Result<BTreeMap<String, T>, String> {
    let table = txn.open_table(definition).map_err(|e| e.to_string())?;
    let mut records = BTreeMap::new();
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let record =
            serde_json::from_slice(v.value()).map_err(|e| format!("{kind} {}: {e}", k.value()))?;
        records.insert(k.value().to_string(), record);
    }
    Ok(records)
}

fn write_json_rows<T: Serialize>(
    txn: &redb::WriteTransaction,
    definition: TableDefinition<&str, &[u8]>,
    rows: &[(String, Option<T>)],
) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(definition).map_err(|e| e.to_string())?;
    for (id, record) in rows {
        match record {
            Some(r) => {
                let bytes = serde_json::to_vec(r).map_err(|e| e.to_string())?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            None => {
                table.remove(id.as_str()).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.tasks.is_empty() && loaded.next_offer_id == 0);
            let mut batch = Batch {
                next_offer_id: Some(42),
                ..Batch::default()
            };
            batch.frameworks.push((
                "fw".into(),
                Some(FrameworkRecord {
                    name: "n".into(),
                    role: "*".into(),
                    principal: "p".into(),
                    failover_timeout_ms: 1000,
                    suppressed: true,
                }),
            ));
            batch.tasks.push((
                "t1".into(),
                Some(TaskRecord {
                    framework: "fw".into(),
                    agent: "a".into(),
                    info: v1::TaskInfo {
                        task_id: "t1".into(),
                        ..Default::default()
                    },
                    status: v1::TaskStatus {
                        task_id: "t1".into(),
                        state: v1::TaskState::TaskRunning as i32,
                        ..Default::default()
                    },
                }),
            ));
            batch.tasks.push(("t2".into(), None));
            store.commit(&batch).unwrap();
            // A second opener is refused while the first holds the file.
            let err = Store::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains("in use"), "{err}");
        }
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.next_offer_id, 42);
        assert_eq!(loaded.frameworks["fw"].principal, "p");
        assert_eq!(loaded.tasks.len(), 1);
        assert_eq!(loaded.tasks[0].1.status.state(), v1::TaskState::TaskRunning);
        drop(_store);

        // Garbage instead of a database.
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join(FILE_NAME), vec![0xAB; 8192]).unwrap();
        let err = Store::open(bad.path()).unwrap_err().to_string();
        assert!(
            err.contains(FILE_NAME) && err.contains("Move it aside"),
            "{err}"
        );
    }
}
