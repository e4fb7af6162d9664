//! cpu, memory, pids and io through the task's cgroups.

use super::{Isolator, IsolatorError};
use crate::cgroups::{CgroupLimits, CgroupRoot};
use crate::spec::ShimSpec;
use crate::task::{Resources, TaskConfig, TaskId};
use crate::usage::{Limitation, Usage};

pub struct CgroupsIsolator {
    root: CgroupRoot,
}

impl CgroupsIsolator {
    pub fn new(root: CgroupRoot) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }
}

fn limits(r: &Resources) -> CgroupLimits {
    CgroupLimits {
        cpus: r.cpus,
        memory_bytes: r.memory_bytes,
        pids: r.pids,
    }
}

fn failed(e: impl std::fmt::Display) -> IsolatorError {
    IsolatorError::Failed {
        isolator: "cgroups",
        message: e.to_string(),
    }
}

impl Isolator for CgroupsIsolator {
    fn name(&self) -> &'static str {
        "cgroups"
    }

    fn prepare(
        &self,
        id: &TaskId,
        config: &TaskConfig,
        spec: &mut ShimSpec,
    ) -> Result<(), IsolatorError> {
        let cgroup = self
            .root
            .create(id.as_str(), &limits(&config.resources))
            .map_err(failed)?;
        spec.cgroup = cgroup.placement();
        Ok(())
    }

    fn watch(&self, _id: &TaskId, usage: &Usage) -> Option<Limitation> {
        usage
            .oom_kills
            .filter(|n| *n > 0)
            .map(|_| Limitation::MemoryLimit)
    }

    fn update(&self, id: &TaskId, resources: &Resources) -> Result<(), IsolatorError> {
        self.root
            .open(id.as_str())
            .update(&limits(resources))
            .map_err(failed)
    }

    fn usage(&self, id: &TaskId, usage: &mut Usage) {
        let s = self.root.open(id.as_str()).stats();
        usage.cpu_user_ns = s.cpu_user_ns;
        usage.cpu_system_ns = s.cpu_system_ns;
        usage.cpu_throttled_ns = s.cpu_throttled_ns;
        usage.cpu_nr_throttled = s.cpu_nr_throttled;
        usage.mem_current_bytes = s.mem_current_bytes;
        usage.mem_peak_bytes = s.mem_peak_bytes;
        usage.mem_anon_bytes = s.mem_anon_bytes;
        usage.mem_file_bytes = s.mem_file_bytes;
        usage.mem_kernel_bytes = s.mem_kernel_bytes;
        usage.mem_swap_bytes = s.mem_swap_bytes;
        usage.oom_kills = s.oom_kills;
        usage.pids_current = s.pids_current;
        usage.pids_peak = s.pids_peak;
        usage.pids_limit_hits = s.pids_limit_hits;
        usage.io_read_bytes = s.io_read_bytes;
        usage.io_write_bytes = s.io_write_bytes;
    }

    fn cleanup(&self, id: &TaskId) -> Result<(), IsolatorError> {
        self.root.open(id.as_str()).remove().map_err(failed)
    }
}
