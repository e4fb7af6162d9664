//! Reloading what an operator edits while a daemon runs (the ACL, the credentials, the
//! revocation list): when one of the watched files changes, checked every couple of
//! seconds, or at once when the process receives SIGHUP, which also re-reads the log
//! level of the daemon's configuration file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::tls::FileStamp;

/// How often watched files are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What set a reload off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed: each component re-reads its file if that one changed.
    FileChange,
    /// SIGHUP: every file is re-read, changed or not.
    Hangup,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Hangup => "SIGHUP",
        }
    }

    /// Whether files are re-read even if they look unchanged.
    pub fn forced(self) -> bool {
        self == Trigger::Hangup
    }
}

/// Calls `reload` whenever a file of `paths` changes (is created, replaced,
/// rewritten or removed) or SIGHUP arrives. Runs until its task is aborted. On a file
/// change each component compares its own file's stamp, so a call for another file's
/// change costs one `stat`.
pub async fn watch(paths: Vec<PathBuf>, every: Duration, mut reload: impl FnMut(Trigger) + Send) {
    let mut stamps: Vec<Option<FileStamp>> = paths.iter().map(|p| FileStamp::of(p)).collect();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}): reloading on file changes only");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now: Vec<Option<FileStamp>> = paths.iter().map(|p| FileStamp::of(p)).collect();
        let changed = now != stamps;
        stamps = now;
        if signalled {
            reload(Trigger::Hangup);
        } else if changed {
            reload(Trigger::FileChange);
        }
    }
}

/// A value read from a file that an operator edits, re-read when the file changes
/// ([`Watched::reload`]); a file that cannot be read keeps the previous value.
pub struct Watched<T> {
    path: PathBuf,
    read: fn(&Path) -> Result<T, String>,
    state: RwLock<(Arc<T>, Option<FileStamp>)>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("path", &self.path).finish()
    }
}

impl<T> Watched<T> {
    /// Reads `path` with `read` (whose errors should name the file).
    pub fn load(path: &Path, read: fn(&Path) -> Result<T, String>) -> Result<Watched<T>, String> {
        let stamp = FileStamp::of(path);
        let value = read(path)?;
        Ok(Watched {
            path: path.to_path_buf(),
            read,
            state: RwLock::new((Arc::new(value), stamp)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Re-reads the file if it changed (or always, with `force`): `Ok(true)` when a new
    /// value is in force; `Err` (an unreadable or invalid file) leaves the previous one.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let stamp = FileStamp::of(&self.path);
        let before = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1;
        if !force && stamp == before {
            return Ok(false);
        }
        let value = (self.read)(&self.path)?;
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(value), stamp);
        Ok(true)
    }
}

/// Logs what a reload of `what` did: a new version in force (with `detail`), nothing
/// (silent), or a file refused while the previous version stays.
pub fn log(why: Trigger, what: &str, result: Result<Option<String>, String>) {
    match result {
        Ok(Some(detail)) => tracing::info!(why = why.name(), "{what} reloaded{detail}"),
        Ok(None) => {}
        Err(e) => tracing::error!(
            why = why.name(),
            "{what} not reloaded, the previous one stays in force: {e}"
        ),
    }
}

/// Puts in force the `log_level` of a daemon's re-read configuration file: `file_level`
/// is what the file sets (`None`: `info`, the level of a daemon told none) or why the
/// file could not be read, which leaves the level as it is.
pub fn log_level(why: Trigger, file_level: Result<Option<String>, String>) {
    let result =
        file_level.and_then(|level| crate::logging::set_level(level.as_deref().unwrap_or("info")));
    log(why, "log level", result);
}

/// The outcome of a reload that says only whether something new is in force.
pub fn changed(result: Result<bool, String>) -> Result<Option<String>, String> {
    result.map(|new| new.then(String::new))
}

/// The outcome of a reload of the revocation list, with how many certificates the new
/// list revokes.
pub fn revocations(result: crate::tls::Result<Option<usize>>) -> Result<Option<String>, String> {
    result
        .map(|n| n.map(|n| format!(": {n} certificate(s) revoked")))
        .map_err(|e| e.to_string())
}
