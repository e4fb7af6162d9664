//! Detecting how cgroups are mounted. HELPER-OWNED.
use super::CgroupError;

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Only cgroup2 with the controllers (v2).
    Unified,
    /// v1 controllers plus a cgroup2 mount without them: limits go through v1.
    Hybrid,
    /// Only v1.
    Legacy,
}

pub fn detect_mode() -> Result<Mode, CgroupError> {
    todo!("helper")
}

/// Mode from the text of a mountinfo file (unit-testable).
pub fn parse_mode(mountinfo: &str) -> Option<Mode> {
    let _ = mountinfo;
    todo!("helper")
}
