//! What a task must satisfy before anyone tries to run it, checked in one place.
//!
//! The master checks every task a scheduler accepts an offer with: an invalid one gets
//! `ERROR` / `INVALID_TASK` with the message of [`InvalidTask`] and never reaches an
//! agent. The agent can check a launch the same way. What only the agent can know (that
//! the rootfs, a volume's host path or the user exists there) stays with the agent.

use std::path::{Component, Path};

use thiserror::Error;

use crate::v1;

/// The most CPUs a task may ask for: more is surely a mistake.
pub const MAX_TASK_CPUS: f64 = 1e6;

/// The longest id (of a task, a framework or an agent), in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The longest hostname a task may have, in bytes (the UTS namespace's limit).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// The most host devices a task may ask for.
pub const MAX_TASK_DEVICES: usize = 16;

/// Why a task is refused: the field, what is wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InvalidTask {
    #[error(
        "task_id {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - (not starting with '.')"
    )]
    TaskId(String),
    #[error(
        "command: empty; give the program and its arguments (or an image whose command to run)"
    )]
    EmptyCommand,
    #[error(
        "kill_policy.grace_period_secs: {0} is not a duration; give seconds from 0 (SIGKILL at \
         once) upwards"
    )]
    GracePeriod(f64),
    #[error(
        "image.reference {0:?}: give HOST[:PORT]/REPO[:TAG][@DIGEST], a short name, oci:DIR or an archive path (at most 1024 characters, no spaces)"
    )]
    ImageReference(String),
    #[error("image and rootfs: a task runs from one or the other; drop one")]
    ImageAndRootfs,
    #[error("resources.cpus: {0} is not a CPU count; give a decimal number from 0.001 to 1000000")]
    Cpus(f64),
    #[error("resources.cpus: a task needs CPUs; give at least 0.001")]
    NoCpus,
    #[error("resources.mem_bytes: a task needs memory; give its limit in bytes")]
    NoMemory,
    #[error("env: {0:?} is not KEY=VALUE")]
    Env(String),
    #[error("net: unknown mode {0}; use NET_MODE_HOST or NET_MODE_NONE")]
    Net(i32),
    #[error("user {0:?}: use NAME, UID, NAME:GROUP or UID:GID (ids below 2^32)")]
    User(String),
    #[error(
        "hostname {0:?}: use labels of letters, digits and '-' (not at a label's start or end) \
         joined by '.', at most 64 characters"
    )]
    Hostname(String),
    #[error(
        "volumes[{index}].host_path {path:?}: give the absolute path of the directory on the \
         agent to mount, without '..'"
    )]
    VolumeHostPath { index: usize, path: String },
    #[error("rootfs {0:?}: give the absolute path of a directory on the agent, without '..'")]
    Rootfs(String),
    // Never the value: it is secret.
    #[error(
        "secrets[{index}].name {name:?}: give a variable name (letters, digits and '_', not \
         starting with a digit) that no other secret or env entry of the task uses"
    )]
    SecretName { index: usize, name: String },
    #[error("secrets[{index}] ({name}): the value must not contain a NUL byte")]
    SecretValue { index: usize, name: String },
    #[error("volumes[{index}].task_path {path:?}: must be absolute, without '..'")]
    VolumeTaskPath { index: usize, path: String },
    #[error(
        "devices[{index}] {path:?}: give the absolute path of a device node under /dev \
         (e.g. /dev/fuse), without '..'"
    )]
    Device { index: usize, path: String },
    #[error("devices: {0} given; a task may ask for at most 16 host devices")]
    TooManyDevices(usize),
}

/// A grace period of a kill policy: finite seconds, not negative.
pub fn is_grace_period(secs: f64) -> bool {
    secs.is_finite() && secs >= 0.0
}

