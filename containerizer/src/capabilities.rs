//! Capabilities: Docker's default set (14), `--cap-add` / `--cap-drop` (with `ALL`),
//! and applying a mask in the task before exec. HELPER-OWNED.

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("unknown capability {0:?} (use names like NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Unknown(String),
    #[error("setting capabilities failed: {0}")]
    Apply(String),
}

/// Docker's default capability set as a mask.
pub fn default_mask() -> u64 {
    todo!("helper")
}

/// default − drop + add (names case-insensitive, with or without `CAP_`; `ALL`).
pub fn resolve(add: &[String], drop: &[String]) -> Result<u64, CapError> {
    let _ = (add, drop);
    todo!("helper")
}

/// In the task, before exec: bounding set = mask; permitted/effective/inheritable =
/// mask for root (a non-root uid loses them at setuid, as with Docker); ambient cleared.
pub fn apply(mask: u64) -> Result<(), CapError> {
    let _ = mask;
    todo!("helper")
}
