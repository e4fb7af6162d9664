//! Audit log benchmark: what one task end costs the master (encode, hash, write,
//! fdatasync; alone, and when 20 end in one batch of commands), side by side with the
//! floor of the same disk (the same bytes written and fdatasynced by a plain loop)
//! and with the encoding and hashing alone; and how long a master takes to open logs
//! of 20,000 and 200,000 records in segments of the default size (the chain's head
//! and the newest task ends are read back from them), and the memory it then holds.
//!
//! Run: `cargo bench -p cella-master --bench audit` (release profile); the log is
//! written under `$CELLA_BENCH_DIR` (default: the system's temporary directory), which
//! should be on the disk the master's work directory is on.

use std::io::Write;
use std::time::{Duration, Instant};

use cella_master::audit::ends::RecentEnds;
use cella_master::audit::record::{GENESIS, line_hash};
use cella_master::audit::segment::segment_name;
use cella_master::audit::{AuditConfig, AuditLog, DEFAULT_ENDS_KEPT, Event, Record, TaskEnd};
use cella_proto::v1;

const APPENDS: usize = 500;
const OPENED: [usize; 2] = [20_000, 200_000];
const BATCH: usize = 20;

fn task_end(i: usize) -> TaskEnd {
    TaskEnd {
        task_id: format!("task-{i}"),
        update_uuid: format!("{i:032x}"),
        framework_id: "fw-0d6f3c1e-5a7b-4e8f-9c2d-1b3a5c7e9f00".into(),
        principal: "user:alice".into(),
        role: "batch".into(),
        command: vec!["python3".into(), "train.py".into(), "--epochs=3".into()],
        agent_id: "agent-7e1c2b3a-4d5e-6f70-8192-a3b4c5d6e7f8".into(),
        hostname: "node17.example".into(),
        ended_ns: 1_796_000_000_000_000_000,
        state: "FINISHED".into(),
        reason: "COMMAND_EXITED".into(),
        exit_code: Some(0),
        summary: Some(v1::TaskSummary {
            started_ns: 1_795_999_000_000_000_000,
            ended_ns: 1_796_000_000_000_000_000,
            cpu_user_ns: Some(123_456_789),
            cpu_system_ns: Some(23_456_789),
            mem_peak_bytes: Some(512 << 20),
            io_read_bytes: Some(1 << 20),
            io_write_bytes: Some(2 << 20),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

/// The memory `DEFAULT_ENDS_KEPT` remembered ends hold (task ids and update uuids of
/// 36 characters, as uuids are), in MiB: measured first, on fresh memory.
fn ends_memory() -> f64 {
    let before = rss_kib();
    let mut ends = RecentEnds::new(DEFAULT_ENDS_KEPT);
    for i in 0..DEFAULT_ENDS_KEPT {
        ends.push(&format!("{i:036}"), &format!("{:036}", i + 1));
    }
    let held = rss_kib().saturating_sub(before);
    std::hint::black_box(&ends);
    held as f64 / 1024.0
}

fn main() {
    let ends_mib = ends_memory();
    let base = std::env::var_os("CELLA_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("a temporary directory");
    let config = AuditConfig {
        dir: dir.path().join("audit"),
        segment_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(3600),
        signer: None,
        ends_kept: DEFAULT_ENDS_KEPT,
    };

    // 1. Through the audit log: encode, hash, write, fdatasync.
    let log = AuditLog::open(&config).expect("opening the log");
    let start = Instant::now();
    for i in 0..APPENDS {
        log.task_end(task_end(i)).expect("appending");
    }
    let audited = start.elapsed();

    // 1b. A batch of BATCH task ends per sync, as when many tasks end at once.
    let start = Instant::now();
    for i in APPENDS..2 * APPENDS {
        log.task_end_unsynced(task_end(i)).expect("appending");
        if i % BATCH == BATCH - 1 {
            log.sync().expect("syncing");
        }
    }
    log.sync().expect("syncing");
    let batched = start.elapsed();

    // 2. The disk's floor: the same lines, written and fdatasynced by a plain loop.
    let lines: Vec<String> = (0..APPENDS)
        .map(|i| {
            Record {
                seq: i as u64 + 1,
                prev: GENESIS.into(),
                time_ns: 0,
                event: Event::TaskEnd(Box::new(task_end(i))),
            }
            .encode()
                + "\n"
        })
        .collect();
    let mut raw = std::fs::File::create(dir.path().join("raw.jsonl")).expect("raw file");
    let start = Instant::now();
    for line in &lines {
        raw.write_all(line.as_bytes()).expect("write");
        raw.sync_data().expect("fdatasync");
    }
    let floor = start.elapsed();

    // 3. Encoding and hashing alone.
    let start = Instant::now();
    for i in 0..APPENDS {
        let r = Record {
            seq: i as u64 + 1,
            prev: GENESIS.into(),
            time_ns: 0,
            event: Event::TaskEnd(Box::new(task_end(i))),
        };
        std::hint::black_box(line_hash(r.encode().as_bytes()));
    }
    let cpu = start.elapsed();

    // 4. Opening logs of OPENED records (written without fsync: only reading counts),
    // in segments of the default size.
    let opens: Vec<String> = OPENED
        .iter()
        .map(|&n| open_log(&dir.path().join(format!("big-{n}")), n, &config))
        .collect();

    let line_bytes = lines.iter().map(String::len).sum::<usize>() / APPENDS;
    println!("audit log, {APPENDS} task ends of ~{line_bytes} bytes each:");
    println!(
        "  audit append (encode+hash+write+fdatasync)  {:8.1} µs/record  ratio {:.2}",
        per_op(audited, APPENDS),
        audited.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  audit append, one sync per {BATCH} records      {:8.1} µs/record  ratio {:.2}",
        per_op(batched, APPENDS),
        batched.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  plain write+fdatasync of the same lines     {:8.1} µs/record  ratio 1.00",
        per_op(floor, APPENDS)
    );
    println!(
        "  encode+hash only                            {:8.1} µs/record  ratio {:.3}",
        per_op(cpu, APPENDS),
        cpu.as_secs_f64() / floor.as_secs_f64()
    );
    for line in opens {
        println!("{line}");
    }
    println!("{DEFAULT_ENDS_KEPT} task ends remembered: {ends_mib:.1} MiB");
}

/// The resident memory of this process, in KiB (`VmRSS`); 0 where the kernel gives
/// none.
fn rss_kib() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.vmrss)
        .unwrap_or(0)
}

/// Writes a log of `records` task ends in `dir`, opens it, and says how long that
/// took and how much memory the opened log holds.
fn open_log(dir: &std::path::Path, records: usize, config: &AuditConfig) -> String {
    std::fs::create_dir_all(dir).expect("the log's directory");
    let mut segment = 1;
    let mut f = std::fs::File::create(dir.join(segment_name(segment))).expect("segment");
    let mut size = 0;
    let mut bytes = 0;
    let mut prev = GENESIS.to_string();
    for seq in 1..=records {
        let line = Record {
            seq: seq as u64,
            prev: prev.clone(),
            time_ns: seq as u64,
            event: Event::TaskEnd(Box::new(task_end(seq))),
        }
        .encode();
        prev = line_hash(line.as_bytes());
        if size > 0 && size + line.len() as u64 + 1 > config.segment_bytes {
            segment += 1;
            size = 0;
            f = std::fs::File::create(dir.join(segment_name(segment))).expect("segment");
        }
        size += line.len() as u64 + 1;
        bytes += line.len() + 1;
        writeln!(f, "{line}").expect("writing");
    }
    drop(f);
    let rss = rss_kib();
    let start = Instant::now();
    let opened = AuditLog::open(&AuditConfig {
        dir: dir.to_path_buf(),
        ..config.clone()
    })
    .expect("opening the big log");
    let open_time = start.elapsed();
    let held = rss_kib().saturating_sub(rss);
    assert_eq!(opened.head().0, records as u64);
    format!(
        "open a log of {records} records ({:.1} MiB, {segment} segments): {:.0} ms \
         ({:.1} µs/record of the log), memory held after open +{:.1} MiB",
        bytes as f64 / f64::from(1 << 20),
        open_time.as_secs_f64() * 1e3,
        per_op(open_time, records),
        held as f64 / 1024.0
    )
}
