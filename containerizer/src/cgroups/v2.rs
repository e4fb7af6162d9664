//! cgroup v2 backend. HELPER-OWNED.
use std::path::Path;
use super::*;

#[derive(Debug, Clone)]
pub struct Base;
#[derive(Debug, Clone)]
pub struct TaskGroup;

impl Base {
    pub fn discover(_root: Option<&Path>) -> Result<Self, CgroupError> { todo!() }
    pub fn dir(&self) -> &Path { todo!() }
    pub fn create(&self, _name: &str, _limits: &CgroupLimits) -> Result<TaskGroup, CgroupError> { todo!() }
    pub fn open(&self, _name: &str) -> TaskGroup { todo!() }
    pub fn list(&self) -> Result<Vec<String>, CgroupError> { todo!() }
}
impl TaskGroup {
    pub fn placement(&self) -> Placement { todo!() }
    pub fn update(&self, _l: &CgroupLimits) -> Result<(), CgroupError> { todo!() }
    pub fn stats(&self) -> CgroupStats { todo!() }
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> { todo!() }
    pub fn kill(&self) -> Result<(), CgroupError> { todo!() }
    pub fn remove(&self) -> Result<(), CgroupError> { todo!() }
}
