//! `cella audit`: checks, exports and sums up the master's audit log (see
//! docs/audit.md). It reads the log's files, so it runs on the master's node as a
//! user who may read the master's audit directory.

use std::path::PathBuf;

use cella_master::audit::report::{self, GroupBy, Period};
use cella_master::audit::verify::{self, EXIT_UNREADABLE};
use clap::{Args, Subcommand, ValueEnum};

/// The audit directory of a master with the default work directory.
const DEFAULT_DIR: &str = "/var/lib/cella/master/audit";

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Args, Debug)]
struct Dir {
    /// The master's audit directory (its --audit-dir).
    #[arg(
        long = "dir",
        value_name = "DIR",
        env = "CELLA_MASTER_AUDIT_DIR",
        default_value = DEFAULT_DIR
    )]
    dir: PathBuf,
}

#[derive(Args, Debug)]
struct PeriodArgs {
    /// Only records written at or after this: RFC 3339, a date (UTC), seconds since
    /// the epoch, or a duration ago (24h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only records written before this (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Every record, as its line in the log.
    Jsonl,
    /// One row per finished task.
    Csv,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum By {
    Role,
    Framework,
    /// The principal that registered the task's framework.
    User,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole chain and every checkpoint. Exit codes: 0 verified, 1 a record
    /// does not verify (changed, missing, cut off: the first is named), 2 the log or
    /// the CA cannot be read, 3 a checkpoint is missing or its signature or
    /// certificate does not verify.
    Verify {
        /// The master's audit directory.
        #[arg(
            value_name = "PATH",
            env = "CELLA_MASTER_AUDIT_DIR",
            default_value = DEFAULT_DIR
        )]
        path: PathBuf,
        /// The cluster CA the master's certificate must chain to.
        #[arg(long, value_name = "FILE", default_value = "/etc/cella/tls/ca.pem")]
        ca: PathBuf,
    },
    /// Print the records of a period, for spreadsheets and billing.
    Export {
        #[command(flatten)]
        dir: Dir,
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
    },
    /// Totals per role, framework or user of the tasks that ended in a period:
    /// CPU-seconds, GiB-hours of memory (requested and peak × wall time), I/O bytes.
    Summary {
        #[command(flatten)]
        dir: Dir,
        #[arg(long, value_enum)]
        by: By,
        #[command(flatten)]
        period: PeriodArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: AuditArgs) -> i32 {
    let result = match args.command {
        AuditCommand::Verify { path, ca } => return verify_log(&path, &ca),
        AuditCommand::Export {
            dir,
            period,
            format,
        } => export(&dir, &period, format),
        AuditCommand::Summary {
            dir,
            by,
            period,
            json,
        } => summary(&dir, by, &period, json),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella audit: {e}");
            1
        }
    }
}

fn verify_log(path: &std::path::Path, ca: &std::path::Path) -> i32 {
    let ca_pem = match std::fs::read(ca) {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!(
                "cella audit verify: {}: {e} (give the cluster CA with --ca)",
                ca.display()
            );
            return EXIT_UNREADABLE;
        }
    };
    match verify::verify(path, &ca_pem) {
        Ok(v) => {
            let newest = v.checkpoints.iter().map(|c| c.1).max().unwrap_or(0);
            println!(
                "verified: {} records in {} segments; the checkpoint covers {newest}, \
                 signed by a master certificate of {}",
                v.records,
                v.segments,
                ca.display()
            );
            0
        }
        Err(f) => {
            eprintln!("cella audit verify: {}: {}", path.display(), f.message);
            f.code
        }
    }
}

fn period(p: &PeriodArgs) -> Result<Period, String> {
    let now = cella_proto::time::now_ns();
    let parse = |t: &Option<String>| t.as_deref().map(|s| report::parse_time(s, now)).transpose();
    Ok(Period {
        since_ns: parse(&p.since).map_err(|e| format!("--since: {e}"))?,
        until_ns: parse(&p.until).map_err(|e| format!("--until: {e}"))?,
    })
}

fn export(dir: &Dir, p: &PeriodArgs, format: Format) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    report::export(
        &dir.dir,
        period(p)?,
        matches!(format, Format::Csv),
        &mut out,
    )?;
    Ok(())
}

fn summary(dir: &Dir, by: By, p: &PeriodArgs, json: bool) -> Result<(), String> {
    let by = match by {
        By::Role => GroupBy::Role,
        By::Framework => GroupBy::Framework,
        By::User => GroupBy::User,
    };
    let groups = report::summary(&dir.dir, period(p)?, by)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&groups).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "GROUP", "TASKS", "CPU-SECONDS", "MEM-REQ-GIBH", "MEM-PEAK-GIBH", "IO-READ", "IO-WRITE"
    );
    for (name, t) in &groups {
        println!(
            "{:<24} {:>7} {:>14.3} {:>14.6} {:>14.6} {:>14} {:>14}",
            if name.is_empty() { "-" } else { name },
            t.tasks,
            t.cpu_seconds,
            t.mem_requested_gib_hours,
            t.mem_peak_gib_hours,
            t.io_read_bytes,
            t.io_write_bytes
        );
    }
    Ok(())
}
