//! The segment files of the log (`segment-NNNNNNNN.jsonl`, numbered from 1) and the
//! appending writer: records are written, then made durable by [`Writer::sync`]
//! (one `fdatasync` for all written since the last); a segment past the size limit
//! is synced and closed, and the next record starts a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::record::{GENESIS, Record, line_hash};

const PREFIX: &str = "segment-";
const SUFFIX: &str = ".jsonl";

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("{PREFIX}{n:08}{SUFFIX}")
}

/// The segments in `dir`, in order.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((n, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// One line of a segment as read: its bytes (no newline) and whether it ended with
/// a newline (the last line of a torn write does not).
pub struct Line {
    pub bytes: Vec<u8>,
    pub complete: bool,
    /// Where the line starts in its file.
    pub offset: u64,
}

/// Every line of a segment file.
pub fn read_lines(path: &Path) -> io::Result<Vec<Line>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut lines = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut bytes = Vec::new();
        let n = reader.read_until(b'\n', &mut bytes)?;
        if n == 0 {
            return Ok(lines);
        }
        let complete = bytes.last() == Some(&b'\n');
        if complete {
            bytes.pop();
        }
        lines.push(Line {
            bytes,
            complete,
            offset,
        });
        offset += n as u64;
    }
}

/// Fsyncs a directory, so that a file created or renamed in it stays.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The end of the chain: the newest record's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            seq: 0,
            hash: GENESIS.into(),
        }
    }
}

/// Appends records to the newest segment.
pub struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    segment: u64,
    file: Option<File>,
    size: u64,
    pub head: Head,
    /// The size and head the last sync made durable (what a failed sync falls back
    /// to).
    synced_size: u64,
    pub synced_head: Head,
}

impl Writer {
    /// Opens the log in `dir` (created if missing) and finds its head. A torn last
    /// line (a write the master did not finish, so nothing it stands for was
    /// acknowledged) is cut off. `each` sees every record and its hash, oldest
    /// first.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut each: impl FnMut(&Record, &str),
    ) -> io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        // Records name users, commands and hosts: the master's alone, like its
        // registry.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let segments = segments(dir)?;
        let mut head = Head::default();
        for (i, (_, path)) in segments.iter().enumerate() {
            let last_segment = i + 1 == segments.len();
            let lines = read_lines(path)?;
            for (j, line) in lines.iter().enumerate() {
                let parsed = serde_json::from_slice::<Record>(&line.bytes);
                match parsed {
                    Ok(r) if line.complete => {
                        head = Head {
                            seq: r.seq,
                            hash: line_hash(&line.bytes),
                        };
                        each(&r, &head.hash);
                    }
                    _ if last_segment && j + 1 == lines.len() => {
                        tracing::warn!(
                            segment = %path.display(),
                            offset = line.offset,
                            "the audit log's last record was not completely written \
                             (the master stopped while writing it): removed"
                        );
                        let f = OpenOptions::new().write(true).open(path)?;
                        f.set_len(line.offset)?;
                        f.sync_all()?;
                    }
                    _ => {
                        // Kept as it is: `cella audit verify` names it.
                        tracing::error!(
                            segment = %path.display(),
                            offset = line.offset,
                            "the audit log holds a record that cannot be read: \
                             run `cella audit verify`"
                        );
                    }
                }
            }
        }
        let (segment, size) = match segments.last() {
            Some((n, path)) => (*n, std::fs::metadata(path)?.len()),
            None => (1, 0),
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            segment,
            file: None,
            size,
            synced_size: size,
            synced_head: head.clone(),
            head,
        })
    }

    /// The file name of the segment written now.
    pub fn segment_name(&self) -> String {
        segment_name(self.segment)
    }

    /// Whether records were written that are not synced yet.
    pub fn unsynced(&self) -> bool {
        self.head != self.synced_head
    }

    /// Makes every record written durable. On failure the records written since the
    /// last sync are cut off again and the head goes back: the caller must treat
    /// them as never written.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced() {
            return Ok(());
        }
        let result = match &self.file {
            Some(f) => f.sync_data(),
            None => Err(io::Error::other("the segment is not open")),
        };
        match result {
            Ok(()) => {
                self.synced_size = self.size;
                self.synced_head = self.head.clone();
                Ok(())
            }
            Err(e) => {
                if let Some(f) = &self.file {
                    let _ = f.set_len(self.synced_size);
                }
                self.file = None;
                self.size = self.synced_size;
                self.head = self.synced_head.clone();
                Err(e)
            }
        }
    }

    /// Writes `record` (its `seq` and `prev` are set here), not synced yet.
    pub fn append(&mut self, mut record: Record) -> io::Result<Head> {
        record.seq = self.head.seq + 1;
        record.prev.clone_from(&self.head.hash);
        let mut line = record.encode();
        let hash = line_hash(line.as_bytes());
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.segment_bytes {
            // The closed segment is complete on disk before the next one starts.
            self.sync()?;
            self.segment += 1;
            self.size = 0;
            self.synced_size = 0;
            self.file = None;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let path = self.dir.join(segment_name(self.segment));
                let created = !path.exists();
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)?;
                self.size = f.seek(io::SeekFrom::End(0))?;
                if !self.unsynced() {
                    self.synced_size = self.size;
                }
                if created {
                    sync_dir(&self.dir)?;
                }
                self.file.insert(f)
            }
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            // Whatever part of the line was written is cut off again (or, should
            // that fail too, when the log is opened next).
            let _ = file.set_len(self.size);
            self.file = None;
            return Err(e);
        }
        self.size += line.len() as u64;
        self.head = Head {
            seq: record.seq,
            hash,
        };
        Ok(self.head.clone())
    }
}
