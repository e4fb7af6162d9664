//! What the agent checks and opens before it starts its work: the task user, the TLS
//! configuration, the containerizer, the checkpoint and the work directory's lock; and
//! the errors that stop a start ([`AgentError`]).

use std::path::PathBuf;
use std::sync::Arc;

use cella_containerizer::{Containerizer, ContainerizerConfig};
use cella_proto::tls::{ClientAuth, ExpectedServer, Identity, Trust};

use crate::config::{AgentConfig, ConfigError};
use crate::paths;
use crate::store::{Checkpoint, Store, StoreError, StoreOwner};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("containerizer: {0}")]
    Containerizer(String),
    /// Another agent holds the work directory's lock.
    #[error("{}", locked_message(dir, *pid))]
    Locked { dir: PathBuf, pid: Option<i32> },
}

fn locked_message(dir: &std::path::Path, pid: Option<i32>) -> String {
    let who = pid.map_or_else(
        || "another agent".to_string(),
        |p| format!("another agent (pid {p})"),
    );
    format!(
        "the work directory {} is in use by {who}: it holds {}; stop it first, or give this \
         agent its own --work-dir",
        dir.display(),
        paths::lock_file(dir).display()
    )
}

impl AgentError {
    /// The process exit status: 2 for configuration problems, 1 otherwise (a work
    /// directory locked by another agent, a damaged checkpoint with `--strict`, ...).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => ConfigError::EXIT_CODE,
            _ => 1,
        }
    }
}

/// The task user must exist here, and be root only where root tasks are allowed.
pub(crate) fn check_task_user(config: &AgentConfig) -> Result<(), AgentError> {
    let user = &config.tasks.task_user;
    let identity =
        cella_containerizer::user::resolve(user, std::path::Path::new("/")).map_err(|e| {
            ConfigError::new(
                "--task-user",
                format!("{e}; name an existing, unprivileged user"),
            )
        })?;
    if identity.uid == 0 && !config.tasks.allow_root {
        return Err(ConfigError::new(
            "--task-user",
            format!("{user:?} is root; name an unprivileged user, or allow root tasks (--allow-root-tasks)"),
        )
        .into());
    }
    Ok(())
}

/// The agent's client (to the master) and server (its API) TLS configurations, from
/// `--tls-dir`, and the trust (CA and revocation list) both follow.
pub(crate) fn load_tls(
    config: &AgentConfig,
) -> Result<(rustls::ClientConfig, rustls::ServerConfig, Arc<Trust>), AgentError> {
    let layout = cella_proto::tls::Layout::new(&config.tls_dir);
    let missing: Vec<String> = [&layout.ca_cert, &layout.agent_cert, &layout.agent_key]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(AgentError::Tls(format!(
            "missing {} (--tls-dir {}): issue this node's certificate with `cella certs issue \
             agent NODE` and copy its bundle (ca.pem, crl.pem, agent.pem, agent-key.pem) here",
            missing.join(", "),
            config.tls_dir.display()
        )));
    }
    cella_proto::perms::check_private_file(&layout.agent_key)
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let tls_err = |e: cella_proto::tls::Error| AgentError::Tls(e.to_string());
    let identity = cella_proto::tls::load_certs(&layout.agent_cert)
        .map_err(tls_err)?
        .first()
        .and_then(|der| Identity::from_cert_der(der));
    if !matches!(identity, Some(Identity::Agent { .. })) {
        return Err(AgentError::Tls(format!(
            "{} is the certificate of {}, not of an agent: issue this node's with `cella certs \
             issue agent NODE`",
            layout.agent_cert.display(),
            identity.map_or_else(|| "no Cella identity".into(), |i| i.principal())
        )));
    }
    let trust = Trust::load(&layout.ca_cert, &layout.crl).map_err(tls_err)?;
    let client_tls = cella_proto::tls::client_config_trusting(
        &trust,
        &layout.agent_cert,
        &layout.agent_key,
        ExpectedServer::Master,
    )
    .map_err(tls_err)?;
    let server_tls = cella_proto::tls::server_config_trusting(
        &trust,
        &layout.agent_cert,
        &layout.agent_key,
        ClientAuth::Optional,
    )
    .map_err(tls_err)?;
    Ok((client_tls, server_tls, trust))
}

/// The containerizer, with the shim it starts tasks with.
pub(crate) fn new_containerizer(config: &AgentConfig) -> Result<Containerizer, AgentError> {
    let shim_path = config
        .shim_path
        .clone()
        .unwrap_or_else(ContainerizerConfig::default_shim_path);
    if !shim_path.is_file() {
        return Err(AgentError::Containerizer(format!(
            "the task shim {} does not exist: install cella-shim next to cella-agent or set CELLA_SHIM",
            shim_path.display()
        )));
    }
    let containerizer = Containerizer::new(ContainerizerConfig {
        shim_path,
        runtime_dir: config.runtime_dir.clone(),
        cgroup_root: config.cgroup_root.clone(),
        cleanup_if_orphaned: false,
        hidden: [
            Some(config.work_dir.clone()),
            Some(config.tls_dir.clone()),
            config.acl.clone(),
            config.credentials.clone(),
        ]
        .into_iter()
        .flatten()
        .collect(),
        // Under systemd on a cgroup v2 host each task gets a scope of its own, so
        // that the agent's unit can restart while tasks run (see
        // docs/deployment.md, "cgroup layout").
        systemd_slice: std::path::Path::new("/run/systemd/system")
            .is_dir()
            .then(|| cella_containerizer::cgroups::SYSTEMD_SLICE.to_string()),
    })
    .map_err(|e| AgentError::Containerizer(e.to_string()))?;
    Ok(containerizer)
}

/// Opens the checkpoint and reads it back (on the blocking pool: redb is synchronous).
pub(crate) async fn open_checkpoint(
    config: &AgentConfig,
) -> Result<(Store, StoreOwner, Checkpoint), AgentError> {
    let work_dir = config.work_dir.clone();
    let strict = config.strict;
    tokio::task::spawn_blocking(move || Store::open_with(&work_dir, strict))
        .await
        .map_err(|e| AgentError::Containerizer(format!("opening the checkpoint: {e}")))?
        .map_err(|e| {
            if strict {
                AgentError::Io {
                    path: e.path().to_path_buf(),
                    message: format!(
                        "{e}\nThe checkpoint is damaged. To start anyway, either run with \
                             --strict=false (recover what can be read), or move {} aside to start \
                             fresh (the agent then loses track of the tasks it recorded: kill them \
                             or let them end).",
                        e.path().display()
                    ),
                }
            } else {
                e.into()
            }
        })
}

/// Takes `<work-dir>/meta/lock` (flock, exclusive, non-blocking) and writes this
/// process's pid into it. The lock lasts as long as the returned file is open (the
/// kernel releases it when the process dies, even with SIGKILL).
pub(crate) fn lock_work_dir(work_dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    use std::io::{Read, Seek, Write as _};
    use std::os::fd::AsRawFd;
    let meta = paths::meta_dir(work_dir);
    std::fs::create_dir_all(&meta).map_err(|e| AgentError::Io {
        path: meta.clone(),
        message: format!("cannot create the directory: {e}"),
    })?;
    let path = paths::lock_file(work_dir);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| AgentError::Io {
            path: path.clone(),
            message: format!("cannot open the work directory's lock: {e}"),
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(AgentError::Locked {
                dir: work_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        return Err(AgentError::Io {
            path,
            message: format!("cannot lock the work directory: {err}"),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}