/// Checks everything about `task` that does not depend on the agent it runs on:
/// id syntax, command, resources, kill policy, environment, network mode, user
/// syntax, hostname, volume paths and device paths. Returns the first problem found, in that order.
pub fn task(task: &v1::TaskInfo) -> Result<(), InvalidTask> {
    if !is_valid_id(&task.task_id) {
        return Err(InvalidTask::TaskId(task.task_id.clone()));
    }
    let image = task.image.as_ref();
    if let Some(image) = image {
        let r = &image.reference;
        if r.is_empty() || r.len() > 1024 || r.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(InvalidTask::ImageReference(r.clone()));
        }
        if !task.rootfs.is_empty() {
            return Err(InvalidTask::ImageAndRootfs);
        }
    }
    // An image brings its own command; a command given replaces it.
    let command_ok = match task.command.first() {
        Some(program) => !program.is_empty(),
        None => image.is_some(),
    };
    if !command_ok {
        return Err(InvalidTask::EmptyCommand);
    }
    resources(task.resources.as_ref())?;
    if let Some(grace) = task.kill_policy.as_ref().and_then(|k| k.grace_period_secs)
        && !is_grace_period(grace)
    {
        return Err(InvalidTask::GracePeriod(grace));
    }
    if let Some(kv) = task.env.iter().find(|kv| !is_env_pair(kv)) {
        return Err(InvalidTask::Env(kv.clone()));
    }
    secrets(task)?;
    if v1::NetMode::try_from(task.net).is_err() {
        return Err(InvalidTask::Net(task.net));
    }
    if !task.user.is_empty() && !is_valid_user(&task.user) {
        return Err(InvalidTask::User(task.user.clone()));
    }
    if !task.hostname.is_empty() && !is_valid_hostname(&task.hostname) {
        return Err(InvalidTask::Hostname(task.hostname.clone()));
    }
    if !task.rootfs.is_empty() && !is_confined_absolute(Path::new(&task.rootfs)) {
        return Err(InvalidTask::Rootfs(task.rootfs.clone()));
    }
    for (index, volume) in task.volumes.iter().enumerate() {
        if !is_confined_absolute(Path::new(&volume.host_path)) {
            return Err(InvalidTask::VolumeHostPath {
                index,
                path: volume.host_path.clone(),
            });
        }
        if !is_confined_absolute(Path::new(&volume.task_path)) {
            return Err(InvalidTask::VolumeTaskPath {
                index,
                path: volume.task_path.clone(),
            });
        }
    }
    devices(&task.devices)
}

