//! cpu, memory, pids and io through the task's cgroups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Isolator, IsolatorError, Prepared};
use crate::cgroups::{CgroupLimits, CgroupRoot, TaskSampler};
use crate::spec::ShimSpec;
use crate::task::{Resources, TaskConfig, TaskId};
use crate::usage::{Limitation, Usage};

pub struct CgroupsIsolator {
    root: CgroupRoot,
    /// The usage sampler of each task from its launch (or recovery) to its cleanup;
    /// it holds the task's cgroup files open.
    samplers: Mutex<HashMap<TaskId, Arc<Mutex<TaskSampler>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CgroupsIsolator {
    pub fn new(root: CgroupRoot) -> Self {
        Self {
            root,
            samplers: Mutex::default(),
        }
    }

    fn start_sampling(&self, id: &TaskId) {
        let sampler = TaskSampler::new(self.root.open(id.as_str()));
        lock(&self.samplers).insert(id.clone(), Arc::new(Mutex::new(sampler)));
    }

    /// The cgroups' figures of task `id`, and the disk figure of `usage`, which the
    /// disk isolator measured.
    fn sample(&self, id: &TaskId, usage: &mut Usage, every: bool) {
        let sampler = lock(&self.samplers).get(id).cloned();
        let figures = match sampler {
            Some(sampler) => lock(&sampler).sample(every),
            // Not launched or recovered by this process: read once, by path.
            None => self.root.open(id.as_str()).stats(),
        };
        let disk_used_bytes = usage.disk_used_bytes;
        *usage = Usage {
            disk_used_bytes,
            ..figures
        };
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
        self.start_sampling(id);
        Ok(())
    }

    fn recover(&self, tasks: &[(TaskId, TaskConfig)]) -> Result<(), IsolatorError> {
        for (id, _) in tasks {
            self.start_sampling(id);
        }
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
        self.sample(id, usage, false);
    }

    fn final_usage(&self, id: &TaskId, usage: &mut Usage) {
        self.sample(id, usage, true);
    }

    fn cleanup(&self, id: &TaskId) -> Result<(), IsolatorError> {
        // The task's files are closed before its cgroup goes.
        lock(&self.samplers).remove(id);
        self.root.open(id.as_str()).remove().map_err(failed)
    }
}
