//! pid, mount, uts and ipc namespaces always (the shim clones with them); the
//! network namespace per task; the hostname.

use cella_proto::validate::is_valid_hostname;

use super::{Isolator, IsolatorError, Prepared};
use crate::spec::ShimSpec;
use crate::task::{TaskConfig, TaskId};

pub struct NamespacesIsolator;

impl Isolator for NamespacesIsolator {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    fn prepare(&self, _id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
        if let Some(name) = &config.hostname {
            if !is_valid_hostname(name) {
                return Err(IsolatorError::invalid(
                    "--hostname",
                    format!(
                        "{name:?} is not a valid hostname (letters, digits, '-' and '.', at most 64 characters)"
                    ),
                ));
            }
        }
        spec.hostname = config.hostname.clone();
        spec.net = config.net;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames() {
        assert!(super::is_valid_hostname("task-1.example"));
        for bad in ["", "-a", "a-", "a..b", "a_b", &"x".repeat(65)] {
            assert!(!super::is_valid_hostname(bad), "{bad:?}");
        }
    }
}
