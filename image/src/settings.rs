//! What the store is configured with: registries (default, insecure, CA file,
//! credentials), unpack limits, download concurrency.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Docker Hub, the default registry when none is configured.
pub const DOCKER_HUB: &str = "docker.io";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password, sent as HTTP basic authentication or exchanged for a
    /// bearer token at the registry's token service (whichever the registry asks for).
    Basic { username: String, password: String },
    /// A bearer token sent as it is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// How registries are reached.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// Where short names (`busybox`) are looked up: `host[:port]`.
    pub default_registry: String,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Every other registry is
    /// HTTPS only.
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Credentials by registry (`host[:port]`); they take precedence over `docker_config`.
    pub credentials: HashMap<String, Credentials>,
    /// A Docker `config.json` whose `auths` are used for registries not in `credentials`.
    pub docker_config: Option<PathBuf>,
    /// Seconds to wait for a connection; a stalled transfer is retried after `read_timeout_secs`.
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            default_registry: DOCKER_HUB.to_owned(),
            insecure_registries: Vec::new(),
            ca_file: None,
            credentials: HashMap::new(),
            docker_config: None,
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
        }
    }
}

/// Bounds on what one layer may expand to: a layer is untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Uncompressed bytes of the layer's tar stream.
    pub max_layer_bytes: u64,
    /// Entries (files, directories, links…) in one layer.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Everything [`crate::ImageStore::open`] needs besides its directory.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub registries: RegistrySettings,
    pub limits: UnpackLimits,
    /// Layers downloaded (and unpacked) at the same time, per pull.
    pub max_concurrent_layers: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            registries: RegistrySettings::default(),
            limits: UnpackLimits::default(),
            max_concurrent_layers: 4,
        }
    }
}

/// A Docker `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the Docker config {path}: {source}")]
    ReadDockerConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Docker config {path} is not valid JSON: {source}")]
    ParseDockerConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the Docker config {path} has an unreadable \"auth\" for {registry} (expected base64 of user:password)"
    )]
    BadAuth { path: PathBuf, registry: String },
    #[error("cannot read the CA file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate")]
    EmptyCaFile { path: PathBuf },
}

impl RegistrySettings {
    /// Credentials for `registry`: the configured map first, then the Docker config.
    /// `None` means anonymous access.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, SettingsError> {
        if let Some(credentials) = self.credentials.get(registry) {
            return Ok(Some(credentials.clone()));
        }
        match &self.docker_config {
            Some(path) => docker_config_credentials(path, registry),
            None => Ok(None),
        }
    }

    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure_registries.iter().any(|r| r == registry)
    }

    /// The PEM bytes of the configured CA file, checked to hold a certificate.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, SettingsError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|source| SettingsError::ReadCaFile {
            path: path.clone(),
            source,
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(SettingsError::EmptyCaFile { path: path.clone() });
        }
        Ok(Some(pem))
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Looks `registry` up in a Docker `config.json`'s `auths`, whose keys may be a bare
/// host, a URL (`https://host/`), or for Docker Hub `https://index.docker.io/v1/`.
/// Credential helpers (`credsStore`) are not run.
fn docker_config_credentials(
    path: &Path,
    registry: &str,
) -> Result<Option<Credentials>, SettingsError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SettingsError::ReadDockerConfig {
                path: path.to_owned(),
                source,
            });
        }
    };
    let config: DockerConfig =
        serde_json::from_slice(&text).map_err(|source| SettingsError::ParseDockerConfig {
            path: path.to_owned(),
            source,
        })?;
    let host_of = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = key.split('/').next().unwrap_or(key);
        match host {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            other => other.to_owned(),
        }
    };
    let Some((_, entry)) = config
        .auths
        .iter()
        .find(|(key, _)| host_of(key) == registry)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(Credentials::Bearer(token.clone())));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let bad = || SettingsError::BadAuth {
        path: path.to_owned(),
        registry: registry.to_owned(),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_by_host_and_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "localhost:5000": {"auth": "YWxpY2U6cGFzczp3b3Jk"},
                "https://quay.io": {"username": "bob", "password": "pw"}
            }}"#,
        )
        .unwrap();
        let settings = RegistrySettings {
            docker_config: Some(path.clone()),
            ..Default::default()
        };
        let basic = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(
            settings.credentials_for("docker.io").unwrap(),
            basic("hub", "secret")
        );
        assert_eq!(
            settings.credentials_for("localhost:5000").unwrap(),
            basic("alice", "pass:word")
        );
        assert_eq!(
            settings.credentials_for("quay.io").unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(settings.credentials_for("other.example").unwrap(), None);

        std::fs::write(&path, r#"{"auths": {"x.example": {"auth": "!!"}}}"#).unwrap();
        let err = settings
            .credentials_for("x.example")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.example") && err.contains("config.json"),
            "{err}"
        );
    }
}
