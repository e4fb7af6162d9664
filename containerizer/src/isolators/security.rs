//! Capabilities and seccomp. The default seccomp program was compiled when Cella
//! was built; only a custom profile file is compiled, once, at prepare.

use super::{Isolator, IsolatorError, Prepared};
use crate::spec::{SeccompProgram, ShimSpec};
use crate::task::{SeccompChoice, TaskConfig, TaskId};

pub struct CapabilitiesIsolator;

impl Isolator for CapabilitiesIsolator {
    fn name(&self) -> &'static str {
        "capabilities"
    }

    fn prepare(&self, _id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
        spec.capabilities = crate::capabilities::resolve(&config.cap_add, &config.cap_drop)
            .map_err(|e| IsolatorError::invalid("--cap-add/--cap-drop", e.to_string()))?;
        Ok(())
    }
}

pub struct SeccompIsolator;

impl SeccompIsolator {
    pub fn new() -> Self {
        Self
    }
}

impl Default for SeccompIsolator {
    fn default() -> Self {
        Self::new()
    }
}

impl Isolator for SeccompIsolator {
    fn name(&self) -> &'static str {
        "seccomp"
    }

    fn prepare(&self, _id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
        spec.seccomp = match &config.seccomp {
            SeccompChoice::Default => Some(SeccompProgram::Default),
            SeccompChoice::Unconfined => None,
            SeccompChoice::Profile(path) => Some(SeccompProgram::Custom(
                crate::seccomp::load_profile(path)
                    .map_err(|e| IsolatorError::invalid("--seccomp", e.to_string()))?,
            )),
        };
        Ok(())
    }
}
