//! The agent's configuration: command-line flags and an optional TOML file
//! (`--config FILE`; flags win over the file). The small languages operators type
//! (`cpus:4;mem:8GiB`, `rack=r1,zone=z1`) are parsed in [`parse`].
//!
//! Every error names the flag (or TOML key) and says how to fix it; the binary exits
//! with status 2 for any of them ([`ConfigError::EXIT_CODE`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cella_containerizer::units::MilliCpus;
use cella_proto::time::parse_duration;
use serde::Deserialize;

mod error;
pub mod images;
pub mod parse;
mod sources;

pub use error::ConfigError;
pub use images::{ImageArgs, ImagesConfig};
use parse::check_attribute;
pub use parse::{ResourceSpec, parse_attributes, parse_resources};
use sources::Sources;

use crate::policy::{TaskPolicy, VolumeAllow};

/// The agent's settings as they are given: command-line flags of `cella-agent` (also
/// embeddable in other tools' clap parsers) and the keys of its TOML file, one list
/// for both (a key is its flag's name with underscores; `config` and `no_strict` are
/// flags only). Every setting is optional so that [`AgentArgs::resolve`] can tell "not
/// given" (take the file's value or the default) from "given"; a switch (`bool`) can
/// only turn its setting on, from either side.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// A TOML file with the same settings as the flags (keys with underscores,
    /// e.g. `work_dir`); flags win over the file.
    #[arg(long, value_name = "FILE", env = "CELLA_AGENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The master's URL.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// Directory with ca.pem, agent.pem and agent-key.pem [default: /etc/cella/tls].
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Checkpoint (meta/) and task sandboxes (sandboxes/) [default: /var/lib/cella/agent].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Run directories of the tasks' shims, best on a tmpfs [default: /run/cella/agent].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Override detected resources, any subset: "cpus:4;mem:8GiB;disk:20GiB".
    #[arg(long, value_name = "SPEC")]
    pub resources: Option<String>,
    /// Kept for the system, subtracted from detected resources
    /// [default: "cpus:0;mem:256MiB;disk:1GiB"].
    #[arg(long, value_name = "SPEC")]
    pub reserve: Option<String>,
    /// Attributes offered with this agent's resources: "rack=r1,zone=z1" (in the
    /// file also a table `{ rack = "r1", zone = "z1" }`).
    #[arg(long, value_name = "K=V,...")]
    pub attributes: Option<Attributes>,
    /// The name the master shows for this agent [default: the machine's hostname].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Address of the agent's HTTPS API [default: 127.0.0.1:5051].
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<String>,
    /// Base cgroup of the tasks: absolute (from each hierarchy's root) or relative to
    /// the agent's own cgroup [default: <own cgroup>/cella].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// How often task usage is sampled and sent to the master [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub usage_interval: Option<String>,
    /// Kill every task when the agent stops (development). By default tasks keep
    /// running under their shims when the agent stops.
    #[arg(long)]
    #[serde(default)]
    pub kill_tasks_on_exit: bool,
    /// What to do with the tasks of a previous agent run found in the checkpoint:
    /// `reconnect` re-attaches to them (they keep running); `cleanup` kills them all,
    /// reports them KILLED (reason AGENT_RESTARTED), and exits — before an
    /// incompatible upgrade [default: reconnect].
    #[arg(long, value_name = "MODE")]
    pub recover: Option<String>,
    /// Stop when the checkpoint is damaged (default), naming the file; with
    /// `--strict=false` (or `--no-strict`) recover what can be read and count the rest
    /// in `cella_agent_recovery_errors_total`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub strict: Option<bool>,
    /// Same as `--strict=false`.
    #[arg(long, conflicts_with = "strict")]
    #[serde(skip)]
    pub no_strict: bool,
    /// Sandboxes of ended tasks are removed this long after the end (earlier when the
    /// work directory's filesystem is more than 90% full) [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub gc_delay: Option<String>,
    /// The user tasks run as when they name none [default: nobody].
    #[arg(long, value_name = "USER")]
    pub task_user: Option<String>,
    /// Run tasks whose user is root (uid 0). Off by default: the master cannot make
    /// this node run a root task unless this is on.
    #[arg(long)]
    #[serde(default)]
    pub allow_root_tasks: bool,
    /// The process limit of tasks that set none (0 is refused: every task has one)
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    pub default_pids_limit: Option<u64>,
    /// The disk limit of tasks that ask for no disk, e.g. 10GiB (0 is refused)
    /// [default: 10GiB].
    #[arg(long, value_name = "SIZE")]
    pub default_disk: Option<String>,
    /// A host directory tasks may mount as a volume, PREFIX[:ro|rw] (read-only unless
    /// :rw; repeatable). None by default.
    #[arg(long = "allow-volume", value_name = "PREFIX[:ro|rw]")]
    #[serde(default)]
    pub allow_volumes: Vec<String>,
    /// A directory under which tasks may take their root filesystem (repeatable).
    /// None by default.
    #[arg(long = "allow-rootfs", value_name = "PREFIX")]
    #[serde(default)]
    pub allow_rootfs: Vec<String>,
    /// A host device tasks may be given, e.g. /dev/fuse (an exact path; repeatable).
    /// None by default.
    #[arg(long = "allow-device", value_name = "PATH")]
    #[serde(default)]
    pub allow_devices: Vec<String>,
    /// An ACL file for this agent's HTTP API; without one the master's ACL applies.
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// Bearer tokens and passwords for this agent's HTTP API (TOML, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    // `[images]` in the file.
    #[command(flatten)]
    #[serde(default)]
    pub images: ImageArgs,
    /// What is logged: "info", "debug", or per module ("info,cella_agent=debug");
    /// `$CELLA_LOG` wins. On SIGHUP the `log_level` of the --config file is re-read
    /// [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// `--recover`: what happens to the tasks a previous agent run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoverMode {
    /// Re-attach and keep them running.
    #[default]
    Reconnect,
    /// Kill them all, report them, and exit.
    Cleanup,
}

