//! The segment files of the log (`segment-NNNNNNNN.jsonl`, numbered from 1) and the
//! appending writer: records are written, then made durable by [`Writer::sync`]
//! (one `fdatasync` for all written since the last); a segment past the size limit
//! is synced and closed, and the next record starts a new one. Opening the log
//! reads it from its end, newest record first, only as far as the caller needs.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cella_proto::atomic_file::sync_dir;

use super::record::{GENESIS, Glance, Record, line_hash};

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

/// How much of a segment is read at a time when reading it from its end.
const BACK_CHUNK: u64 = 64 << 10;

/// The lines of a segment file, newest first, read in chunks from its end, until
/// `each` breaks. Linear in what it reads, however long a line is: each chunk is
/// searched for newlines once, and a line's pieces are joined once, when its start
/// is found.
pub fn each_line_back(
    path: &Path,
    mut each: impl FnMut(Line) -> ControlFlow<()>,
) -> io::Result<ControlFlow<()>> {
    let mut file = File::open(path)?;
    let mut start = file.metadata()?.len();
    if start == 0 {
        return Ok(ControlFlow::Continue(()));
    }
    // The pieces of the newest line not yet passed on, newest piece first.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    // Whether that line ends in a newline (only the file's last line may not: a
    // torn write); `None` before the first chunk is read.
    let mut complete = None;
    while start > 0 {
        let n = BACK_CHUNK.min(start);
        start -= n;
        let mut chunk = vec![0; usize::try_from(n).unwrap_or(usize::MAX)];
        file.seek(io::SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if complete.is_none() {
            complete = Some(chunk.last() == Some(&b'\n'));
            if complete == Some(true) {
                chunk.pop();
            }
        }
        while let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let mut bytes = chunk.split_off(i + 1);
            chunk.pop();
            bytes.extend(pieces.drain(..).rev().flatten());
            let line = Line {
                bytes,
                complete: complete == Some(true),
                offset: start + i as u64 + 1,
            };
            complete = Some(true);
            if each(line).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        pieces.push(chunk);
    }
    Ok(each(Line {
        bytes: pieces.into_iter().rev().flatten().collect(),
        complete: complete == Some(true),
        offset: 0,
    }))
}

/// The line of record `seq` (and how many lines were read to find it): looked for
/// in the segment that can hold it, found by the first record of each segment,
/// newest segment first; a segment whose first record does not decode is searched
/// too, on the way.
pub fn find_record(dir: &Path, seq: u64) -> io::Result<(Option<Vec<u8>>, u64)> {
    let mut read = 0;
    for (_, path) in segments(dir)?.iter().rev() {
        let mut first = Vec::new();
        BufReader::new(File::open(path)?).read_until(b'\n', &mut first)?;
        read += 1;
        // A first line that does not decode (changed, or torn) does not say where the
        // segment starts: the record may still be in it, so it is searched, and the
        // search goes on in the older segments if it is not there.
        let starts_after = serde_json::from_slice::<Glance>(first.trim_ascii_end())
            .ok()
            .map(|first| first.seq > seq);
        if starts_after == Some(true) {
            continue;
        }
        for line in read_lines(path)? {
            read += 1;
            if serde_json::from_slice::<Glance>(&line.bytes).is_ok_and(|r| r.seq == seq) {
                return Ok((Some(line.bytes), read));
            }
        }
        if starts_after == Some(false) {
            break;
        }
    }
    Ok((None, read))
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
    /// Records written since the last sync were cut off again by a sync or a write
    /// that failed inside [`Writer::append`]: the next [`Writer::sync`] fails, so
    /// that its caller treats them as never written.
    lost_unsynced: bool,
}

impl Writer {
    /// Opens the log in `dir` (created if missing) and finds its head (its newest
    /// record). A torn last line (a write the master did not finish, so nothing it
    /// stands for was acknowledged) is cut off. `each` sees records newest first,
    /// with their line, the head first, until it breaks: only what it asks for is
    /// read.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut each: impl FnMut(&Glance, &[u8]) -> ControlFlow<()>,
    ) -> io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        // Records name users, commands and hosts: the master's alone, like its
        // registry.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let segments = segments(dir)?;
        if let Some((_, path)) = segments.last() {
            cut_torn_end(path)?;
        }
        let mut head = None;
        for (_, path) in segments.iter().rev() {
            let walked = each_line_back(path, |line| {
                match serde_json::from_slice::<Glance>(&line.bytes) {
                    Ok(r) if line.complete => {
                        head.get_or_insert_with(|| Head {
                            seq: r.seq,
                            hash: line_hash(&line.bytes),
                        });
                        each(&r, &line.bytes)
                    }
                    _ => {
                        // Kept as it is: `cella audit verify` names it.
                        tracing::error!(
                            segment = %path.display(),
                            offset = line.offset,
                            "the audit log holds a record that cannot be read: \
                             run `cella audit verify`"
                        );
                        ControlFlow::Continue(())
                    }
                }
            })?;
            if walked.is_break() {
                break;
            }
        }
        let head = head.unwrap_or_default();
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
            lost_unsynced: false,
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
        if std::mem::take(&mut self.lost_unsynced) {
            return Err(io::Error::other(
                "writing the audit log failed since the last sync: the records written \
                 since were cut off",
            ));
        }
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
            if let Err(e) = self.sync() {
                self.lost_unsynced = true;
                return Err(e);
            }
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
            // Whatever part of the line was written is cut off again; the file stays
            // open, so the records written before it are synced (or cut off) by the
            // next sync. Should the cut fail too, everything since the last sync is
            // treated as lost (and the torn line is cut when the log is opened next).
            if file.set_len(self.size).is_err() {
                let _ = file.set_len(self.synced_size);
                self.file = None;
                self.size = self.synced_size;
                self.head = self.synced_head.clone();
                self.lost_unsynced = true;
            }
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

/// Cuts off the last line of the newest segment when it was not completely
/// written (no newline, or not a record).
fn cut_torn_end(path: &Path) -> io::Result<()> {
    let mut torn = None;
    // Only the last line is read: the walk stops there.
    let _: ControlFlow<()> = each_line_back(path, |line| {
        if !line.complete || serde_json::from_slice::<Record>(&line.bytes).is_err() {
            torn = Some(line.offset);
        }
        ControlFlow::Break(())
    })?;
    if let Some(offset) = torn {
        tracing::warn!(
            segment = %path.display(),
            offset,
            "the audit log's last record was not completely written \
             (the master stopped while writing it): removed"
        );
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(offset)?;
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `each_line_back` passes on, newest first.
    fn lines_back(path: &Path) -> Vec<(Vec<u8>, bool, u64)> {
        let mut lines = Vec::new();
        let _: ControlFlow<()> = each_line_back(path, |l| {
            lines.push((l.bytes, l.complete, l.offset));
            ControlFlow::Continue(())
        })
        .unwrap();
        lines
    }

    #[test]
    fn a_record_is_found_in_a_segment_whose_first_line_does_not_decode() {
        let dir = tempfile::tempdir().unwrap();
        let line = |seq: u64| format!(r#"{{"seq":{seq},"kind":"denied"}}"#);
        let write = |n: u64, lines: &[String]| {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(dir.path().join(segment_name(n)), text).unwrap();
        };
        write(1, &[line(1), line(2)]);
        // Segment 2 holds records 3 and 4; its first line was changed.
        write(2, &["{not json".to_string(), line(4)]);
        write(3, &[line(5)]);
        let found = |seq| {
            find_record(dir.path(), seq)
                .unwrap()
                .0
                .map(String::from_utf8)
        };
        assert_eq!(found(4), Some(Ok(line(4))));
        assert_eq!(
            found(2),
            Some(Ok(line(2))),
            "searched on past the changed segment"
        );
        assert_eq!(found(5), Some(Ok(line(5))));
        assert_eq!(found(3), None);
    }

    #[test]
    fn lines_read_from_the_end_are_the_lines_read_from_the_start_reversed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        // Lines shorter and longer than a chunk, an empty one, and a torn end.
        let mut text = Vec::new();
        for (byte, len) in (b'a'..).zip([10, 70_000, 0, 3, 150_000, 65_535]) {
            text.extend(std::iter::repeat_n(byte, len));
            text.push(b'\n');
        }
        text.extend(b"torn");
        for end in [text.len() - 4, text.len()] {
            std::fs::write(&path, &text[..end]).unwrap();
            let mut forward: Vec<_> = read_lines(&path)
                .unwrap()
                .into_iter()
                .map(|l| (l.bytes, l.complete, l.offset))
                .collect();
            forward.reverse();
            assert_eq!(lines_back(&path), forward);
        }
        std::fs::write(&path, b"").unwrap();
        assert!(lines_back(&path).is_empty());
        // Stops where `each` breaks.
        std::fs::write(&path, b"1\n2\n3\n").unwrap();
        let mut seen = Vec::new();
        let flow = each_line_back(&path, |l| {
            seen.push(l.bytes);
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(flow.is_break());
        assert_eq!(seen, [b"3".to_vec(), b"2".to_vec()]);
    }
}
