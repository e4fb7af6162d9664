//! cpu, memory, pids and io through the task's cgroups.

use super::{Isolator, IsolatorError, Prepared};
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

    fn prepare(&self, id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
        let cgroup = self
            .root
            .create(id.as_str(), &limits(&config.resources))
            .map_err(failed)?;
        // The filesystem isolator, earlier in the pipeline, chose the task's devices.
        let allowed = crate::devices::allowlist(&spec.filesystem.devices);
        if let Err(e) = cgroup.allow_devices(&allowed) {
            let _ = cgroup.remove();
            return Err(failed(e));
        }
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
        // Every figure is the cgroups' but the disk, which the disk isolator measured.
        let disk_used_bytes = usage.disk_used_bytes;
        *usage = Usage {
            disk_used_bytes,
            ..self.root.open(id.as_str()).stats()
        };
    }

    fn cleanup(&self, id: &TaskId) -> Result<(), IsolatorError> {
        self.root.open(id.as_str()).remove().map_err(failed)
    }
}