/// Attributes: a string (a flag, or the file) or a table (the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Attributes {
    Text(String),
    Table(std::collections::BTreeMap<String, String>),
}

impl std::str::FromStr for Attributes {
    type Err = std::convert::Infallible;

    /// The flag's text, checked by [`Attributes::resolve`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::Text(text.to_string()))
    }
}

impl Attributes {
    /// The `(key, value)` pairs, each checked; an error says why, for `field`.
    fn resolve(&self, field: &str) -> Result<Vec<(String, String)>, ConfigError> {
        match self {
            Attributes::Text(text) => {
                parse_attributes(text).map_err(|m| ConfigError::new(field, m))
            }
            Attributes::Table(table) => table
                .iter()
                .map(|(k, v)| {
                    check_attribute(k, v).map_err(|m| ConfigError::new(field, m))?;
                    Ok((k.clone(), v.clone()))
                })
                .collect(),
        }
    }
}

impl AgentArgs {
    /// Parses the text of a TOML configuration file.
    pub fn parse_file(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Reads and parses the TOML configuration file `path`.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        cella_proto::config_file::load(path, "work_dir = \"/var/lib/cella/agent\"")
            .map_err(|m| ConfigError::new(format!("--config {}", path.display()), m))
    }
}

/// The agent's resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `https://HOST:PORT` of the master.
    pub master: String,
    /// Holds `ca.pem`, `agent.pem`, `agent-key.pem`.
    pub tls_dir: PathBuf,
    pub work_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Overrides of detected resources.
    pub resources: ResourceSpec,
    /// Kept for the system.
    pub reserve: ResourceSpec,
    pub attributes: Vec<(String, String)>,
    /// `None`: the machine's hostname.
    pub hostname: Option<String>,
    /// Port 0 picks a free port ([`crate::Agent::http_addr`] tells which).
    pub http_listen: SocketAddr,
    pub cgroup_root: Option<PathBuf>,
    pub usage_interval: Duration,
    /// Kill the tasks when the agent stops ([`crate::run`]'s shutdown).
    pub kill_tasks_on_exit: bool,
    /// `cella-shim`; `None`: next to the executable or `$CELLA_SHIM`.
    pub shim_path: Option<PathBuf>,
    /// How many launches run at once; `None`: twice the CPUs the agent may use.
    pub launch_concurrency: Option<usize>,
    pub recover: RecoverMode,
    /// A damaged checkpoint stops the agent.
    pub strict: bool,
    /// How long the sandbox of an ended task is kept.
    pub gc_delay: Duration,
    /// What tasks may be and use on this node, whatever the master sends.
    pub tasks: TaskPolicy,
    /// The ACL of this agent's HTTP API (`None`: the master's).
    pub acl: Option<PathBuf>,
    /// Tokens and passwords for this agent's HTTP API.
    pub credentials: Option<PathBuf>,
    /// Registries and the image store.
    pub images: ImagesConfig,
    /// The log filter ([`cella_proto::logging`]).
    pub log_level: String,
    /// `--config`: re-read on SIGHUP for `log_level` (unless `--log-level` was given).
    pub reload_log_level_from: Option<PathBuf>,
}

