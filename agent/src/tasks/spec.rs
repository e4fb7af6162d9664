//! From the master's `TaskInfo` to the containerizer's `TaskConfig`, and the task's
//! sandbox directory: checked by the same task rules as the master applies, then by
//! the agent's own allowlist ([`TaskPolicy`]), with the user it runs as resolved here
//! (its sandbox belongs to that user).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cella_containerizer::spec::Identity;
use cella_containerizer::task::{Resources as TaskResources, Stdio};
use cella_containerizer::units::MilliCpus;
use cella_containerizer::{NetMode, TaskConfig, Volume};
use cella_proto::v1;

use crate::images::TaskImage;
use crate::paths;
use crate::policy::TaskPolicy;
use crate::policy::tasks::Refusal;

/// Why a task is not launched: it is invalid, or the agent's allowlist refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("refused by this agent: {0}")]
    Refused(#[from] Refusal),
}

/// A task ready for the containerizer, and who it runs as.
#[derive(Debug)]
pub struct Launchable {
    pub config: TaskConfig,
    pub identity: Identity,
}

/// Admits a task for launch: the task rules and the agent's allowlist of paths
/// ([`check_task`]), its user resolved; then its configuration ([`task_config`]).
pub fn admit(
    info: &v1::TaskInfo,
    sandbox: &Path,
    policy: &TaskPolicy,
) -> Result<Launchable, SpecError> {
    check_task(info, policy)?;
    let user = policy.user_of(info);
    let root = if info.rootfs.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(&info.rootfs)
    };
    let identity = cella_containerizer::user::resolve(user, &root)
        .map_err(|e| SpecError::Invalid(format!("user: {e}")))?;
    policy.check_user(info, identity.uid)?;
    Ok(Launchable {
        config: task_config(info, sandbox, user),
        identity,
    })
}

/// The checks that come before a task's user is resolved (for an image task, before
/// its image is prepared): the task rules and the agent's allowlist of paths.
pub fn check_task(info: &v1::TaskInfo, policy: &TaskPolicy) -> Result<(), SpecError> {
    // The same rules the master applied before it sent the task: a master that was
    // compromised or is older cannot make the agent run what it should have refused.
    cella_proto::validate::task(info).map_err(|e| SpecError::Invalid(e.to_string()))?;
    policy.check_paths(info)?;
    Ok(())
}

/// Admits an image task once its image is ready ([`check_task`] passed): the
/// user (the task's, else the image's, else the agent's task user) resolved in the
/// image's `/etc/passwd`; the image's command, environment and working directory
/// applied.
pub fn admit_image(
    info: &v1::TaskInfo,
    sandbox: &Path,
    policy: &TaskPolicy,
    image: &TaskImage,
) -> Result<Launchable, SpecError> {
    let user = image
        .settings
        .user
        .clone()
        .unwrap_or_else(|| policy.user_of(info).to_owned());
    let identity = cella_containerizer::user::resolve_in_layers(&user, &image.image.layers)
        .map_err(|e| {
            SpecError::Invalid(format!("user (in image {}): {e}", image.image.reference))
        })?;
    policy.check_user(info, identity.uid)?;
    let mut config = task_config(info, sandbox, &user);
    config.command = image.settings.command.clone();
    config.env = image.settings.env.clone();
    config.env.extend(cella_proto::secrets::environment(info));
    config.workdir_in_task = image.settings.working_dir.clone();
    config.image = Some(cella_containerizer::ImageRootfs {
        layers: image.image.layers.clone(),
        read_only: info.image.as_ref().is_some_and(|i| i.read_only),
    });
    Ok(Launchable { config, identity })
}

