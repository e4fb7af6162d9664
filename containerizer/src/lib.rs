//! Cella's containerizer: isolates one task with cgroups, namespaces, a filesystem
//! view, capabilities, seccomp and rlimits, and measures what it uses.
//!
//! The launcher side ([`Containerizer`]) runs in the caller (`cella exec`, the agent):
//! it prepares the isolators, writes a [`spec::ShimSpec`] into the task's run
//! directory and starts `cella-shim`, a small single-threaded process that becomes the
//! task's parent, sets the isolation up in the child and records the exit status.

pub mod capabilities;
pub mod cgroups;
pub mod containerizer;
pub mod devices;
pub mod events;
pub mod isolators;
pub mod paths;
mod proc_info;
pub mod safe_open;
mod sealed_exe;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod start_failure;
mod sys;
pub mod task;
#[cfg(test)]
mod test_support;
pub mod units;
pub mod usage;
pub mod user;

pub use containerizer::{
    Containerizer, ContainerizerConfig, LaunchError, Recovered, Running, Termination,
};
pub use start_failure::StartFailure;
pub use task::{ImageRootfs, NetMode, SeccompChoice, TaskConfig, TaskId, Volume};
pub use usage::{Limitation, Usage};
