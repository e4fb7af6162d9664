//! What the task sees of the filesystem: the host's tree read-only, or a rootfs;
//! its sandbox and volumes writable as asked; a private /tmp.

use std::path::{Path, PathBuf};

use super::{Isolator, IsolatorError};
use crate::spec::{BindMount, FilesystemSpec, ShimSpec};
use crate::task::{TaskConfig, TaskId};

/// Where the sandbox appears inside a rootfs when no working directory is given.
pub const SANDBOX_IN_ROOTFS: &str = "/mnt/sandbox";

pub struct FilesystemIsolator;

fn existing_dir(field: &'static str, path: &Path, what: &str) -> Result<PathBuf, IsolatorError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| IsolatorError::invalid(field, format!("{what} {}: {e}", path.display())))?;
    if !canonical.is_dir() {
        return Err(IsolatorError::invalid(
            field,
            format!("{what} {} is not a directory", path.display()),
        ));
    }
    Ok(canonical)
}

impl Isolator for FilesystemIsolator {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn prepare(
        &self,
        _id: &TaskId,
        config: &TaskConfig,
        spec: &mut ShimSpec,
    ) -> Result<(), IsolatorError> {
        let rootfs = match &config.rootfs {
            Some(dir) => Some(existing_dir("--rootfs", dir, "root filesystem")?),
            None => None,
        };
        let sandbox = existing_dir("--workdir", &config.sandbox, "working directory")?;
        if rootfs.is_none() && sandbox == Path::new("/") {
            return Err(IsolatorError::invalid(
                "--workdir",
                "the working directory is writable by the task, and / would make the whole host writable; \
                 run from (or pass --workdir) a directory of its own",
            ));
        }
        let sandbox_target = match (&rootfs, &config.workdir_in_task) {
            (None, _) => sandbox.clone(),
            (Some(_), _) => PathBuf::from(SANDBOX_IN_ROOTFS),
        };
        let mut binds = vec![BindMount {
            source: sandbox,
            target: sandbox_target.clone(),
            read_only: false,
        }];
        for v in &config.volumes {
            let source = v.host.canonicalize().map_err(|e| {
                IsolatorError::invalid("--volume", format!("host path {}: {e}", v.host.display()))
            })?;
            if !v.task.is_absolute()
                || v.task
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(IsolatorError::invalid(
                    "--volume",
                    format!(
                        "task path {} must be absolute, without '..'",
                        v.task.display()
                    ),
                ));
            }
            if rootfs.is_none() && !v.task.exists() {
                return Err(IsolatorError::invalid(
                    "--volume",
                    format!(
                        "task path {} does not exist: without --rootfs the task sees the host's tree \
                         read-only, so a volume must be mounted on an existing path",
                        v.task.display()
                    ),
                ));
            }
            binds.push(BindMount {
                source,
                target: v.task.clone(),
                read_only: v.read_only,
            });
        }
        spec.cwd = config.workdir_in_task.clone().unwrap_or(sandbox_target);
        if !spec.cwd.is_absolute() {
            return Err(IsolatorError::invalid(
                "--workdir",
                format!("{} must be absolute", spec.cwd.display()),
            ));
        }
        spec.filesystem = FilesystemSpec {
            rootfs,
            binds,
            tmp_size_bytes: spec.filesystem.tmp_size_bytes,
        };
        Ok(())
    }
}
