//! The cluster's default limits for a task that names none.

use cella_proto::v1;

/// The cluster's defaults for a task's limits, applied by the master at ACCEPT, before
/// the task's resources are taken from the offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskDefaults {
    /// Disk of a task whose `resources.disk_bytes` is 0; 0: no default.
    pub disk_bytes: u64,
    /// Process limit of a task whose `pids_limit` is 0; 0: no default.
    pub pids_limit: u64,
}

impl TaskDefaults {
    /// Fills in the defaults where `task` names nothing; true if its disk was
    /// defaulted (a refusal for lack of disk then says where the figure came from).
    pub fn apply(&self, task: &mut v1::TaskInfo) -> bool {
        if self.pids_limit > 0 && task.pids_limit == 0 {
            task.pids_limit = self.pids_limit;
        }
        if self.disk_bytes == 0 {
            return false;
        }
        let resources = task.resources.get_or_insert_with(Default::default);
        let defaulted = resources.disk_bytes == 0;
        if defaulted {
            resources.disk_bytes = self.disk_bytes;
        }
        defaulted
    }
}