/// Maps the wire's TaskInfo to the containerizer's configuration for a task that
/// runs as `user` (also how recovery describes a task it re-attaches to). Secret
/// values become environment variables of the task; nothing else keeps them.
pub fn task_config(info: &v1::TaskInfo, sandbox: &Path, user: &str) -> TaskConfig {
    let mut config = TaskConfig::new(info.command.clone(), sandbox.to_path_buf());
    config.env = info.env.clone();
    config.env.extend(cella_proto::secrets::environment(info));
    let r = info.resources.unwrap_or_default();
    // Rounded up to a thousandth of a CPU; validation made it finite and in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millis = (r.cpus * 1000.0).ceil() as u64;
    config.resources = TaskResources {
        cpus: (millis > 0).then_some(MilliCpus(millis)),
        memory_bytes: (r.mem_bytes > 0).then_some(r.mem_bytes),
        pids: (info.pids_limit > 0).then_some(info.pids_limit),
        disk_bytes: (r.disk_bytes > 0).then_some(r.disk_bytes),
    };
    config.net = match v1::NetMode::try_from(info.net) {
        Ok(v1::NetMode::None) => NetMode::None,
        // Validation refused any other value.
        Ok(v1::NetMode::Host) | Err(_) => NetMode::Host,
    };
    config.rootfs = (!info.rootfs.is_empty()).then(|| PathBuf::from(&info.rootfs));
    // Always explicit: a task never runs as the agent's own user by omission.
    config.user = Some(user.to_string());
    config.hostname = (!info.hostname.is_empty()).then(|| info.hostname.clone());
    config.volumes = info
        .volumes
        .iter()
        .map(|v| Volume {
            host: PathBuf::from(&v.host_path),
            task: PathBuf::from(&v.task_path),
            read_only: v.read_only,
        })
        .collect();
    // Admitted only if the agent allows each ([`TaskPolicy`]).
    config.devices = info.devices.iter().map(PathBuf::from).collect();
    config.stdio = Stdio::Files {
        stdout: paths::sandbox_stdout(sandbox),
        stderr: paths::sandbox_stderr(sandbox),
    };
    config.measure_disk = true;
    config
}

/// Creates the sandbox with empty stdout and stderr (appended to if they exist), all
/// owned by the task's user and private to it (mode 0700 and 0600): other tasks'
/// users cannot read it.
pub fn prepare_sandbox(sandbox: &Path, owner: &Identity) -> Result<(), String> {
    std::fs::create_dir_all(sandbox)
        .map_err(|e| format!("creating the sandbox {}: {e}", sandbox.display()))?;
    let own = |path: &Path, mode: u32| -> Result<(), String> {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("giving {} to uid {}: {e}", path.display(), owner.uid))
    };
    own(sandbox, 0o700)?;
    for path in [
        paths::sandbox_stdout(sandbox),
        paths::sandbox_stderr(sandbox),
    ] {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        own(&path, 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: "t".into(),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            resources: Some(v1::Resources {
                cpus: 0.0005,
                mem_bytes: 64 << 20,
                disk_bytes: 0,
            }),
            pids_limit: 0,
            net: v1::NetMode::None as i32,
            secrets: vec![v1::SecretEnv {
                name: "TOKEN".into(),
                value: "s3cret".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mapping_of_task_info() {
        let policy = TaskPolicy::default();
        let l = admit(&info(), Path::new("/sb"), &policy).unwrap();
        let c = &l.config;
        assert_eq!(c.resources.cpus, Some(MilliCpus(1)));
        assert_eq!(c.resources.memory_bytes, Some(64 << 20));
        assert_eq!(c.resources.pids, None);
        assert_eq!(c.resources.disk_bytes, None);
        assert_eq!(c.net, NetMode::None);
        // No user named: the agent's task user, never root by omission.
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_ne!(l.identity.uid, 0);
        assert_eq!(c.env, ["A=1", "TOKEN=s3cret"]);
        assert_eq!(c.sandbox, PathBuf::from("/sb"));
        assert!(
            matches!(c.stdio, Stdio::Files { ref stdout, .. } if stdout == Path::new("/sb/stdout"))
        );
        let bad = v1::TaskInfo {
            env: vec!["NOPE".into()],
            ..info()
        };
        assert!(matches!(
            admit(&bad, Path::new("/sb"), &policy),
            Err(SpecError::Invalid(_))
        ));
        let bad = v1::TaskInfo {
            command: vec![],
            ..info()
        };
        assert!(admit(&bad, Path::new("/sb"), &policy).is_err());
    }

    #[test]
    fn root_only_where_allowed() {
        let root = v1::TaskInfo {
            user: "root".into(),
            ..info()
        };
        let e = admit(&root, Path::new("/sb"), &TaskPolicy::default()).unwrap_err();
        assert!(matches!(e, SpecError::Refused(Refusal::Root { .. })), "{e}");
        let by_uid = v1::TaskInfo {
            user: "0:0".into(),
            ..info()
        };
        assert!(admit(&by_uid, Path::new("/sb"), &TaskPolicy::default()).is_err());
        assert!(admit(&root, Path::new("/sb"), &TaskPolicy::permissive()).is_ok());
    }
}
