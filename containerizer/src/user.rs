//! Resolving `--user NAME|UID[:GID]` against the passwd/group files of the host or of
//! the task's rootfs. HELPER-OWNED.

use crate::spec::Identity;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {0:?}: no such name in {1}")]
    UnknownUser(String, String),
    #[error("unknown group {0:?}: no such name in {1}")]
    UnknownGroup(String, String),
    #[error("invalid --user {0:?}: use NAME, UID or UID:GID")]
    Invalid(String),
}

/// Resolves a user spec; `root` is `/` or the task's rootfs.
pub fn resolve(spec: &str, root: &std::path::Path) -> Result<Identity, UserError> {
    let _ = (spec, root);
    todo!("helper")
}