pub const DEFAULT_MASTER: &str = "https://127.0.0.1:5050";
pub const DEFAULT_TLS_DIR: &str = "/etc/cella/tls";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/cella/agent";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cella/agent";
pub const DEFAULT_RESERVE: &str = "cpus:0;mem:256MiB;disk:1GiB";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:5051";

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            master: DEFAULT_MASTER.into(),
            tls_dir: DEFAULT_TLS_DIR.into(),
            work_dir: DEFAULT_WORK_DIR.into(),
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
            resources: ResourceSpec::default(),
            reserve: ResourceSpec {
                cpus: Some(MilliCpus(0)),
                mem_bytes: Some(256 << 20),
                disk_bytes: Some(1 << 30),
            },
            attributes: Vec::new(),
            hostname: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 5051)),
            cgroup_root: None,
            usage_interval: Duration::from_secs(1),
            kill_tasks_on_exit: false,
            shim_path: None,
            launch_concurrency: None,
            recover: RecoverMode::Reconnect,
            strict: true,
            gc_delay: Duration::from_secs(3600),
            tasks: TaskPolicy::default(),
            acl: None,
            credentials: None,
            images: ImagesConfig::default(),
            log_level: "info".into(),
            reload_log_level_from: None,
        }
    }
}

fn check_master_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!(
            "{url:?}: the master speaks only TLS; use https://HOST:PORT (e.g. {DEFAULT_MASTER})"
        )
    })?;
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') {
        return Err(format!("{url:?}: no host; use https://HOST:PORT"));
    }
    Ok(())
}

