//! Checks a log: every line is a record, records are numbered 1, 2, 3… without a gap
//! across segments, each names the hash of the one before it, and every checkpoint
//! file covers no more records than there are, names the hash of its newest record
//! and carries a valid signature by a master certificate of the cluster CA.

use std::collections::BTreeMap;
use std::path::Path;

use super::checkpoint::Checkpoint;
use super::record::{GENESIS, Record, line_hash};
use super::segment::{read_lines, segments};

/// `cella audit verify`'s exit code when a record does not verify (changed,
/// missing, out of order, cut off).
pub const EXIT_RECORD: i32 = 1;
/// … when the log cannot be read at all (no such directory, no CA file).
pub const EXIT_UNREADABLE: i32 = 2;
/// … when a checkpoint is missing, unsigned, or its signature or certificate does
/// not verify.
pub const EXIT_CHECKPOINT: i32 = 3;

/// A log that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub records: u64,
    pub segments: usize,
    /// Each checkpoint file and the records it covers.
    pub checkpoints: Vec<(String, u64)>,
}

/// Why a log does not verify: the first problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The exit code (`EXIT_*`).
    pub code: i32,
    /// The first record that does not verify, when it is one.
    pub record: Option<u64>,
    pub message: String,
}

fn fail(code: i32, record: Option<u64>, message: String) -> Failure {
    Failure {
        code,
        record,
        message,
    }
}

/// Where a record is, for messages.
struct At<'a> {
    segment: &'a str,
    line: usize,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.segment, self.line)
    }
}

/// The checkpoint files in `dir` (`checkpoint.json` and any kept beside it).
fn checkpoints(dir: &Path) -> Result<Vec<(String, Checkpoint)>, Failure> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        fail(
            EXIT_UNREADABLE,
            None,
            format!("{}: {e} (give the master's audit directory)", dir.display()),
        )
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint") && name.ends_with(".json") {
            let c = Checkpoint::read(&entry.path()).map_err(|e| fail(EXIT_CHECKPOINT, None, e))?;
            found.push((name, c));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Verifies the log in `dir`; checkpoint signatures are checked against the CA
/// certificate `ca_pem` (PEM).
pub fn verify(dir: &Path, ca_pem: &[u8]) -> Result<Verified, Failure> {
    let checkpoints = checkpoints(dir)?;
    let segs = segments(dir)
        .map_err(|e| fail(EXIT_UNREADABLE, None, format!("{}: {e}", dir.display())))?;
    // The hashes the checkpoints name, by record number, to compare on the way.
    let mut wanted: BTreeMap<u64, Option<String>> =
        checkpoints.iter().map(|(_, c)| (c.records, None)).collect();
    let mut expected = 1u64;
    let mut prev = GENESIS.to_string();
    // The previous record's place, to name it when the next one's link is wrong.
    let mut prev_at = String::new();
    for (_, path) in &segs {
        let segment = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines = read_lines(path)
            .map_err(|e| fail(EXIT_UNREADABLE, None, format!("{}: {e}", path.display())))?;
        for (i, line) in lines.iter().enumerate() {
            let at = At {
                segment: &segment,
                line: i + 1,
            };
            if !line.complete {
                return Err(fail(
                    EXIT_RECORD,
                    Some(expected),
                    format!(
                        "record {expected} ({at}) is cut off: the line does not end (the \
                         master stopped while writing it; it repairs this when it starts)"
                    ),
                ));
            }
            let r: Record = serde_json::from_slice(&line.bytes).map_err(|e| {
                fail(
                    EXIT_RECORD,
                    Some(expected),
                    format!("record {expected} ({at}) is not a valid record: {e}"),
                )
            })?;
            if r.seq > expected {
                let what = if r.seq == expected + 1 {
                    format!("record {expected} is missing")
                } else {
                    format!("records {expected} to {} are missing", r.seq - 1)
                };
                return Err(fail(
                    EXIT_RECORD,
                    Some(expected),
                    format!(
                        "{what}: {at} holds record {} after record {}",
                        r.seq,
                        expected - 1
                    ),
                ));
            }
            if r.seq < expected {
                return Err(fail(
                    EXIT_RECORD,
                    Some(r.seq),
                    format!(
                        "record {} ({at}) is out of place: record {} came before it",
                        r.seq,
                        expected - 1
                    ),
                ));
            }
            if r.prev != prev {
                let before = expected - 1;
                return Err(fail(
                    EXIT_RECORD,
                    Some(before),
                    format!(
                        "record {before} ({prev_at}) was changed: its hash is {prev} but \
                         record {expected} ({at}) names {} as the hash of the record before it",
                        r.prev
                    ),
                ));
            }
            prev = line_hash(&line.bytes);
            prev_at = at.to_string();
            if let Some(slot) = wanted.get_mut(&r.seq) {
                *slot = Some(prev.clone());
            }
            expected += 1;
        }
    }
    let records = expected - 1;
    if checkpoints.is_empty() && records > 0 {
        return Err(fail(
            EXIT_CHECKPOINT,
            None,
            format!(
                "{}: no checkpoint: the deletion of the newest records cannot be ruled out \
                 (the master writes checkpoint.json when it starts and every \
                 --audit-checkpoint-interval)",
                dir.display()
            ),
        ));
    }
    for (name, c) in &checkpoints {
        if c.records > records {
            let first = records + 1;
            return Err(fail(
                EXIT_RECORD,
                Some(first),
                format!(
                    "record {first} is missing: {name} covers {} records, the log ends at \
                     record {records} (the newest records were removed)",
                    c.records
                ),
            ));
        }
        if c.records > 0 && wanted.get(&c.records).cloned().flatten().as_deref() != Some(&c.head) {
            return Err(fail(
                EXIT_RECORD,
                Some(c.records),
                format!(
                    "record {} was changed: its hash is not the head {} that {name} names",
                    c.records, c.head
                ),
            ));
        }
        c.verify_signature(ca_pem)
            .map_err(|e| fail(EXIT_CHECKPOINT, None, format!("{name}: {e}")))?;
    }
    Ok(Verified {
        records,
        segments: segs.len(),
        checkpoints: checkpoints
            .iter()
            .map(|(n, c)| (n.clone(), c.records))
            .collect(),
    })
}