/// Host devices: at most [`MAX_TASK_DEVICES`], each a path under /dev (not /dev itself).
fn devices(devices: &[String]) -> Result<(), InvalidTask> {
    if devices.len() > MAX_TASK_DEVICES {
        return Err(InvalidTask::TooManyDevices(devices.len()));
    }
    for (index, path) in devices.iter().enumerate() {
        if !is_device_path(path) {
            return Err(InvalidTask::Device {
                index,
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// Whether `path` can name a host device node: absolute, under /dev, without '..'.
pub fn is_device_path(path: impl AsRef<Path>) -> bool {
    let p = path.as_ref();
    is_confined_absolute(p) && p.starts_with("/dev") && p != Path::new("/dev")
}

/// Secret environment variables: proper names, none repeated or also in `env`, and
/// values that can be put in an environment.
fn secrets(task: &v1::TaskInfo) -> Result<(), InvalidTask> {
    let mut seen = std::collections::BTreeSet::new();
    for (index, s) in task.secrets.iter().enumerate() {
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 256
            && !s.name.starts_with(|c: char| c.is_ascii_digit())
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && seen.insert(s.name.as_str())
            && !task
                .env
                .iter()
                .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == s.name));
        if !name_ok {
            return Err(InvalidTask::SecretName {
                index,
                name: s.name.clone(),
            });
        }
        if s.value.contains('\0') {
            return Err(InvalidTask::SecretValue {
                index,
                name: s.name.clone(),
            });
        }
    }
    Ok(())
}

/// A task's resources: a finite CPU count that rounds to at least a thousandth of a
/// CPU (the unit Cella accounts in) and at most [`MAX_TASK_CPUS`], and some memory.
/// Disk may be 0 (no disk limit).
fn resources(r: Option<&v1::Resources>) -> Result<(), InvalidTask> {
    let r = r.copied().unwrap_or_default();
    if !r.cpus.is_finite() || r.cpus < 0.0 || r.cpus > MAX_TASK_CPUS {
        return Err(InvalidTask::Cpus(r.cpus));
    }
    if (r.cpus * 1000.0).round() < 1.0 {
        return Err(InvalidTask::NoCpus);
    }
    if r.mem_bytes == 0 {
        return Err(InvalidTask::NoMemory);
    }
    Ok(())
}

/// Whether `id` can name a task, a framework or an agent: 1 to [`MAX_ID_LEN`] bytes
/// from `A-Z a-z 0-9 . _ -`, not starting with '.'. Such an id is safe as a path
/// component (a task's cgroups and directories are named after it).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `KEY=VALUE` with a non-empty key.
pub fn is_env_pair(kv: &str) -> bool {
    kv.split_once('=').is_some_and(|(key, _)| !key.is_empty())
}

/// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`: non-empty parts, at most one ':', and
/// numeric parts that fit a uid (32 bits).
pub fn is_valid_user(spec: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty() && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u32>().is_ok())
    };
    match spec.split_once(':') {
        Some((user, group)) => part(user) && part(group) && !group.contains(':'),
        None => part(spec),
    }
}

/// A hostname per RFC 1123: labels of letters, digits and '-' (not first or last),
/// joined by '.', at most [`MAX_HOSTNAME_LEN`] bytes.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An absolute path that cannot climb out with `..`.
pub fn is_confined_absolute(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: "web-1.a_b".into(),
            name: "web".into(),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into(), "EMPTY=".into(), "B=x=y".into()],
            resources: Some(v1::Resources {
                cpus: 0.5,
                mem_bytes: 64 << 20,
                disk_bytes: 0,
            }),
            pids_limit: 0,
            net: v1::NetMode::None as i32,
            rootfs: "/srv/rootfs".into(),
            user: "1000:1000".into(),
            volumes: vec![v1::Volume {
                host_path: "/srv/data".into(),
                task_path: "/data".into(),
                read_only: true,
            }],
            hostname: "web-1.example".into(),
            kill_policy: Some(v1::KillPolicy {
                grace_period_secs: Some(10.0),
            }),
            image: None,
            secrets: vec![v1::SecretEnv {
                name: "DB_PASSWORD".into(),
                value: "hunter2".into(),
            }],
            devices: vec!["/dev/fuse".into()],
        }
    }

    /// `valid()` changed by `change` is refused with `expected`.
    fn refused(change: impl FnOnce(&mut v1::TaskInfo), expected: InvalidTask) {
        let mut t = valid();
        change(&mut t);
        assert_eq!(task(&t), Err(expected));
    }

    fn cpus(t: &mut v1::TaskInfo, cpus: f64) {
        t.resources.get_or_insert_default().cpus = cpus;
    }

    #[test]
    fn a_complete_task_is_valid() {
        assert_eq!(task(&valid()), Ok(()));
        let minimal = v1::TaskInfo {
            task_id: "t".into(),
            command: vec!["true".into()],
            resources: Some(v1::Resources {
                cpus: 0.001,
                mem_bytes: 1,
                disk_bytes: 0,
            }),
            ..Default::default()
        };
        assert_eq!(task(&minimal), Ok(()));
    }

    #[test]
    fn task_ids() {
        let long = "a".repeat(MAX_ID_LEN);
        for good in ["a", "A-Z_0.9", long.as_str(), "x..y"] {
            assert!(is_valid_id(good), "{good:?}");
        }
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "",
            ".hidden",
            "../escape",
            "a/b",
            "a b",
            "é",
            too_long.as_str(),
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
            refused(|t| t.task_id = bad.into(), InvalidTask::TaskId(bad.into()));
        }
    }

    #[test]
    fn commands() {
        refused(|t| t.command.clear(), InvalidTask::EmptyCommand);
        refused(
            |t| t.command = vec![String::new()],
            InvalidTask::EmptyCommand,
        );
    }

    #[test]
    fn grace_periods_are_seconds_from_zero() {
        for bad in [-1.0, f64::INFINITY] {
            refused(
                |t| {
                    t.kill_policy = Some(v1::KillPolicy {
                        grace_period_secs: Some(bad),
                    });
                },
                InvalidTask::GracePeriod(bad),
            );
        }
        let mut t = valid();
        t.kill_policy = Some(v1::KillPolicy {
            grace_period_secs: Some(0.0),
        });
        assert_eq!(task(&t), Ok(()));
    }

    #[test]
    fn images() {
        let image = |reference: &str| v1::ContainerImage {
            reference: reference.into(),
            read_only: false,
        };
        // An image brings its own command.
        let mut t = valid();
        t.rootfs.clear();
        t.command.clear();
        t.image = Some(image("localhost:5000/busybox:latest"));
        assert_eq!(task(&t), Ok(()));
        for bad in ["", "a b", "x\ty"] {
            refused(
                |t| {
                    t.rootfs.clear();
                    t.image = Some(image(bad));
                },
                InvalidTask::ImageReference(bad.into()),
            );
        }
        refused(
            |t| {
                t.rootfs = "/srv/root".into();
                t.image = Some(image("busybox"));
            },
            InvalidTask::ImageAndRootfs,
        );
    }

    #[test]
    fn resources_are_sane() {
        for bad in [f64::NAN, f64::INFINITY, -1.0, MAX_TASK_CPUS * 2.0] {
            let mut t = valid();
            cpus(&mut t, bad);
            assert!(
                matches!(task(&t), Err(InvalidTask::Cpus(c)) if c.to_bits() == bad.to_bits()),
                "{bad}: {:?}",
                task(&t)
            );
        }
        refused(|t| cpus(t, 0.0), InvalidTask::NoCpus);
        refused(|t| cpus(t, 0.0004), InvalidTask::NoCpus);
        refused(|t| t.resources = None, InvalidTask::NoCpus);
        let mut t = valid();
        cpus(&mut t, 0.0005);
        assert_eq!(task(&t), Ok(()), "rounds to one thousandth of a CPU");
        cpus(&mut t, MAX_TASK_CPUS);
        assert_eq!(task(&t), Ok(()));
        refused(
            |t| t.resources.get_or_insert_default().mem_bytes = 0,
            InvalidTask::NoMemory,
        );
    }

    #[test]
    fn environment() {
        for bad in ["NOPE", "=value", ""] {
            refused(|t| t.env.push(bad.into()), InvalidTask::Env(bad.into()));
        }
    }

    #[test]
    fn network_mode() {
        refused(|t| t.net = 7, InvalidTask::Net(7));
    }

    #[test]
    fn users() {
        for good in ["nobody", "0", "4294967295", "alice:staff", "1000:100"] {
            assert!(is_valid_user(good), "{good:?}");
        }
        for bad in [
            ":",
            "alice:",
            ":staff",
            "a:b:c",
            "4294967296",
            "1:99999999999",
        ] {
            refused(|t| t.user = bad.into(), InvalidTask::User(bad.into()));
        }
    }

    #[test]
    fn hostnames() {
        let longest = format!("{}.b", "a".repeat(MAX_HOSTNAME_LEN - 2));
        for good in ["a", "web-1", "a.b.c", "0abc", longest.as_str()] {
            assert!(is_valid_hostname(good), "{good:?}");
        }
        let too_long = "a".repeat(MAX_HOSTNAME_LEN + 1);
        for bad in ["-a", "a-", "a..b", ".a", "a_b", "a b", too_long.as_str()] {
            refused(
                |t| t.hostname = bad.into(),
                InvalidTask::Hostname(bad.into()),
            );
        }
    }

    #[test]
    fn volume_paths() {
        for bad in ["", "data", "/srv/../etc"] {
            refused(
                |t| t.volumes[0].host_path = bad.into(),
                InvalidTask::VolumeHostPath {
                    index: 0,
                    path: bad.into(),
                },
            );
        }
        refused(
            |t| t.rootfs = "rootfs".into(),
            InvalidTask::Rootfs("rootfs".into()),
        );
        for bad in ["data", "", "/data/../etc", "../x"] {
            refused(
                |t| {
                    t.volumes.push(v1::Volume {
                        host_path: "/srv".into(),
                        task_path: bad.into(),
                        read_only: false,
                    })
                },
                InvalidTask::VolumeTaskPath {
                    index: 1,
                    path: bad.into(),
                },
            );
        }
    }

    #[test]
    fn secrets() {
        for bad in ["", "1X", "A-B", "A"] {
            refused(
                |t| {
                    t.secrets[0].name = bad.into();
                    t.env.push("A=1".into());
                },
                InvalidTask::SecretName {
                    index: 0,
                    name: bad.into(),
                },
            );
        }
        refused(
            |t| t.secrets.push(t.secrets[0].clone()),
            InvalidTask::SecretName {
                index: 1,
                name: "DB_PASSWORD".into(),
            },
        );
        let mut t = valid();
        t.secrets[0].value = "hunter\0two".into();
        let e = task(&t).unwrap_err().to_string();
        assert!(e.contains("DB_PASSWORD") && !e.contains("hunter"), "{e}");
    }

    #[test]
    fn device_paths() {
        for bad in [
            "fuse",
            "/dev",
            "/dev/",
            "/etc/passwd",
            "/dev/../etc/passwd",
            "",
        ] {
            refused(
                |t| t.devices.push(bad.into()),
                InvalidTask::Device {
                    index: 1,
                    path: bad.into(),
                },
            );
        }
        let mut t = valid();
        t.devices = vec!["/dev/net/tun".into(), "/dev/null".into()];
        assert_eq!(task(&t), Ok(()));
        refused(
            |t| t.devices = vec!["/dev/null".into(); 17],
            InvalidTask::TooManyDevices(17),
        );
        let e = InvalidTask::Device {
            index: 0,
            path: "/etc/x".into(),
        }
        .to_string();
        assert!(
            e.starts_with("devices[0] \"/etc/x\": give the absolute"),
            "{e}"
        );
    }

    #[test]
    fn messages_name_the_field_and_the_fix() {
        let e = InvalidTask::Env("NOPE".into()).to_string();
        assert_eq!(e, "env: \"NOPE\" is not KEY=VALUE");
        let e = InvalidTask::VolumeTaskPath {
            index: 2,
            path: "x".into(),
        }
        .to_string();
        assert_eq!(
            e,
            "volumes[2].task_path \"x\": must be absolute, without '..'"
        );
        let e = InvalidTask::Cpus(-1.0).to_string();
        assert!(
            e.starts_with("resources.cpus: -1 is not a CPU count; give"),
            "{e}"
        );
    }
}
