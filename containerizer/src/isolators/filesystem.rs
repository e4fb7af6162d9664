//! What the task sees of the filesystem: the host's tree read-only, or a rootfs;
//! its sandbox and volumes writable as asked; a private /tmp.

use std::path::{Path, PathBuf};

use cella_proto::validate::is_confined_absolute;

use super::{Isolator, IsolatorError, Prepared};
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

/// Host paths no task sees without a rootfs: password hashes, host keys, the
/// administrators' homes. Cella's own state is added by the launcher.
pub const HOST_SECRETS: [&str; 13] = [
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_dsa_key",
    "/etc/ssl/private",
    "/root",
    "/home",
    "/var/lib/cella",
];

/// The host's system directories: without a rootfs, the working directory (which the
/// task may write) may be none of them, nothing beneath them, and nothing above them
/// (such as `/`).
const SYSTEM_DIRS: [&str; 12] = [
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev",
    "/proc", "/sys",
];

pub struct FilesystemIsolator {
    /// Masked in every task without a rootfs, with [`HOST_SECRETS`].
    masked: Vec<PathBuf>,
}

impl FilesystemIsolator {
    /// `hidden`: the launcher's own state (see `ContainerizerConfig::hidden`).
    pub fn new(hidden: Vec<PathBuf>) -> Self {
        let mut masked: Vec<PathBuf> = HOST_SECRETS.iter().map(PathBuf::from).collect();
        masked.extend(hidden);
        Self { masked }
    }
}

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
/// sandbox, the mount point shared by every image task of the runtime directory.
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
    let mut layers = image
        .layers
        .iter()
        .map(|layer| existing_dir("--image", layer, "image layer"))
        .collect::<Result<Vec<_>, _>>()?;
    // The mount points as a layer of their own on top (when one more layer fits), so
    // that the task's writable layer stays untouched by the launch.
    let runtime_dir = run_dir.parent().and_then(Path::parent);
    let own_mount_point = || RunDir::from_path(run_dir.to_path_buf()).rootfs();
    let mount_point = match runtime_dir.map(super::mount_points::root) {
        Some(Ok(root)) => root,
        Some(Err(e)) => {
            tracing::warn!("the shared image root mount point: {e}; mounting in the run directory");
            own_mount_point()
        }
        None => own_mount_point(),
    };
    if let (Some(runtime_dir), true) = (runtime_dir, layers.len() < MAX_IMAGE_LAYERS) {
        match super::mount_points::layer(runtime_dir) {
            Ok(layer) => layers.push(layer),
            Err(e) => tracing::warn!(
                "the image mount point layer in {}: {e}; the task's writable layer gets them",
                runtime_dir.display()
            ),
        }
    }
    let upper_root = sandbox.join(IMAGE_UPPER_IN_SANDBOX);
    let create_dirs = config.workdir_in_task.iter().cloned().collect();
    Ok(OverlaySpec {
        layers,
        upper: upper_root.join("upper"),
        work: upper_root.join("work"),
        mount_point,
        read_only: image.read_only,
        create_dirs,
        hide: Some(Path::new(SANDBOX_IN_ROOTFS).join(IMAGE_UPPER_IN_SANDBOX)),
    })
}

impl Isolator for FilesystemIsolator {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn prepare(&self, _id: &TaskId, config: &TaskConfig, spec: &mut ShimSpec) -> Prepared {
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
        if rootfs.is_none() {
            if let Some(system) = SYSTEM_DIRS
                .iter()
                .map(Path::new)
                .find(|d| sandbox.starts_with(d) || d.starts_with(&sandbox))
            {
                return Err(IsolatorError::invalid(
                    "--workdir",
                    format!(
                        "the working directory is writable by the task, and {} would make the host's {} \
                         writable; run from (or pass --workdir) a directory of its own, and give the task \
                         a system path it must write with --volume HOST:TASK:rw",
                        sandbox.display(),
                        system.display()
                    ),
                ));
            }
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
            if !is_confined_absolute(&v.task) {
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
        let mut devices = crate::devices::default_nodes();
        for path in &config.devices {
            let node = crate::devices::host_device(path)
                .map_err(|e| IsolatorError::invalid("--device", e.to_string()))?;
            devices.retain(|d| d.path != node.path);
            devices.push(node);
        }
        let masked = if rootfs.is_none() {
            self.masked.clone()
        } else {
            Vec::new()
        };
        spec.filesystem = FilesystemSpec {
            masked,
            rootfs,
            overlay,
            binds,
            tmp_size_bytes: spec.filesystem.tmp_size_bytes,
            devices,
        };
        Ok(())
    }
}