impl AgentArgs {
    /// Reads `--config` (if given) and combines it with the flags.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => AgentArgs::load_file(path)?,
            None => AgentArgs::default(),
        };
        self.resolve_with(&file, self.config.as_deref())
    }

    /// Combines the flags with an already parsed file (`source` names it in errors).
    pub fn resolve_with(
        &self,
        file: &AgentArgs,
        source: Option<&Path>,
    ) -> Result<AgentConfig, ConfigError> {
        let from = Sources {
            file: source,
            table: "",
        };
        let mut config = AgentConfig::default();
        if let Some((level, field)) = from.pick("log-level", &self.log_level, &file.log_level) {
            cella_proto::logging::check_level(&level).map_err(|m| ConfigError::new(field, m))?;
            config.log_level = level;
        }
        if self.log_level.is_none() {
            config.reload_log_level_from = source.map(Path::to_path_buf);
        }

        if let Some((master, field)) = from.pick("master", &self.master, &file.master) {
            check_master_url(&master).map_err(|m| ConfigError::new(field, m))?;
            config.master = master;
        }
        if let Some(dir) = self.tls_dir.clone().or_else(|| file.tls_dir.clone()) {
            config.tls_dir = dir;
        }
        if let Some(dir) = self.work_dir.clone().or_else(|| file.work_dir.clone()) {
            config.work_dir = dir;
        }
        if let Some(dir) = self
            .runtime_dir
            .clone()
            .or_else(|| file.runtime_dir.clone())
        {
            config.runtime_dir = dir;
        }
        for (name, dir) in [
            ("work-dir", &config.work_dir),
            ("runtime-dir", &config.runtime_dir),
        ] {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    format!("--{name}"),
                    "empty path; give a directory",
                ));
            }
        }
        if let Some((spec, field)) = from.pick("resources", &self.resources, &file.resources) {
            config.resources =
                parse_resources(&spec, false).map_err(|m| ConfigError::new(field, m))?;
        }
        if let Some((spec, field)) = from.pick("reserve", &self.reserve, &file.reserve) {
            config.reserve =
                parse_resources(&spec, true).map_err(|m| ConfigError::new(field, m))?;
        }
        if let Some((attrs, field)) = from.pick("attributes", &self.attributes, &file.attributes) {
            config.attributes = attrs.resolve(&field)?;
        }
        if let Some((hostname, field)) = from.pick("hostname", &self.hostname, &file.hostname) {
            let ok = !hostname.is_empty()
                && hostname.len() <= 253
                && !hostname
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ConfigError::new(
                    field,
                    format!("{hostname:?}: give a non-empty name without spaces"),
                ));
            }
            config.hostname = Some(hostname);
        }
        let listen = from.pick("http-listen", &self.http_listen, &file.http_listen);
        if let Some((listen, field)) = listen {
            config.http_listen = listen.trim().parse().map_err(|_| {
                ConfigError::new(
                    field,
                    format!("{listen:?} is not ADDRESS:PORT; use e.g. {DEFAULT_HTTP_LISTEN} or [::1]:5051"),
                )
            })?;
        }
        let cgroup_root = from.pick("cgroup-root", &self.cgroup_root, &file.cgroup_root);
        if let Some((root, field)) = cgroup_root {
            let bad = root.as_os_str().is_empty()
                || root
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if bad {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{}: give a path without '..', e.g. /cella or cella",
                        root.display()
                    ),
                ));
            }
            config.cgroup_root = Some(root);
        }
        let interval = from.pick("usage-interval", &self.usage_interval, &file.usage_interval);
        if let Some((interval, field)) = interval {
            let d = parse_duration(&interval).map_err(|m| ConfigError::new(&field, m))?;
            if d < Duration::from_millis(100) {
                return Err(ConfigError::new(
                    field,
                    "at least 100ms: sampling every task more often costs more than it tells",
                ));
            }
            config.usage_interval = d;
        }
        config.kill_tasks_on_exit = self.kill_tasks_on_exit || file.kill_tasks_on_exit;
        if let Some((mode, field)) = from.pick("recover", &self.recover, &file.recover) {
            config.recover = match mode.trim() {
                "reconnect" => RecoverMode::Reconnect,
                "cleanup" => RecoverMode::Cleanup,
                other => {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{other:?}: use reconnect (keep the tasks) or cleanup (kill them and exit)"
                        ),
                    ));
                }
            };
        }
        config.strict = if self.no_strict {
            false
        } else {
            self.strict.or(file.strict).unwrap_or(true)
        };
        if let Some((delay, field)) = from.pick("gc-delay", &self.gc_delay, &file.gc_delay) {
            config.gc_delay = parse_duration(&delay).map_err(|m| ConfigError::new(field, m))?;
        }
        self.resolve_policy(file, from, &mut config)?;
        config.images = self.images.resolve(&file.images, source)?;
        Ok(config)
    }

    /// The task policy and the API's ACL and credentials.
    fn resolve_policy(
        &self,
        file: &AgentArgs,
        from: Sources<'_>,
        config: &mut AgentConfig,
    ) -> Result<(), ConfigError> {
        if let Some((user, field)) = from.pick("task-user", &self.task_user, &file.task_user) {
            if cella_proto::validate::is_valid_user(&user) {
                config.tasks.task_user = user;
            } else {
                return Err(ConfigError::new(
                    field,
                    format!("{user:?}: use NAME, UID, NAME:GROUP or UID:GID"),
                ));
            }
        }
        config.tasks.allow_root = self.allow_root_tasks || file.allow_root_tasks;
        let pids = from.pick(
            "default-pids-limit",
            &self.default_pids_limit,
            &file.default_pids_limit,
        );
        if let Some((n, field)) = pids {
            if n == 0 {
                return Err(ConfigError::new(
                    field,
                    "0: every task needs a process limit; give a number of processes, e.g. 4096",
                ));
            }
            config.tasks.default_pids = n;
        }
        let disk = from.pick("default-disk", &self.default_disk, &file.default_disk);
        if let Some((text, field)) = disk {
            match cella_containerizer::units::parse_size(&text) {
                Ok(0) => {
                    return Err(ConfigError::new(
                        field,
                        "0: every task needs a disk limit; give a size, e.g. 10GiB",
                    ));
                }
                Ok(bytes) => config.tasks.default_disk_bytes = bytes,
                Err(e) => return Err(ConfigError::new(field, format!("{text:?}: {e}"))),
            }
        }
        let (volumes, field) = from.list(
            "allow-volume",
            "allow_volumes",
            &self.allow_volumes,
            &file.allow_volumes,
        );
        config.tasks.volumes = volumes
            .iter()
            .map(|v| VolumeAllow::parse(v))
            .collect::<Result<_, _>>()
            .map_err(|m| ConfigError::new(field, m))?;
        let (rootfs, field) = from.list(
            "allow-rootfs",
            "allow_rootfs",
            &self.allow_rootfs,
            &file.allow_rootfs,
        );
        config.tasks.rootfs = Vec::new();
        for r in rootfs {
            let p = PathBuf::from(&r);
            if !p.is_absolute() {
                return Err(ConfigError::new(
                    field,
                    format!("{r:?}: give an absolute directory"),
                ));
            }
            config.tasks.rootfs.push(p);
        }
        let (devices, field) = from.list(
            "allow-device",
            "allow_devices",
            &self.allow_devices,
            &file.allow_devices,
        );
        config.tasks.devices = Vec::new();
        for d in devices {
            if !cella_proto::validate::is_device_path(&d) {
                return Err(ConfigError::new(
                    field,
                    format!("{d:?}: give the absolute path of a device under /dev, e.g. /dev/fuse"),
                ));
            }
            config.tasks.devices.push(PathBuf::from(d));
        }
        config.acl = self.acl.clone().or_else(|| file.acl.clone());
        config.credentials = self
            .credentials
            .clone()
            .or_else(|| file.credentials.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
