//! What the task sees of the filesystem: the host's tree read-only, or a rootfs;
//! its sandbox and volumes writable as asked; a private /tmp.

use std::path::{Path, PathBuf};

use super::{Isolator, IsolatorError};
use crate::paths::RunDir;
use crate::spec::{BindMount, FilesystemSpec, OverlaySpec, ShimSpec};
use crate::task::{IMAGE_UPPER_IN_SANDBOX, ImageRootfs, TaskConfig, TaskId};

/// Where the sandbox appears inside a rootfs when no working directory is given.
pub const SANDBOX_IN_ROOTFS: &str = "/mnt/sandbox";

/// The most layers an image root may stack. overlayfs takes its options in one page
/// (4096 bytes); the shim names each layer by a short descriptor path
/// (`/proc/self/fd/N:`, at most 19 bytes), so 200 layers and the upper and work
/// directories fit. Docker's own limit is 127 layers.
pub const MAX_IMAGE_LAYERS: usize = 200;

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

/// The overlay of an image task: its layers, the upper and work directories in the
/// sandbox, the mount point in the run directory.
fn overlay_spec(
    image: &ImageRootfs,
    sandbox: &Path,
    run_dir: &Path,
    config: &TaskConfig,
) -> Result<OverlaySpec, IsolatorError> {
    if image.layers.is_empty() {
        return Err(IsolatorError::invalid("--image", "the image has no layers"));
    }
    if image.layers.len() > MAX_IMAGE_LAYERS {
        return Err(IsolatorError::invalid(
            "--image",
            format!(
                "the image has {} layers; at most {MAX_IMAGE_LAYERS} can be stacked: squash the image",
                image.layers.len()
            ),
        ));
    }
    let layers = image
        .layers
        .iter()
        .map(|layer| existing_dir("--image", layer, "image layer"))
        .collect::<Result<Vec<_>, _>>()?;
    let upper_root = sandbox.join(IMAGE_UPPER_IN_SANDBOX);
    let create_dirs = config.workdir_in_task.iter().cloned().collect();
    Ok(OverlaySpec {
        layers,
        upper: upper_root.join("upper"),
        work: upper_root.join("work"),
        mount_point: RunDir::from_path(run_dir.to_path_buf()).rootfs(),
        read_only: image.read_only,
        create_dirs,
        hide: Some(Path::new(SANDBOX_IN_ROOTFS).join(IMAGE_UPPER_IN_SANDBOX)),
    })
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
        let sandbox = existing_dir("--workdir", &config.sandbox, "working directory")?;
        let (rootfs, overlay) = match (&config.rootfs, &config.image) {
            (Some(_), Some(_)) => {
                return Err(IsolatorError::invalid(
                    "--image",
                    "a task runs from a root filesystem directory or from an image, not both: drop --rootfs or --image",
                ));
            }
            (Some(dir), None) => (
                Some(existing_dir("--rootfs", dir, "root filesystem")?),
                None,
            ),
            (None, Some(image)) => {
                let overlay = overlay_spec(image, &sandbox, &spec.run_dir, config)?;
                (Some(overlay.mount_point.clone()), Some(overlay))
            }
            (None, None) => (None, None),
        };
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
            overlay,
            binds,
            tmp_size_bytes: spec.filesystem.tmp_size_bytes,
        };
        Ok(())
    }
}
