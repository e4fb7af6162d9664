//! The agent's own say over what it does, whatever the master sends:
//!
//! * [`tasks`]: the local allowlist a task must fit (who it runs as, which host
//!   directories it may mount, which root filesystems it may use), so that a master
//!   that is compromised, or permissive, cannot make this node go past it;
//! * [`access`]: who may read what through the agent's HTTP API (sandboxes,
//!   containers, metrics), by the ACL of the agent's own `--acl` file or else the one
//!   the master sends.

pub mod access;
pub mod tasks;

pub use access::Access;
pub use tasks::{TaskPolicy, VolumeAllow};
