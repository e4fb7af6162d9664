//! The store's small records (images, references, leases): JSON files replaced
//! atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old or the new record, never half of one.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cella_proto::atomic_file::{self, sync_dir};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{ImageConfig, LayerDescriptor, Platform};
use crate::store::holder::LeaseHolder;

/// One image in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest's digest: the image's identity.
    pub digest: Digest,
    pub config_digest: Digest,
    pub platform: Platform,
    pub config: ImageConfig,
    /// Lowest first.
    pub layers: Vec<LayerDescriptor>,
    /// Milliseconds since the epoch.
    pub pulled_at_ms: u64,
    pub last_used_ms: u64,
}

/// A name (what the user wrote, normalised) for an image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefRecord {
    pub reference: String,
    pub digest: Digest,
}

/// A holder (a task) of an image: GC never removes a leased image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub image: Digest,
    /// Milliseconds since the epoch when the lease was taken.
    pub since_ms: u64,
    /// The processes holding it, if processes do ([`LeaseHolder`]); none: held until
    /// released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<LeaseHolder>,
}

impl Lease {
    /// Whether every process that held it is gone: the lease counts as released.
    pub fn abandoned(&self) -> bool {
        !self.holders.is_empty() && self.holders.iter().all(LeaseHolder::is_gone)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `value` to `path` atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    write_with(path, value, true)
}

/// Like [`write`] without fsync: for records that only matter within one boot of the
/// machine (leases: a reboot ends every task that held one). The rename is atomic
/// for every process; after a power loss the file may be missing or empty, which
/// readers of such records tolerate ([`read_all_lenient`]).
pub fn write_volatile<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    write_with(path, value, false)
}

fn write_with<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(atomic_file::unique_name(&format!(".{name}"), ".tmp"));
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ImageError::Damaged {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    if durable {
        atomic_file::replace(path, &tmp, &bytes)
    } else {
        atomic_file::replace_volatile(path, &tmp, &bytes)
    }
    .map_err(ImageError::io(path, "write the record"))
}

/// Reads a record; `None` when the file does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(path, "read the record")(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ImageError::Damaged {
            path: path.to_owned(),
            problem: e.to_string(),
        })
}

/// The paths of the record files in `dir` (temp files skipped).
fn record_paths(dir: &Path) -> Result<Vec<std::path::PathBuf>, ImageError> {
    let mut paths = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(ImageError::io(dir, "list the records"))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io(dir, "list the records"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name.ends_with(".json") {
            paths.push(entry.path());
        }
    }
    Ok(paths)
}

/// Every record in `dir` (temp files skipped).
pub fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, ImageError> {
    let mut records = Vec::new();
    for path in record_paths(dir)? {
        records.extend(read(&path)?);
    }
    Ok(records)
}

/// Every readable record in `dir`; a damaged one (a volatile record a power loss
/// cut short) is logged and removed.
pub fn read_all_lenient<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, ImageError> {
    let mut records = Vec::new();
    for path in record_paths(dir)? {
        match read(&path) {
            Ok(record) => records.extend(record),
            Err(ImageError::Damaged { path, problem }) => {
                tracing::warn!(path = %path.display(), "removing a damaged record: {problem}");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// Removes a record file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(path, "remove the record")(e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(ImageError::io(dir, "fsync the directory"))?;
    }
    Ok(())
}
