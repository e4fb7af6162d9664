//! The task's identity (`--user`), rlimits and environment.

use std::path::Path;

use cella_proto::validate::is_env_pair;

use super::{Isolator, IsolatorError, Prepared};
use crate::spec::ShimSpec;
use crate::task::{TaskConfig, TaskId};

/// The PATH a task gets when its environment names none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct PosixIsolator;

impl Isolator for PosixIsolator {
    fn name(&self) -> &'static str {
        "posix"
    }

    fn prepare(&self, _id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
        if let Some(user) = &config.user {
            let id = match &config.image {
                Some(image) => crate::user::resolve_in_layers(user, &image.layers),
                None => {
                    crate::user::resolve(user, config.rootfs.as_deref().unwrap_or(Path::new("/")))
                }
            }
            .map_err(|e| IsolatorError::invalid("--user", e.to_string()))?;
            spec.identity = Some(id);
        }
        for kv in &config.env {
            if !is_env_pair(kv) {
                return Err(IsolatorError::invalid(
                    "--env",
                    format!("{kv:?} is not KEY=VALUE"),
                ));
            }
        }
        spec.env = config.env.clone();
        if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
            spec.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        spec.rlimits = config.rlimits.clone();
        Ok(())
    }
}
