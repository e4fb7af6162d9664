//! The daemons' logging: to the journal with structured fields when systemd runs
//! them (`JOURNAL_STREAM` names their stderr), to stderr otherwise; the level is a
//! filter that can be replaced while running (on SIGHUP).
//!
//! In the journal every field of an event becomes a journal field of the same name
//! in capitals: `task_id = ...` is `TASK_ID=...`, which `journalctl -u cella-agent
//! TASK_ID=...` selects.

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Changes the level of the running daemon's logs.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Mutex<String>,
}

impl LogLevel {
    /// Puts `level` (an `EnvFilter` directive such as `info` or `info,cella_agent=debug`)
    /// in force: `Ok(Some(detail))` when it changed, `Ok(None)` when it was already in
    /// force, `Err` (naming the directive) when it is not valid.
    pub fn set(&self, level: &str) -> Result<Option<String>, String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == level {
            return Ok(None);
        }
        let filter = EnvFilter::try_new(level)
            .map_err(|e| format!("log level {level:?}: {e} (use e.g. \"info\" or \"debug\")"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("log level {level:?}: {e}"))?;
        let detail = format!(": {current} -> {level}");
        level.clone_into(&mut current);
        Ok(Some(detail))
    }
}

/// The level of the logger [`init`] installed.
static LEVEL: std::sync::OnceLock<LogLevel> = std::sync::OnceLock::new();

/// Puts `level` in force in the logger [`init`] installed (see [`LogLevel::set`]);
/// without one, nothing changes (`Ok(None)`).
pub fn set_level(level: &str) -> Result<Option<String>, String> {
    match LEVEL.get() {
        Some(l) => l.set(level),
        None => Ok(None),
    }
}

/// Checks a log level directive (for configuration files).
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?}: {e} (use e.g. \"info\" or \"debug\")"))
}

/// Whether stderr is the journal's stream (systemd sets `JOURNAL_STREAM` to its
/// device and inode).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// Installs the daemon's logger with `level` (the `CELLA_LOG` environment variable
/// wins when set); [`set_level`] changes the level later.
pub fn init(level: &str) {
    let level = std::env::var("CELLA_LOG").unwrap_or_else(|_| level.to_string());
    let (filter, level) = match EnvFilter::try_new(&level) {
        Ok(f) => (f, level),
        Err(e) => {
            eprintln!("log level {level:?} is not valid ({e}): logging at info");
            (EnvFilter::new("info"), "info".to_string())
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let identifier = std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_else(|| "cella".into());
    let journal = stderr_is_journal()
        .then(|| crate::journal::JournalLayer::new(&identifier).ok())
        .flatten();
    match journal {
        Some(journal) => registry.with(journal).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only on a terminal: log files get plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
    let _ = LEVEL.set(LogLevel {
        handle,
        current: std::sync::Mutex::new(level),
    });
}
