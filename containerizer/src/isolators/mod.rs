//! The isolator pipeline, modelled on Mesos' `Isolator`. Each isolator owns one
//! aspect of isolation; the containerizer runs `prepare` in order and `cleanup` in
//! reverse. Every step but `prepare` is optional.
//!
//! | step | here |
//! |---|---|
//! | `recover` | re-adopt tasks after a restart of the launcher |
//! | `prepare` | check the task's configuration and contribute to the [`ShimSpec`] |
//! | `isolate` | the task's pid is known (it is in its cgroups already) |
//! | `watch` | given the latest usage, name the limit the task hit, if any |
//! | `update` | change the limits of a running task |
//! | `usage` | add measured figures (`final_usage`: the last ones, after the task ended) |
//! | `cleanup` | undo everything; idempotent, unknown ids are fine |
//!
//! Only the disk isolator (a project quota) and the cgroups isolator create anything
//! in `prepare`, and they run last, so a configuration error is reported before
//! anything exists on the machine.
//! Placing the child into its cgroups (`isolate` in Mesos) needs no round trip to the
//! launcher: from the [`crate::cgroups::Placement`] the cgroups isolator prepared, the
//! shim's clone3 creates the child inside its cgroup (v2), or the child enters its
//! cgroups itself before anything else (v1).

mod cgroups;
mod disk;
mod filesystem;
mod mount_points;
mod namespaces;
mod posix;
mod security;

pub use cgroups::CgroupsIsolator;
pub use disk::{DiskIsolator, PROJECT_IDS, QuotaFs, disk_usage, project_of};
pub use filesystem::{FilesystemIsolator, HOST_SECRETS};
pub use namespaces::NamespacesIsolator;
pub use posix::PosixIsolator;
pub use security::{CapabilitiesIsolator, SeccompIsolator};

use crate::spec::ShimSpec;
use crate::task::{Resources, TaskConfig, TaskId};
use crate::usage::{Limitation, Usage};

/// How often a costly usage figure (the sandbox's disk) is measured at most.
pub const COSTLY_USAGE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Why an isolator refused or failed a task.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    /// The task's configuration is wrong; `field` names the option to fix.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The machine could not do what was asked (a cgroup could not be created…).
    #[error("{isolator}: {message}")]
    Failed {
        isolator: &'static str,
        message: String,
    },
}

impl IsolatorError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// One aspect of isolation.
/// What [`Isolator::prepare`] returns.
pub type Prepared = Result<(), IsolatorError>;

pub trait Isolator: Send + Sync {
    fn name(&self) -> &'static str;

    /// Re-adopts tasks that survived a restart of the launcher.
    fn recover(&self, _tasks: &[(TaskId, TaskConfig)]) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Checks `config` and fills in this isolator's part of `spec`.
    fn prepare(&self, id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared;

    /// The task runs as `pid` (in the launcher's pid namespace).
    fn isolate(&self, _id: &TaskId, _pid: i32) {}

    /// The limit the task has hit, judged from its latest usage.
    fn watch(&self, _id: &TaskId, _usage: &Usage) -> Option<Limitation> {
        None
    }

    fn update(&self, _id: &TaskId, _resources: &Resources) -> Result<(), IsolatorError> {
        Ok(())
    }

    fn usage(&self, _id: &TaskId, _usage: &mut Usage) {}

    /// The task's last sample, taken after it ended and before its cgroups go (its
    /// figures are final): every figure measured afresh, also those
    /// [`Isolator::usage`] reads only now and then or takes from an earlier measurement.
    fn final_usage(&self, id: &TaskId, usage: &mut Usage) {
        self.usage(id, usage);
    }

    /// Whether `usage` costs more than reading a few counters (a directory walk): the
    /// containerizer then measures it at most every [`COSTLY_USAGE_INTERVAL`] and
    /// carries the last figure over in between.
    fn usage_is_costly(&self) -> bool {
        false
    }

    fn cleanup(&self, _id: &TaskId) -> Result<(), IsolatorError> {
        Ok(())
    }
}
